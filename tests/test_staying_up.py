"""A daemon that stays up (issue 16: items 1, 2, 3, 7's metrics, 13's error bodies): a
locked store mid-job heals, a dead or stuck thread fails /healthz, nothing is read before
the token is checked, idle and slow clients cannot lock others out, made-up methods do not
grow /metrics, and every error is problem+json. Real processes, loopback, bounded loops."""
import contextlib
import http.client
import json
import os
import socket
import sqlite3
import stat
import sys
import tempfile
import threading
import time

import live_daemon
import pytest
from api_calls import call as api_call
from api_calls import multipart, zipped

pytest.importorskip("fastapi")  # a live daemon: not on the torch-only 3.6 stage

TOKEN = "staying-up-token"
HEADER_TIMEOUT_S = 2


def call(base, method, path, body=None, token=TOKEN, **kwargs):
    return api_call(base, method, path, body, token=token, **kwargs)


def rss_kib(pid: int) -> int:
    with open("/proc/%d/status" % pid) as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


def temp_files_open(pid: int, data_dir: str) -> list:
    """Files the process holds open outside its data dir that live in a temp dir (a spooled
    upload shows as '/tmp/... (deleted)')."""
    found = []
    for fd in os.listdir("/proc/%d/fd" % pid):
        if int(fd) <= 2:  # stdout and stderr: pytest's capture files, inherited
            continue
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if (target.startswith(tempfile.gettempdir() + "/") and "(deleted)" in target
                and not target.startswith(os.path.realpath(data_dir) + "/")):
            found.append(target)
    return found


def raw_request(port: int, head: bytes, body_chunks=(), timeout: float = 10.0):
    """Send ``head`` and as much of the body as the server takes; (status line, seconds)."""
    started = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(head)
        for chunk in body_chunks:
            try:
                sock.sendall(chunk)
            except OSError:  # refused and closed: what we want
                break
        answer = b""
        while b"\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return answer.split(b"\r\n")[0].decode(), time.monotonic() - started
    finally:
        sock.close()


def port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("up"))
    proc, base = live_daemon.start(data_dir, TOKEN,
                                   DEVICE_AGENT_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
                                   DEVICE_AGENT_MAX_UPLOAD_MB="40")
    yield proc, base, data_dir
    live_daemon.stop(proc)


def test_bodies_without_a_token_are_refused_before_they_are_read(daemon):
    proc, base, data_dir = daemon
    port = port_of(base)
    call(base, "GET", "/v1/domains")  # warm up: first requests allocate lazily
    before = rss_kib(proc.pid)
    megabyte = b"x" * (1 << 20)
    head = (b"POST /v1/domains/d/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (100 << 20))
    status, seconds = raw_request(port, head, [megabyte] * 100)
    assert status.startswith("HTTP/1.1 401") and seconds < 5, (status, seconds)
    boundary = b"b0undary"
    part = (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"file\"; "
            b"filename=\"d.zip\"\r\nContent-Type: application/zip\r\n\r\n")
    head = (b"POST /v1/domains/d/datasets HTTP/1.1\r\nHost: x\r\nContent-Type: "
            b"multipart/form-data; boundary=" + boundary + b"\r\nContent-Length: %d\r\n\r\n"
            % (len(part) + (30 << 20)))
    held = []

    def watch_temp_files():
        for _ in range(20):
            held.extend(temp_files_open(proc.pid, data_dir))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_temp_files)
    watcher.start()
    status, seconds = raw_request(port, head, [part] + [megabyte] * 30)
    watcher.join()
    assert status.startswith("HTTP/1.1 401") and seconds < 5, (status, seconds)
    assert held == []
    grown_mb = (rss_kib(proc.pid) - before) / 1024.0
    assert grown_mb < 10, "the API grew %.1f MB on refused bodies" % grown_mb


