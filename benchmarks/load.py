"""Load while training: N clients poll status and telemetry and send predictions for a fixed
time while a job trains; per-endpoint latency and errors, and training throughput with and
without the load (side by side, one run).

    python benchmarks/load.py [--seconds 30] [--clients 4] [--interval 0.05] [--backbone resnet18]
    python benchmarks/load.py --hostile 500 [--seconds 30]

Starts `device-agent serve` on a free loopback port (CPU; untrained backbone weights, so no
downloads), uploads a generated 3-class dataset, trains one domain for the predictions, then:
(A) a training job alone for --seconds, (B) the same job again with the clients. Throughput
is steps finished in the window x batch size / window, read from the job's progress.

``--hostile N`` is the worst case for the API instead: N unauthenticated clients misbehave on
loopback for --seconds (a third each: request heads sent a byte a second, 100 MB bodies with
no token, idle connections; each reconnects once dropped) while one prober times /healthz on
a fresh connection every 50 ms; it reports /healthz latency and errors and the API's RSS.
"""
import argparse
import asyncio
import io
import json
import multiprocessing
import os
import socket
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
JOB = {"epochs": 500, "batch_size": 8, "resolution": 96}


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _png(rgb) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), rgb).save(buffer, "PNG")
    return buffer.getvalue()


def _multipart(files):
    boundary = uuid.uuid4().hex
    body = b"".join(("--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"%s\"\r\n"
                     "Content-Type: application/octet-stream\r\n\r\n" % (boundary, name)
                     ).encode() + data + b"\r\n" for name, data in files)
    return body + ("--%s--\r\n" % boundary).encode(), "multipart/form-data; boundary=" + boundary


def _dataset() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, rgb in {"red": (220, 30, 30), "green": (30, 200, 40),
                          "blue": (30, 40, 220)}.items():
            for i in range(40):
                archive.writestr("%s/%d.png" % (name, i),
                                 _png(tuple(max(0, c - i) for c in rgb)))
    return buffer.getvalue()


class Api(object):
    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token

    def __call__(self, method, path, body=None, content_type="application/json"):
        headers = {"Authorization": "Bearer " + self.token}
        if body is not None:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(self.base + path, data=body, method=method,
                                         headers=headers)
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"null")

    def job(self, params) -> str:
        return self("POST", "/v1/domains/bench/jobs", json.dumps(params).encode())["job_id"]

    def wait_state(self, job_id, states):
        while True:
            job = self("GET", "/v1/jobs/" + job_id)
            if job["state"] in states:
                return job
            time.sleep(0.2)


def _steps(job) -> int:
    progress = job["progress"]
    return (progress["epoch"] or 0) * (progress["steps"] or 0) + (progress["step"] or 0)


def throughput(api: Api, seconds: float, during=None) -> float:
    """Images/s of a fresh job over ``seconds`` (after its first steps), with ``during`` run
    alongside; the job is cancelled after."""
    job_id = api.job(dict(JOB, backbone=api.backbone))
    api.wait_state(job_id, ("running",))
    while _steps(api("GET", "/v1/jobs/" + job_id)) < 3:  # past start-up
        time.sleep(0.2)
    first = api("GET", "/v1/jobs/" + job_id)
    started = time.time()
    if during is not None:
        during(job_id, seconds)
    else:
        time.sleep(seconds)
    last = api("GET", "/v1/jobs/" + job_id)
    elapsed = time.time() - started
    api("POST", "/v1/jobs/%s/cancel" % job_id)
    api.wait_state(job_id, ("cancelled", "failed", "succeeded"))
    return (_steps(last) - _steps(first)) * JOB["batch_size"] / elapsed


def load(api: Api, clients: int, interval: float, predict: bool = True):
    image_body = _multipart([("x.png", _png((200, 40, 40)))])
    endpoints = {"GET /v1/domains/{d}": lambda job_id: api("GET", "/v1/domains/ready"),
                 "GET /v1/jobs/{id}": lambda job_id: api("GET", "/v1/jobs/" + job_id),
                 "GET /v1/telemetry": lambda job_id: api("GET", "/v1/telemetry"),
                 "POST /v1/domains/{d}/predict": lambda job_id: api(
                     "POST", "/v1/domains/ready/predict", *image_body)}
    if not predict:
        del endpoints["POST /v1/domains/{d}/predict"]
    results = {name: ([], [0]) for name in endpoints}

    def run(job_id, seconds):
        deadline = time.time() + seconds

        def client(offset):
            names = list(endpoints)
            i = offset
            while time.time() < deadline:
                name = names[i % len(names)]
                i += 1
                tick = time.perf_counter()
                try:
                    endpoints[name](job_id)
                    results[name][0].append(1000 * (time.perf_counter() - tick))
                except Exception:
                    results[name][1][0] += 1
                time.sleep(interval)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    return run, results


def _pct(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100.0 * len(ordered)))] if ordered else 0.0


def _rss_mb(pid: int) -> float:
    with open("/proc/%d/status" % pid) as handle:
        return next(int(line.split()[1]) / 1024.0 for line in handle if line.startswith("VmRSS:"))


