"""A TensorRT engine built from an exported ``model.onnx`` on the device, cached by what it
depends on.

A serialized engine is only valid for the TensorRT version and the GPU it was built with
(TensorRT developer guide, "Serialized engines are not portable across platforms or
TensorRT versions": https://docs.nvidia.com/deeplearning/tensorrt/developer-guide/
index.html#serial_model_c), and a stale ``.engine`` file beside a re-exported model keeps
serving the old model (jetson-inference only rebuilds when the engine file is missing).
So an engine is reused only when its key -- the ONNX file's SHA-256, the TensorRT version,
the precision and the GPU name -- equals the key written beside it; any difference
rebuilds. The engine is written first and the key last, both atomically, and the key
records the engine's own SHA-256, so a crash between the two writes (or a torn copy) is a
miss, never a wrong engine.

The builder is the ``tensorrt`` Python module when it imports, else ``trtexec`` on PATH
(JetPack puts it in /usr/src/tensorrt/bin). Where neither exists the result says so
(``status == "unavailable"`` with a reason) instead of raising: CI machines and laptops
have no TensorRT. Python 3.6 compatible (JetPack 4), stdlib only at import time.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, List, NamedTuple, Optional, Tuple

from device_agent import atomic
from device_agent.errors import EngineBuildFailed
from device_agent.manifest import sha256_of

PRECISIONS = ("fp16", "fp32")
BUILDERS = ("auto", "python", "trtexec")
TRTEXEC_ENV = "DEVICE_AGENT_TRTEXEC"  # a trtexec outside PATH
# JetPack installs trtexec here without putting it on PATH.
TRTEXEC_FALLBACK = "/usr/src/tensorrt/bin/trtexec"
BUILD_TIMEOUT_S = 3600.0  # an FP16 build of a small CNN takes minutes on a Nano, not hours
WORKSPACE_BYTES = 256 << 20  # a Nano has 4 GB shared with the CPU
KEY_VERSION = 1
LOG_TAIL_CHARS = 2000


class EngineKey(NamedTuple):
    """Everything a serialized engine depends on; any difference means another engine."""
    onnx_sha256: str
    tensorrt_version: str
    precision: str
    gpu_name: str

    def as_dict(self) -> dict:
        return {"key_version": KEY_VERSION, "onnx_sha256": self.onnx_sha256,
                "tensorrt_version": self.tensorrt_version, "precision": self.precision,
                "gpu_name": self.gpu_name}


class EngineResult(NamedTuple):
    status: str                    # "built", "cached" or "unavailable"
    reason: str                    # why unavailable, or what was done
    engine_path: Optional[str]
    key: Optional[EngineKey]
    builder: Optional[str]         # "python" (tensorrt module) or "trtexec"
    seconds: float                 # of the build (0 for a cache hit)

    @property
    def available(self) -> bool:
        return self.status != "unavailable"


class Toolchain(NamedTuple):
    """The TensorRT found on this machine: how to build, and its version."""
    builder: str                   # "python" or "trtexec"
    version: str
    trtexec: Optional[str]         # the executable, for the trtexec builder


def _unavailable(reason: str) -> EngineResult:
    return EngineResult("unavailable", reason, None, None, None, 0.0)


# --- finding TensorRT -------------------------------------------------------------------

def _import_tensorrt():
    try:
        import tensorrt  # noqa: F401  (optional: JetPack's python3-libnvinfer)
    except Exception:  # ImportError, or a broken install failing to load libnvinfer
        return None
    return tensorrt


def find_trtexec() -> Optional[str]:
    for candidate in (os.environ.get(TRTEXEC_ENV), shutil.which("trtexec"), TRTEXEC_FALLBACK):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def decode_trt_version(number: int) -> str:
    """``NV_TENSORRT_VERSION`` as trtexec prints it: MAJOR*1000+MINOR*100+PATCH up to 9.x
    (v8201 is 8.2.1), MAJOR*10000+MINOR*100+PATCH from 10.0 (v100300 is 10.3.0)."""
    if number >= 100000:
        return "%d.%d.%d" % (number // 10000, number // 100 % 100, number % 100)
    return "%d.%d.%d" % (number // 1000, number // 100 % 10, number % 100)


def trtexec_version(trtexec: str) -> Optional[str]:
    """trtexec has no --version; every run starts with ``&&&& RUNNING TensorRT.trtexec
    [TensorRT v8201]``, and ``--help`` is a run that builds nothing."""
    try:
        completed = subprocess.run([trtexec, "--help"], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"TensorRT v(\d+)", completed.stdout.decode("utf-8", "replace"))
    return decode_trt_version(int(match.group(1))) if match else None


def find_toolchain(builder: str = "auto") -> Tuple[Optional[Toolchain], str]:
    """The toolchain to build with, or None and the reason there is none."""
    if builder not in BUILDERS:
        raise ValueError("builder must be one of %s" % ", ".join(BUILDERS))
    reasons = []  # type: List[str]
    if builder in ("auto", "python"):
        trt = _import_tensorrt()
        if trt is not None:
            return Toolchain("python", str(trt.__version__), None), ""
        reasons.append("the tensorrt Python module does not import")
    if builder in ("auto", "trtexec"):
        trtexec = find_trtexec()
        if trtexec is None:
            reasons.append("no trtexec on PATH, in $%s or at %s" % (TRTEXEC_ENV,
                                                                    TRTEXEC_FALLBACK))
        else:
            version = trtexec_version(trtexec)
            if version is not None:
                return Toolchain("trtexec", version, trtexec), ""
            reasons.append("%s does not report a TensorRT version" % trtexec)
    return None, "; ".join(reasons)


def gpu_name() -> str:
    """The GPU an engine is built for: CUDA's device name (torch, when the caller has it
    loaded), nvidia-smi's, or the Jetson board's model (JetPack 4 has no nvidia-smi)."""
    torch = sys.modules.get("torch")  # never imported here: the daemon side has no torch
    if torch is not None and torch.cuda.is_available():
        return str(torch.cuda.get_device_name(0))
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30)
            name = out.stdout.decode("utf-8", "replace").strip().splitlines()
            if out.returncode == 0 and name:
                return name[0].strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        with open("/proc/device-tree/model", "rb") as handle:
            return handle.read().rstrip(b"\0\n").decode("utf-8", "replace")
    except OSError:
        return "unknown GPU"


# --- the cache ----------------------------------------------------------------------------

def engine_paths(cache_dir: str, precision: str) -> Tuple[str, str]:
    """The engine file and its key file (one slot per precision: a board has one GPU and
    one TensorRT, so a changed key replaces the engine instead of piling up old ones)."""
    engine = os.path.join(cache_dir, "model.%s.engine" % precision)
    return engine, engine + ".json"


def cached_engine(cache_dir: str, key: EngineKey) -> Optional[str]:
    """The engine built for exactly ``key``, or None (missing, other key, torn write)."""
    engine, key_file = engine_paths(cache_dir, key.precision)
    try:
        with open(key_file, encoding="utf-8") as handle:
            recorded = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(recorded, dict) or recorded.get("key") != key.as_dict():
        return None
    if not os.path.isfile(engine) or sha256_of(engine) != recorded.get("engine_sha256"):
        return None
    return engine


def build_engine(onnx_path: str, cache_dir: str, precision: str = "fp16",
                 builder: str = "auto", gpu: Optional[str] = None,
                 max_batch: int = 8) -> EngineResult:
    """The cached engine for ``onnx_path`` when its key matches, else a new one.

    ``gpu``: the GPU name for the key (default: :func:`gpu_name`). ``max_batch``: the
    largest batch of an ONNX input whose batch dimension is dynamic (a fixed input, as
    the exporter writes for jetson-inference, builds exactly its shape)."""
    if precision not in PRECISIONS:
        raise ValueError("precision must be one of %s" % ", ".join(PRECISIONS))
    if not os.path.isfile(onnx_path):
        raise EngineBuildFailed("no ONNX file at %s" % onnx_path)
    toolchain, reason = find_toolchain(builder)
    if toolchain is None:
        return _unavailable(reason)
    key = EngineKey(sha256_of(onnx_path), toolchain.version, precision,
                    gpu if gpu is not None else gpu_name())
    hit = cached_engine(cache_dir, key)
    if hit is not None:
        return EngineResult("cached", "the engine's key matches", hit, key,
                            toolchain.builder, 0.0)
    engine, key_file = engine_paths(cache_dir, precision)
    os.makedirs(cache_dir, exist_ok=True)
    started = time.time()
    build = _build_with_python if toolchain.builder == "python" else _build_with_trtexec
    build(toolchain, onnx_path, engine, precision, max_batch)
    seconds = time.time() - started
    atomic.write_json(key_file, {"key": key.as_dict(), "engine_sha256": sha256_of(engine),
                                 "builder": toolchain.builder, "build_seconds": seconds,
                                 "onnx": os.path.basename(onnx_path)})
    return EngineResult("built", "no engine for this key", engine, key, toolchain.builder,
                        seconds)


# --- builders -----------------------------------------------------------------------------

def trtexec_command(trtexec: str, onnx_path: str, engine_path: str,
                    precision: str) -> List[str]:
    """Flags that every trtexec from TensorRT 7.1 (JetPack 4.4) to 10.x accepts; one
    timed iteration instead of trtexec's default three seconds of inference."""
    command = [trtexec, "--onnx=" + onnx_path, "--saveEngine=" + engine_path,
               "--warmUp=0", "--duration=0", "--iterations=1"]
    if precision == "fp16":
        command.append("--fp16")
    return command


