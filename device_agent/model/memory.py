"""Training memory: measured, estimated, and the theoretical minimum.

- :func:`measure_saved_bytes` counts what autograd really keeps for backward, exactly, with
  ``saved_tensors_hooks`` (unique storages; parameters and buffers excluded).
- :func:`estimate_saved_bytes` is an analytic model in the spirit of TinyTL's profiler: a
  probe pass records shapes, every stage applies its per-path rule (``activation_rule``:
  what stock autograd keeps, what the lean path keeps, what backward needs at minimum),
  and the sum is scaled by the batch size.

Peak memory of whole training steps is measured by ``device_agent.training.profile``.
"""
import itertools
from typing import Dict, NamedTuple, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from device_agent.model.network import AdaptedNet

PATHS = ("plain", "lean", "minimum")
PROBE = 2  # the estimator's probe batch
MB = 1e6
# A step's transient memory beyond what autograd keeps: the output being computed, the
# gradient flowing back and the next one, each at most the largest activation. Calibrated
# against measured step peaks (tests/test_memory.py checks the estimate brackets them).
WORKSPACE_ACTIVATIONS = 4.0


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
    shape-recording pass at batch 2 (train-mode BN needs two samples), scaled linearly.
    Also ``largest_activation``: the biggest single output, which bounds a step's working
    memory (see :func:`estimate_step_bytes`)."""
    ledgers = {path: {} for path in PATHS}  # type: Dict[str, Dict[object, float]]
    keep_alive = []  # probe tensors stay referenced so storage addresses stay unique
    largest = [0]

    def hook(module, inputs, output):
        keep_alive.extend([inputs[0], output])
        largest[0] = max(largest[0], output.numel() * output.element_size())
        for path, key, nbytes in module.activation_rule(inputs[0], output, inputs[1]):
            ledgers[path][_ledger_key(key, module)] = nbytes

    ruled = [m for m in net.modules() if hasattr(m, "activation_rule")]
    handles = [m.register_forward_hook(hook) for m in ruled]
    was_training = net.training
    net.train()
    try:
        with torch.enable_grad():
            probe = torch.zeros((PROBE,) + tuple(image_shape), device=device_of(net))
            features = _features_for_estimate(net, probe)
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
    totals["largest_activation"] = largest[0] * batch_size / float(PROBE)
    return totals


def estimate_step_bytes(net: AdaptedNet, image_shape: Tuple[int, int, int], batch_size: int,
                        lean: bool = True) -> float:
    """A training step's peak above the resident model: what autograd keeps plus the
    working set of the largest layer. Decides ``batch_size="auto"`` and micro-batching."""
    estimate = estimate_saved_bytes(net, image_shape, batch_size)
    saved = estimate["lean" if lean else "plain"]
    return saved + WORKSPACE_ACTIVATIONS * estimate["largest_activation"]


# A whole job in the worker, beyond its steps: calibrated against the worker's RSS high-water
# mark over real jobs (benchmarks/memory_plan.py; docs/benchmarks-memory-plan.md). Only a part
# is live at once, but the job's passes of different sizes (the estimator's probe, the
# saved-activation measurement, steps, a last partial batch, evaluations at twice the batch)
# leave their blocks on the C heap, which glibc does not hand back (malloc_trim did not help
# either), so the whole-RSS peak grows with the widest layer far beyond one step's needs.
EVAL_BATCH_FACTOR = 2  # evaluation runs no-grad forwards at twice the training micro-batch
HEAP_ACTIVATIONS = 28.0  # the passes' heap, in largest activations of the micro-batch
SAVED_COPIES = 2.0  # the measurement pass's saved tensors, then a step's, in other blocks
# Per trainable parameter byte: its gradient, Adam's two moments, the best epoch's copy, and
# the checkpoint's blob of all four.
STATE_COPIES = 8.0


class JobMemoryEstimate(NamedTuple):
    """A training job's peak above the worker's resident memory at planning, in bytes."""
    saved: float  # what autograd keeps for one micro-batch
    largest_activation: float  # the widest layer's output at the micro-batch
    trainable: float  # bytes of trainable parameters

    @property
    def step(self) -> float:
        """One step in isolation: what autograd keeps plus the widest layer's working set."""
        return self.saved + WORKSPACE_ACTIVATIONS * self.largest_activation

    @property
    def total(self) -> float:
        return (SAVED_COPIES * self.saved + HEAP_ACTIVATIONS * self.largest_activation
                + STATE_COPIES * self.trainable)


def evaluation_batch(micro_batch: int) -> int:
    return EVAL_BATCH_FACTOR * micro_batch


def estimate_job_bytes(net: AdaptedNet, image_shape: Tuple[int, int, int], micro_batch: int,
                       lean: bool = True) -> JobMemoryEstimate:
    """What a whole job adds to the worker's RSS when it trains at ``micro_batch`` images a
    pass (``total``), and what one of its steps needs (``step``). Decides
    ``batch_size="auto"`` and micro-batching."""
    estimate = estimate_saved_bytes(net, image_shape, micro_batch)
    return JobMemoryEstimate(saved=estimate["lean" if lean else "plain"],
                             largest_activation=estimate["largest_activation"],
                             trainable=4.0 * trainable_parameters(net))


def device_of(net: AdaptedNet) -> torch.device:
    """Where the net's weights are (the probe's input goes there too: a job on CUDA)."""
    return next(itertools.chain(net.parameters(), net.buffers())).device


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
