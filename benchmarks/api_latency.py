"""Latency of GET /v1/domains/{domain} while a job trains, and the daemon's memory.

    python benchmarks/api_latency.py [--seconds 20] [--clients 2] [--backbone resnet18]

Starts `device-agent serve` on a free loopback port (CPU, untrained backbone weights so it
needs no downloads), uploads a generated 3-class dataset, starts a training job, and while
it trains polls the domain status from ``--clients`` concurrent clients for a fixed time.
Prints p50/p95/p99 latency, errors, and the RSS of the API and worker processes.
"""
import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
import zipfile

from PIL import Image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _request(base, method, path, token, body=None, content_type="application/json"):
    headers = {"Authorization": "Bearer " + token}
    if body is not None:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(base + path, data=body, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"null")


def _dataset() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
        for name, rgb in colours.items():
            for i in range(40):
                image = io.BytesIO()
                Image.new("RGB", (64, 64), tuple(max(0, c - i) for c in rgb)).save(image, "PNG")
                archive.writestr("%s/%d.png" % (name, i), image.getvalue())
    return buffer.getvalue()


def _multipart(data: bytes):
    boundary = uuid.uuid4().hex
    body = ("--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.zip\"\r\n"
            "Content-Type: application/zip\r\n\r\n" % boundary).encode() + data + \
        ("\r\n--%s--\r\n" % boundary).encode()
    return body, "multipart/form-data; boundary=" + boundary


def _rss_mb(pid: int) -> dict:
    values = {}
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            if line.startswith(("VmRSS:", "VmHWM:")):
                values[line.split(":")[0]] = int(line.split()[1]) / 1024.0
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--backbone", default="resnet18")
    args = parser.parse_args()
    data_dir, port, token = tempfile.mkdtemp(), _port(), uuid.uuid4().hex
    server = subprocess.Popen([sys.executable, "-m", "device_agent", "serve", "--data-dir",
                               data_dir, "--port", str(port), "--token", token,
                               "--worker-device", "cpu", "--worker-weights", "random"],
                              env=dict(os.environ, PYTHONPATH=ROOT))
    base = "http://127.0.0.1:%d" % port
    try:
        for _ in range(600):
            try:
                if _request(base, "GET", "/readyz", token)["status"] == "ready":
                    break
            except Exception:
                time.sleep(0.2)
        body, content_type = _multipart(_dataset())
        _request(base, "POST", "/v1/domains/demo/datasets", token, body, content_type)
        job = _request(base, "POST", "/v1/domains/demo/jobs", token, json.dumps(
            {"backbone": args.backbone, "epochs": 50, "batch_size": 8, "resolution": 96}).encode())
        while _request(base, "GET", "/v1/jobs/" + job["job_id"], token)["state"] != "running":
            time.sleep(0.1)
        latencies, errors = [], [0]
        deadline = time.time() + args.seconds

        def client():
            while time.time() < deadline:
                tick = time.perf_counter()
                try:
                    _request(base, "GET", "/v1/domains/demo", token)
                    latencies.append(1000 * (time.perf_counter() - tick))
                except Exception:
                    errors[0] += 1

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        state = _request(base, "GET", "/v1/jobs/" + job["job_id"], token)
        worker_pid = _request(base, "GET", "/healthz", token)["worker"]["pid"]
        latencies.sort()

        def pct(p):
            return latencies[min(len(latencies) - 1, int(p / 100.0 * len(latencies)))]

        print("GET /v1/domains/demo while a %s job trains (%d clients, %.0f s): %d requests, "
              "%d errors" % (args.backbone, args.clients, args.seconds, len(latencies), errors[0]))
        print("latency ms: p50 %.1f  p95 %.1f  p99 %.1f  max %.1f  mean %.1f" % (
            pct(50), pct(95), pct(99), latencies[-1], statistics.mean(latencies)))
        print("job state during the run: %s, progress %s" % (
            state["state"], {k: state["progress"].get(k) for k in ("epoch", "step", "loss")}))
        print("API process RSS %(VmRSS).0f MB (peak %(VmHWM).0f MB)" % _rss_mb(server.pid))
        print("worker process RSS %(VmRSS).0f MB (peak %(VmHWM).0f MB)" % _rss_mb(worker_pid))
    finally:
        server.terminate()
        server.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
