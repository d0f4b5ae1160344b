"""Faults with real processes: kill -9 of the worker inside a checkpoint write, of the whole
daemon mid-job and mid-promotion, and a full disk. After each, the job resumes or fails
cleanly, the earlier domain still answers identically, and the store is intact."""
import io
import os
import signal
import sqlite3
import sys
import time

import live_daemon
import pytest
from api_calls import call, multipart, zipped
from PIL import Image

pytest.importorskip("fastapi")  # a live daemon: not on the torch-only 3.6 stage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "fault-token"
PARAMS = {"backbone": "resnet18", "resolution": 32, "batch_size": 4}
pytestmark = pytest.mark.slow


class Daemon(object):
    def __init__(self, data_dir, **env):
        self.data_dir = data_dir
        self.proc, self.base = live_daemon.start(data_dir, TOKEN, **env)

    def ready(self):
        return live_daemon.is_ready(self.base)

    def call(self, method, path, body=None, **kwargs):
        return call(self.base, method, path, body, token=TOKEN, **kwargs)

    @staticmethod
    def wait(check, timeout, message):
        deadline = time.time() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.time() > deadline:
                raise AssertionError(message)
            time.sleep(0.2)

    def job(self, job_id):
        return self.call("GET", "/v1/jobs/" + job_id)[1]

    def settled(self, job_id, timeout=240):
        return self.wait(lambda: self.job(job_id)["state"] in ("succeeded", "failed")
                         and self.job(job_id), timeout, "job %s did not settle" % job_id)

    def worker_pid(self):
        return self.call("GET", "/healthz")[1]["worker"]["pid"]

    def kill(self):
        """A power cut: SIGKILL to the worker and the API, nothing flushed."""
        pid = self.worker_pid()
        self.proc.send_signal(signal.SIGKILL)
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(30)

    def stop(self):
        live_daemon.stop(self.proc)


def _upload_and_train(daemon, folder, domain, **params):
    body, content_type = multipart([("file", ("d.zip", zipped(folder)))])
    assert daemon.call("POST", "/v1/domains/%s/datasets" % domain, body,
                       content_type=content_type)[0] == 201
    status, job = daemon.call("POST", "/v1/domains/%s/jobs" % domain, dict(PARAMS, **params))
    assert status == 202, job
    return job["job_id"]


def _png(rgb):
    buffer = io.BytesIO()
    Image.new("RGB", (24, 24), rgb).save(buffer, "PNG")
    return buffer.getvalue()


def _predict(daemon, domain):
    body, content_type = multipart([("file", ("a.png", _png((200, 40, 30)))),
                                    ("file", ("b.png", _png((30, 40, 200))))])
    status, result = daemon.call("POST", "/v1/domains/%s/predict?top_k=3" % domain, body,
                                 content_type=content_type)
    assert status == 200, result
    return result["predictions"]


def _integrity(data_dir):
    with sqlite3.connect(os.path.join(data_dir, "agent.db")) as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0]


def _stray_files(data_dir):
    """Temporary or half-written files anywhere in the data dir."""
    return [os.path.join(d, n) for d, _, names in os.walk(data_dir) for n in names
            if n.startswith((".tmp-", ".fetch-")) or "staging" in d]


@pytest.fixture
def stable(tmp_path_factory, small_folder):
    """A data dir whose domain "stable" is trained, with its predictions recorded."""
    data_dir = str(tmp_path_factory.mktemp("data"))
    daemon = Daemon(data_dir)
    try:
        job_id = _upload_and_train(daemon, small_folder, "stable", epochs=1)
        assert daemon.settled(job_id)["state"] == "succeeded"
        predictions = _predict(daemon, "stable")
    finally:
        daemon.stop()
    return data_dir, predictions


def _check_unharmed(daemon, predictions):
    assert _predict(daemon, "stable") == predictions
    assert daemon.call("GET", "/v1/domains/stable")[1]["active_version"] == 1
    assert _integrity(daemon.data_dir) == "ok"
    assert _stray_files(daemon.data_dir) == []


