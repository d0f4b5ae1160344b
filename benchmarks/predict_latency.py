"""Prediction latency: torch eager against onnxruntime, side by side in one run.

    python benchmarks/predict_latency.py [--reps 40] [--threads 2] [--out FILE.md]

For each backbone (EfficientNet-Lite0 and MobileNetV2 at their manifest input size, a DA2
domain of 10 classes, the manifest weights where present, else the seeded random ones: the
arithmetic is the same), the domain is exported with the project's exporter
(device_agent.export.onnx_export, parity-checked) as a batch-1 graph -- the one the
onnxruntime backend and jetson-inference run -- and as a batch-8 graph. Then the variants
below run interleaved, one call each per round in a rotating order, so that the load of a
shared machine falls on all of them alike; the table gives the median and the 90th
percentile per call and the ratio of medians against torch at the same batch.

  torch                the worker's torch path: AdaptedNet (lean inference) + softmax
  onnxruntime          the onnxruntime backend (worker/backends.py): batch-1 graph, image
                       by image for a batch
  onnxruntime b8 graph a batch-8 graph, one call (what a dynamic-batch backend would get)

Both runtimes get the same intra-op thread count (--threads), inter-op 1, idle threads
sleeping (OMP_WAIT_POLICY=PASSIVE via device_agent.cpu_budget, onnxruntime's
allow_spinning=0, as in the worker). The preprocessing (decode, resize, crop) is the same
for both and is not timed.
"""
import argparse
import os
import platform
import sys
import tempfile
import time
from typing import Callable, Dict, List, NamedTuple, Tuple

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
sys.path.insert(0, ROOT)
BACKBONES = ("efficientnet_lite0", "mobilenet_v2")
CLASSES = 10
WARMUP = 3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=40, help="timed calls per variant")
    parser.add_argument("--threads", type=int, nargs="+", default=[2],
                        help="intra-op threads, the same for both runtimes; each count is "
                             "a run of its own (interleaved within)")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument("--out", help="also write the table and the command here (markdown)")
    return parser.parse_args()


def save_domain(backbone: str, directory: str) -> str:
    """A DA2 domain over ``backbone`` (its adapters at their initial values: the latency
    does not depend on what they learned), saved like a trained one."""
    from device_agent.model import backbones
    from device_agent.model.adapter_io import save_domain as save
    from device_agent.model.network import AdaptedNet, DomainModule

    try:
        frozen, info = backbones.build_backbone(backbone, None)
    except Exception:  # weights not provisioned here: the same network, seeded random
        frozen, info = backbones.build_backbone(backbone, backbones.RANDOM)
    net = AdaptedNet(frozen)
    net.add_domain("bench", DomainModule(frozen, "da2", CLASSES))
    out = os.path.join(directory, "adapter")
    save(net, "bench", out, ["class%d" % i for i in range(CLASSES)], info.input_size)
    return out


Variant = Tuple[str, int]  # (runtime, batch)


class Prepared(NamedTuple):
    net: object                 # the AdaptedNet the worker's torch path runs
    onnx_b1: str
    onnx_b8: str
    unit: Dict[int, object]     # batch -> the exports' input, RGB in [0, 1]
    normalised: Dict[int, object]  # batch -> torch's input (the backbone's mean and std)
    facts: Dict[str, object]


