"""Which runtime answers a prediction: ``torch`` (eager, the default), ``onnxruntime`` (the
domain's ONNX export) or ``tensorrt`` (an FP16 engine built from that export, on CUDA).

The daemon picks one (``device-agent serve --predict-backend``, or
``DEVICE_AGENT_PREDICT_BACKEND``; the worker reads the variable). A backend that cannot run
here -- its module missing, no CUDA for TensorRT -- falls back to torch with a logged reason,
and so does one domain whose export fails (a method the exporter refuses, parity over the
tolerance), or is still being prepared: a prediction is always answered, and its reply names
the backend that answered.

Exports are those of the domain's export cache (``domains/<d>/exports/``, keyed by the
adapter's content and the exporter settings: device_agent.export.cache), engines are cached
per exported graph (``domains/<d>/engines/``, keyed again inside: export/tensorrt.py), and
a loaded runtime is reused only for the adapter directory it was made from; so a new
version, an activation or a rollback runs the matching export, never an old one.
Python 3.6 compatible: onnxruntime 1.10 and TensorRT 8.0/8.2 (JetPack 4.6) have Python 3.6
builds.
"""
import logging
import os
import threading
from collections import OrderedDict
from typing import Callable, Dict, List, NamedTuple, Tuple

import numpy as np
import torch
from PIL import Image

from device_agent.export.tensorrt import build_engine
from device_agent.training import data
from device_agent.training.inference import classify
from device_agent.training.threads import set_threads

BACKENDS = ("torch", "onnxruntime", "tensorrt")
PREDICT_BACKEND_ENV = "DEVICE_AGENT_PREDICT_BACKEND"
CACHED_MODELS = 8  # loaded sessions/engines, least recently used dropped first
KEPT_ENGINES = 4  # engine directories kept per domain on disk (as the export cache keeps)

log = logging.getLogger(__name__)
Tops = List[List[Dict[str, object]]]


class Answer(NamedTuple):
    tops: Tops
    backend: str          # the backend that answered


class BackendChoice(NamedTuple):
    requested: str
    active: str
    reason: str           # why active differs from requested ("" when it does not)


def requested_backend(environ: Dict[str, str]) -> str:
    return environ.get(PREDICT_BACKEND_ENV, "").strip().lower() or "torch"


def choose_backend(requested: str, device: torch.device) -> BackendChoice:
    """``requested`` where this machine can run it, else torch and the reason."""
    if requested not in BACKENDS:
        return BackendChoice(requested, "torch", "unknown predict backend %r (one of %s)"
                             % (requested, ", ".join(BACKENDS)))
    missing = _missing_requirement(requested, device)
    if missing:
        return BackendChoice(requested, "torch", missing)
    return BackendChoice(requested, requested, "")


def _missing_requirement(backend: str, device: torch.device) -> str:
    if backend == "onnxruntime" and _optional_module("onnxruntime") is None:
        return "onnxruntime is not installed (pip install onnxruntime)"
    if backend == "tensorrt":
        if _optional_module("tensorrt") is None:
            return "the tensorrt Python module does not import (JetPack: python3-libnvinfer)"
        if device.type != "cuda":
            return "TensorRT runs on CUDA and the worker's device is %s" % device
    return ""


def _optional_module(name: str):
    try:
        return __import__(name)
    except Exception:  # ImportError, or a broken install failing to load its libraries
        return None


def domain_dir(adapter_dir: str) -> str:
    """``domains/<d>`` of an adapter version at ``domains/<d>/adapters/<version>``."""
    return os.path.dirname(os.path.dirname(os.path.abspath(adapter_dir)))


def export_cache_root(adapter_dir: str) -> str:
    """The domain's export cache, shared with GET /v1/domains/{d}/export: the backends run
    its default export (builtin normalisation, softmax, opset 13, batch 1), keyed by the
    adapter's content (device_agent.export.cache), so no other version can match it."""
    return os.path.join(domain_dir(adapter_dir), "exports")


def engine_cache_dir(adapter_dir: str, onnx_sha256: str) -> str:
    """One engine directory per exported graph, beside the exports (the export cache
    prunes its own directory)."""
    return os.path.join(domain_dir(adapter_dir), "engines", onnx_sha256[:32])


def unit_range_batch(config: Dict[str, object], images: List[Image.Image]) -> np.ndarray:
    """The export's input: the evaluation crop of :func:`classify`, RGB in [0, 1] NCHW
    (the graph applies the backbone's mean and std itself)."""
    settings = data.TransformSettings(int(config["input_size"]), [0.0, 0.0, 0.0],
                                      [1.0, 1.0, 1.0])
    transform = data.eval_transform(settings)
    return np.stack([transform(data.to_rgb(image)).numpy() for image in images])