def test_json_bodies_are_small_and_uploads_spool_in_the_data_dir(daemon):
    proc, base, data_dir = daemon
    status, body = call(base, "POST", "/v1/domains/d/jobs", b"[" + b"1," * 40000 + b"1]")
    assert status == 413 and body["code"] == "payload_too_large"
    # an authenticated upload bigger than Starlette's in-memory spool (1 MB): its file is
    # held open inside the data dir while the form is parsed, never in the system temp dir
    boundary = b"b0undary"
    part = (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"file\"; "
            b"filename=\"d.zip\"\r\nContent-Type: application/zip\r\n\r\n")
    data = b"z" * (3 << 20)
    tail = b"\r\n--" + boundary + b"--\r\n"
    sock = socket.create_connection(("127.0.0.1", port_of(base)), timeout=30)
    try:
        sock.sendall(b"POST /v1/domains/spooled/datasets HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Type: "
                     b"multipart/form-data; boundary=" + boundary + b"\r\nContent-Length: %d"
                     b"\r\n\r\n" % (len(part) + len(data) + len(tail)) + part + data)
        spooled = []
        for _ in range(50):
            spooled = [os.readlink("/proc/%d/fd/%s" % (proc.pid, fd))
                       for fd in os.listdir("/proc/%d/fd" % proc.pid) if int(fd) > 2
                       and "(deleted)" in os.readlink("/proc/%d/fd/%s" % (proc.pid, fd))]
            if spooled:
                break
            time.sleep(0.1)
        assert spooled and all(p.startswith(os.path.realpath(data_dir)) for p in spooled), spooled
        assert temp_files_open(proc.pid, data_dir) == []
        sock.sendall(tail)
        assert sock.recv(100).startswith(b"HTTP/1.1 4")  # not a zip: refused, as it should
    finally:
        sock.close()


def test_idle_and_slow_clients_cannot_lock_others_out(daemon):
    proc, base, _ = daemon
    port = port_of(base)
    idle = []
    try:
        for number in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            if number % 2:  # a slowloris: a request head that never ends
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            idle.append(sock)
        started = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        response.read()
        seconds = time.monotonic() - started
        assert response.status == 200 and seconds < 1.0, (response.status, seconds)
        # every one of them is dropped once the head deadline passes
        deadline = time.monotonic() + HEADER_TIMEOUT_S + 8
        for sock in idle:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                data = sock.recv(100)
            except ConnectionResetError:
                data = b""
            assert data == b"", "an idle connection was answered, not dropped"
    finally:
        for sock in idle:
            sock.close()


def test_made_up_methods_do_not_grow_metrics(daemon):
    proc, base, _ = daemon

    def metrics_size() -> int:
        request = http.client.HTTPConnection("127.0.0.1", port_of(base), timeout=30)
        request.request("GET", "/metrics", headers={"Authorization": "Bearer " + TOKEN})
        return len(request.getresponse().read())

    before = metrics_size()
    connection = http.client.HTTPConnection("127.0.0.1", port_of(base), timeout=30)
    for number in range(3000):
        connection.request("M%d" % number, "/healthz/%d" % number)
        connection.getresponse().read()
    grown = metrics_size() - before
    assert grown < 8000, "/metrics grew %d bytes" % grown


def test_every_error_is_problem_json_without_paths(daemon):
    proc, base, data_dir = daemon
    connection = http.client.HTTPConnection("127.0.0.1", port_of(base), timeout=30)
    auth = {"Authorization": "Bearer " + TOKEN}
    cases = [("GET", "/no/such/route", {}, None, 404, "not_found"),
             ("DELETE", "/healthz", {}, None, 405, "method_not_allowed"),
             ("POST", "/v1/domains/d/datasets",
              dict(auth, **{"Content-Type": "multipart/form-data"}), b"no boundary",
              400, "bad_request"),  # Starlette's form parser refuses it
             ("GET", "/v1/domains", {}, None, 401, "unauthorized")]
    for method, path, headers, body, status, code in cases:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        text = response.read().decode()
        assert response.status == status, (path, response.status, text)
        assert response.getheader("Content-Type") == "application/problem+json", (path, text)
        assert '"code": "%s"' % code in text.replace('":"', '": "'), text
        assert data_dir not in text and sys.prefix not in text
        if response.getheader("Connection") == "close":
            connection = http.client.HTTPConnection("127.0.0.1", port_of(base), timeout=30)
    mode = stat.S_IMODE(os.stat(data_dir).st_mode)
    assert mode == 0o700, oct(mode)
    assert stat.S_IMODE(os.stat(os.path.join(data_dir, "agent.db")).st_mode) == 0o600


