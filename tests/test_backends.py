"""Predict backends: onnxruntime answers like PyTorch (probabilities within 1e-4, on real
images), from an export cached per adapter version; anything that cannot run falls back to
torch with a logged reason; the worker's reply names the backend that answered."""
import io
import logging
import os
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from device_agent.model.adapter_io import save_domain
from device_agent.model.backbones import build_backbone
from device_agent.model.network import AdaptedNet, DomainModule
from device_agent.protocol.peer import Peer
from device_agent.training.inference import classify
from device_agent.worker import backends
from device_agent.worker.backends import PredictBackends, choose_backend

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = torch.device("cpu")
CLASSES = ["blue", "green", "red"]
SIZE = 64


def _adapter(data_dir, version: str, seed: int, backbone: str = "resnet18") -> str:
    """A saved da2 domain over the seeded random backbone, its weights moved off their
    initial values (so that the adapters take part in the output)."""
    frozen, _ = build_backbone(backbone, "random")
    net = AdaptedNet(frozen)
    generator = torch.Generator().manual_seed(seed)
    domain = net.add_domain("d", DomainModule(frozen, "da2", len(CLASSES)))
    with torch.no_grad():
        for param in domain.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
    path = os.path.join(str(data_dir), "domains", "colours", "adapters", version)
    save_domain(net, "d", path, CLASSES, SIZE)
    return path


def _torch_net(adapter_dir: str):
    from device_agent.export.onnx_export import load_adapter

    return load_adapter(adapter_dir)


def _images(folder: str):
    paths = sorted(os.path.join(root, name) for root, _, names in os.walk(folder)
                   for name in names)
    return [Image.open(path).convert("RGB") for path in paths[:8]]


def _probabilities(tops):
    return [{entry["class"]: entry["probability"] for entry in top} for top in tops]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return root, _adapter(root, "job-1", seed=1), _adapter(root, "job-2", seed=2)


def test_onnxruntime_matches_torch_on_real_images(adapters, digits_dir):
    _, adapter_dir, _ = adapters
    images = _images(digits_dir)
    net, config = _torch_net(adapter_dir)
    expected = classify(net, config, images, len(CLASSES), CPU)
    chosen = PredictBackends("onnxruntime", CPU, threads=2, background=False)
    answer = chosen.classify("colours", adapter_dir, net, config, images, len(CLASSES))
    assert answer.backend == "onnxruntime" and len(answer.tops) == len(images) == 8
    got, want = _probabilities(answer.tops), _probabilities(expected)
    assert max(abs(g[c] - w[c]) for g, w in zip(got, want) for c in CLASSES) <= 1e-4
    assert [t[0]["class"] for t in answer.tops] == [t[0]["class"] for t in expected]
    # the images give different outputs (a constant output would make the check above moot)
    assert max(abs(want[0][c] - w[c]) for w in want[1:] for c in CLASSES) > 1e-2


def test_the_export_is_cached_per_version_and_never_stale(adapters, digits_dir, monkeypatch):
    root, first_dir, second_dir = adapters
    images = _images(digits_dir)[:3]
    chosen = PredictBackends("onnxruntime", CPU, threads=1, background=False)
    answers = {}
    for adapter_dir in (first_dir, second_dir, first_dir):  # new version, then a rollback
        net, config = _torch_net(adapter_dir)
        answer = chosen.classify("colours", adapter_dir, net, config, images, 3)
        want = _probabilities(classify(net, config, images, 3, CPU))
        got = _probabilities(answer.tops)
        assert max(abs(g[c] - w[c]) for g, w in zip(got, want) for c in CLASSES) <= 1e-4
        answers.setdefault(adapter_dir, got)
        assert answers[adapter_dir] == got
    assert answers[first_dir] != answers[second_dir]
    exports = os.path.join(str(root), "domains", "colours", "exports")
    assert len([e for e in os.listdir(exports) if not e.startswith(".")]) == 2
    # a fresh worker finds the exports on disk: nothing is exported again
    monkeypatch.setattr("device_agent.export.onnx_export.export_domain",
                        lambda *a, **k: pytest.fail("exported again"))
    fresh = PredictBackends("onnxruntime", CPU, threads=1, background=False)
    net, config = _torch_net(second_dir)
    assert fresh.classify("colours", second_dir, net, config, images, 3).backend \
        == "onnxruntime"


