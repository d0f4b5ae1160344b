"""Training memory: measured, estimated, and the theoretical minimum.

- :func:`measure_saved_bytes` counts what autograd really keeps for backward, exactly, with
  ``saved_tensors_hooks`` (unique storages; parameters and buffers excluded).
- :func:`estimate_saved_bytes` is an analytic model in the spirit of TinyTL's profiler: a
  probe pass records shapes, every stage applies its per-path rule (``activation_rule``:
  what stock autograd keeps, what the lean path keeps, what backward needs at minimum),
  and the sum is scaled by the batch size.
- :func:`measure_peak_step` runs training steps in a fresh child process and reports the
  RSS high-water mark of one step above the steady state (model, gradients and optimizer
  state resident: shared/research/memory.md's definition) and above the freshly loaded
  model (so gradients and optimizer state count too), plus CUDA's peak when present.
"""
import itertools
import json
import os
import subprocess
import sys
from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from device_agent.model.network import AdaptedNet

PATHS = ("plain", "lean", "minimum")
PROBE = 2  # the estimator's probe batch
MB = 1e6


def _storage(t: torch.Tensor) -> Tuple[int, int]:
    try:
        storage = t.untyped_storage()
        return storage.data_ptr(), storage.nbytes()
    except AttributeError:  # torch < 2.0
        storage = t.storage()
        return storage.data_ptr(), storage.size() * t.element_size()


def model_state_storages(model: nn.Module) -> set:
    return {_storage(t)[0] for t in itertools.chain(model.parameters(), model.buffers())}


def materialize(net: AdaptedNet, images: torch.Tensor, lean: bool) -> None:
    """One eval-mode forward that creates lazily derived weights (normalized convs): they
    are model state, not activations. Eval mode leaves finetune's BN statistics alone."""
    was_training = net.training
    net.eval()
    with torch.no_grad():
        net(images[:1], lean=lean)
    net.train(was_training)


def measure_saved_bytes(net: AdaptedNet, images: torch.Tensor, labels: torch.Tensor,
                        lean: bool) -> int:
    """Bytes of unique storages autograd saves for one forward + loss (model state excluded)."""
    materialize(net, images, lean)
    state = model_state_storages(net)
    saved = {}  # type: Dict[int, int]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        ptr, nbytes = _storage(tensor)
        if ptr not in state:
            saved[ptr] = max(saved.get(ptr, 0), nbytes)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        F.cross_entropy(net(images, lean=lean), labels)
    return sum(saved.values())


def _ledger_key(key, module: nn.Module):
    if isinstance(key, torch.Tensor):
        return _storage(key)[0]
    tag, owner = key
    return (tag, id(owner))


def estimate_saved_bytes(net: AdaptedNet, image_shape: Tuple[int, int, int],
                         batch_size: int) -> Dict[str, float]:
    """Analytic saved-activation bytes per path ("plain", "lean", "minimum"), from a
    shape-recording pass at batch 2 (train-mode BN needs two samples), scaled linearly."""
    ledgers = {path: {} for path in PATHS}  # type: Dict[str, Dict[object, float]]
    keep_alive = []  # probe tensors stay referenced so storage addresses stay unique

    def hook(module, inputs, output):
        keep_alive.extend([inputs[0], output])
        for path, key, nbytes in module.activation_rule(inputs[0], output, inputs[1]):
            ledgers[path][_ledger_key(key, module)] = nbytes

    ruled = [m for m in net.modules() if hasattr(m, "activation_rule")]
    handles = [m.register_forward_hook(hook) for m in ruled]
    was_training = net.training
    net.train()
    try:
        with torch.enable_grad():
            features = _features_for_estimate(net, torch.zeros((PROBE,) + tuple(image_shape)))
    finally:
        for handle in handles:
            handle.remove()
        net.train(was_training)
    head_bytes = _head_rule(net, features)
    totals = {}
    for path in PATHS:
        ledger_total = sum(ledgers[path].values()) + head_bytes[path]
        totals[path] = ledger_total * batch_size / float(PROBE)
    if net.domain.backbone is not None:  # finetune runs on the plain path only
        totals["lean"] = totals["plain"]
    return totals


def _features_for_estimate(net: AdaptedNet, x: torch.Tensor) -> torch.Tensor:
    from device_agent.model.layers import RunContext

    domain = net.domain
    backbone = domain.backbone if domain.backbone is not None else net.backbone
    ctx = RunContext(lean=False, domain=domain, bn_train=domain.backbone is not None)
    return backbone(x, ctx)


def _head_rule(net: AdaptedNet, features: torch.Tensor) -> Dict[str, float]:
    """The linear layer's input, the log-softmax output and the dropout mask: stock CPU
    dropout keeps it as floats (``input * noise``), the lean one as bits."""
    head = net.domain.head
    numel = features.numel()
    fixed = 4.0 * (numel + head.classes)
    masked = features.requires_grad and head.dropout > 0
    if not masked:
        return {"plain": fixed, "lean": fixed, "minimum": fixed}
    return {"plain": fixed + 4.0 * numel, "lean": fixed + (numel + 7) // 8,
            "minimum": fixed + numel / 8.0}


def trainable_parameters(net: AdaptedNet) -> int:
    return sum(p.numel() for p in net.domain.trainable_parameters())


# --- peak memory of a training step, in a child process ---------------------------------

def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError("no %s in /proc/self/status" % field)


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_step_child(spec: Dict[str, object]) -> Dict[str, object]:
    """Runs inside the child: build, warm up, then one measured step."""
    from device_agent.model.builder import build_net
    from device_agent.training.step import make_optimizer, train_step

    torch.manual_seed(0)
    torch.set_num_threads(int(spec.get("threads", 2)))
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
    loaded = _rss_bytes("VmRSS")
    cuda = device.type == "cuda"
    for _ in range(2):  # warm-up: gradients and optimizer state become resident
        train_step(net, optimizer, images, labels, lean=lean, micro_batch=micro_batch)
    steady = _rss_bytes("VmRSS")
    if cuda:
        torch.cuda.synchronize()
        cuda_base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    reset = _reset_high_water_mark()
    train_step(net, optimizer, images, labels, lean=lean, micro_batch=micro_batch)
    peak = _rss_bytes("VmHWM")
    result = {"peak_step_mb": (peak - steady) / MB,  # above model + grads + optimizer state
              "peak_train_mb": (peak - loaded) / MB,  # above the freshly loaded model
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
    proc = subprocess.run([sys.executable, "-m", "device_agent.model.memory", json.dumps(spec)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                          timeout=timeout, text=True)
    if proc.returncode != 0:
        raise RuntimeError("peak measurement failed: %s" % proc.stderr.strip()[-500:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(peak_step_child(json.loads(sys.argv[1]))))


# --- the report behind `device-agent memory` ---------------------------------------------

def memory_report(backbone: str, resolution: int, batch_size: int, methods=None,
                  peak: bool = True, micro_batch: int = 0) -> list:
    """One row per method: measured / estimated / minimum saved activations, trainable
    parameters, ratio to finetune, and (with ``peak``) the step's peak RSS. Random weights:
    memory does not depend on weight values."""
    from device_agent.model.builder import build_net
    from device_agent.model.network import METHODS

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
                                         micro_batch=micro_batch))
            row.pop("hwm_reset", None)
        rows.append(row)
    finetune = next((r for r in rows if r["method"] == "finetune"), None)
    for row in rows:
        row["ratio_to_finetune"] = (finetune["saved_activation_mb"] / row["saved_activation_mb"]
                                    if finetune and row["saved_activation_mb"] else None)
    return rows
