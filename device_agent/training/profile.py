"""Peak memory of training steps, and the report behind ``device-agent memory``.

:func:`measure_peak_step` runs training steps in a fresh child process and reports the RSS
high-water mark of one step above the steady state (model, gradients and optimizer state
resident) and above the freshly loaded model (so
gradients and optimizer state count too), plus CUDA's peak when present.
"""
import json
import os
import subprocess
import sys
from typing import Dict

import torch

from device_agent.model.builder import build_net
from device_agent.model.memory import (
    MB,
    estimate_saved_bytes,
    materialize,
    measure_saved_bytes,
    trainable_parameters,
)
from device_agent.model.network import METHODS
from device_agent.training.memory_guard import reset_peak_rss, rss_mb, step_peak_rss_mb
from device_agent.training.step import make_optimizer, train_step

# --- peak memory of a training step, in a child process ---------------------------------

def peak_step_child(spec: Dict[str, object]) -> Dict[str, object]:
    """Runs inside the child: build, warm up, then one measured step."""
    torch.manual_seed(0)
    if spec.get("threads"):  # else the thread policy its parent put in the environment
        torch.set_num_threads(int(spec["threads"]))
    device = torch.device(str(spec.get("device", "cpu")))
    net = build_net(str(spec["backbone"]), str(spec["method"]), num_classes=10,
                    weights="random").to(device)
    size = int(spec["resolution"])
    images = torch.randn(int(spec["batch_size"]), 3, size, size, device=device)
    labels = torch.arange(int(spec["batch_size"]), device=device) % 10
    optimizer = make_optimizer(net, lr=1e-3)
    lean = bool(spec.get("lean", True))
    micro_batch = int(spec.get("micro_batch", 0))
    materialize(net, images, lean)
    loaded = rss_mb()
    cuda = device.type == "cuda"
    for _ in range(2):  # warm-up: gradients and optimizer state become resident
        train_step(net, optimizer, images, labels, lean=lean, micro_batch=micro_batch)
    steady = rss_mb()
    if cuda:
        torch.cuda.synchronize()
        cuda_base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    reset = reset_peak_rss()
    train_step(net, optimizer, images, labels, lean=lean, micro_batch=micro_batch)
    peak = step_peak_rss_mb()
    result = {"peak_step_mb": peak - steady,  # above model + grads + optimizer state
              "peak_train_mb": peak - loaded,  # above the freshly loaded model
              "hwm_reset": reset}  # type: Dict[str, object]
    if cuda:
        torch.cuda.synchronize()
        result["cuda_peak_step_mb"] = (torch.cuda.max_memory_allocated() - cuda_base) / MB
    return result


def measure_peak_step(backbone: str, method: str, resolution: int, batch_size: int,
                      lean: bool = True, micro_batch: int = 0, device: str = "cpu",
                      timeout: float = 900.0) -> Dict[str, object]:
    """Peak memory of one training step above the loaded model, in a fresh process.

    glibc is told to mmap large blocks so that freed activations return to the system and
    the high-water mark reflects this step, not earlier allocator caching.
    """
    spec = {"backbone": backbone, "method": method, "resolution": resolution,
            "batch_size": batch_size, "lean": lean, "micro_batch": micro_batch,
            "device": device}
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    proc = subprocess.run([sys.executable, "-m", "device_agent.training.profile", json.dumps(spec)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                          timeout=timeout, universal_newlines=True)
    if proc.returncode != 0:
        raise RuntimeError("peak measurement failed: %s" % proc.stderr.strip()[-500:])
    return json.loads(proc.stdout.strip().splitlines()[-1])



# --- the report behind `device-agent memory` ---------------------------------------------

def memory_report(backbone: str, resolution: int, batch_size: int, methods=None,
                  peak: bool = True, micro_batch: int = 0, device: str = "cpu") -> list:
    """One row per method: measured / estimated / minimum saved activations, trainable
    parameters, ratio to finetune, and (with ``peak``) the step's peak RSS, plus CUDA's peak
    when ``device`` is CUDA. Saved activations are measured on the CPU: autograd's save rules
    do not depend on the device. Random weights: memory does not depend on their values."""
    names = list(methods or METHODS)
    torch.manual_seed(0)
    images = torch.randn(batch_size, 3, resolution, resolution)
    labels = torch.arange(batch_size) % 10
    rows = []
    for name in names:
        net = build_net(backbone, name, num_classes=10, weights="random").train()
        lean = net.domain.backbone is None
        estimate = estimate_saved_bytes(net, (3, resolution, resolution), batch_size)
        row = {"method": name,
               "saved_activation_mb": measure_saved_bytes(net, images, labels, lean) / MB,
               "plain_saved_activation_mb": measure_saved_bytes(net, images, labels, False) / MB,
               "estimated_mb": estimate["lean"] / MB,
               "theoretical_min_mb": estimate["minimum"] / MB,
               "trainable_params": trainable_parameters(net),
               "peak_step_mb": None, "peak_train_mb": None}
        if peak:
            row.update(measure_peak_step(backbone, name, resolution, batch_size, lean=True,
                                         micro_batch=micro_batch, device=device))
            row.pop("hwm_reset", None)
        rows.append(row)
    finetune = next((r for r in rows if r["method"] == "finetune"), None)
    for row in rows:
        row["ratio_to_finetune"] = (finetune["saved_activation_mb"] / row["saved_activation_mb"]
                                    if finetune and row["saved_activation_mb"] else None)
    return rows


if __name__ == "__main__":
    print(json.dumps(peak_step_child(json.loads(sys.argv[1]))))
