"""Training memory and step time of every method, side by side in one run.

    python benchmarks/memory_bench.py [--backbones ...] [--resolution 224] [--batch-size 8]
                                      [--rounds 5] [--out docs/benchmarks-memory.md]

For each backbone: the `device-agent memory` table (saved activations measured with
saved_tensors_hooks, the analytic estimate, the theoretical minimum, trainable parameters,
peak RSS of a step in a fresh process), DA2's peak with micro-batched steps, and the step
time of finetune / plain-autograd DA2 / lean DA2 measured in interleaved rounds (median),
because this VM's speed drifts by +-15% between runs. Random weights: neither memory nor
time depends on their values.
"""
import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from device_agent.cpu_budget import configure_process  # noqa: E402

configure_process()  # before torch is imported: passive OpenMP waits (--threads sets the count)
import torch  # noqa: E402

from device_agent.model.builder import build_net  # noqa: E402
from device_agent.training.profile import measure_peak_step, memory_report  # noqa: E402
from device_agent.training.step import make_optimizer, train_step  # noqa: E402

TIMED = [("finetune", "finetune", False, 0), ("da2 plain autograd", "da2", False, 0),
         ("da2 lean", "da2", True, 0), ("da2 lean, micro-batch 2", "da2", True, 2)]


def step_times(backbone: str, resolution: int, batch: int, rounds: int) -> dict:
    torch.manual_seed(0)
    images = torch.randn(batch, 3, resolution, resolution)
    labels = torch.arange(batch) % 10
    nets, optimizers = {}, {}
    for _, method, _, _ in TIMED:
        if method not in nets:
            nets[method] = build_net(backbone, method, 10, weights="random").train()
            optimizers[method] = make_optimizer(nets[method], 1e-3)
    times = {name: [] for name, _, _, _ in TIMED}
    for round_index in range(rounds + 1):  # round 0 warms up
        for name, method, lean, micro in TIMED:
            tick = time.perf_counter()
            train_step(nets[method], optimizers[method], images, labels, lean=lean,
                       micro_batch=micro)
            if round_index:
                times[name].append(time.perf_counter() - tick)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def bench_backbone(backbone: str, resolution: int, batch: int, rounds: int) -> dict:
    rows = memory_report(backbone, resolution, batch)
    micro = {m: measure_peak_step(backbone, "da2", resolution, batch, micro_batch=m)
             for m in (4, 2)}
    return {"rows": rows, "micro": micro, "times": step_times(backbone, resolution, batch, rounds)}


def _row(values) -> str:
    return "| " + " | ".join(values) + " |"


def markdown(results: dict, args, command: str) -> str:
    lines = ["# Training memory and step time: DA2 against the baselines", "",
             "Command: `%s`" % command, "",
             "Machine: %s, %d threads, torch %s, Python %s. %d px, batch %d, random weights."
             % (platform.machine(), torch.get_num_threads(), torch.__version__,
                platform.python_version(), args.resolution, args.batch_size), "",
             "- *saved*: activation bytes autograd keeps for backward, measured exactly "
             "(`saved_tensors_hooks`, unique storages), on the lean path where the method has "
             "one; *plain*: the same method on stock autograd; *estimate*: the analytic model; "
             "*minimum*: what backward needs at least.",
             "- *step peak*: RSS high-water mark of one training step above the steady state "
             "(model, gradients, optimizer state resident); *train peak*: above the freshly "
             "loaded model (gradients and Adam state count too). One fresh process each.", ""]
    for backbone, result in results.items():
        rows, micro, times = result["rows"], result["micro"], result["times"]
        finetune = next(r for r in rows if r["method"] == "finetune")
        lines += ["## %s" % backbone, "",
                  _row(["method", "saved MB", "plain MB", "estimate MB", "minimum MB",
                        "saved vs finetune", "trainable params", "step peak MB",
                        "train peak MB"]),
                  _row(["---"] * 9)]
        for r in rows:
            lines.append(_row([r["method"], "%.2f" % r["saved_activation_mb"],
                               "%.2f" % r["plain_saved_activation_mb"],
                               "%.2f" % r["estimated_mb"], "%.2f" % r["theoretical_min_mb"],
                               "%.1fx" % r["ratio_to_finetune"],
                               "{:,}".format(r["trainable_params"]),
                               "%.1f" % r["peak_step_mb"], "%.1f" % r["peak_train_mb"]]))
        da2 = next(r for r in rows if r["method"] == "da2")
        lines += ["", _row(["DA2 step", "step peak MB", "vs finetune", "train peak MB",
                            "vs finetune"]), _row(["---"] * 5)]
        for label, peak in [("one pass", da2)] + [("micro-batch %d" % m, micro[m])
                                                 for m in sorted(micro, reverse=True)]:
            lines.append(_row([label, "%.1f" % peak["peak_step_mb"],
                               "%.1fx" % (finetune["peak_step_mb"] / peak["peak_step_mb"]),
                               "%.1f" % peak["peak_train_mb"],
                               "%.1fx" % (finetune["peak_train_mb"] / peak["peak_train_mb"])]))
        lines += ["", _row(["step (median of %d interleaved rounds)" % args.rounds, "ms",
                            "vs finetune"]), _row(["---"] * 3)]
        for name, ms in times.items():
            lines.append(_row([name, "%.0f" % ms, "%.2fx" % (ms / times["finetune"])]))
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.2), squeeze=False)
    for ax, (backbone, result) in zip(axes[0], results.items()):
        rows = result["rows"]
        names = [r["method"] for r in rows]
        positions = range(len(rows))
        ax.bar([p - 0.2 for p in positions], [r["plain_saved_activation_mb"] for r in rows],
               0.4, label="stock autograd", color="#bbbbbb")
        ax.bar([p + 0.2 for p in positions], [r["saved_activation_mb"] for r in rows], 0.4,
               label="lean path", color="#1f77b4")
        ax.set_yscale("log")
        ax.set_xticks(list(positions))
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("saved activations (MB, log scale)")
        ax.set_title(backbone)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Activation memory kept for backward, per method (batch 8, 224 px)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+",
                        default=["resnet50", "mobilenet_v2", "efficientnet_lite0"])
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="docs/benchmarks-memory.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {b: bench_backbone(b, args.resolution, args.batch_size, args.rounds)
               for b in args.backbones}
    command = "python benchmarks/memory_bench.py " + " ".join(sys.argv[1:])
    text = markdown(results, args, command.strip())
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as handle:
            handle.write(text + "\n")
        plot(results, os.path.splitext(args.out)[0] + ".png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