def top_k(probabilities: np.ndarray, names: List[str], k: int) -> Tops:
    """The reply of :func:`classify`, from a (images, classes) array of probabilities."""
    k = min(k, probabilities.shape[1])
    tops = []
    for row in probabilities:
        best = np.argsort(-row, kind="stable")[:k]
        tops.append([{"class": names[i], "probability": round(float(row[i]), 6)}
                     for i in best])
    return tops


# --- runtimes ---------------------------------------------------------------------------

class OnnxRuntimeModel(object):
    """An onnxruntime session on the CPU. A fixed batch of 1 (the export jetson-inference
    needs) runs image by image; a dynamic batch dimension runs the batch at once."""

    def __init__(self, onnx_path: str, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        # Idle threads sleep instead of spinning: the CPU is shared with a training job
        # (onnxruntime docs, "Thread management": session.intra_op.allow_spinning).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(onnx_path, options,
                                                    providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0]
        self.fixed_batch = self.input.shape[0] if isinstance(self.input.shape[0], int) else 0

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        chunk = self.fixed_batch or len(batch)
        outputs = [self.session.run(None, {self.input.name: batch[i:i + chunk]})[0]
                   for i in range(0, len(batch), chunk)]
        return np.concatenate(outputs).astype(np.float32)


class TensorRTModel(object):
    """A serialized engine run on the worker's CUDA device, with torch tensors as the
    buffers (no pycuda needed). TensorRT 8.5+ names tensors (execute_async_v3); older
    versions take a list of bindings (execute_async_v2)."""

    def __init__(self, engine_path: str, device: torch.device) -> None:
        import tensorrt as trt

        self.device = device
        self.logger = trt.Logger(trt.Logger.WARNING)
        with open(engine_path, "rb") as handle:
            self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(handle.read())
        if self.engine is None:
            raise RuntimeError("TensorRT could not load %s" % engine_path)
        self.context = self.engine.create_execution_context()
        self.input_name, self.output_name = "input_0", "output_0"  # the exporter's names
        self.named = hasattr(self.context, "execute_async_v3")

    def _shape(self, name: str) -> Tuple[int, ...]:
        if self.named:
            return tuple(self.engine.get_tensor_shape(name))
        return tuple(self.engine.get_binding_shape(self.engine.get_binding_index(name)))

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        input_shape, output_shape = self._shape(self.input_name), self._shape(self.output_name)
        outputs = []
        for start in range(0, len(batch), input_shape[0]):
            chunk = torch.from_numpy(batch[start:start + input_shape[0]])
            outputs.append(self._run(chunk, output_shape)[:len(chunk)])
        return np.concatenate(outputs)

    def _run(self, chunk: torch.Tensor, output_shape: Tuple[int, ...]) -> np.ndarray:
        inputs = torch.zeros(self._shape(self.input_name), dtype=torch.float32,
                             device=self.device)
        inputs[:len(chunk)] = chunk.to(self.device)
        outputs = torch.empty(output_shape, dtype=torch.float32, device=self.device)
        # the worker's CUDA stream (host buffers, which only a fake engine in the tests can
        # read, have none: 0)
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        handle = stream.cuda_stream if stream is not None else 0
        if self.named:
            self.context.set_tensor_address(self.input_name, inputs.data_ptr())
            self.context.set_tensor_address(self.output_name, outputs.data_ptr())
            ok = self.context.execute_async_v3(handle)
        else:
            bindings = [0] * self.engine.num_bindings
            bindings[self.engine.get_binding_index(self.input_name)] = inputs.data_ptr()
            bindings[self.engine.get_binding_index(self.output_name)] = outputs.data_ptr()
            ok = self.context.execute_async_v2(bindings, handle)
        if stream is not None:
            stream.synchronize()
        if not ok:
            raise RuntimeError("TensorRT failed to run the engine")
        return outputs.cpu().numpy()


# --- the worker's entry point -------------------------------------------------------------

class Loading(object):
    """An export (and engine) being prepared for one adapter version, in a thread."""

    def __init__(self, adapter_dir: str) -> None:
        self.adapter_dir = adapter_dir
        self.done = threading.Event()
        self.model = None  # the runtime (OnnxRuntimeModel or TensorRTModel) once ready
        self.error = ""