def test_a_refused_export_falls_back_to_torch_once(adapters, small_folder, monkeypatch,
                                                   caplog, tmp_path):
    from device_agent.errors import ExportParityError

    _, adapter_dir, _ = adapters
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise ExportParityError("max abs diff 0.3 over the tolerance 0.0001")

    monkeypatch.setattr("device_agent.export.onnx_export.export_domain", refuse)
    elsewhere = str(tmp_path / "exports")  # not the cache the other tests filled
    monkeypatch.setattr(backends, "export_cache_root", lambda adapter_dir: elsewhere)
    images = _images(small_folder)[:2]
    net, config = _torch_net(adapter_dir)
    chosen = PredictBackends("onnxruntime", CPU, threads=1, background=False)
    with caplog.at_level(logging.WARNING, logger=backends.__name__):
        first = chosen.classify("colours", adapter_dir, net, config, images, 2)
        second = chosen.classify("colours", adapter_dir, net, config, images, 2)
    assert first.backend == second.backend == "torch" and len(calls) == 1
    assert first.tops == classify(net, config, images, 2, CPU)
    assert "tolerance" in caplog.text and "runs on torch" in caplog.text
    chosen.forget("colours")  # a deleted domain: a new one of that name is tried afresh
    chosen.classify("colours", adapter_dir, net, config, images, 2)
    assert len(calls) == 2


def test_backends_that_cannot_run_here_fall_back_with_a_reason(monkeypatch):
    assert choose_backend("torch", CPU) == ("torch", "torch", "")
    assert choose_backend("onnxruntime", CPU) == ("onnxruntime", "onnxruntime", "")
    unknown = choose_backend("openvino", CPU)
    assert unknown.active == "torch" and "unknown predict backend" in unknown.reason
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    no_trt = choose_backend("tensorrt", torch.device("cuda"))
    assert no_trt.active == "torch" and "tensorrt Python module" in no_trt.reason
    monkeypatch.setitem(sys.modules, "tensorrt", type(sys)("tensorrt"))
    on_cpu = choose_backend("tensorrt", CPU)
    assert on_cpu.active == "torch" and "CUDA" in on_cpu.reason
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    no_ort = choose_backend("onnxruntime", CPU)
    assert no_ort.active == "torch" and "pip install onnxruntime" in no_ort.reason


def test_the_setting_reaches_the_worker_under_one_name():
    """`serve --predict-backend` / DEVICE_AGENT_PREDICT_BACKEND (pydantic-settings reads the
    field with the prefix) is the variable the worker reads."""
    settings = pytest.importorskip("device_agent.api.settings")
    field = settings.Settings.model_fields["predict_backend"]
    assert "DEVICE_AGENT_" + "predict_backend".upper() == backends.PREDICT_BACKEND_ENV
    assert field.default == "torch"
    assert settings.Settings(predict_backend="onnxruntime").predict_backend == "onnxruntime"
    with pytest.raises(ValueError):  # pydantic's ValidationError: the daemon does not start
        settings.Settings(predict_backend="banana")
    assert backends.requested_backend({}) == "torch"
    assert backends.requested_backend({backends.PREDICT_BACKEND_ENV: " ONNXRuntime "}) \
        == "onnxruntime"
    from device_agent.cli import build_parser

    args = build_parser().parse_args(["serve", "--predict-backend", "onnxruntime"])
    assert args.predict_backend == "onnxruntime"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--predict-backend", "tflite"])


def _until(answer, wanted: str, timeout: float = 180.0) -> str:
    """``answer()`` until it returns ``wanted`` (the export is prepared in the background;
    torch answers meanwhile) or the time is up; returns the last answer."""
    deadline = time.time() + timeout
    got = answer()
    while got != wanted and time.time() < deadline:
        assert got == "torch", got
        time.sleep(0.5)
        got = answer()
    return got


def _png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), colour).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("requested, answered", [("onnxruntime", "onnxruntime"),
                                                 ("tensorrt", "torch")])
