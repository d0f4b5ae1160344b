"""The daemon core with a real worker: jobs train and become active, a kill -9 of the worker
mid-job resumes and succeeds, failures and cancellations are recorded."""
import io
import os
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from device_agent.daemon.runner import JobRunner
from device_agent.daemon.supervisor import WorkerSupervisor
from device_agent.store.db import JOB_STATES, Store
from device_agent.store.layout import DataPaths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = {"backbone": "resnet18", "batch_size": 4, "resolution": 32, "val_fraction": 0.34,
        "lr": 0.01}


@pytest.fixture
def daemon(tmp_path):
    paths = DataPaths(str(tmp_path / "data"))
    store = Store(paths.database)
    runner = JobRunner(store, paths, poll_s=0.05)
    command = [sys.executable, "-m", "device_agent.worker", "--device", "cpu",
               "--weights", "random"]
    supervisor = WorkerSupervisor(command, runner.on_event, runner.on_worker_exit,
                                  env=dict(os.environ, PYTHONPATH=ROOT), backoff=(0.2, 0.5))
    runner.attach(supervisor)
    supervisor.start()
    assert supervisor.wait_ready(120)
    runner.start()
    yield store, runner, supervisor, paths
    runner.stop()
    supervisor.stop()
    store.close()


def wait_for(predicate, timeout=240.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    raise AssertionError("timed out")


def _job(store, folder, **params):
    store.ensure_domain("colours")
    dataset = store.add_dataset("colours", folder, {})
    return store.enqueue_job("colours", dataset, dict(FAST, **params))["id"]


def _settled(store, job_id):
    return store.get_job(job_id)["state"] in ("succeeded", "failed", "cancelled")


def test_a_job_trains_its_adapter_becomes_active_and_serves(daemon, small_folder):
    store, _, supervisor, paths = daemon
    job_id = _job(store, small_folder, epochs=2)
    wait_for(lambda: _settled(store, job_id))
    job = store.get_job(job_id)
    assert job["state"] == "succeeded", job["error"]
    assert job["report"]["adapter_bytes"] > 0 and job["report"]["epochs"] == 2
    adapter = store.active_adapter("colours")
    assert adapter["version"] == 1 and not os.path.exists(paths.job(job_id))
    assert "adapter_config.json" in os.listdir(adapter["path"])
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (220, 30, 30)).save(buffer, "PNG")
    data = supervisor.request("predict", buffer.getvalue(), domain="colours",
                              adapter_dir=adapter["path"], top_k=1,
                              parts=[len(buffer.getvalue())])
    assert data["predictions"][0][0]["class"] in ("blue", "green", "red")


def test_kill_9_of_the_worker_mid_job_resumes_and_succeeds(daemon, small_folder):
    store, _, supervisor, paths = daemon
    job_id = _job(store, small_folder, epochs=30, batch_size=2)
    checkpoint = os.path.join(paths.job(job_id), "checkpoint", "state.json")
    wait_for(lambda: os.path.exists(checkpoint))
    first_pid = supervisor.pid
    os.kill(first_pid, signal.SIGKILL)
    wait_for(lambda: _settled(store, job_id))
    job = store.get_job(job_id)
    assert job["state"] == "succeeded", job["error"]
    assert job["attempts"] == 2 and job["report"]["resumed"] is True
    assert supervisor.restarts >= 1 and supervisor.pid != first_pid
    kinds = [e["kind"] for e in store.events(job_id)]
    states = [k for k in kinds if k in JOB_STATES]
    assert states == ["queued", "running", "interrupted", "queued", "running", "succeeded"]
    assert kinds.count("start") == 2 and kinds.count("epoch") >= 30  # one may repeat
    history = job["progress"]["history"]
    assert [h["epoch"] for h in history] == list(range(30))  # resumed epochs not repeated
    assert store.integrity_check() == "ok"


def test_a_failed_job_is_recorded_and_the_queue_moves_on(daemon, small_folder):
    store, _, _, _ = daemon
    bad = _job(store, small_folder, epochs=1, bogus=1)
    good = _job(store, small_folder, epochs=1)
    wait_for(lambda: _settled(store, good))
    assert store.get_job(bad)["state"] == "failed"
    assert "unknown training parameters" in store.get_job(bad)["error"]
    assert store.get_job(good)["state"] == "succeeded"


def test_jobs_can_be_cancelled_queued_or_running(daemon, small_folder):
    store, runner, _, paths = daemon
    running = _job(store, small_folder, epochs=200, batch_size=2)
    queued = _job(store, small_folder, epochs=1)
    wait_for(lambda: os.path.exists(os.path.join(paths.job(running), "checkpoint")))
    assert runner.cancel(queued)["state"] == "cancelled"
    runner.cancel(running)
    wait_for(lambda: _settled(store, running))
    assert store.get_job(running)["state"] == "cancelled"
    assert store.get_domain("colours")["active_version"] is None


def test_the_daemon_core_never_imports_torch():
    code = ("import sys; import device_agent.daemon.supervisor, device_agent.daemon.runner, "
            "device_agent.store.db, device_agent.store.datasets, device_agent.protocol.peer, "
            "device_agent.errors; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=ROOT,
                         universal_newlines=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.stdout.strip() == "False"


def test_back_to_back_jobs_both_succeed(daemon, small_folder):
    """The next job is dispatched the moment the previous one ends: the worker must already
    be free when it announces the end."""
    store, _, _, _ = daemon
    first = _job(store, small_folder, epochs=1)
    second = _job(store, small_folder, epochs=1)
    wait_for(lambda: _settled(store, second))
    assert store.get_job(first)["state"] == "succeeded"
    assert store.get_job(second)["state"] == "succeeded", store.get_job(second)["error"]
    assert [v["version"] for v in store.versions("colours")] == [1, 2]


def test_a_worker_silent_before_its_hello_is_killed_and_restarted(tmp_path):
    """HELLO_TIMEOUT_S enforced: a worker hung before its hello (here: asleep) does not
    leave the supervisor "starting" forever."""
    starts = tmp_path / "starts"
    hang = "open(%r, 'a').write('x'); import time; time.sleep(120)" % str(starts)
    supervisor = WorkerSupervisor([sys.executable, "-c", hang], lambda header: None,
                                  lambda: None, backoff=(0.1,), hello_timeout_s=0.5)
    supervisor.start()
    try:
        wait_for(lambda: starts.exists() and len(starts.read_text()) >= 3, timeout=60)
        assert not supervisor.ready and supervisor.restarts >= 2
        assert supervisor.last_exit_code == -signal.SIGKILL
    finally:
        supervisor.stop(timeout=1)