def test_kill_9_of_the_worker_between_a_checkpoints_two_files(stable, small_folder):
    data_dir, predictions = stable
    daemon = Daemon(data_dir, DEVICE_AGENT_FAILPOINT="checkpoint.between_files@2")
    try:
        job_id = _upload_and_train(daemon, small_folder, "second", epochs=3)
        job = daemon.settled(job_id)
        # Each worker died at its second checkpoint; the third resumed and finished.
        assert job["state"] == "succeeded" and job["attempts"] == 3, job
        assert daemon.call("GET", "/healthz")[1]["worker"]["restarts"] == 2
        _check_unharmed(daemon, predictions)
        assert not os.path.exists(os.path.join(data_dir, "jobs", job_id))
    finally:
        daemon.stop()


def test_kill_9_of_the_whole_daemon_mid_job_then_restart(stable, small_folder):
    data_dir, predictions = stable
    daemon = Daemon(data_dir)
    first = _upload_and_train(daemon, small_folder, "second", epochs=25, batch_size=2)
    status, queued = daemon.call("POST", "/v1/domains/stable/jobs", dict(PARAMS, epochs=1))
    checkpoint = os.path.join(data_dir, "jobs", first, "checkpoint", "state.json")
    daemon.wait(lambda: os.path.exists(checkpoint), 120, "no checkpoint")
    daemon.kill()
    assert _integrity(data_dir) == "ok"
    daemon = Daemon(data_dir)
    try:
        assert daemon.job(queued["job_id"])["state"] in ("queued", "running", "succeeded")
        job = daemon.settled(first)
        assert job["state"] == "succeeded" and job["attempts"] == 2, job
        assert daemon.settled(queued["job_id"])["state"] == "succeeded"
        # The queued job retrained "stable" (version 2): roll back, and version 1 answers
        # exactly as before the power cut.
        assert daemon.call("POST", "/v1/domains/stable/activate", {"version": 1})[0] == 200
        _check_unharmed(daemon, predictions)
    finally:
        daemon.stop()


def test_kill_9_of_the_daemon_in_the_middle_of_a_promotion(stable, small_folder):
    data_dir, predictions = stable
    daemon = Daemon(data_dir, DEVICE_AGENT_FAILPOINT="promote.after_rename")
    job_id = _upload_and_train(daemon, small_folder, "second", epochs=1)
    assert daemon.proc.wait(120) == -signal.SIGKILL  # the API died between rename and commit
    assert os.path.isdir(os.path.join(data_dir, "domains", "second", "adapters", job_id))
    assert not os.path.exists(os.path.join(data_dir, "jobs", job_id))  # moved, not recorded
    daemon = Daemon(data_dir)
    try:
        job = daemon.job(job_id)
        assert job["state"] == "succeeded", job  # the promotion was completed at start-up
        domain = daemon.call("GET", "/v1/domains/second")[1]
        assert domain["active_version"] == 1 and domain["last_job"]["id"] == job_id
        assert len(_predict(daemon, "second")) == 2
        _check_unharmed(daemon, predictions)
    finally:
        daemon.stop()


def test_a_full_disk_fails_the_job_clearly_and_damages_nothing(stable, small_folder,
                                                                tmp_path_factory):
    data_dir, predictions = stable
    wrapper = tmp_path_factory.mktemp("bin") / "worker-python"
    wrapper.write_text("#!/bin/sh\nulimit -f 128\nexec %s \"$@\"\n" % sys.executable)
    wrapper.chmod(0o755)
    daemon = Daemon(data_dir, DEVICE_AGENT_WORKER_PYTHON=str(wrapper))
    try:
        job_id = _upload_and_train(daemon, small_folder, "second", epochs=1)
        job = daemon.settled(job_id)
        assert job["state"] == "failed" and "too large" in job["error"].lower(), job
        assert daemon.call("GET", "/v1/domains/second")[1]["active_version"] is None
        assert not os.path.exists(os.path.join(data_dir, "jobs", job_id))
        assert daemon.ready()  # the worker lives on
        _check_unharmed(daemon, predictions)
    finally:
        daemon.stop()