def test_the_worker_reply_names_the_backend(adapters, requested, answered):
    _, adapter_dir, _ = adapters
    env = dict(os.environ, PYTHONPATH=ROOT, DEVICE_AGENT_PREDICT_BACKEND=requested)
    proc = subprocess.Popen([sys.executable, "-m", "device_agent.worker", "--device", "cpu",
                             "--weights", "random"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env)
    try:
        peer = Peer(proc.stdout, proc.stdin)
        peer.receive()  # hello
        images = [_png((220, 30, 30)), _png((30, 40, 220))]

        def predict():
            msg = peer.send("predict", b"".join(images), domain="colours",
                            adapter_dir=adapter_dir, top_k=2, parts=[len(i) for i in images])
            reply, _ = peer.receive()
            assert reply["reply_to"] == msg and reply["kind"] == "result", reply
            assert len(reply["data"]["predictions"]) == 2
            return reply["data"]["backend"]

        assert _until(predict, answered) == answered
        status = peer.send("status")
        reply, _ = peer.receive()
        assert reply["reply_to"] == status
        assert reply["data"]["predict_backend"]["active"] == answered
        peer.send("shutdown")
        proc.wait(timeout=60)
        if answered != requested:  # the fallback was logged, with its reason
            assert b"using torch" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_the_daemon_predicts_through_onnxruntime_like_torch(adapters, digits_dir, tmp_path):
    """DEVICE_AGENT_PREDICT_BACKEND through `serve` to the worker: an imported adapter's
    predictions over HTTP come from onnxruntime and equal PyTorch's."""
    pytest.importorskip("fastapi")
    import live_daemon
    from api_calls import TOKEN, call, multipart, zipped

    _, adapter_dir, _ = adapters
    folder = tmp_path / "adapter"
    folder.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (folder / name).write_bytes(open(os.path.join(adapter_dir, name), "rb").read())
    paths = sorted(os.path.join(root, name) for root, _, names in os.walk(digits_dir)
                   for name in names)[:3]
    blobs = [open(path, "rb").read() for path in paths]
    net, config = _torch_net(adapter_dir)
    want = _probabilities(classify(net, config, [Image.open(p).convert("RGB") for p in paths],
                                   len(CLASSES), CPU))
    proc, base = live_daemon.start(str(tmp_path / "data"), TOKEN,
                                   DEVICE_AGENT_PREDICT_BACKEND="onnxruntime")
    try:
        upload, content_type = multipart([("file", ("a.zip", zipped(str(folder))))])
        status, body = call(base, "PUT", "/v1/domains/colours/adapter", upload,
                            content_type=content_type)
        assert status == 201, body
        upload, content_type = multipart([("file", ("%d.png" % i, blob))
                                          for i, blob in enumerate(blobs)])
        replies = []

        def predict():
            status, body = call(base, "POST", "/v1/domains/colours/predict?top_k=3", upload,
                                content_type=content_type)
            assert status == 200, body
            replies.append(body)
            return body["backend"]

        assert _until(predict, "onnxruntime") == "onnxruntime"
        got = _probabilities(replies[-1]["predictions"])
        assert max(abs(g[c] - w[c]) for g, w in zip(got, want) for c in CLASSES) <= 1e-4
    finally:
        live_daemon.stop(proc)


def test_the_export_is_prepared_in_the_background_never_beside_a_job(adapters, small_folder,
                                                                     monkeypatch):
    import threading

    _, first_dir, second_dir = adapters
    images = _images(small_folder)[:2]
    release, busy = threading.Event(), [True]
    real = backends.PredictBackends._load

    def slow_load(self, adapter_dir):
        release.wait(60)
        return real(self, adapter_dir)

    monkeypatch.setattr(backends.PredictBackends, "_load", slow_load)
    chosen = PredictBackends("onnxruntime", CPU, threads=1, busy=lambda: busy[0])
    net, config = _torch_net(first_dir)

    def backend(adapter_dir=first_dir):
        return chosen.classify("colours", adapter_dir, net, config, images, 2).backend

    assert backend() == "torch" and chosen.loading == {}  # a job runs: nothing started
    busy[0] = False
    assert backend() == "torch" and chosen.as_dict()["preparing"] == ["colours"]
    assert backend() == "torch"  # still preparing: torch answers, nothing started twice
    assert [t.name for t in threading.enumerate()].count("export-colours") == 1
    release.set()
    assert _until(backend, "onnxruntime", timeout=120) == "onnxruntime"
    # a new version: torch again until its own export is ready, never the old one's
    net, config = _torch_net(second_dir)
    assert backend(second_dir) == "torch"
    assert _until(lambda: backend(second_dir), "onnxruntime", timeout=120) == "onnxruntime"
