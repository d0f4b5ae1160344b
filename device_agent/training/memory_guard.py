"""Keeping a training job inside its memory limit (Linux; Jetson's GPU shares system RAM).

Three layers, because no single one is a real cap on a Jetson:

1. **Plan** (before the first step): the analytic estimator predicts the job's peak above the
   resident worker (the step or the evaluation, whichever is larger, plus optimizer state,
   the best epoch, the checkpoint and one-time buffers); the batch size (``"auto"``) or the
   micro-batch is chosen so that the worker's whole RSS fits the limit. Nothing fits: a
   clear error.
2. **CUDA**: ``torch.cuda.set_per_process_memory_fraction`` caps PyTorch's allocator.
3. **Watch** (every step): the step's RSS high-water mark and the system's MemAvailable.
   Over the limit, or MemAvailable below the reserve: the following steps run at half the
   micro-batch. An out-of-memory error retries the step at half the micro-batch. Below one
   image: the job fails with :class:`MemoryBudgetExceeded`, and the worker lives on.
"""
from typing import Dict, Optional, Tuple

import torch

from device_agent.errors import MemoryBudgetExceeded
from device_agent.model.memory import (
    MB,
    JobMemoryEstimate,
    device_of,
    estimate_job_bytes,
    materialize,
)
from device_agent.model.network import AdaptedNet
from device_agent.procfs import kib_fields, status_kib

AUTO_BATCH_SIZES = (64, 48, 32, 24, 16, 12, 8, 6, 4, 2)
MIN_AVAILABLE_MB = 200.0  # leave this much for the OS, the API and the desktop


def rss_mb() -> Optional[float]:
    kib = status_kib("VmRSS")
    return kib * 1024 / MB if kib is not None else None


def step_peak_rss_mb() -> Optional[float]:
    """The RSS high-water mark since :func:`reset_peak_rss` (or since the process began)."""
    kib = status_kib("VmHWM")
    return kib * 1024 / MB if kib is not None else None


def reset_peak_rss() -> bool:
    """Restart the kernel's RSS high-water mark (``clear_refs``: Linux 4.0+)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def mem_available_mb(meminfo: str = "/proc/meminfo") -> Optional[float]:
    try:
        kib = kib_fields(meminfo).get("MemAvailable")
    except OSError:
        return None
    return kib * 1024 / MB if kib is not None else None


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's allocator (RuntimeError before torch 1.13, OutOfMemoryError after) or host."""
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class MemoryPlan(object):
    """What the planner decided: the batch, its micro-batch, and the numbers behind them."""

    def __init__(self, batch_size: int, micro_batch: int, limit_mb: float,
                 resident_mb: float, job: JobMemoryEstimate) -> None:
        self.batch_size = batch_size
        self.micro_batch = micro_batch
        self.limit_mb = limit_mb
        self.resident_mb = resident_mb
        self.job = job

    @property
    def job_mb(self) -> float:
        return self.job.total / MB

    @property
    def peak_mb(self) -> float:
        """The worker's whole RSS at its highest during the job, as planned."""
        return self.resident_mb + self.job_mb

    @property
    def limit_or_none(self) -> Optional[float]:
        return None if self.limit_mb == float("inf") else self.limit_mb

    def as_dict(self) -> Dict[str, object]:
        return {"batch_size": self.batch_size, "micro_batch": self.micro_batch,
                "memory_limit_mb": self.limit_or_none, "resident_mb": round(self.resident_mb, 1),
                "estimated_step_mb": round(self.job.step / MB, 1),
                "estimated_job_mb": round(self.job_mb, 1),
                "estimated_peak_mb": round(self.peak_mb, 1)}


def effective_limit_mb(limit_mb: float, resident_mb: float,
                       available_mb: Optional[float]) -> float:
    """The job's limit; without one, what the system can still give (MemAvailable less the
    reserve) on top of what the worker holds already."""
    if limit_mb > 0:
        return float(limit_mb)
    if available_mb is None:
        return float("inf")
    return resident_mb + max(available_mb - MIN_AVAILABLE_MB, 0.0)


def warm_up(net: AdaptedNet, image_shape: Tuple[int, int, int], lean: bool) -> None:
    """Create what the job's evaluation passes would (derived weights of the evaluation path)
    before the resident memory is read: it is the job's, but of fixed size. The estimator's
    probe does the same for the training path."""
    materialize(net, torch.zeros((1,) + tuple(image_shape), device=device_of(net)), lean)