def _build_with_trtexec(toolchain: Toolchain, onnx_path: str, engine: str, precision: str,
                        max_batch: int) -> None:
    def run(partial: str) -> None:
        command = trtexec_command(str(toolchain.trtexec), onnx_path, partial, precision)
        try:
            completed = subprocess.run(command, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise EngineBuildFailed("trtexec ran past %.0f s" % BUILD_TIMEOUT_S) from None
        log = completed.stdout.decode("utf-8", "replace")
        if completed.returncode != 0 or not os.path.isfile(partial) \
                or os.path.getsize(partial) == 0:
            raise EngineBuildFailed("trtexec failed (exit %d): %s"
                                    % (completed.returncode, log[-LOG_TAIL_CHARS:]))

    _write_atomically(engine, run)


def _build_with_python(toolchain: Toolchain, onnx_path: str, engine: str, precision: str,
                       max_batch: int) -> None:
    trt = _import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 7-9 need an explicit-batch network for ONNX; 10 has only those (and
    # deprecates the flag, so it may be missing).
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    network = builder.create_network(0 if explicit is None else 1 << int(explicit))
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as handle:
        if not parser.parse(handle.read()):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise EngineBuildFailed("TensorRT's ONNX parser refused %s: %s"
                                    % (os.path.basename(onnx_path), "; ".join(errors)))
    config = builder.create_builder_config()
    if hasattr(config, "set_memory_pool_limit"):  # TensorRT 8.4+
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    else:
        config.max_workspace_size = WORKSPACE_BYTES
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    _add_batch_profile(trt, builder, network, config, max_batch)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildFailed("TensorRT built no engine from %s (its log is on stderr)"
                                % os.path.basename(onnx_path))
    atomic.write_bytes(engine, bytes(serialized))


def _add_batch_profile(trt, builder, network, config, max_batch: int) -> None:
    """A dynamic batch dimension needs an optimization profile (batch 1 to max_batch)."""
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    if not any(-1 in tuple(tensor.shape) for tensor in inputs):
        return
    profile = builder.create_optimization_profile()
    for tensor in inputs:
        rest = tuple(tensor.shape)[1:]
        if -1 in rest:
            raise EngineBuildFailed("input %s has a dynamic dimension other than the batch: %s"
                                    % (tensor.name, tuple(tensor.shape)))
        profile.set_shape(tensor.name, (1,) + rest, (1,) + rest, (max_batch,) + rest)
    config.add_optimization_profile(profile)


def _write_atomically(path: str, write: Callable[[str], None]) -> None:
    """``write(temporary)`` then rename over ``path`` (atomic.write_bytes, for a file that
    another program writes)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, partial = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path),
                                   dir=directory)
    os.close(fd)
    os.unlink(partial)  # trtexec must create it: an existing empty file would look built
    try:
        write(partial)
        with open(partial, "rb+") as handle:  # on disk before the rename makes it visible
            os.fsync(handle.fileno())
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
