"""The epoch loop: train one domain, evaluate, checkpoint, resume.

Adam with a cosine schedule computed from the global step (so resuming needs no scheduler
state), label smoothing, early stopping on validation top-1 (the best epoch's weights are
kept), and after every epoch an adapter-only checkpoint -- the domain's tensors, Adam's
moments and the RNG state in safetensors plus a JSON file -- that a killed run resumes
from, reproducing the uninterrupted run exactly on CPU.
"""
import hashlib
import json
import math
import os
import resource
import shutil
import time
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import torch

from device_agent.errors import InvalidInput
from device_agent.model import safetensors_io
from device_agent.model.memory import measure_saved_bytes, trainable_parameters
from device_agent.model.network import AdaptedNet
from device_agent.store import atomic
from device_agent.training import data
from device_agent.training.step import make_optimizer, train_step

DEFAULT_LR = {"finetune": 1e-4, "last": 3e-3, "bn_last": 1e-3, "tinytl_bias": 1e-3,
              "tinytl_lite_residual": 1e-3, "da2": 1e-3}
CHECKPOINT_DIR = "checkpoint"
Progress = Callable[[Dict[str, object]], None]


class TrainConfig(NamedTuple):
    epochs: int = 5
    batch_size: int = 8
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

    def validate(self) -> "TrainConfig":
        checks = [(self.epochs >= 1, "epochs must be >= 1"),
                  (self.batch_size >= 1, "batch size must be >= 1"),
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
                 on_progress: Optional[Progress] = None) -> None:
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
        atomic.write_bytes(os.path.join(self.checkpoint_dir, "state.safetensors"), blob)
        atomic.write_json(os.path.join(self.checkpoint_dir, "state.json"), {
            "fingerprint": self.fingerprint(), "epoch": epoch, "history": self.history,
            "best_top1": self.best[0], "optimizer_scalars": scalars,
            "tensors_sha256": hashlib.sha256(blob).hexdigest()})

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
        with open(os.path.join(self.checkpoint_dir, "state.safetensors"), "rb") as handle:
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

    def run(self) -> Dict[str, object]:
        config = self.config
        resumed = self.try_resume()
        train_batches = len(self.split.train) // config.batch_size + \
            (1 if len(self.split.train) % config.batch_size else 0)
        total_steps = train_batches * config.epochs
        saved_mb = self._saved_activation_mb()
        trained_images, train_seconds = 0, 0.0
        epochs_done = self.start_epoch
        for epoch in range(self.start_epoch, config.epochs):
            started = time.time()
            trained_images += self._train_epoch(epoch, train_batches, total_steps)
            train_seconds += time.time() - started
            metrics = self._evaluate(epoch)
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
        loader = data.loader(self.split.train, transform, config.batch_size, shuffle=True,
                             seed=config.seed * 1000 + epoch)
        self.net.train()
        seen = 0
        for step, (images, labels) in enumerate(loader):
            global_step = epoch * batches + step
            for group in self.optimizer.param_groups:
                group["lr"] = _cosine_lr(self.lr, global_step, total_steps)
            images, labels = images.to(self.device), labels.to(self.device)
            tick = time.time()
            loss = train_step(self.net, self.optimizer, images, labels, lean=config.lean,
                              micro_batch=config.micro_batch,
                              label_smoothing=config.label_smoothing)
            self.step_times.append(time.time() - tick)
            seen += labels.shape[0]
            self.on_progress({"event": "step", "epoch": epoch, "epochs": config.epochs,
                              "step": step + 1, "steps": batches, "loss": loss,
                              "images_per_sec": labels.shape[0] / max(self.step_times[-1], 1e-9)})
        return seen

    def _evaluate(self, epoch: int) -> Dict[str, float]:
        metrics = {"epoch": epoch}  # type: Dict[str, float]
        if self.split.val:
            batches = data.loader(self.split.val, data.eval_transform(self.transforms),
                                  self.config.batch_size * 2, shuffle=False)
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
        count = min(self.config.batch_size, len(self.split.train))
        transform = data.train_transform(self.transforms)
        images = torch.stack([transform(data.load_rgb(p)) for p, _ in self.split.train[:count]])
        labels = torch.tensor([label for _, label in self.split.train[:count]])
        images, labels = images.to(self.device), labels.to(self.device)
        rng = torch.get_rng_state()
        self.net.train()
        try:
            return measure_saved_bytes(self.net, images, labels, self.config.lean) / 1e6
        finally:
            torch.set_rng_state(rng)  # measuring must not change the run's random stream

    def _result(self, epochs: int, saved_mb: float, images_per_sec: float,
                resumed: bool) -> Dict[str, object]:
        last = self.history[-1] if self.history else {}
        times = sorted(self.step_times) or [0.0]
        return {
            "method": self.net.domain.method.name,
            "backbone": self.net.backbone_info["name"],
            "epochs": epochs, "resumed": resumed,
            "train_images": len(self.split.train), "val_images": len(self.split.val),
            "val_top1": self.best[0] if self.best[1] is not None else last.get("val_top1"),
            "trainable_params": trainable_parameters(self.net),
            "saved_activation_mb": saved_mb, "peak_rss_mb": peak_rss_mb(),
            "images_per_sec": images_per_sec,
            "step_ms_p50": 1000 * times[len(times) // 2],
            "step_ms_p95": 1000 * times[min(len(times) - 1, int(len(times) * 0.95))],
            "resolution": self.resolution, "history": self.history,
        }

    def clear_checkpoint(self) -> None:
        shutil.rmtree(self.checkpoint_dir, ignore_errors=True)


def _strip(tensors: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
