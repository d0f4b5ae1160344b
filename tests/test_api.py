"""The real daemon: uvicorn on a free loopback port with the real worker process."""
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile

import live_daemon
import pytest
from live_daemon import free_port
from PIL import Image

pytest.importorskip("fastapi")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "test-token-" + uuid.uuid4().hex
UPLOAD_LIMIT_MB = 1
REPLAY = os.path.join(ROOT, "deploy", "replay", "nano-training.log")


def call(base, method, path, body=None, token=TOKEN, content_type="application/json"):
    headers = {"Content-Type": content_type} if body is not None else {}
    if token is not None:
        headers["Authorization"] = "Bearer " + token
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            text = response.read()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def multipart(files):
    boundary = uuid.uuid4().hex
    parts = []
    for name, (filename, data) in files:
        parts.append(("--%s\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"%s\"\r\n"
                      "Content-Type: application/octet-stream\r\n\r\n" % (boundary, name, filename)
                      ).encode() + data + b"\r\n")
    body = b"".join(parts) + ("--%s--\r\n" % boundary).encode()
    return body, "multipart/form-data; boundary=" + boundary


def png(rgb):
    buffer = io.BytesIO()
    Image.new("RGB", (24, 24), rgb).save(buffer, "PNG")
    return buffer.getvalue()


def zipped(folder):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for directory, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(directory, name)
                archive.write(path, os.path.relpath(path, folder))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("data"))
    proc, base = live_daemon.start(data_dir, TOKEN,
                                   DEVICE_AGENT_MAX_UPLOAD_MB=str(UPLOAD_LIMIT_MB),
                                   DEVICE_AGENT_TELEMETRY_SOURCE="replay",
                                   DEVICE_AGENT_TELEMETRY_REPLAY=REPLAY,
                                   DEVICE_AGENT_TELEMETRY_INTERVAL_S="0.2")
    yield base, data_dir
    live_daemon.stop(proc)


BAD_AUTHORIZATIONS = [None, "", "Bearer", "Bearer ", "Bearer wrong", "Bearer " + TOKEN + "x",
                      "Bearer " + TOKEN[:-1], "Bearer  " + TOKEN, TOKEN, "Token " + TOKEN,
                      "Basic dXNlcjpwYXNz", "Bearer " + TOKEN.upper(), "Bearer " + "A" * 5000]