@pytest.mark.slow
def test_a_store_locked_mid_job_heals(tmp_path_factory, small_folder):
    """An operator's sqlite3 shell holds the write lock longer than the store's busy timeout
    (3 s here: the default 30 s would only make the test 30 s longer) while a job trains: the
    job still ends succeeded, supervision goes on."""
    data_dir = str(tmp_path_factory.mktemp("locked"))  # not inside the uploaded folder
    log_path = os.path.join(str(tmp_path_factory.mktemp("log")), "daemon.log")
    log = open(log_path, "w")
    proc, base = live_daemon.start(data_dir, TOKEN, stderr=log,
                                   DEVICE_AGENT_STORE_BUSY_TIMEOUT_S="3")
    try:
        body, content_type = multipart([("file", ("d.zip", zipped(small_folder)))])
        assert call(base, "POST", "/v1/domains/locked/datasets", body, token=TOKEN,
                    content_type=content_type)[0] == 201
        status, job = call(base, "POST", "/v1/domains/locked/jobs",
                           {"backbone": "resnet18", "resolution": 32, "batch_size": 4,
                            "epochs": 40}, token=TOKEN)  # outlasts the lock here (were
        # it to end inside the lock, its last writes would be the ones refused and retried)
        assert status == 202, job
        job_path = "/v1/jobs/" + job["job_id"]
        deadline = time.time() + 120
        while not call(base, "GET", job_path, token=TOKEN)[1]["progress"].get("step"):
            assert time.time() < deadline, "the job never made progress"
            time.sleep(0.1)  # training: a progress write is due every step
        operator = sqlite3.connect(os.path.join(data_dir, "agent.db"), isolation_level=None)
        operator.execute("BEGIN EXCLUSIVE")
        locked_until = time.time() + 10  # > 3 s: writes are refused, kept, retried
        while time.time() < locked_until:  # the probes answer while the store is locked
            started = time.monotonic()
            connection = http.client.HTTPConnection("127.0.0.1", port_of(base), timeout=5)
            connection.request("GET", "/healthz")
            connection.getresponse().read()
            assert time.monotonic() - started < 2
            time.sleep(2)
        operator.execute("ROLLBACK")
        operator.close()
        deadline = time.time() + 240
        while True:
            state = call(base, "GET", job_path, token=TOKEN)[1]["state"]
            if state in ("succeeded", "failed"):
                break
            assert time.time() < deadline, "the job is still %s" % state
            time.sleep(0.5)
        assert state == "succeeded"
        status, health = call(base, "GET", "/healthz", token=None)
        assert status == 200 and health["worker"]["state"] == "ready", health
        assert call(base, "GET", "/v1/domains/locked", token=TOKEN)[1]["active_version"] == 1
        with open(log_path) as daemon_log:  # the store did refuse a write, and it healed
            assert "database is locked" in daemon_log.read()
    finally:
        live_daemon.stop(proc)
        log.close()


def _in_process_app(tmp_path, **settings):
    """The app with its real threads, but a worker command that exits at once (the
    supervisor restarts it with backoff): cheap, and enough to watch the threads."""
    from device_agent.api.app import create_app
    from device_agent.api.settings import Settings

    return create_app(Settings(data_dir=str(tmp_path), token=TOKEN, worker_python="/bin/true",
                               telemetry_source="linux", telemetry_interval_s=0.2,
                               **settings))


