"""The epoch loop: train one domain, evaluate, checkpoint, resume.

Adam with a cosine schedule computed from the global step (so resuming needs no scheduler
state), label smoothing, early stopping on validation top-1 (the best epoch's weights are
kept), and after every epoch an adapter-only checkpoint -- the domain's tensors, Adam's
moments and the RNG state in safetensors plus a JSON file -- that a killed run resumes
from, reproducing the uninterrupted run exactly on CPU. Memory: the batch is planned and
every step watched by ``memory_guard`` (micro-batches halve under pressure or on OOM).
"""
import hashlib
import json
import math
import os
import resource
import shutil
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch

from device_agent import atomic
from device_agent.errors import InvalidInput
from device_agent.faults import failpoint
from device_agent.model import safetensors_io
from device_agent.model.memory import measure_saved_bytes, trainable_parameters
from device_agent.model.network import AdaptedNet
from device_agent.training import data
from device_agent.training.memory_guard import MemoryWatch, is_out_of_memory, plan_batch
from device_agent.training.step import make_optimizer, train_step
from device_agent.training.threads import ThreadTuner, set_threads

DEFAULT_LR = {"finetune": 1e-4, "last": 3e-3, "bn_last": 1e-3, "tinytl_bias": 1e-3,
              "tinytl_lite_residual": 1e-3, "da2": 1e-3}
CHECKPOINT_DIR = "checkpoint"
LATENCY_WINDOW = 100  # steps behind the live p50/p95
Progress = Callable[[Dict[str, object]], None]


class TrainConfig(NamedTuple):
    epochs: int = 5
    batch_size: int = 8         # 0: "auto", the largest that fits the memory limit
    lr: float = 0.0             # 0: the method's default (DEFAULT_LR)
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    resolution: int = 0         # 0: the backbone's input size
    seed: int = 0
    lean: bool = True
    micro_batch: int = 0        # > 0: accumulate gradients over chunks of this size
    patience: int = 0           # early stopping after this many epochs without gain; 0: off
    crop_scale: Tuple[float, float] = (0.35, 1.0)
    hflip: bool = True
    val_fraction: float = 0.2
    device: str = "cpu"         # "cpu", "cuda", "cuda:N"
    memory_limit_mb: float = 0  # 0: MemAvailable less a reserve is the limit

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


def accuracy(net: AdaptedNet, batches, lean: bool = True,
             device: torch.device = torch.device("cpu")) -> Dict[str, float]:
    """Top-1 and top-5 (top-k for k classes < 5) over ``batches``."""
    net.eval()
    hits1 = hits5 = total = 0
    with torch.no_grad():
        for images, labels in batches:
            images, labels = images.to(device), labels.to(device)
            logits = net(images, lean=lean)
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits1 += (top[:, 0] == labels).sum().item()
            hits5 += (top == labels[:, None]).any(dim=1).sum().item()
            total += labels.shape[0]
    return {"top1": hits1 / max(total, 1), "top5": hits5 / max(total, 1)}


