"""The epoch loop: train one domain, evaluate, checkpoint, resume.

Adam with a cosine schedule computed from the global step (so resuming needs no scheduler
state), label smoothing, early stopping on validation top-1 (the best epoch's weights are
kept), and after every epoch an adapter-only checkpoint (:mod:`.checkpoint`) that a
killed run resumes from, reproducing the uninterrupted run exactly on CPU. Memory: the
batch is planned and every step watched by ``memory_guard`` (micro-batches halve under
pressure or on OOM).
"""
import math
import resource
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch

from device_agent import classmetrics, jobspec
from device_agent.errors import InvalidInput
from device_agent.model.memory import evaluation_batch, measure_saved_bytes, trainable_parameters
from device_agent.model.network import AdaptedNet
from device_agent.training import checkpoint, data
from device_agent.training.memory_guard import MemoryWatch, is_out_of_memory, plan_batch
from device_agent.training.step import make_optimizer, train_step
from device_agent.training.threads import ThreadTuner, set_threads

DEFAULT_LR = {name: method.default_lr for name, method in jobspec.METHODS.items()}
LATENCY_WINDOW = 100  # steps behind the live p50/p95
MB = 1000000  # the trainer's measurements (memory_guard, model.memory) count 10^6 bytes
Progress = Callable[[Dict[str, object]], None]
StopCheck = Callable[[], bool]
_DEFAULT = {p.name: p.default for p in jobspec.PARAMS}


class TrainConfig(NamedTuple):
    """The trainer's settings: a job's :class:`~device_agent.jobspec.TrainParams` (defaults
    from there) plus what only a local run sets (device, lean, weight decay, crop scale)."""
    epochs: int = _DEFAULT["epochs"]
    batch_size: int = _DEFAULT["batch_size"]  # 0: "auto", the largest that fits the limit
    lr: float = 0.0             # 0: the method's default (DEFAULT_LR)
    weight_decay: float = 0.0
    label_smoothing: float = _DEFAULT["label_smoothing"]
    resolution: int = 0         # 0: the backbone's input size
    seed: int = _DEFAULT["seed"]
    lean: bool = True
    micro_batch: int = _DEFAULT["micro_batch"]  # > 0: accumulate gradients over chunks
    patience: int = _DEFAULT["patience"]  # early stopping after this many flat epochs; 0: off
    crop_scale: Tuple[float, float] = (0.35, 1.0)
    hflip: bool = _DEFAULT["hflip"]
    val_fraction: float = _DEFAULT["val_fraction"]
    device: str = "cpu"         # "cpu", "cuda", "cuda:N"
    memory_limit_mb: float = 0  # 0: MemAvailable less a reserve is the limit

    @classmethod
    def from_params(cls, params: jobspec.TrainParams, device: str,
                    lean: bool = True) -> "TrainConfig":
        """A job's parameters, their "the default" (None, "auto") as the trainer's zeros."""
        return cls(epochs=params.epochs, lr=params.lr or 0.0, seed=params.seed, lean=lean,
                   batch_size=0 if params.batch_size == "auto" else params.batch_size,
                   label_smoothing=params.label_smoothing, resolution=params.resolution or 0,
                   micro_batch=params.micro_batch, patience=params.patience,
                   hflip=params.hflip, val_fraction=params.val_fraction, device=device,
                   memory_limit_mb=params.memory_limit_mb or 0)

    def validate(self) -> "TrainConfig":
        checks = [(self.epochs >= 1, "epochs must be >= 1"),
                  (self.batch_size >= 0, "batch size must be >= 1 (or 0: auto)"),
                  (self.memory_limit_mb >= 0, "memory limit must be >= 0 MB"),
                  (self.lr >= 0 and math.isfinite(self.lr), "lr must be a finite number >= 0"),
                  (0 <= self.label_smoothing < 1, "label smoothing must be in [0, 1)"),
                  (self.resolution == 0 or 16 <= self.resolution <= 1024,
                   "resolution must be between 16 and 1024"),
                  (0 <= self.val_fraction < 1, "val fraction must be in [0, 1)"),
                  (self.micro_batch >= 0 and self.patience >= 0, "negative micro batch/patience")]
        for ok, message in checks:
            if not ok:
                raise InvalidInput(message)
        resolve_device(self.device)
        return self


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InvalidInput("unknown device %r" % name) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInput("device %r asked for, but CUDA is not available" % name)
    if device.type not in ("cpu", "cuda"):
        raise InvalidInput("device must be cpu, cuda or cuda:N, not %r" % name)
    return device