def plan_batch(net: AdaptedNet, image_shape: Tuple[int, int, int], batch_size: int,
               micro_batch: int, limit_mb: float, lean: bool, train_images: int,
               resident_mb: Optional[float] = None,
               available_mb: Optional[float] = None) -> MemoryPlan:
    """Pick the batch (``batch_size`` 0 = auto) and micro-batch whose whole job fits: the
    worker's resident memory plus :func:`estimate_job_bytes` under the limit."""
    if resident_mb is None:
        warm_up(net, image_shape, lean)
    # One training-mode probe pass, before the resident memory is read; the estimate is
    # linear in the images a pass, so every candidate is this one scaled.
    per_image = estimate_job_bytes(net, image_shape, 1, lean)
    resident = rss_mb() if resident_mb is None else resident_mb
    resident = resident or 0.0
    available = mem_available_mb() if available_mb is None else available_mb
    limit = effective_limit_mb(limit_mb, resident, available)
    budget = limit - resident

    def job(images: int) -> JobMemoryEstimate:
        return per_image._replace(saved=per_image.saved * images,
                                  largest_activation=per_image.largest_activation * images)

    if batch_size <= 0:  # auto: the largest candidate that fits in one pass
        candidates = [b for b in AUTO_BATCH_SIZES if b <= max(train_images, 2)] or [2]
        for candidate in candidates:
            estimate = job(candidate)
            if estimate.total / MB <= budget:
                return MemoryPlan(candidate, 0, limit, resident, estimate)
        batch_size = candidates[-1]
    chunk = micro_batch if 0 < micro_batch < batch_size else batch_size
    can_split = net.domain.backbone is None  # finetune normalizes with batch statistics
    while True:
        estimate = job(chunk)
        needed = estimate.total / MB
        if needed <= budget:
            return MemoryPlan(batch_size, chunk if chunk < batch_size else 0, limit, resident,
                              estimate)
        if not can_split or chunk == 1:
            raise MemoryBudgetExceeded(
                "a training job needs about %.0f MB above the %.0f MB the worker holds, over "
                "the %.0f MB limit%s; lower the resolution or batch size, or raise "
                "memory_limit_mb" % (needed, resident, limit,
                                     "" if can_split else " (finetune cannot micro-batch)"))
        chunk = max(1, chunk // 2)


class MemoryWatch(object):
    """Per-step checks during training; the trainer halves its micro-batch when told."""

    def __init__(self, plan: MemoryPlan, device: torch.device, can_split: bool = True) -> None:
        self.plan = plan
        self.device = device
        self.can_split = can_split  # finetune normalizes with batch statistics: no splitting
        self.micro_batch = plan.micro_batch or plan.batch_size
        self.adjustments = []  # type: list
        self.peak_rss_mb = 0.0  # the highest step
        self.job_peak_rss_mb = 0.0  # the whole job: steps, evaluations, checkpoints
        self.can_reset = reset_peak_rss()
        if device.type == "cuda":
            cap_cuda_allocator(plan.limit_mb, device)

    def observe(self) -> float:
        """The worker's RSS high-water mark since the job began (what the plan must bound).
        Read before every reset, so what ran between steps (evaluation, checkpoints,
        predictions beside the job) counts too."""
        peak = step_peak_rss_mb() if self.can_reset else rss_mb()
        self.job_peak_rss_mb = max(self.job_peak_rss_mb, peak or 0.0)
        return self.job_peak_rss_mb

    def before_step(self) -> None:
        if self.can_reset:
            self.observe()
            reset_peak_rss()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def after_step(self) -> Optional[str]:
        """Checks the step just taken; returns why the micro-batch was halved, if it was."""
        peak = step_peak_rss_mb() if self.can_reset else rss_mb()
        self.peak_rss_mb = max(self.peak_rss_mb, peak or 0.0)
        self.observe()
        available = mem_available_mb()
        reason = None
        if peak is not None and peak > self.plan.limit_mb:
            reason = "step peak RSS %.0f MB over the %.0f MB limit" % (peak, self.plan.limit_mb)
        elif available is not None and available < MIN_AVAILABLE_MB:
            reason = "MemAvailable %.0f MB under the %.0f MB reserve" % (available,
                                                                        MIN_AVAILABLE_MB)
        if reason is not None:
            self.shrink(reason)
        return reason

    def shrink(self, reason: str) -> int:
        """Halve the micro-batch (for the retry and the steps after); none left: fail."""
        if self.micro_batch <= 1 or not self.can_split:
            raise MemoryBudgetExceeded("out of memory at a %s of %d image(s) (%s); lower the "
                                       "resolution or batch size, or raise the limit"
                                       % ("micro-batch" if self.can_split else "batch",
                                          self.micro_batch, reason))
        self.micro_batch = max(1, self.micro_batch // 2)
        self.adjustments.append({"micro_batch": self.micro_batch, "reason": reason})
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return self.micro_batch

    def cuda_peak_mb(self) -> Optional[float]:
        if self.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self.device) / MB


def cap_cuda_allocator(limit_mb: float, device: torch.device) -> Optional[float]:
    """Cap PyTorch's CUDA allocator at ``limit_mb``; returns the fraction set (None: no cap)."""
    if not limit_mb or limit_mb == float("inf"):
        return None
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = min(1.0, limit_mb * MB / float(total))
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction
