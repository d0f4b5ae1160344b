"""A real worker process driven over its pipes: hello, train with progress, predict, cancel,
errors as replies, and a clean shutdown."""
import io
import os
import subprocess
import sys

import pytest
from PIL import Image

from device_agent.protocol import framing, messages
from device_agent.protocol.peer import Peer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def worker():
    proc = subprocess.Popen([sys.executable, "-m", "device_agent.worker", "--device", "cpu",
                             "--weights", "random"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    peer = Peer(proc.stdout, proc.stdin)
    hello, _ = peer.receive()
    assert hello["kind"] == "hello" and hello["protocol"] == messages.PROTOCOL_VERSION
    yield proc, peer
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _reply(peer, msg_id, events=None):
    """The reply to ``msg_id``; job events (and a job_done) met on the way are collected."""
    while True:
        header, _ = peer.receive()
        if header["kind"] in ("job_event", "job_done"):
            if events is not None:
                events.append(_job_message(header))
            continue
        assert header["reply_to"] == msg_id
        return header


def _job_message(header):
    """A job_event's event, or the job_done itself (as ``{"event": "job_done", ...}``)."""
    if header["kind"] == "job_event":
        return header["event"]
    return {"event": "job_done", "state": header["state"], "report": header["report"],
            "error": header["error"]}


def _until_done(peer, events):
    """The job's one job_done; the events before it are collected in ``events``."""
    while not events or events[-1]["event"] != "job_done":
        header, _ = peer.receive()
        assert header["kind"] in ("job_event", "job_done"), header
        events.append(_job_message(header))
    return events[-1]


def _png(colour):
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), colour).save(buffer, "PNG")
    return buffer.getvalue()


def test_train_then_predict_then_shutdown(worker, small_folder, tmp_path):
    proc, peer = worker
    out = str(tmp_path / "job1")
    params = {"backbone": "resnet18", "method": "da2", "epochs": 2, "batch_size": 4,
              "resolution": 32, "lr": 0.01, "val_fraction": 0.34}
    msg = peer.send("train", warm_from="", job_id="job1", domain="colours",
                    dataset_dir=small_folder, out_dir=out, params=params)
    events = []
    reply = _reply(peer, msg, events)
    assert reply["kind"] == "result" and reply["data"]["classes"] == ["blue", "green", "red"]
    busy = peer.send("train", warm_from="", job_id="job2", domain="x", dataset_dir=small_folder,
                     out_dir=str(tmp_path / "job2"), params=params)
    assert _reply(peer, busy, events)["code"] == "conflict"
    done = _until_done(peer, events)
    assert done["state"] == "succeeded" and done["error"] == {}, done
    assert done["report"]["adapter_bytes"] > 0 and done["report"]["epochs"] == 2
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [0, 1]
    images = [_png((220, 30, 30)), _png((30, 40, 220))]
    msg = peer.send("predict", b"".join(images), domain="colours", adapter_dir=out, top_k=2,
                    parts=[len(i) for i in images])
    reply = _reply(peer, msg)
    assert reply["kind"] == "result" and len(reply["data"]["predictions"]) == 2
    assert all(len(p) == 2 for p in reply["data"]["predictions"])
    status = _reply(peer, peer.send("status"))["data"]
    assert status["domains"] == ["colours"] and not status["busy"]
    _reply(peer, peer.send("shutdown"))
    assert proc.wait(timeout=30) == 0


def test_a_job_can_be_cancelled(worker, small_folder, tmp_path):
    _, peer = worker
    params = {"backbone": "resnet18", "epochs": 50, "batch_size": 2, "resolution": 32}
    msg = peer.send("train", warm_from="", job_id="long", domain="c", dataset_dir=small_folder,
                    out_dir=str(tmp_path / "long"), params=params)
    events = []
    assert _reply(peer, msg, events)["kind"] == "result"
    assert _reply(peer, peer.send("cancel", job_id="long"), events)["data"]["cancelled"]
    done = _until_done(peer, events)
    assert done["state"] == "cancelled" and done["report"] == {}
    assert os.path.isfile(str(tmp_path / "long" / "checkpoint" / "state.json")) or not any(
        e["event"] == "epoch" for e in events)  # a cancel keeps the last epoch's checkpoint
    assert not _reply(peer, peer.send("cancel", job_id="long"))["data"]["cancelled"]


@pytest.mark.parametrize("kind,fields,payload,code", [
    ("train", {"job_id": "j", "domain": "d", "dataset_dir": "/nonexistent", "out_dir": "/tmp/o",
               "params": {}, "warm_from": ""}, b"", "invalid_input"),
    ("train", {"job_id": "j", "domain": "d", "dataset_dir": "/tmp", "out_dir": "/tmp/o",
               "params": {"epochs": 1, "rm": 1}, "warm_from": ""}, b"", "invalid_input"),
    ("train", {"job_id": "j", "domain": "d", "dataset_dir": "/tmp", "out_dir": "/tmp/o",
               "params": {"epochs": -3}, "warm_from": ""}, b"", "invalid_input"),
    ("predict", {"domain": "d", "adapter_dir": "/nonexistent", "top_k": 1, "parts": [3]},
     b"abc", "invalid_input"),
    ("predict", {"domain": "d", "adapter_dir": "/nonexistent", "top_k": 1, "parts": [5]},
     b"abc", "protocol_error"),
])
def test_bad_requests_get_error_replies_and_the_worker_lives_on(worker, kind, fields, payload,
                                                                code):
    proc, peer = worker
    reply = _reply(peer, peer.send(kind, payload, **fields))
    assert reply["kind"] == "error" and reply["code"] == code, reply
    assert _reply(peer, peer.send("status"))["kind"] == "result"
    assert proc.poll() is None


def test_a_garbled_stream_ends_the_worker_with_an_error(worker):
    proc, peer = worker
    proc.stdin.write(framing.PREFIX.pack(3, 0) + b"{{{")
    proc.stdin.flush()
    header, _ = peer.receive()
    assert header["kind"] == "error" and header["code"] == "protocol_error"
    assert proc.wait(timeout=30) == 2


# --- issue 16: decode limits, a bounded inference cache, forget, NaN weights ---------------

def _saved_adapters(tmp_path, names, nan_in=()):
    """Untrained DA2 adapters on the random Lite0 backbone, one directory per name (those in
    ``nan_in`` with a NaN in their head)."""
    torch = pytest.importorskip("torch")
    from device_agent.model import adapter_io
    from device_agent.model.builder import build_net

    dirs = {}
    for name in names:
        net = build_net("efficientnet_lite0", "da2", 2, weights="random", domain=name).eval()
        if name in nan_in:
            with torch.no_grad():
                net.domains[name].head.linear.bias[0] = float("nan")
        dirs[name] = str(tmp_path / name)
        os.makedirs(dirs[name])
        adapter_io.save_domain(net, name, dirs[name], ["a", "b"], 32)
    return dirs


@pytest.fixture
def small_cache_worker():
    proc = subprocess.Popen([sys.executable, "-m", "device_agent.worker", "--device", "cpu",
                             "--weights", "random"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=ROOT,
                                     DEVICE_AGENT_WORKER_CACHE_DOMAINS="2",
                                     DEVICE_AGENT_MAX_PIXELS="1000000"))
    peer = Peer(proc.stdout, proc.stdin)
    assert peer.receive()[0]["kind"] == "hello"
    yield proc, peer
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _predict(peer, domain, directory, image):
    return _reply(peer, peer.send("predict", image, domain=domain, adapter_dir=directory,
                                  top_k=1, parts=[len(image)]))


def _cached(peer):
    return _reply(peer, peer.send("status"))["data"]["domains"]


def test_the_inference_cache_is_an_lru_and_forgets_deleted_domains(small_cache_worker,
                                                                   tmp_path):
    proc, peer = small_cache_worker
    dirs = _saved_adapters(tmp_path, ["d1", "d2", "d3", "d4"])
    image = _png((200, 10, 10))
    for name in ("d1", "d2", "d3"):
        assert _predict(peer, name, dirs[name], image)["kind"] == "result"
    assert _cached(peer) == ["d2", "d3"]  # at most 2: d1, the least recent, went
    assert _predict(peer, "d2", dirs["d2"], image)["kind"] == "result"  # d2 now most recent
    assert _predict(peer, "d4", dirs["d4"], image)["kind"] == "result"
    assert _cached(peer) == ["d2", "d4"]
    assert _reply(peer, peer.send("forget", domain="d2"))["data"] == {"forgotten": True}
    assert _reply(peer, peer.send("forget", domain="d2"))["data"] == {"forgotten": False}
    assert _cached(peer) == ["d4"]
    assert _predict(peer, "d1", dirs["d1"], image)["kind"] == "result"  # reloads on demand


def test_a_pixel_bomb_is_refused_by_the_worker_before_decoding(small_cache_worker, tmp_path):
    from bounded_inputs import png_header_only

    proc, peer = small_cache_worker
    dirs = _saved_adapters(tmp_path, ["d1"])
    assert _predict(peer, "d1", dirs["d1"], _png((1, 2, 3)))["kind"] == "result"
    before = _reply(peer, peer.send("status"))["data"]["peak_rss_mb"]
    reply = _predict(peer, "d1", dirs["d1"], png_header_only(9000, 9000))
    assert reply["kind"] == "error" and reply["code"] == "image_too_large", reply
    after = _reply(peer, peer.send("status"))["data"]["peak_rss_mb"]
    assert after - before < 20, (before, after)  # decoding it would take 81 MB
    assert proc.poll() is None


def test_nan_weights_are_refused_at_load(small_cache_worker, tmp_path):
    proc, peer = small_cache_worker
    dirs = _saved_adapters(tmp_path, ["bad"], nan_in=("bad",))
    reply = _reply(peer, peer.send("load", domain="bad", adapter_dir=dirs["bad"]))
    assert reply["kind"] == "error" and reply["code"] == "bad_artifact", reply
    assert "NaN" in reply["message"] and _cached(peer) == []


def test_a_seeded_job_with_fixed_threads_is_reproducible(textured_folder, tmp_path):
    """The real guarantee (README: Sharing the CPU): with a fixed thread count, equal jobs
    give bit-identical adapters, whatever else the machine does; another seed differs."""
    from device_agent import artifacts, cpu_budget

    env = {k: v for k, v in os.environ.items()
           if k not in cpu_budget.THREAD_COUNT_VARS + (cpu_budget.AUTO_MARK,)}
    env.update(PYTHONPATH=ROOT, DEVICE_AGENT_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "device_agent.worker", "--device", "cpu",
                             "--weights", "random"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, cwd=ROOT, env=env)
    peer = Peer(proc.stdout, proc.stdin)
    try:
        assert peer.receive()[0]["threads"]["adaptive"] is False
        weights = []
        for name, seed in (("a", 7), ("b", 7), ("c", 8)):
            params = {"backbone": "resnet18", "method": "da2", "epochs": 2, "batch_size": 4,
                      "resolution": 32, "lr": 0.01, "seed": seed}
            out = str(tmp_path / name)
            events = []
            _reply(peer, peer.send("train", warm_from="", job_id=name, domain=name,
                                   dataset_dir=textured_folder, out_dir=out, params=params),
                   events)
            assert _until_done(peer, events)["state"] == "succeeded"
            with open(os.path.join(out, artifacts.WEIGHTS_NAME), "rb") as handle:
                weights.append(handle.read())
        assert weights[0] == weights[1] and weights[0] != weights[2]
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("backbone,method,resolution,batch", [
    ("efficientnet_lite0", "da2", 64, 16), ("efficientnet_lite0", "finetune", 64, 16)])
def test_the_memory_plan_bounds_the_workers_peak(worker, tmp_path, backbone, method,
                                                 resolution, batch):
    """The planned peak (the worker's resident RSS at planning plus the job estimate) is at
    least the worker's RSS high-water mark over the whole job -- steps, the saved-activation
    measurement, evaluations at twice the batch, checkpoints -- and the estimate is not
    padded far past use (benchmarks/memory_plan.py measures more jobs)."""
    from device_agent.demo import write_digits_folder

    proc, peer = worker
    dataset = str(tmp_path / "digits")
    write_digits_folder(dataset, per_class=12)
    params = {"backbone": backbone, "method": method, "epochs": 2, "batch_size": batch,
              "resolution": resolution, "hflip": False}
    events = []
    _reply(peer, peer.send("train", warm_from="", job_id="plan", domain="digits",
                           dataset_dir=dataset, out_dir=str(tmp_path / "out"), params=params),
           events)
    done = _until_done(peer, events)
    assert done["state"] == "succeeded", done
    plan = next(e for e in events if e["event"] == "start")  # the planner's figures: 10^6 B
    measured = done["report"]["peak_rss_bytes"] / 1e6
    assert measured <= plan["estimated_peak_mb"], (plan, measured)
    growth = measured - plan["resident_mb"]
    assert growth <= plan["estimated_job_mb"] <= 3 * max(growth, 1.0), (plan, measured)