def prepare(backbone: str, directory: str) -> Prepared:
    """The domain, its batch-1 and batch-8 exports, and the inputs of both runtimes."""
    import numpy as np
    import torch

    from device_agent.export.onnx_export import export_domain, load_adapter

    adapter = save_domain(backbone, directory)
    net, config = load_adapter(adapter)
    size = int(config["input_size"])
    one = export_domain(adapter, os.path.join(directory, "b1"), batch_size=1)
    eight = export_domain(adapter, os.path.join(directory, "b8"), batch_size=8)
    rng = np.random.RandomState(0)
    unit = {n: rng.rand(n, 3, size, size).astype(np.float32) for n in (1, 8)}
    mean = torch.tensor(config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(config["std"]).view(1, 3, 1, 1)
    normalised = {n: (torch.from_numpy(unit[n]) - mean) / std for n in (1, 8)}
    weights = "random" if net.backbone_spec.weights_sha256 == "random" else "manifest"
    facts = {"size": size, "weights": weights, "parity_b1": one.parity.max_abs_diff,
             "parity_b8": eight.parity.max_abs_diff}
    return Prepared(net, one.onnx_path, eight.onnx_path, unit, normalised, facts)


def variants(prepared: Prepared, threads: int) -> Dict[Variant, Callable[[], object]]:
    """(runtime, batch) -> a call to time, every one at ``threads`` intra-op threads."""
    import numpy as np
    import torch

    from device_agent.worker.backends import OnnxRuntimeModel

    torch.set_num_threads(threads)
    ort_one = OnnxRuntimeModel(prepared.onnx_b1, threads)
    ort_eight = OnnxRuntimeModel(prepared.onnx_b8, threads)
    unit, net = prepared.unit, prepared.net

    def eager(n: int) -> Callable[[], object]:
        def call():
            with torch.no_grad():
                return torch.softmax(net(prepared.normalised[n]), dim=1)
        return call

    calls = {("torch", 1): eager(1),
             ("onnxruntime", 1): lambda: ort_one.probabilities(unit[1]),
             ("torch", 8): eager(8),
             ("onnxruntime", 8): lambda: ort_one.probabilities(unit[8]),
             ("onnxruntime b8 graph", 8): lambda: ort_eight.probabilities(unit[8])}
    # the same answers, or the timings compare different work
    reference = calls[("torch", 8)]().numpy()
    for name in (("onnxruntime", 8), ("onnxruntime b8 graph", 8)):
        diff = float(np.abs(calls[name]() - reference).max())
        if diff > 1e-4:
            raise SystemExit("%s differs from torch by %.3g" % (name[0], diff))
    return calls


def interleaved(calls: Dict[Variant, Callable[[], object]],
                reps: int) -> Dict[Variant, List[float]]:
    """Seconds per call; each round runs every variant once, starting one further along."""
    names = list(calls)
    for name in names:
        for _ in range(WARMUP):
            calls[name]()
    times = {name: [] for name in names}  # type: Dict[Variant, List[float]]
    for rep in range(reps):
        for offset in range(len(names)):
            name = names[(rep + offset) % len(names)]
            started = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - started)
    return times


def percentile(values: List[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def table_rows(backbone: str, facts: Dict[str, object], threads: int,
               times: Dict[Variant, List[float]]) -> List[str]:
    rows = []
    for (runtime, batch), samples in times.items():
        baseline = percentile(times[("torch", batch)], 0.5)
        median = percentile(samples, 0.5)
        rows.append("| %s | %d px | %s | %d | %s | %d | %.1f | %.1f | %.2f | %.2f |" % (
            backbone, facts["size"], facts["weights"], threads, runtime, batch, 1000 * median,
            1000 * percentile(samples, 0.9), 1000 * median / batch, baseline / median))
    return rows


HEADER = ("| backbone | input | weights | threads | runtime | batch | median ms | p90 ms "
          "| ms / image | torch ÷ this (median) |\n|---|---|---|---|---|---|---|---|---|---|")


def main() -> int:
    args = parse_args()
    os.environ["DEVICE_AGENT_THREADS"] = str(max(args.threads))
    from device_agent.cpu_budget import configure_process

    configure_process()  # passive OpenMP waiting and the thread count, before torch loads
    import onnxruntime
    import torch

    torch.set_num_interop_threads(1)
    rows, notes = [], []
    for backbone in args.backbones:
        with tempfile.TemporaryDirectory() as directory:
            prepared = prepare(backbone, directory)
            for threads in args.threads:
                times = interleaved(variants(prepared, threads), args.reps)
                rows += table_rows(backbone, prepared.facts, threads, times)
        facts = prepared.facts
        notes.append("%s: export parity (max abs diff of probabilities, onnxruntime against "
                     "PyTorch) %.2g at batch 1, %.2g at batch 8"
                     % (backbone, facts["parity_b1"], facts["parity_b8"]))
    command = "python benchmarks/predict_latency.py " + " ".join(sys.argv[1:])
    machine = ("%s, %d CPUs visible, load average %s before the run; Python %s, torch %s, "
               "onnxruntime %s; %s intra-op threads for both runtimes, %d interleaved rounds"
               % (platform.processor() or platform.machine(), os.cpu_count() or 0,
                  _loadavg(), platform.python_version(), torch.__version__,
                  onnxruntime.__version__, " or ".join(map(str, args.threads)), args.reps))
    table = "\n".join([HEADER] + rows)
    print(table)
    print("\n".join(notes))
    if args.out:
        write_report(args.out, command.strip(), machine, table, notes)
    return 0


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as handle:
            return " ".join(handle.read().split()[:3])
    except OSError:
        return "unknown"


def write_report(path: str, command: str, machine: str, table: str, notes: List[str]) -> None:
    from device_agent import atomic

    text = "\n".join([
        "# Prediction latency: torch eager against onnxruntime", "",
        "Measured with `%s` (the module docstring says what each variant runs)." % command,
        "", machine + ".", "", table, "", "Each ratio compares medians at the same batch; "
        "above 1, that runtime answers faster than torch eager.", "",
        "\n".join("- " + note for note in notes), ""])
    atomic.write_bytes(path, text.encode("utf-8"))


if __name__ == "__main__":
    sys.exit(main())
