"""The TensorRT engine cache, with fakes: a fake ``trtexec`` on PATH (a script that records
its arguments and writes an "engine" derived from the ONNX bytes) and a fake ``tensorrt``
module in sys.modules. No TensorRT runs here; the README (Deploy to TensorRT) says what ran
where."""
import json
import os
import stat
import sys
import types

import pytest

from device_agent.export import tensorrt as trt_cache
from device_agent.export.tensorrt import EngineBuildFailed, build_engine

FAKE_TRTEXEC = r'''#!{python}
import hashlib, json, os, sys
print("&&&& RUNNING TensorRT.trtexec [TensorRT v%s] # trtexec" % os.environ.get("FAKE_TRT", "8201"))
if sys.argv[1:] == ["--help"]:
    sys.exit(0)
with open(os.environ["FAKE_TRTEXEC_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\n")
if os.environ.get("FAKE_TRTEXEC_FAIL"):
    print("[E] [TRT] ModelImporter.cpp: unsupported operator")
    sys.exit(1)
flags = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
with open(flags["--onnx"], "rb") as onnx:
    digest = hashlib.sha256(onnx.read()).hexdigest()
with open(flags["--saveEngine"], "w") as engine:
    engine.write("engine of %s fp16=%s" % (digest, "--fp16" in sys.argv))
'''


@pytest.fixture
def no_tensorrt_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises


