"""Exports cached per adapter content and exporter settings (torch side).

The cache key is a hash of the adapter's files, every setting that shapes the graph, and
the exporter's versions; a new version, an activation or a rollback names other adapter
files, so it reads another key: a stale export cannot be served by construction, whatever
the database says (the key never trusts a version number). A hit is checked against its
own export.json (the ONNX file's SHA-256) before it is served; a damaged entry is rebuilt.
"""
import hashlib
import json
import os
import shutil
import threading
import time
from typing import List, Optional, Sequence

from device_agent import __version__
from device_agent.errors import ArtifactError
from device_agent.export import onnx_export
from device_agent.export.onnx_export import ExportResult
from device_agent.manifest import sha256_of

KEEP_ENTRIES = 4  # exports kept per domain, least recently served dropped first


def exporter_versions() -> dict:
    import onnx
    import onnxruntime
    import torch

    return {"torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "device_agent": __version__}


def export_key(adapter_dir: str, input_norm: str, softmax: bool, opset: int,
               tolerance: float, batch_size: int = 1) -> str:
    settings = {"adapter_sha256": onnx_export.adapter_sha256(adapter_dir),
                "input_norm": input_norm, "softmax": bool(softmax), "opset": opset,
                "tolerance": tolerance, "batch_size": batch_size,
                "exporter": exporter_versions()}
    text = json.dumps(settings, sort_keys=True).encode("utf-8")
    return hashlib.sha256(text).hexdigest()[:32]


# One export at a time in a process: the worker's export request and the predict backends'
# background preparation may ask for the same entry at once, and two exporters writing one
# directory would race (one export also needs all of a small board's memory it can get).
_EXPORTING = threading.Lock()


def cached_export(adapter_dir: str, cache_root: str, *, input_norm: str = "builtin",
                  softmax: bool = True, opset: int = onnx_export.DEFAULT_OPSET,
                  parity_images: Optional[Sequence[str]] = None,
                  tolerance: float = onnx_export.DEFAULT_TOLERANCE,
                  batch_size: int = 1) -> ExportResult:
    """The export of ``adapter_dir`` under these settings: from ``cache_root`` when a
    verified entry is there, else exported (with its parity check) into it."""
    key = export_key(adapter_dir, input_norm, softmax, opset, tolerance, batch_size)
    target = os.path.join(cache_root, key)
    with _EXPORTING:
        hit = _verified(target)
        if hit is not None:
            os.utime(target)  # most recently served: kept longest
            return hit
        shutil.rmtree(target, ignore_errors=True)
        result = onnx_export.export_domain(adapter_dir, target, input_norm=input_norm,
                                           softmax=softmax, opset=opset,
                                           parity_images=parity_images, tolerance=tolerance,
                                           batch_size=batch_size)
        prune(cache_root, keep=KEEP_ENTRIES)
    return result


def _verified(target: str) -> Optional[ExportResult]:
    if not os.path.isdir(target):
        return None
    try:
        result = onnx_export.read_result(target)
        actual = sha256_of(result.onnx_path)
    except (ArtifactError, OSError, KeyError, TypeError):
        return None
    return result if actual == result.onnx_sha256 else None


def entries(cache_root: str) -> List[str]:
    """The cache's entries (key directories), least recently served first."""
    if not os.path.isdir(cache_root):
        return []
    paths = [os.path.join(cache_root, name) for name in os.listdir(cache_root)
             if not name.startswith(".")]
    return sorted((p for p in paths if os.path.isdir(p)), key=os.path.getmtime)


def prune(cache_root: str, keep: int) -> None:
    """Drop all but the ``keep`` most recently served entries, and staging left by a crash
    (hidden directories over an hour old)."""
    for path in entries(cache_root)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    for name in os.listdir(cache_root):
        path = os.path.join(cache_root, name)
        if name.startswith(".") and time.time() - os.path.getmtime(path) > 3600:
            shutil.rmtree(path, ignore_errors=True)