class Evaluation(NamedTuple):
    top1: float
    top5: float                      # top-k for k classes < 5
    confusion: classmetrics.Matrix   # [true][predicted], the top-1 predictions counted


def evaluate(net: AdaptedNet, batches, n_classes: int, lean: bool = True,
             device: torch.device = torch.device("cpu")) -> Evaluation:
    """Top-1, top-5 and the confusion matrix over ``batches``, from the same top-1
    predictions (so the matrix's diagonal share is the top-1, ties and all)."""
    net.eval()
    hits5 = 0
    labels_seen, predicted = [], []  # type: List[int], List[int]
    with torch.no_grad():
        for images, labels in batches:
            images, labels = images.to(device), labels.to(device)
            logits = net(images, lean=lean)
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits5 += (top == labels[:, None]).any(dim=1).sum().item()
            labels_seen.extend(labels.tolist())
            predicted.extend(top[:, 0].tolist())
    confusion = classmetrics.confusion_matrix(labels_seen, predicted, n_classes)
    total = max(len(labels_seen), 1)
    hits1 = sum(confusion[i][i] for i in range(n_classes))
    return Evaluation(hits1 / total, hits5 / total, confusion)


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux counts ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss_mb() -> float:
    return peak_rss_bytes() / MB


def _bytes(mb: Optional[float]) -> Optional[int]:
    return None if mb is None else int(round(mb * MB))


class Stopped(Exception):
    """``should_stop`` said so: the run ends before its last epoch (a cancelled job). The
    checkpoint of the last finished epoch stays where it was."""


def _cosine_lr(base: float, step: int, total: int) -> float:
    return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


class Trainer(object):
    """Trains the active domain of ``net`` on ``split``; ``out_dir`` holds the checkpoint."""

    def __init__(self, net: AdaptedNet, split: data.Split, config: TrainConfig, out_dir: str,
                 on_progress: Optional[Progress] = None,
                 tuner: Optional[ThreadTuner] = None,
                 should_stop: Optional[StopCheck] = None) -> None:
        """``tuner``: picks this thread's intra-op count step by step (a shared CPU); None
        keeps the count in force (bit-reproducible). ``should_stop``: asked before every
        step; True ends the run with :class:`Stopped`."""
        self.net = net
        self.split = split
        self.config = config.validate()
        self.out_dir = out_dir
        self.on_progress = on_progress or (lambda event: None)
        self.should_stop = should_stop or (lambda: False)
        self.device = resolve_device(config.device)
        net.to(self.device)
        spec = net.backbone_spec
        self.resolution = config.resolution or spec.input_size
        self.transforms = data.TransformSettings(self.resolution, spec.mean, spec.std,
                                                 tuple(config.crop_scale), config.hflip)
        self.lr = config.lr or DEFAULT_LR[net.domain.method.name]
        self.optimizer = make_optimizer(net, self.lr, config.weight_decay)
        self.history = []  # type: List[Dict[str, float]]
        self.best = (-1.0, None)  # type: Tuple[float, Optional[Dict[str, torch.Tensor]]]
        self.best_confusion = None  # type: Optional[classmetrics.Matrix]
        self.start_epoch = 0
        self.step_times = []  # type: List[float]
        self.batch_size = config.batch_size  # 0 until planned
        self.watch = None  # type: Optional[MemoryWatch]
        self.tuner = tuner
        self.checkpoint = checkpoint.Checkpoint(out_dir, self.fingerprint())

    # --- checkpoints -------------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> str:
        return self.checkpoint.directory

    def fingerprint(self) -> str:
        return checkpoint.fingerprint({
            "config": self.config._asdict(), "classes": self.split.classes,
            "train": [p for p, _ in self.split.train], "val": [p for p, _ in self.split.val],
            "method": self.net.domain.method.name,
            "backbone": self.net.backbone_spec.weights_sha256})

    def save_checkpoint(self, epoch: int) -> None:
        cuda = self.device.type == "cuda"
        self.checkpoint.save(checkpoint.Saved(
            epoch, self.history, self.best, self.net.domain.state_dict(),
            self.optimizer.state_dict()["state"], torch.get_rng_state(),
            torch.cuda.get_rng_state(self.device) if cuda else None, self.batch_size,
            None if self.best_confusion is None else classmetrics.to_cells(self.best_confusion)))

    def try_resume(self) -> bool:
        """Continue from the checkpoint in ``out_dir`` if it belongs to this very run."""
        saved = self.checkpoint.load()
        if saved is None:
            return False
        self.net.domain.load_state_dict(saved.domain_state)
        self.best = saved.best
        current = self.optimizer.state_dict()
        current["state"] = saved.optimizer_state
        self.optimizer.load_state_dict(current)
        torch.set_rng_state(saved.rng)
        if saved.rng_cuda is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(saved.rng_cuda, self.device)
        self.history = saved.history
        self.start_epoch = saved.epoch + 1
        self.batch_size = int(saved.batch_size or self.batch_size)  # "auto" stays put
        if saved.best_confusion is not None:
            self.best_confusion = classmetrics.from_cells(saved.best_confusion,
                                                          len(self.split.classes))
        return True

    # --- training ----------------------------------------------------------------------

    def plan_memory(self) -> Dict[str, object]:
        """Fix the batch size and micro-batch for the memory limit (before the first step)."""
        plan = plan_batch(self.net, (3, self.resolution, self.resolution), self.batch_size,
                          self.config.micro_batch, self.config.memory_limit_mb,
                          self.config.lean, len(self.split.train))
        self.batch_size = plan.batch_size
        self.watch = MemoryWatch(plan, self.device, can_split=self.net.domain.backbone is None)
        return plan.as_dict()

    def run(self) -> jobspec.JobReport:
        config = self.config
        resumed = self.try_resume()
        memory = self.plan_memory()
        batches = -(-len(self.split.train) // self.batch_size)
        self.clock = _Clock(batches * (config.epochs - self.start_epoch))
        saved_mb = self._saved_activation_mb()
        self.on_progress(dict(memory, event="start", saved_activation_mb=saved_mb,
                              epochs=config.epochs, steps=batches, resumed=resumed))
        trained_images, train_seconds = 0, 0.0
        epochs_done = self.start_epoch
        for epoch in range(self.start_epoch, config.epochs):
            started = time.time()
            trained_images += self._train_epoch(epoch, batches, batches * config.epochs)
            train_seconds += time.time() - started
            evaluated = time.time()
            metrics = self._evaluate(epoch)
            self.clock.evaluated(time.time() - evaluated, config.epochs - epoch - 1)
            self.history.append(metrics)
            self.on_progress(dict(metrics, event="epoch", epochs=config.epochs))
            epochs_done = epoch + 1
            self.save_checkpoint(epoch)
            if self._patience_ran_out():
                break
        if self.best[1] is not None:
            self.net.domain.load_state_dict(self.best[1])
        return self._report(epochs_done, saved_mb, memory,
                            trained_images / max(train_seconds, 1e-9), resumed)

    def _train_epoch(self, epoch: int, batches: int, total_steps: int) -> int:
        config = self.config
        transform = data.train_transform(self.transforms)
        loader = data.loader(self.split.train, transform, self.batch_size, shuffle=True,
                             seed=config.seed * 1000 + epoch)
        self.net.train()
        seen = 0
        for step, (images, labels) in enumerate(loader):
            if self.should_stop():
                raise Stopped()
            global_step = epoch * batches + step
            for group in self.optimizer.param_groups:
                group["lr"] = _cosine_lr(self.lr, global_step, total_steps)
            images, labels = images.to(self.device), labels.to(self.device)
            if self.tuner is not None:
                set_threads(self.tuner.threads())
            tick = time.time()
            loss = self._guarded_step(images, labels)
            self.step_times.append(time.time() - tick)
            if self.tuner is not None:
                self.tuner.record(self.step_times[-1], labels.shape[0])
            seen += labels.shape[0]
            self.clock.stepped()
            self.on_progress(self._step_event(epoch, step + 1, batches, loss, labels.shape[0]))
        return seen

    def _guarded_step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """One step under the memory watch; out of memory retries at half the micro-batch."""
        watch = self.watch
        while True:
            watch.before_step()
            try:
                loss = train_step(self.net, self.optimizer, images, labels, lean=self.config.lean,
                                  micro_batch=watch.micro_batch,
                                  label_smoothing=self.config.label_smoothing)
            except (RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc):
                    raise
                self.optimizer.zero_grad()
                watch.shrink("out of memory: %s" % str(exc).splitlines()[0][:200])
                self._announce_adjustment()
                continue
            if watch.after_step() is not None:
                self._announce_adjustment()
            return loss

    def _announce_adjustment(self) -> None:
        self.on_progress(dict(self.watch.adjustments[-1], event="memory_adjusted"))

    def _step_event(self, epoch: int, step: int, steps: int, loss: float,
                    images: int) -> Dict[str, object]:
        recent = sorted(self.step_times[-LATENCY_WINDOW:])
        event = {"event": "step", "epoch": epoch, "epochs": self.config.epochs,
                 "step": step, "steps": steps, "loss": loss,
                 "images_per_sec": images / max(self.step_times[-1], 1e-9),
                 "step_ms": 1000 * self.step_times[-1],
                 "step_ms_p50": 1000 * _quantile(recent, 0.5),
                 "step_ms_p95": 1000 * _quantile(recent, 0.95),
                 "eta_s": self.clock.eta_s(), "micro_batch": self.watch.micro_batch,
                 "batch_size": self.batch_size, "rss_mb": self.watch.peak_rss_mb}
        cuda_peak = self.watch.cuda_peak_mb()
        if cuda_peak is not None:
            event["cuda_peak_mb"] = cuda_peak
        return event

    def _evaluate(self, epoch: int) -> Dict[str, float]:
        metrics = {"epoch": epoch}  # type: Dict[str, float]
        if self.split.val:
            scores = self._evaluate_val()
            metrics.update(val_top1=scores.top1, val_top5=scores.top5)
            if scores.top1 > self.best[0]:
                state = self.net.domain.state_dict()
                self.best = (scores.top1, {k: v.detach().clone() for k, v in state.items()})
                self.best_confusion = scores.confusion
        return metrics

    def _evaluate_val(self) -> Evaluation:
        batches = data.loader(self.split.val, data.eval_transform(self.transforms),
                              evaluation_batch(self.watch.micro_batch), shuffle=False)
        return evaluate(self.net, batches, len(self.split.classes), lean=self.config.lean,
                        device=self.device)

    def _kept_confusion(self) -> Optional[List[classmetrics.Cell]]:
        """The kept epoch's confusion matrix as the report carries it (its non-zero cells);
        None without validation images, or past classmetrics.MAX_CELLS (the report must
        fit one protocol frame). A checkpoint of a release before per-class results has
        none: the kept weights, already loaded, are evaluated once more."""
        if self.best[1] is None or not self.split.val:
            return None
        if self.best_confusion is None:
            self.best_confusion = self._evaluate_val().confusion
        cells = classmetrics.to_cells(self.best_confusion)
        return cells if len(cells) <= classmetrics.MAX_CELLS else None

    def _patience_ran_out(self) -> bool:
        patience = self.config.patience
        if not patience or not self.split.val or len(self.history) <= patience:
            return False
        best_before = max(h["val_top1"] for h in self.history[:-patience])
        return all(h["val_top1"] <= best_before for h in self.history[-patience:])

    def _saved_activation_mb(self) -> float:
        """Saved activations of one training batch at this run's setting, measured."""
        # Measuring must not change the run's random stream: the augmentations below draw
        # from it too, so the state is taken before them (else a resumed run, which measures
        # again after restoring its checkpoint's state, would drift from an uninterrupted one).
        rng = torch.get_rng_state()
        rng_cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        try:
            count = min(self.batch_size, len(self.split.train))
            transform = data.train_transform(self.transforms)
            images = torch.stack([transform(data.load_rgb(p))
                                  for p, _ in self.split.train[:count]])
            labels = torch.tensor([label for _, label in self.split.train[:count]])
            images, labels = images.to(self.device), labels.to(self.device)
            self.net.train()
            return measure_saved_bytes(self.net, images, labels, self.config.lean) / 1e6
        finally:
            torch.set_rng_state(rng)
            if rng_cuda is not None:
                torch.cuda.set_rng_state(rng_cuda, self.device)

    def _report(self, epochs: int, saved_mb: float, plan: Dict[str, object],
                images_per_sec: float, resumed: bool) -> jobspec.JobReport:
        last = self.history[-1] if self.history else {}
        times = sorted(self.step_times)
        return jobspec.JobReport(
            method=self.net.domain.method.name, backbone=self.net.backbone_spec.name,
            classes=self.split.classes, epochs=epochs, resumed=resumed,
            train_images=len(self.split.train), val_images=len(self.split.val),
            val_top1=self.best[0] if self.best[1] is not None else last.get("val_top1"),
            trainable_params=trainable_parameters(self.net),
            resolution=self.resolution, batch_size=self.batch_size,
            micro_batch=self.watch.micro_batch,
            memory_limit_bytes=_bytes(self.watch.plan.limit_or_none),
            saved_activation_bytes=_bytes(saved_mb),
            estimated_peak_bytes=_bytes(plan.get("estimated_peak_mb")),
            step_peak_rss_bytes=_bytes(self.watch.peak_rss_mb),
            peak_rss_bytes=_bytes(self.watch.observe()),
            cuda_peak_bytes=_bytes(self.watch.cuda_peak_mb()),
            memory_adjustments=self.watch.adjustments,
            step_ms_p50=1000 * _quantile(times, 0.5), step_ms_p95=1000 * _quantile(times, 0.95),
            images_per_sec=images_per_sec, history=self.history,
            val_confusion=self._kept_confusion())

    def clear_checkpoint(self) -> None:
        self.checkpoint.clear()


def _quantile(ordered: List[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


class _Clock(object):
    """Estimated time left: the mean wall time per step so far (data loading included)
    times the steps left, plus the last evaluation's time per epoch left."""

    def __init__(self, total_steps: int) -> None:
        self.started = time.time()
        self.left = total_steps
        self.done = 0
        self.evaluation_s = 0.0

    def stepped(self) -> None:
        self.done += 1
        self.left -= 1

    def evaluated(self, seconds: float, epochs_left: int) -> None:
        self.started += seconds  # evaluation is not step time
        self.evaluation_s = seconds * epochs_left

    def eta_s(self) -> float:
        per_step = (time.time() - self.started) / max(self.done, 1)
        return max(self.left, 0) * per_step + self.evaluation_s