@contextlib.contextmanager
def serving(app):
    """uvicorn in a thread of this process, so a test can reach into the app's threads."""
    import uvicorn

    port = live_daemon.free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "the app did not start"
        time.sleep(0.05)
    try:
        yield lambda path: _get(port, path)
    finally:
        server.should_exit = True
        thread.join(30)


def _get(port: int, path: str):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", path)
    response = connection.getresponse()
    text = response.read().decode()
    return response.status, response.getheader("Content-Type"), text


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_or_stuck_thread_fails_healthz(tmp_path):
    app = _in_process_app(tmp_path, stuck_after_s=1.0)
    with serving(app) as get:
        assert get("/healthz")[0] == 200
        release = threading.Event()
        app.state.sampler.worker = lambda: release.wait(30) and {}  # a hang, not a wait
        deadline = time.time() + 10
        while get("/healthz")[0] != 503:
            assert time.time() < deadline, "a stuck sampler did not fail /healthz"
            time.sleep(0.2)
        status, content_type, text = get("/healthz")
        assert content_type == "application/problem+json"
        assert json.loads(text)["code"] == "unhealthy" and "telemetry" in text
        release.set()
        app.state.sampler.worker = dict
        deadline = time.time() + 10
        while get("/healthz")[0] != 200:
            assert time.time() < deadline, "/healthz did not recover with the sampler"
            time.sleep(0.2)

        def die() -> None:
            raise SystemExit("killed")  # not an Exception: the guard lets it end the thread

        app.state.runner._unsettled["doomed"] = (die, "dying")  # run by its next iteration
        deadline = time.time() + 10
        while "job-runner" not in get("/healthz")[2]:
            assert time.time() < deadline, "a dead runner did not fail /healthz"
            time.sleep(0.2)
        assert get("/healthz")[0] == 503


def test_a_damaged_store_makes_readyz_503_not_500(tmp_path):
    app = _in_process_app(tmp_path)
    with serving(app) as get:
        def malformed() -> str:
            raise sqlite3.DatabaseError("database disk image is malformed")

        app.state.store.integrity_check = malformed
        status, content_type, text = get("/readyz")
        assert status == 503 and json.loads(text)["code"] == "not_ready", text


def test_a_full_disk_at_the_promotion_commit_heals(tmp_path):
    """The store refuses the promotion twice (SQLITE_FULL), then takes it: the job ends
    succeeded with its adapter active, and the runner never starts another job meanwhile."""
    from device_agent.daemon.runner import JobRunner
    from device_agent.store.db import Store
    from device_agent.store.layout import DataPaths

    paths = DataPaths(str(tmp_path))
    store = Store(paths.database)
    store.ensure_domain("full")
    dataset = store.add_dataset("full", str(tmp_path), {"classes": ["a"]})
    job_id = store.enqueue_job("full", dataset, {})["id"]
    store.claim_next_job()
    os.makedirs(paths.job(job_id))
    real_promote, refusals = store.promote_adapter, []

    def full_disk(*args):
        if len(refusals) < 2:
            refusals.append(1)
            raise sqlite3.OperationalError("database or disk is full")
        return real_promote(*args)

    store.promote_adapter = full_disk
    runner = JobRunner(store, paths, poll_s=0.05)
    runner.current = job_id
    runner.on_event({"kind": "job_done", "job_id": job_id, "state": "succeeded",
                     "report": {"ok": 1}, "error": {}})
    assert store.get_job(job_id)["state"] == "running" and runner.current == job_id
    runner.supervisor = type("Ready", (), {"ready": True})()
    runner.start()
    try:
        deadline = time.time() + 20
        while store.get_job(job_id)["state"] != "succeeded":
            assert time.time() < deadline, "the promotion was never retried"
            time.sleep(0.1)
    finally:
        runner.stop()
    assert runner.current is None and store.active_adapter("full") is not None
    assert runner.heartbeat.failures >= 2 and runner.heartbeat.problem() is None
