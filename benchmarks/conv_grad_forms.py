"""A lean training step with each form of the frozen conv's input gradient, side by side.

    python benchmarks/conv_grad_forms.py [--backbones efficientnet_lite0 mobilenet_v2 resnet18]
                                         [--resolution 32] [--batch-size 32] [--rounds 5]

`device_agent/model/lean_ops.py` computes a frozen conv's input gradient as a transposed conv
(``conv_transpose2d``) or, on torch 1.x's CPU path, as a conv2d of the flipped kernel (torch
1.10 runs a grouped transposed conv one group at a time). This script times a lean DA2 step
and a `last` step (no backward through the backbone: the reference) with each form, in
interleaved rounds (median), on whatever torch runs it: run it with the 3.6 / torch 1.10
interpreter and with the development one to compare the stacks. Random weights: time does
not depend on their values. Prints a markdown table.
"""
import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from device_agent.cpu_budget import configure_process  # noqa: E402

configure_process()  # before torch is imported: passive OpenMP waits
import torch  # noqa: E402

from device_agent.model import lean_ops  # noqa: E402
from device_agent.model.builder import build_net  # noqa: E402
from device_agent.training.step import make_optimizer, train_step  # noqa: E402

FORMS = {"conv_transpose2d": False, "conv2d of the flipped kernel": True}


def _step_ms(net, optimizer, images, labels, as_conv: bool) -> float:
    lean_ops._TRANSPOSE_AS_CONV = as_conv
    started = time.perf_counter()
    train_step(net, optimizer, images, labels, lean=True)
    return (time.perf_counter() - started) * 1000


def measure(backbone: str, resolution: int, batch: int, rounds: int) -> dict:
    torch.manual_seed(0)
    images = torch.randn(batch, 3, resolution, resolution)
    labels = torch.arange(batch) % 10
    runs = {}
    for method in ("da2", "last"):
        net = build_net(backbone, method, 10, weights="random")
        net.train()
        optimizer = make_optimizer(net, 1e-3)
        for as_conv in FORMS.values():  # warm-up: oneDNN primitives, allocator
            _step_ms(net, optimizer, images, labels, as_conv)
        for _ in range(rounds):
            for form, as_conv in FORMS.items():
                runs.setdefault((method, form), []).append(
                    _step_ms(net, optimizer, images, labels, as_conv))
    return {key: statistics.median(times) for key, times in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+",
                        default=["efficientnet_lite0", "mobilenet_v2", "resnet18"])
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print("python %s, torch %s, %d threads, %s px, batch %d, median of %d rounds"
          % (platform.python_version(), torch.__version__, torch.get_num_threads(),
             args.resolution, args.batch_size, args.rounds))
    print()
    print("| backbone | method | " + " | ".join("step ms, " + f for f in FORMS) + " | ratio |")
    print("| --- | --- | " + " | ".join("---" for _ in FORMS) + " | --- |")
    for backbone in args.backbones:
        medians = measure(backbone, args.resolution, args.batch_size, args.rounds)
        for method in ("da2", "last"):
            times = [medians[(method, form)] for form in FORMS]
            print("| %s | %s | %s | %.2fx |" % (backbone, method,
                                               " | ".join("%.0f" % t for t in times),
                                               times[0] / times[1]))


if __name__ == "__main__":
    main()