def _raw_status(base, method, path, authorization):
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    request = urllib.request.Request(base + path, data=b"{}" if method != "GET" else None,
                                     method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def test_every_v1_route_refuses_missing_and_wrong_tokens(server):
    """The auth matrix, generated from the app's own route table (new routes are covered)."""
    from device_agent.api.app import create_app
    from device_agent.api.settings import Settings

    base, data_dir = server
    app = create_app(Settings(data_dir=data_dir, token="unused"))
    routes = [(method.upper(), path) for path, operations in app.openapi()["paths"].items()
              if path.startswith("/v1") or path == "/metrics" for method in operations]
    assert len(routes) >= 15 and ("GET", "/metrics") in routes
    for method, path in routes:
        concrete = path.replace("{domain}", "colours").replace("{job_id}", "nope")
        for authorization in BAD_AUTHORIZATIONS:
            status, body = _raw_status(base, method, concrete, authorization)
            assert status == 401, (method, path, authorization, status)
            assert body["code"] == "unauthorized" and body["detail"]
    assert call(base, "GET", "/healthz", token=None)[0] == 200
    assert _raw_status(base, "GET", "/v1/domains", "Bearer " + TOKEN)[0] == 200


def test_a_generated_token_file_is_private(tmp_path):
    from device_agent.api.app import create_app
    from device_agent.api.settings import Settings

    app = create_app(Settings(data_dir=str(tmp_path), token=None))
    path = tmp_path / "token"
    assert (path.stat().st_mode & 0o777) == 0o600
    assert len(app.state.token) >= 32 and path.read_text().strip() == app.state.token
    again = create_app(Settings(data_dir=str(tmp_path), token=None))
    assert again.state.token == app.state.token  # kept across restarts


def test_upload_train_status_predict(server, small_folder):
    base, _ = server
    body, content_type = multipart([("file", ("colours.zip", zipped(small_folder)))])
    status, summary = call(base, "POST", "/v1/domains/colours/datasets", body,
                           content_type=content_type)
    assert status == 201, summary
    assert summary["classes"] == ["blue", "green", "red"]
    status, job = call(base, "POST", "/v1/domains/colours/jobs",
                       {"backbone": "resnet18", "epochs": 2, "batch_size": 4, "resolution": 32})
    assert status == 202, job
    record = wait_for_job(base, job["job_id"])
    assert record["state"] == "succeeded", record
    assert record["progress"]["fraction"] == 1.0 and record["progress"]["eta_s"] == 0.0
    assert [h["epoch"] for h in record["history"]] == [0, 1]
    assert 0 <= record["val_top1"] <= 1 and record["adapter_bytes"] > 0
    memory, latency = record["memory"], record["latency"]
    assert memory["batch_size"] == 4 and memory["saved_activation_mb"] > 0
    assert memory["step_peak_rss_mb"] > 50 and memory["worker_peak_rss_mb"] > 50
    assert latency["step_ms_p50"] > 0 and latency["step_ms_p95"] >= latency["step_ms_p50"]
    assert latency["images_per_sec"] > 0
    status, domain = call(base, "GET", "/v1/domains/colours")
    assert domain["active_version"] == 1 and domain["method"] == "da2"
    assert domain["classes"] == ["blue", "green", "red"]
    assert domain["adapter_bytes"] > 0 and len(domain["versions"]) == 1
    assert domain["last_job"]["id"] == job["job_id"]
    assert domain["last_job"]["latency"]["step_ms_p50"] > 0
    telemetry = wait_for(lambda: call(base, "GET", "/v1/jobs/" + job["job_id"])[1]["telemetry"],
                         lambda t: t["samples"] > 0)
    assert telemetry["peak_ram_mb"] > 1000 and telemetry["worker_peak_rss_mb"] > 50
    assert telemetry["energy_j"] > 0 and telemetry["peak_power_mw"] >= telemetry["avg_power_mw"]
    assert telemetry["max_temp_c"] >= 40 and telemetry["duration_s"] > 0
    body, content_type_images = multipart([("file", ("a.png", png((220, 30, 30)))),
                                           ("file", ("b.png", png((30, 40, 220))))])
    status, result = call(base, "POST", "/v1/domains/colours/predict?top_k=2", body,
                          content_type=content_type_images)
    assert status == 200, result
    assert len(result["predictions"]) == 2 and len(result["predictions"][0]) == 2
    archive = download(base, "/v1/domains/colours/adapter")
    assert sorted(zipfile.ZipFile(io.BytesIO(archive)).namelist()) == [
        "adapter_config.json", "adapter_model.safetensors"]
    upload, content_type = multipart([("file", ("adapter.zip", archive))])
    status, copy = call(base, "PUT", "/v1/domains/colours-copy/adapter", upload,
                        content_type=content_type)
    assert status == 201, copy
    assert copy["active_version"] == 1 and copy["method"] == "da2"
    status, again = call(base, "POST", "/v1/domains/colours-copy/predict?top_k=2", body,
                         content_type=content_type_images)
    assert status == 200 and again["predictions"] == result["predictions"]


def wait_for(fetch, ok, timeout=30):
    deadline = time.time() + timeout
    while True:
        value = fetch()
        if ok(value) or time.time() > deadline:
            return value
        time.sleep(0.2)


def wait_for_job(base, job_id, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, record = call(base, "GET", "/v1/jobs/" + job_id)
        assert status == 200, record
        if record["state"] in ("succeeded", "failed", "cancelled"):
            return record
        time.sleep(0.3)
    raise AssertionError("job %s did not finish" % job_id)


def test_batch_auto_and_an_impossible_memory_limit(server, small_folder):
    base, _ = server
    body, content_type = multipart([("file", ("colours.zip", zipped(small_folder)))])
    assert call(base, "POST", "/v1/domains/sized/datasets", body,
                content_type=content_type)[0] == 201
    params = {"backbone": "resnet18", "epochs": 1, "resolution": 32}
    status, job = call(base, "POST", "/v1/domains/sized/jobs", dict(params, batch_size="auto"))
    record = wait_for_job(base, job["job_id"])
    assert record["state"] == "succeeded", record
    assert record["params"]["batch_size"] == "auto"
    assert record["memory"]["batch_size"] >= 2 and record["memory"]["estimated_peak_mb"] > 0
    # 64 MB is below what the worker itself holds: refused before the first step.
    status, job = call(base, "POST", "/v1/domains/sized/jobs", dict(params, memory_limit_mb=64))
    record = wait_for_job(base, job["job_id"])
    assert record["state"] == "failed" and "memory_limit_mb" in record["error"], record
    assert call(base, "GET", "/readyz", token=None)[0] == 200  # the worker lives on
    status, domain = call(base, "GET", "/v1/domains/sized")
    assert domain["active_version"] == 1  # the good version stays active


def _raw_post(base, path, headers, chunks):
    """Send a request by hand (chunked if asked); returns the status and the body's JSON."""
    host, port = base.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        head = "POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n" % (path, TOKEN)
        sock.sendall((head + "".join("%s: %s\r\n" % h for h in headers) + "\r\n").encode())
        sent = 0
        try:
            for chunk in chunks:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading: refused early
        response = b""
        while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            response += data
    status = int(response.split(b" ", 2)[1])
    return status, json.loads(response.split(b"\r\n\r\n", 1)[1]), sent


def test_uploads_over_the_limit_are_refused_as_they_stream(server):
    base, data_dir = server
    limit = UPLOAD_LIMIT_MB << 20
    declared = [("Content-Type", "multipart/form-data; boundary=x"),
                ("Content-Length", str(50 * limit))]
    status, problem, _ = _raw_post(base, "/v1/domains/big/datasets", declared, [])
    assert status == 413 and problem["code"] == "payload_too_large"
    def chunked_body():  # a valid form whose file part never ends
        preamble = (b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.zip"'
                    b'\r\nContent-Type: application/zip\r\n\r\n')
        for piece in [preamble] + [b"0" * 65536] * (50 * limit // 65536):
            yield b"%x\r\n%s\r\n" % (len(piece), piece)

    chunked = [("Content-Type", "multipart/form-data; boundary=x"),
               ("Transfer-Encoding", "chunked")]
    status, problem, sent = _raw_post(base, "/v1/domains/big/datasets", chunked, chunked_body())
    assert status == 413 and problem["code"] == "payload_too_large", problem
    assert sent < 10 * limit  # the server stopped reading long before the 50 MB were sent
    assert call(base, "GET", "/v1/domains/big")[0] == 404
    uploads = os.path.join(data_dir, "uploads")
    assert not os.path.isdir(uploads) or os.listdir(uploads) == []


def test_the_openapi_schema_documents_every_field(server):
    from device_agent.api.app import create_app
    from device_agent.api.settings import Settings

    schema = create_app(Settings(data_dir=server[1], token="unused")).openapi()
    models = schema["components"]["schemas"]
    for name in ("JobRequest", "Job", "JobProgress", "JobMemory", "JobLatency", "EpochMetrics",
                 "DomainStatus", "VersionInfo", "DatasetSummary", "PredictResponse", "Health"):
        undocumented = [field for field, spec in models[name]["properties"].items()
                        if not spec.get("description")]
        assert undocumented == [], (name, undocumented)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "device_agent"] + list(args), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, env=dict(os.environ, PYTHONPATH=ROOT),
                          timeout=300)


def test_push_and_status_from_the_command_line(server, small_folder):
    base, _ = server
    pushed = cli("push", small_folder, "--domain", "pushed", "--server", base, "--token", TOKEN,
                 "--backbone", "resnet18", "--epochs", "1", "--resolution", "32",
                 "--batch-size", "auto", "--json")
    assert pushed.returncode == 0, pushed.stderr
    job = json.loads(pushed.stdout.strip().splitlines()[-1])
    assert job["state"] == "succeeded" and job["domain"] == "pushed"
    assert "uploaded pushed: 3 classes" in pushed.stdout
    status = cli("status", "pushed", "--server", base, "--token", TOKEN, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["active_version"] == 1
    table = cli("status", "--server", base, "--token", TOKEN)
    assert table.returncode == 0 and "pushed" in table.stdout and "ready" in table.stdout
    refused = cli("status", "--server", base, "--token", "wrong")
    assert refused.returncode == 1 and "401" in refused.stderr
    bad_name = cli("push", small_folder, "--domain", "Bad/Name", "--server", base, "--token",
                   TOKEN)  # refused by the client with the server's own rule, nothing sent
    assert bad_name.returncode == 2 and "'Bad/Name' is not a domain name" in bad_name.stderr
    wrong_token = cli("push", small_folder, "--domain", "pushed2", "--server", base,
                      "--token", "wrong")
    assert wrong_token.returncode == 1 and "HTTP 401" in wrong_token.stderr
    unreachable = cli("status", "--server", "http://127.0.0.1:%d" % free_port(), "--token", "t")
    assert unreachable.returncode == 5 and "cannot reach" in unreachable.stderr


def download(base, path):
    request = urllib.request.Request(base + path, headers={"Authorization": "Bearer " + TOKEN})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["Content-Type"] == "application/zip"
        return response.read()


def _zip(files):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize("archive,code", [
    (b"garbage", "invalid_input"),
    (_zip({"adapter_config.json": b"{}"}), "invalid_input"),
    (_zip({"adapter_config.json": b"{}", "adapter_model.safetensors": b"", "x.pkl": b""}),
     "invalid_input"),
    (_zip({"adapter_config.json": b"{not json", "adapter_model.safetensors": b"\x00" * 8}),
     "bad_artifact"),
])
def test_a_bad_adapter_import_is_refused_and_creates_nothing(server, archive, code):
    base, _ = server
    upload, content_type = multipart([("file", ("a.zip", archive))])
    status, problem = call(base, "PUT", "/v1/domains/imported/adapter", upload,
                           content_type=content_type)
    assert 400 <= status < 500 and problem["code"] == code, problem
    assert call(base, "GET", "/v1/domains/imported")[0] == 404


@pytest.mark.parametrize("payload,status", [(b"not an archive", 400), (b"PK\x03\x04junk", 400)])
def test_a_bad_archive_is_refused_and_changes_nothing(server, payload, status):
    base, data_dir = server
    before = call(base, "GET", "/v1/domains")[1]
    body, content_type = multipart([("file", ("x.zip", payload))])
    code, problem = call(base, "POST", "/v1/domains/newdomain/datasets", body,
                         content_type=content_type)
    assert code == status and problem["code"] == "invalid_input" and problem["detail"]
    assert call(base, "GET", "/v1/domains")[1] == before
    assert os.listdir(os.path.join(data_dir, "uploads")) == []


@pytest.mark.parametrize("body,code", [
    ({"epochs": 0}, 422), ({"method": "magic"}, 422), ({"backbone": "vgg"}, 422),
    ({"epochs": "many"}, 422), ({"lr": -1}, 422), ({"unknown": 1}, 422)])
def test_bad_job_requests_are_422(server, body, code):
    base, _ = server
    status, problem = call(base, "POST", "/v1/domains/colours/jobs", body)
    assert status == code and problem["code"] == "invalid_request"


def test_unknown_domains_and_path_characters(server):
    base, _ = server
    assert call(base, "GET", "/v1/domains/ghost")[0] == 404
    assert call(base, "POST", "/v1/domains/..%2Fetc/jobs", {})[0] in (400, 404)


def test_the_api_process_never_imports_torch(tmp_path):
    code = """
import sys, threading, time, urllib.request, uvicorn
from device_agent.api.app import create_app
from device_agent.api.settings import Settings
app = create_app(Settings(data_dir=sys.argv[1], token="t", worker_weights="random",
                          worker_device="cpu", port=int(sys.argv[2])))
server = uvicorn.Server(uvicorn.Config(app, port=int(sys.argv[2]), log_level="warning"))
thread = threading.Thread(target=server.run); thread.start()
for _ in range(600):
    try:
        if urllib.request.urlopen("http://127.0.0.1:%s/readyz" % sys.argv[2]).status == 200:
            break
    except Exception:
        time.sleep(0.2)
request = urllib.request.Request("http://127.0.0.1:%s/v1/domains" % sys.argv[2],
                                 headers={"Authorization": "Bearer t"})
assert urllib.request.urlopen(request).status == 200
print("torch" in sys.modules)
server.should_exit = True; thread.join()
"""
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(free_port())],
                         stdout=subprocess.PIPE, universal_newlines=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_telemetry_latest_range_and_stream(server):
    base, _ = server
    status, latest = call(base, "GET", "/v1/telemetry")
    assert status == 200 and len(latest) == 1
    sample = latest[0]
    assert sample["source"] == "replay" and sample["ram_total_mb"] == 3964.0
    assert sample["power_total_mw"] > 0 and sample["worker"]["rss_mb"] > 10
    since = time.time() - 60
    status, window = call(base, "GET", "/v1/telemetry?since=%f" % since)
    assert status == 200 and len(window) >= 2
    assert all(a["ts"] < b["ts"] for a, b in zip(window, window[1:]))
    status, coarse = call(base, "GET", "/v1/telemetry?since=%f&step=30" % since)
    assert status == 200 and 1 <= len(coarse) <= 3 and len(coarse) < len(window)
    assert call(base, "GET", "/v1/telemetry?since=10&until=5")[0] == 409
    request = urllib.request.Request(base + "/v1/telemetry/stream?limit=3",
                                     headers={"Authorization": "Bearer " + TOKEN})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        text = response.read().decode()
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert len(events) == 3 and all(e["source"] == "replay" for e in events)


def test_prometheus_metrics(server):  # after the training tests above (file order)
    base, _ = server
    assert call(base, "GET", "/metrics", token=None)[0] == 401
    request = urllib.request.Request(base + "/metrics",
                                     headers={"Authorization": "Bearer " + TOKEN})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    assert values["device_agent_ram_total_bytes"] == 3964.0 * 1024 * 1024
    assert values["device_agent_power_total_watts"] > 1
    assert values['device_agent_temperature_celsius{sensor="CPU"}'] >= 40
    assert values["device_agent_worker_rss_bytes"] > 10e6
    assert values['device_agent_jobs{state="succeeded"}'] >= 1
    assert values["device_agent_train_step_duration_seconds_count"] > 0
    assert any(k.startswith("device_agent_domain_val_top1{") and 'domain="colours"' in k
               for k in values)
    route = ('device_agent_http_request_duration_seconds_count{method="GET",'
             'route="/v1/jobs/{job_id}",status="200"}')
    assert values[route] > 0  # one label per route template, not per job id
    # The Grafana dashboard for fleets queries only metrics that the daemon exports.
    with open(os.path.join(ROOT, "deploy", "grafana", "device-agent.json")) as handle:
        queried = set(re.findall(r"device_agent_[a-z0-9_]+", handle.read()))
    exported = set(re.findall(r"^# TYPE (device_agent_[a-z0-9_]+)", text, re.M))
    assert queried and {re.sub(r"_bucket$", "", name) for name in queried} <= exported


def test_metrics_can_be_opened_to_token_less_scrapers(tmp_path):
    proc, base = live_daemon.start(str(tmp_path), TOKEN,
                                   DEVICE_AGENT_METRICS_REQUIRE_TOKEN="false")
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=30) as response:
            assert response.status == 200 and b"device_agent_jobs" in response.read()
        assert call(base, "GET", "/v1/domains", token=None)[0] == 401  # only /metrics opens
    finally:
        live_daemon.stop(proc)