class PredictBackends(object):
    """The worker's predictions through the chosen backend, with per-domain fallback.

    A domain's export is prepared in a background thread the first time it is asked for
    (an export and its parity run take a minute on a Nano, longer than a predict request
    may wait); torch answers meanwhile. One at a time, and never while ``busy()`` (a
    training job: a second backbone and the exporter's trace would crowd a 4 GB board)."""

    def __init__(self, requested: str, device: torch.device, threads: int,
                 busy: Callable[[], bool] = lambda: False, background: bool = True) -> None:
        self.choice = choose_backend(requested, device)
        self.device = device
        self.threads = threads
        self.busy = busy
        self.background = background
        self.models = OrderedDict()  # domain -> (adapter_dir, model), least recent first
        self.refused = {}  # type: Dict[str, Tuple[str, str]]  # domain -> (adapter_dir, why)
        self.loading = {}  # type: Dict[str, Loading]
        if self.choice.reason:
            log.warning("predict backend %s unavailable, using torch: %s",
                        requested, self.choice.reason)

    @classmethod
    def from_environ(cls, device: torch.device, threads: int,
                     busy: Callable[[], bool] = lambda: False) -> "PredictBackends":
        return cls(requested_backend(dict(os.environ)), device, threads, busy)

    def as_dict(self) -> Dict[str, object]:
        return dict(self.choice._asdict(), preparing=sorted(self.loading))

    def classify(self, domain: str, adapter_dir: str, net: torch.nn.Module,
                 config: Dict[str, object], images: List[Image.Image], k: int) -> Answer:
        model = self._model(domain, adapter_dir)
        if model is None:
            return Answer(classify(net, config, images, k, self.device), "torch")
        probabilities = model.probabilities(unit_range_batch(config, images))
        return Answer(top_k(probabilities, list(config["class_names"]), k), self.choice.active)

    def forget(self, domain: str) -> None:
        self.models.pop(domain, None)
        self.refused.pop(domain, None)
        self.loading.pop(domain, None)  # a thread still running finishes into nothing

    def _model(self, domain: str, adapter_dir: str):
        """The domain's loaded runtime, or None: predict with torch."""
        if self.choice.active == "torch" or self.refused.get(domain, ("",))[0] == adapter_dir:
            return None
        cached = self.models.get(domain)
        if cached is not None and cached[0] == adapter_dir:
            self.models.move_to_end(domain)
            return cached[1]
        loading = self.loading.get(domain)
        if loading is None or loading.adapter_dir != adapter_dir:  # a newer version wins
            if not self._start(domain, adapter_dir):
                return None
            loading = self.loading[domain]
        if not loading.done.is_set():
            return None
        del self.loading[domain]
        if loading.error:
            self.refused[domain] = (adapter_dir, loading.error)
            log.warning("domain %s runs on torch, not %s: %s", domain, self.choice.active,
                        loading.error)
            return None
        self.models[domain] = (adapter_dir, loading.model)
        while len(self.models) > CACHED_MODELS:
            self.models.popitem(last=False)
        return loading.model

    def _start(self, domain: str, adapter_dir: str) -> bool:
        """Begin preparing ``adapter_dir`` unless a job runs or another one is under way."""
        if self.busy() or any(not other.done.is_set() for other in self.loading.values()):
            return False
        loading = self.loading[domain] = Loading(adapter_dir)
        if not self.background:
            self._prepare(loading)
            return True
        log.warning("preparing the %s export of domain %s; torch answers meanwhile",
                    self.choice.active, domain)
        threading.Thread(target=self._prepare, args=(loading,), daemon=True,
                         name="export-" + domain).start()
        return True

    def _prepare(self, loading: Loading) -> None:
        set_threads(self.threads)  # a new thread: its OpenMP team starts from defaults
        try:
            loading.model = self._load(loading.adapter_dir)
        except Exception as exc:  # an export refused, an engine not built: torch answers
            loading.error = "%s: %s" % (type(exc).__name__, exc)
        finally:
            loading.done.set()

    def _load(self, adapter_dir: str):
        from device_agent.export.cache import cached_export, prune

        export = cached_export(adapter_dir, export_cache_root(adapter_dir))
        if self.choice.active == "onnxruntime":
            return OnnxRuntimeModel(export.onnx_path, self.threads)
        engines = engine_cache_dir(adapter_dir, export.onnx_sha256)
        result = build_engine(export.onnx_path, engines, "fp16")
        if not result.available:
            raise RuntimeError(result.reason)
        os.utime(engines)  # most recently used: kept longest
        prune(os.path.dirname(engines), keep=KEPT_ENGINES)
        return TensorRTModel(str(result.engine_path), self.device)