@pytest.fixture
def fake_trtexec(tmp_path, monkeypatch, no_tensorrt_module):
    """PATH holds only the fake; returns a function reading the calls it recorded."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "trtexec"
    script.write_text(FAKE_TRTEXEC.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("FAKE_TRTEXEC_LOG", str(log))
    monkeypatch.delenv(trt_cache.TRTEXEC_ENV, raising=False)

    def calls():
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    return calls


@pytest.fixture
def onnx_file(tmp_path):
    path = tmp_path / "export" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(b"\x08\x07 pretend onnx graph v1")
    return str(path)


def _build(onnx_file, tmp_path, **kwargs):
    kwargs.setdefault("gpu", "NVIDIA Tegra X1")
    return build_engine(onnx_file, str(tmp_path / "engines"), **kwargs)


def test_without_tensorrt_the_result_says_why(tmp_path, monkeypatch, onnx_file,
                                              no_tensorrt_module):
    monkeypatch.setenv("PATH", str(tmp_path))  # no trtexec
    monkeypatch.setattr(trt_cache, "TRTEXEC_FALLBACK", str(tmp_path / "absent" / "trtexec"))
    monkeypatch.delenv(trt_cache.TRTEXEC_ENV, raising=False)
    result = _build(onnx_file, tmp_path)
    assert result.status == "unavailable" and not result.available
    assert "tensorrt Python module" in result.reason and "no trtexec" in result.reason
    assert result.engine_path is None and not (tmp_path / "engines").exists()


def test_trtexec_builds_an_fp16_engine_and_writes_its_key_beside_it(tmp_path, onnx_file,
                                                                     fake_trtexec):
    result = _build(onnx_file, tmp_path)
    assert result.status == "built" and result.builder == "trtexec"
    assert result.key == trt_cache.EngineKey(trt_cache.sha256_of(onnx_file), "8.2.1", "fp16",
                                             "NVIDIA Tegra X1")
    (args,) = fake_trtexec()
    assert "--onnx=" + onnx_file in args and "--fp16" in args
    saved = [a.split("=", 1)[1] for a in args if a.startswith("--saveEngine=")]
    # written to a temporary name in the cache directory, renamed when complete
    assert len(saved) == 1 and saved[0] != result.engine_path
    assert os.path.dirname(saved[0]) == os.path.dirname(result.engine_path)
    with open(result.engine_path) as engine:
        assert engine.read() == "engine of %s fp16=True" % result.key.onnx_sha256
    with open(result.engine_path + ".json") as key_file:
        recorded = json.load(key_file)
    assert recorded["key"] == result.key.as_dict()
    assert recorded["engine_sha256"] == trt_cache.sha256_of(result.engine_path)
    assert sorted(os.listdir(os.path.dirname(result.engine_path))) == [
        "model.fp16.engine", "model.fp16.engine.json"]


def test_an_equal_key_reuses_the_engine(tmp_path, onnx_file, fake_trtexec):
    first = _build(onnx_file, tmp_path)
    second = _build(onnx_file, tmp_path)
    assert second.status == "cached" and second.engine_path == first.engine_path
    assert second.key == first.key and len(fake_trtexec()) == 1


@pytest.mark.parametrize("change", ["onnx", "tensorrt_version", "precision", "gpu"])
def test_any_part_of_the_key_that_differs_rebuilds(tmp_path, monkeypatch, onnx_file,
                                                   fake_trtexec, change):
    first = _build(onnx_file, tmp_path)
    kwargs = {}
    if change == "onnx":  # a re-export: the stale-engine trouble of jetson-inference
        with open(onnx_file, "ab") as handle:
            handle.write(b" v2")
    elif change == "tensorrt_version":
        monkeypatch.setenv("FAKE_TRT", "8502")
    elif change == "precision":
        kwargs["precision"] = "fp32"
    else:
        kwargs["gpu"] = "Orin"
    second = _build(onnx_file, tmp_path, **kwargs)
    assert second.status == "built" and len(fake_trtexec()) == 2
    assert second.key != first.key
    differing = [f for f in second.key._fields
                 if getattr(second.key, f) != getattr(first.key, f)]
    assert differing == {"onnx": ["onnx_sha256"], "tensorrt_version": ["tensorrt_version"],
                         "precision": ["precision"], "gpu": ["gpu_name"]}[change]
    assert ("--fp16" in fake_trtexec()[-1]) == (change != "precision")
    # and the rebuilt engine is served from then on
    assert _build(onnx_file, tmp_path, **kwargs).status == "cached"
    with open(second.engine_path) as engine:
        assert second.key.onnx_sha256 in engine.read()


@pytest.mark.parametrize("damage", ["engine_changed", "key_missing", "key_garbage",
                                    "engine_missing"])
def test_a_damaged_cache_entry_is_a_miss(tmp_path, onnx_file, fake_trtexec, damage):
    first = _build(onnx_file, tmp_path)
    key_file = first.engine_path + ".json"
    if damage == "engine_changed":  # e.g. the old engine copied over the new one
        with open(first.engine_path, "a") as engine:
            engine.write("torn")
    elif damage == "key_missing":
        os.unlink(key_file)
    elif damage == "key_garbage":
        with open(key_file, "w") as handle:
            handle.write("[1, 2")
    else:
        os.unlink(first.engine_path)
    assert _build(onnx_file, tmp_path).status == "built" and len(fake_trtexec()) == 2


def test_a_failed_build_raises_and_keeps_the_previous_engine(tmp_path, monkeypatch,
                                                             onnx_file, fake_trtexec):
    first = _build(onnx_file, tmp_path)
    with open(first.engine_path) as engine:
        before = engine.read()
    with open(onnx_file, "ab") as handle:
        handle.write(b" v2")
    monkeypatch.setenv("FAKE_TRTEXEC_FAIL", "1")
    with pytest.raises(EngineBuildFailed, match="unsupported operator"):
        _build(onnx_file, tmp_path)
    with open(first.engine_path) as engine:
        assert engine.read() == before  # untouched, and its key still names the old ONNX
    assert sorted(os.listdir(os.path.dirname(first.engine_path))) == [
        "model.fp16.engine", "model.fp16.engine.json"]
    monkeypatch.delenv("FAKE_TRTEXEC_FAIL")
    assert _build(onnx_file, tmp_path).status == "built"  # the new ONNX still misses


def test_bad_arguments_are_refused(tmp_path, onnx_file, fake_trtexec):
    with pytest.raises(ValueError):
        _build(onnx_file, tmp_path, precision="int8")
    with pytest.raises(ValueError):
        _build(onnx_file, tmp_path, builder="polygraphy")
    with pytest.raises(EngineBuildFailed, match="no ONNX file"):
        build_engine(str(tmp_path / "missing.onnx"), str(tmp_path / "engines"))
    assert fake_trtexec() == []


@pytest.mark.parametrize("number, version", [(8201, "8.2.1"), (8001, "8.0.1"),
                                             (8602, "8.6.2"), (100300, "10.3.0"),
                                             (7103, "7.1.3")])
def test_trtexec_version_numbers_decode(number, version):
    assert trt_cache.decode_trt_version(number) == version


# --- the Python API path, with a fake tensorrt module -------------------------------------

class _FakeTensor(object):
    def __init__(self, name, shape):
        self.name, self.shape = name, shape


def _fake_tensorrt(version="8.2.1", parse_ok=True, input_shape=(1, 3, 224, 224)):
    """Just the calls build_engine makes, recording what it asked for."""
    seen = {"flags": [], "profiles": [], "networks": []}
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")

    class Network(object):
        num_inputs = 1

        def get_input(self, index):
            return _FakeTensor("input_0", input_shape)

    class Parser(object):
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            pass

        def parse(self, blob):
            seen["onnx"] = blob
            return parse_ok

        def get_error(self, index):
            return "In node 12 (Resize): UNSUPPORTED_NODE"

    class Profile(object):
        def set_shape(self, name, low, opt, high):
            seen["profiles"].append((name, low, opt, high))

    class Config(object):
        def set_memory_pool_limit(self, pool, size):
            seen["workspace"] = size

        def set_flag(self, flag):
            seen["flags"].append(flag)

        def add_optimization_profile(self, profile):
            pass

    class Builder(object):
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            seen["networks"].append(flags)
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return memoryview(b"serialized engine of " + seen["onnx"])

    trt.OnnxParser, trt.Builder = Parser, Builder
    return trt, seen


def test_the_python_api_builds_fp16_and_caches(tmp_path, monkeypatch, onnx_file):
    trt, seen = _fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    result = _build(onnx_file, tmp_path)
    assert result.status == "built" and result.builder == "python"
    assert result.key.tensorrt_version == "8.2.1" and seen["flags"] == ["FP16"]
    assert seen["networks"] == [1] and seen["profiles"] == []  # explicit batch, fixed shape
    with open(result.engine_path, "rb") as engine, open(onnx_file, "rb") as onnx:
        assert engine.read() == b"serialized engine of " + onnx.read()
    assert _build(onnx_file, tmp_path).status == "cached"
    fp32 = _build(onnx_file, tmp_path, precision="fp32")
    assert fp32.status == "built" and seen["flags"] == ["FP16"]  # no FP16 flag this time
    trt.__version__ = "8.5.2"
    assert _build(onnx_file, tmp_path).status == "built"


def test_the_python_api_gives_a_dynamic_batch_a_profile(tmp_path, monkeypatch, onnx_file):
    trt, seen = _fake_tensorrt(input_shape=(-1, 3, 224, 224))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    _build(onnx_file, tmp_path, max_batch=8)
    assert seen["profiles"] == [("input_0", (1, 3, 224, 224), (1, 3, 224, 224),
                                 (8, 3, 224, 224))]


def test_a_parser_refusal_names_the_node_and_writes_nothing(tmp_path, monkeypatch, onnx_file):
    trt, _ = _fake_tensorrt(parse_ok=False)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(EngineBuildFailed, match="Resize"):
        _build(onnx_file, tmp_path)
    assert not os.listdir(str(tmp_path / "engines"))


# --- running an engine (worker/backends.py), with a fake runtime over host memory ---------

def _fake_runtime(named: bool, engine_batch: int = 2):
    """A tensorrt module whose "engine" maps input_0 (B, 3, 4, 4) to output_0 (B, 3), the
    per-channel means, reading and writing the buffers at the addresses it is given, as
    TensorRT does (here host memory, through ctypes)."""
    import ctypes

    import numpy as np

    shapes = {"input_0": (engine_batch, 3, 4, 4), "output_0": (engine_batch, 3)}
    order = ["input_0", "output_0"]

    def view(address, shape):
        count = int(np.prod(shape))
        return np.ctypeslib.as_array((ctypes.c_float * count).from_address(address)) \
            .reshape(shape)

    def compute(addresses):
        view(addresses["output_0"], shapes["output_0"])[:] = \
            view(addresses["input_0"], shapes["input_0"]).mean(axis=(2, 3))
        return True

    class NamedContext(object):
        def __init__(self):
            self.addresses = {}

        def set_tensor_address(self, name, address):
            self.addresses[name] = address

        def execute_async_v3(self, stream):
            return compute(self.addresses)

    class BindingContext(object):
        def execute_async_v2(self, bindings, stream):
            return compute(dict(zip(order, bindings)))

    class Engine(object):
        num_bindings = 2

        def create_execution_context(self):
            return NamedContext() if named else BindingContext()

        def get_tensor_shape(self, name):
            return shapes[name]

        def get_binding_index(self, name):
            return order.index(name)

        def get_binding_shape(self, index):
            return shapes[order[index]]

    class Runtime(object):
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, blob):
            return Engine() if blob == b"fake engine" else None

    trt = types.ModuleType("tensorrt")
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.Runtime = Runtime
    return trt


@pytest.mark.parametrize("named", [True, False], ids=["tensorrt 8.5+", "tensorrt 8.0-8.4"])
def test_the_engine_runner_binds_by_name_and_batches_by_the_engine(tmp_path, monkeypatch,
                                                                    named):
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    from device_agent.worker.backends import TensorRTModel

    monkeypatch.setitem(sys.modules, "tensorrt", _fake_runtime(named))
    engine = tmp_path / "model.fp16.engine"
    engine.write_bytes(b"fake engine")
    batch = np.random.RandomState(0).rand(5, 3, 4, 4).astype(np.float32)
    model = TensorRTModel(str(engine), torch.device("cpu"))
    got = model.probabilities(batch)  # 5 images through a batch-2 engine: 2 + 2 + 1 padded
    assert got.shape == (5, 3)
    assert np.allclose(got, batch.mean(axis=(2, 3)), atol=1e-6)
    engine.write_bytes(b"not an engine")
    with pytest.raises(RuntimeError, match="could not load"):
        TensorRTModel(str(engine), torch.device("cpu"))