def peak_rss_mb() -> float:
    """This process's peak resident memory so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # Linux: KiB


def _cosine_lr(base: float, step: int, total: int) -> float:
    return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


class Trainer(object):
    """Trains the active domain of ``net`` on ``split``; ``out_dir`` holds the checkpoint."""

    def __init__(self, net: AdaptedNet, split: data.Split, config: TrainConfig, out_dir: str,
                 on_progress: Optional[Progress] = None,
                 tuner: Optional[ThreadTuner] = None) -> None:
        """``tuner``: picks this thread's intra-op count step by step (a shared CPU); None
        keeps the count in force (bit-reproducible)."""
        self.net = net
        self.split = split
        self.config = config.validate()
        self.out_dir = out_dir
        self.on_progress = on_progress or (lambda event: None)
        self.device = resolve_device(config.device)
        net.to(self.device)
        info = net.backbone_info
        self.resolution = config.resolution or int(info["input_size"])
        self.transforms = data.TransformSettings(self.resolution, info["mean"], info["std"],
                                                 tuple(config.crop_scale), config.hflip)
        self.lr = config.lr or DEFAULT_LR[net.domain.method.name]
        self.optimizer = make_optimizer(net, self.lr, config.weight_decay)
        self.history = []  # type: List[Dict[str, float]]
        self.best = (-1.0, None)  # type: Tuple[float, Optional[Dict[str, torch.Tensor]]]
        self.start_epoch = 0
        self.step_times = []  # type: List[float]
        self.batch_size = config.batch_size  # 0 until planned
        self.watch = None  # type: Optional[MemoryWatch]
        self.tuner = tuner

    # --- checkpoints -------------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> str:
        return os.path.join(self.out_dir, CHECKPOINT_DIR)

    def fingerprint(self) -> str:
        parts = {"config": self.config._asdict(), "classes": self.split.classes,
                 "train": [p for p, _ in self.split.train], "val": [p for p, _ in self.split.val],
                 "method": self.net.domain.method.name,
                 "backbone": self.net.backbone_info["weights_sha256"]}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()

    def save_checkpoint(self, epoch: int) -> None:
        tensors = {"domain." + k: v for k, v in self.net.domain.state_dict().items()}
        if self.best[1] is not None:
            tensors.update({"best." + k: v for k, v in self.best[1].items()})
        scalars = {}
        for index, state in self.optimizer.state_dict()["state"].items():
            for key, value in state.items():
                if torch.is_tensor(value):
                    tensors["optimizer.%s.%s" % (index, key)] = value
                else:
                    scalars["%s.%s" % (index, key)] = value
        tensors["rng"] = torch.get_rng_state()
        if self.device.type == "cuda":  # dropout masks on the GPU draw from CUDA's generator
            tensors["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        blob = safetensors_io.dumps(tensors)
        digest = hashlib.sha256(blob).hexdigest()
        # Tensors go to a new file named by their hash, and state.json -- written last,
        # atomically -- names it: a kill between the two leaves the previous checkpoint whole.
        tensors_file = "state-%s.safetensors" % digest[:16]
        atomic.write_bytes(os.path.join(self.checkpoint_dir, tensors_file), blob)
        failpoint("checkpoint.between_files")
        atomic.write_json(os.path.join(self.checkpoint_dir, "state.json"), {
            "fingerprint": self.fingerprint(), "epoch": epoch, "history": self.history,
            "best_top1": self.best[0], "optimizer_scalars": scalars,
            "batch_size": self.batch_size, "tensors_file": tensors_file,
            "tensors_sha256": digest})
        for name in os.listdir(self.checkpoint_dir):  # earlier epochs' tensors, now unnamed
            if name.startswith("state-") and name != tensors_file:
                os.unlink(os.path.join(self.checkpoint_dir, name))

    def try_resume(self) -> bool:
        """Continue from the checkpoint in ``out_dir`` if it belongs to this very run."""
        meta_path = os.path.join(self.checkpoint_dir, "state.json")
        if not os.path.isfile(meta_path):
            return False
        with open(meta_path, encoding="utf-8") as handle:
            meta = json.load(handle)
        if meta.get("fingerprint") != self.fingerprint():
            raise InvalidInput("%s holds a checkpoint of a different run; use another --out "
                               "or delete it" % self.checkpoint_dir)
        tensors_file = os.path.basename(str(meta.get("tensors_file", "")))
        if not tensors_file.startswith("state-"):
            raise InvalidInput("%s names no tensors file; delete %s" % (meta_path,
                                                                         self.checkpoint_dir))
        with open(os.path.join(self.checkpoint_dir, tensors_file), "rb") as handle:
            blob = handle.read()
        if hashlib.sha256(blob).hexdigest() != meta["tensors_sha256"]:
            raise InvalidInput("checkpoint tensors do not match state.json; delete %s"
                               % self.checkpoint_dir)
        tensors, _ = safetensors_io.loads(blob)
        self.net.domain.load_state_dict(_strip(tensors, "domain."))
        best = _strip(tensors, "best.")
        self.best = (float(meta["best_top1"]), best or None)
        self._load_optimizer(tensors, meta["optimizer_scalars"])
        torch.set_rng_state(tensors["rng"])
        if "rng_cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng_cuda"], self.device)
        self.history = list(meta["history"])
        self.start_epoch = int(meta["epoch"]) + 1
        self.batch_size = int(meta.get("batch_size") or self.batch_size)  # "auto" stays put
        return True

    def _load_optimizer(self, tensors: Dict[str, torch.Tensor], scalars: Dict[str, object]) -> None:
        state = {}  # type: Dict[int, Dict[str, object]]
        for key, value in list(_strip(tensors, "optimizer.").items()) + list(scalars.items()):
            index, field = key.split(".", 1)
            state.setdefault(int(index), {})[field] = value
        current = self.optimizer.state_dict()
        current["state"] = state
        self.optimizer.load_state_dict(current)

    # --- training ----------------------------------------------------------------------

    def plan_memory(self) -> Dict[str, object]:
        """Fix the batch size and micro-batch for the memory limit (before the first step)."""
        plan = plan_batch(self.net, (3, self.resolution, self.resolution), self.batch_size,
                          self.config.micro_batch, self.config.memory_limit_mb,
                          self.config.lean, len(self.split.train))
        self.batch_size = plan.batch_size
        self.watch = MemoryWatch(plan, self.device, can_split=self.net.domain.backbone is None)
        return plan.as_dict()

    def run(self) -> Dict[str, object]:
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
            if self._should_stop():
                break
        if self.best[1] is not None:
            self.net.domain.load_state_dict(self.best[1])
        return self._result(epochs_done, saved_mb, trained_images / max(train_seconds, 1e-9),
                            resumed)

    def _train_epoch(self, epoch: int, batches: int, total_steps: int) -> int:
        config = self.config
        transform = data.train_transform(self.transforms)
        loader = data.loader(self.split.train, transform, self.batch_size, shuffle=True,
                             seed=config.seed * 1000 + epoch)
        self.net.train()
        seen = 0
        for step, (images, labels) in enumerate(loader):
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
            batches = data.loader(self.split.val, data.eval_transform(self.transforms),
                                  self.watch.micro_batch * 2, shuffle=False)
            scores = accuracy(self.net, batches, lean=self.config.lean, device=self.device)
            metrics.update(val_top1=scores["top1"], val_top5=scores["top5"])
            if scores["top1"] > self.best[0]:
                state = self.net.domain.state_dict()
                self.best = (scores["top1"], {k: v.detach().clone() for k, v in state.items()})
        return metrics

    def _should_stop(self) -> bool:
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

    def _result(self, epochs: int, saved_mb: float, images_per_sec: float,
                resumed: bool) -> Dict[str, object]:
        last = self.history[-1] if self.history else {}
        times = sorted(self.step_times)
        return {
            "method": self.net.domain.method.name,
            "backbone": self.net.backbone_info["name"],
            "epochs": epochs, "resumed": resumed,
            "train_images": len(self.split.train), "val_images": len(self.split.val),
            "val_top1": self.best[0] if self.best[1] is not None else last.get("val_top1"),
            "trainable_params": trainable_parameters(self.net),
            "saved_activation_mb": saved_mb, "peak_rss_mb": peak_rss_mb(),
            "images_per_sec": images_per_sec,
            "step_ms_p50": 1000 * _quantile(times, 0.5),
            "step_ms_p95": 1000 * _quantile(times, 0.95),
            "resolution": self.resolution, "batch_size": self.batch_size,
            "micro_batch": self.watch.micro_batch, "memory_limit_mb": self.watch.plan.limit_or_none,
            "step_peak_rss_mb": self.watch.peak_rss_mb, "cuda_peak_mb": self.watch.cuda_peak_mb(),
            "memory_adjustments": self.watch.adjustments, "history": self.history,
        }

    def clear_checkpoint(self) -> None:
        shutil.rmtree(self.checkpoint_dir, ignore_errors=True)


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


def _strip(tensors: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
