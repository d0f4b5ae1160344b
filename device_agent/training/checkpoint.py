"""Adapter-only checkpoints of one training run, written after every epoch.

The domain's tensors, the best epoch's tensors, Adam's moments and the RNG state go into a
safetensors file named by its hash; ``state.json`` -- written last, atomically -- names that
file and holds the rest (epoch, history, Adam's scalars, the batch size). A kill between
the two leaves the previous checkpoint whole, and a killed run resumes from it, reproducing
the uninterrupted run exactly on CPU. A checkpoint belongs to one run: its fingerprint
(config, data, method, backbone weights) must match, or resuming is refused.
"""
import hashlib
import json
import os
import shutil
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch

from device_agent import atomic
from device_agent.errors import InvalidInput
from device_agent.faults import failpoint
from device_agent.model import safetensors_io

CHECKPOINT_DIR = "checkpoint"
Tensors = Dict[str, torch.Tensor]


class Saved(NamedTuple):
    """What a checkpoint restores."""
    epoch: int                               # the last finished epoch
    history: List[Dict[str, float]]
    best: Tuple[float, Optional[Tensors]]    # the best top-1 and its domain tensors
    domain_state: Tensors
    optimizer_state: Dict[int, Dict[str, object]]
    rng: torch.Tensor
    rng_cuda: Optional[torch.Tensor]
    batch_size: Optional[int]                # as planned ("auto" resolved)
    # the best epoch's confusion matrix, its non-zero [true, predicted, count] cells
    best_confusion: Optional[List[List[int]]] = None


def fingerprint(parts: Dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()


class Checkpoint(object):
    def __init__(self, out_dir: str, run_fingerprint: str) -> None:
        self.directory = os.path.join(out_dir, CHECKPOINT_DIR)
        self.fingerprint = run_fingerprint

    def save(self, saved: Saved) -> None:
        tensors = {"domain." + k: v for k, v in saved.domain_state.items()}
        if saved.best[1] is not None:
            tensors.update({"best." + k: v for k, v in saved.best[1].items()})
        scalars = {}
        for index, state in saved.optimizer_state.items():
            for key, value in state.items():
                if torch.is_tensor(value):
                    tensors["optimizer.%s.%s" % (index, key)] = value
                else:
                    scalars["%s.%s" % (index, key)] = value
        tensors["rng"] = saved.rng
        if saved.rng_cuda is not None:  # dropout masks on the GPU draw from CUDA's generator
            tensors["rng_cuda"] = saved.rng_cuda
        blob = safetensors_io.dumps(tensors)
        digest = hashlib.sha256(blob).hexdigest()
        tensors_file = "state-%s.safetensors" % digest[:16]
        atomic.write_bytes(os.path.join(self.directory, tensors_file), blob)
        failpoint("checkpoint.between_files")
        atomic.write_json(os.path.join(self.directory, "state.json"), {
            "fingerprint": self.fingerprint, "epoch": saved.epoch, "history": saved.history,
            "best_top1": saved.best[0], "optimizer_scalars": scalars,
            "batch_size": saved.batch_size, "best_confusion": saved.best_confusion,
            "tensors_file": tensors_file,
            "tensors_sha256": digest})
        for name in os.listdir(self.directory):  # earlier epochs' tensors, now unnamed
            if name.startswith("state-") and name != tensors_file:
                os.unlink(os.path.join(self.directory, name))

    def load(self) -> Optional[Saved]:
        """The checkpoint of this very run, or None when there is none."""
        meta_path = os.path.join(self.directory, "state.json")
        if not os.path.isfile(meta_path):
            return None
        with open(meta_path, encoding="utf-8") as handle:
            meta = json.load(handle)
        if meta.get("fingerprint") != self.fingerprint:
            raise InvalidInput("%s holds a checkpoint of a different run; use another --out "
                               "or delete it" % self.directory)
        tensors_file = os.path.basename(str(meta.get("tensors_file", "")))
        if not tensors_file.startswith("state-"):
            raise InvalidInput("%s names no tensors file; delete %s" % (meta_path,
                                                                         self.directory))
        with open(os.path.join(self.directory, tensors_file), "rb") as handle:
            blob = handle.read()
        if hashlib.sha256(blob).hexdigest() != meta["tensors_sha256"]:
            raise InvalidInput("checkpoint tensors do not match state.json; delete %s"
                               % self.directory)
        tensors, _ = safetensors_io.loads(blob)
        best = _strip(tensors, "best.")
        return Saved(int(meta["epoch"]), list(meta["history"]),
                     (float(meta["best_top1"]), best or None), _strip(tensors, "domain."),
                     _optimizer_state(tensors, meta["optimizer_scalars"]), tensors["rng"],
                     tensors.get("rng_cuda"), meta.get("batch_size"), meta.get("best_confusion"))

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _optimizer_state(tensors: Tensors, scalars: Dict[str, object]) -> Dict[int, Dict[str, object]]:
    state = {}  # type: Dict[int, Dict[str, object]]
    for key, value in list(_strip(tensors, "optimizer.").items()) + list(scalars.items()):
        index, field = key.split(".", 1)
        state.setdefault(int(index), {})[field] = value
    return state


def _strip(tensors: Tensors, prefix: str) -> Tensors:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