async def _misbehave(kind: int, port: int, until: float) -> None:
    """One hostile client, reconnecting until ``until``: 0 slow head, 1 big body, 2 idle."""
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.5)
            continue
        try:
            if kind == 0:
                writer.write(b"GET /v1/domains HTTP/1.1\r\nHost: x\r\n")
                while time.monotonic() < until and not reader.at_eof():
                    writer.write(b"X")
                    await writer.drain()
                    await asyncio.sleep(1.0)
            elif kind == 1:
                writer.write(b"POST /v1/domains/x/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: "
                             b"application/json\r\nContent-Length: %d\r\n\r\n" % (100 << 20))
                chunk = b"x" * (1 << 20)
                for _ in range(100):
                    writer.write(chunk)
                    await writer.drain()
            else:
                await asyncio.wait_for(reader.read(1), max(0.1, until - time.monotonic()))
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()
        await asyncio.sleep(1.0)


def _probe(port: int, until: float, latencies: list, errors: list) -> None:
    """/healthz on a fresh connection every 50 ms, from this process (the hostile clients
    run in another, so their event loop does not delay the probe's own timing)."""
    while time.monotonic() < until:
        started = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                answer = sock.recv(64)
            if not answer.startswith(b"HTTP/1.1 200"):
                errors.append(answer[:40])
        except OSError as exc:
            errors.append(repr(exc))
        latencies.append(1000 * (time.monotonic() - started))
        time.sleep(0.05)


def _hostile_clients(port: int, clients: int, until: float) -> None:
    asyncio.new_event_loop().run_until_complete(asyncio.gather(
        *[_misbehave(n % 3, port, until) for n in range(clients)]))


def hostile(port: int, server_pid: int, clients: int, seconds: float) -> None:
    latencies, errors, rss = [], [], [_rss_mb(server_pid)]
    until = time.monotonic() + seconds
    attackers = multiprocessing.Process(target=_hostile_clients, args=(port, clients, until))
    attackers.start()
    time.sleep(2)  # let them connect
    def watch_rss() -> None:
        while time.monotonic() < until:
            rss.append(_rss_mb(server_pid))
            time.sleep(0.5)

    watcher = threading.Thread(target=watch_rss)
    watcher.start()
    _probe(port, until, latencies, errors)
    watcher.join()
    attackers.join(30)
    time.sleep(2)
    print("%d hostile clients (slow heads, 100 MB bodies without token, idle connections), "
          "loopback, %.0f s\n" % (clients, seconds))
    print("| /healthz requests | errors | p50 ms | p99 ms | max ms | API RSS before | peak | "
          "after |\n|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("| %d | %d | %.1f | %.1f | %.1f | %.0f MB | %.0f MB | %.0f MB |" % (
        len(latencies), len(errors), _pct(latencies, 50), _pct(latencies, 99),
        max(latencies or [0]), rss[0], max(rss), _rss_mb(server_pid)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--interval", type=float, default=0.05, help="each client's pause")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--no-predict", action="store_true",
                        help="clients only poll status and telemetry")
    parser.add_argument("--hostile", type=int, default=0, metavar="N",
                        help="instead: N unauthenticated clients misbehave (see above)")
    args = parser.parse_args()
    data_dir, port, token = tempfile.mkdtemp(), _port(), uuid.uuid4().hex
    server = subprocess.Popen([sys.executable, "-m", "device_agent", "serve", "--data-dir",
                               data_dir, "--port", str(port), "--token", token,
                               "--worker-device", "cpu", "--worker-weights", "random"],
                              env=dict(os.environ, PYTHONPATH=ROOT))
    api = Api("http://127.0.0.1:%d" % port, token)
    api.backbone = args.backbone
    try:
        for _ in range(600):
            try:
                if api("GET", "/readyz")["status"] == "ready":
                    break
            except Exception:
                time.sleep(0.2)
        if args.hostile:
            hostile(port, server.pid, args.hostile, args.seconds)
            return 0
        for domain in ("ready", "bench"):
            api("POST", "/v1/domains/%s/datasets" % domain, *_multipart([("d.zip", _dataset())]))
        ready = api("POST", "/v1/domains/ready/jobs", json.dumps(
            {"backbone": args.backbone, "epochs": 1, "resolution": 96}).encode())["job_id"]
        api.wait_state(ready, ("succeeded",))
        alone = throughput(api, args.seconds)
        run, results = load(api, args.clients, args.interval, predict=not args.no_predict)
        loaded = throughput(api, args.seconds, during=run)
        worker_pid = api("GET", "/healthz")["worker"]["pid"]
        print("%s, %d px, batch %d, CPU; %d clients (pause %.0f ms), %.0f s per phase\n" % (
            args.backbone, JOB["resolution"], JOB["batch_size"], args.clients,
            1000 * args.interval, args.seconds))
        print("| endpoint | requests | errors | p50 ms | p95 ms | p99 ms |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, (latencies, errors) in results.items():
            print("| %s | %d | %d | %.1f | %.1f | %.1f |" % (
                name, len(latencies), errors[0], _pct(latencies, 50), _pct(latencies, 95),
                _pct(latencies, 99)))
        print("\n| training | images/s |\n|---|---:|")
        print("| alone | %.1f |\n| under load | %.1f |\n| ratio | %.2f |" % (
            alone, loaded, loaded / alone))
        print("\nAPI process RSS %.0f MB, worker RSS %.0f MB" % (_rss_mb(server.pid),
                                                            _rss_mb(worker_pid)))
    finally:
        server.terminate()
        server.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
