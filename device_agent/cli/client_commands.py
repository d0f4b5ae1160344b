"""Commands that talk to a running daemon over HTTP: push, status, demo (no torch)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

from device_agent.cli.progress import JobProgress
from device_agent.client import Client, ServerUnreachable, archive_folder, resolve_token
from device_agent.errors import AgentError

TERMINAL = ("succeeded", "failed", "cancelled")
JOB_FLAGS = ("method", "backbone", "epochs", "batch_size", "resolution", "lr",
             "memory_limit_mb", "seed", "micro_batch")


def _client(args) -> Client:
    return Client(args.server, resolve_token(args.token))


def follow(client: Client, job_id: str, interval: float = 1.0) -> Dict[str, object]:
    """Poll the job until it ends, drawing its progress; returns its last record."""
    render = JobProgress()
    while True:
        job = client.job(job_id)
        render(job)
        if job["state"] in TERMINAL:
            return job
        time.sleep(interval)


def job_params(args) -> Dict[str, object]:
    params = {k: getattr(args, k) for k in JOB_FLAGS if getattr(args, k, None) is not None}
    if args.no_hflip:
        params["hflip"] = False
    return params


def run_push(args) -> int:
    client = _client(args)
    archive = archive_folder(args.data_dir)
    try:
        summary = client.upload_dataset(args.domain, archive)
    finally:
        os.unlink(archive)
    train = summary["counts"].get("train", {})
    print("uploaded %s: %d classes, %d train / %d val images, %d files rejected" % (
        args.domain, len(summary["classes"]), sum(train.values()),
        sum(summary["counts"].get("val", {}).values()), len(summary["rejected"])))
    for item in summary["rejected"][:5]:
        print("  rejected %s: %s" % (item["file"], item["reason"]))
    job_id = client.start_job(args.domain, job_params(args))
    print("job %s queued" % job_id)
    if args.no_follow:
        return 0
    try:
        job = follow(client, job_id)
    except KeyboardInterrupt:
        print("\nstopped following; the job goes on (device-agent status %s)" % args.domain,
              file=sys.stderr)
        return 130
    return _print_result(job, args.json)


def _print_result(job: Dict[str, object], as_json: bool) -> int:
    if as_json:
        print(json.dumps(job))
    elif job["state"] == "succeeded":
        memory, latency = job["memory"], job["latency"]
        print("val top-1 %.3f | adapter %d bytes, %d trainable params | saved activations "
              "%.1f MB, worker peak RSS %.0f MB | step p50 %.0f ms, %.1f img/s" % (
                  job["val_top1"] or 0, job["adapter_bytes"] or 0, job["trainable_params"] or 0,
                  memory["saved_activation_mb"] or 0, memory["worker_peak_rss_mb"] or 0,
                  latency["step_ms_p50"] or 0, latency["images_per_sec"] or 0))
    else:
        print("job %s %s: %s" % (job["id"], job["state"], job["error"]), file=sys.stderr)
    return 0 if job["state"] == "succeeded" else 1


def run_status(args) -> int:
    client = _client(args)
    if args.domain:
        record = client.domain(args.domain)
        if args.json:
            print(json.dumps(record))
        else:
            _print_domain(record)
        return 0
    records = client.domains()
    if args.json:
        print(json.dumps({"health": client.health(), "domains": records}))
        return 0
    health = client.health()
    worker = health["worker"]
    print("daemon %s at %s; worker %s (%s)" % (health["version"], client.server, worker["state"],
                                               ", ".join("%s %s" % kv for kv in sorted(
                                                   (worker.get("worker") or {}).items()))))
    _print_domains(records)
    return 0


def _print_domains(records: List[Dict[str, object]]) -> None:
    print("%-20s %7s %-8s %-18s %8s %7s %-10s" % ("domain", "version", "method", "backbone",
                                                  "val top1", "classes", "last job"))
    for d in records:
        last = d["last_job"] or {}
        print("%-20s %7s %-8s %-18s %8s %7d %-10s" % (
            d["name"], d["active_version"] or "-", d["method"] or "-", d["backbone"] or "-",
            "%.3f" % d["val_top1"] if d["val_top1"] is not None else "-", len(d["classes"]),
            last.get("state", "-")))


def _print_domain(d: Dict[str, object]) -> None:
    _print_domains([d])
    for v in d["versions"]:
        print("  version %d%s  val top-1 %s  job %s" % (
            v["version"], " (active)" if v["version"] == d["active_version"] else "",
            "%.3f" % v["val_top1"] if v["val_top1"] is not None else "-", v["job_id"] or
            "imported"))
    last = d["last_job"]
    if last:
        print("  last job %s: %s, %d%%, eta %s s, peak RSS %s MB, step p50 %s ms" % (
            last["id"], last["state"], 100 * last["progress"]["fraction"],
            _fmt(last["progress"]["eta_s"]), _fmt(last["memory"]["step_peak_rss_mb"]),
            _fmt(last["latency"]["step_ms_p50"])))


def _fmt(value) -> str:
    return "-" if value is None else "%.0f" % value


# --- the demo: the daemon, a real domain, a prediction ------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(client: Client, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AgentError("the daemon exited with code %s" % proc.returncode)
        try:
            if client.health()["worker"]["state"] == "ready":
                return
        except (ServerUnreachable, AgentError):
            pass
        time.sleep(0.5)
    raise AgentError("the daemon did not become ready in %d s" % timeout)


def run_demo(args) -> int:
    """Start the daemon with the demo domain, follow its training, show status and a
    prediction, then keep serving (Ctrl-C stops) unless ``--exit``."""
    from device_agent.api.demo import DEMO_DOMAIN
    from device_agent.demo import write_digits_folder

    data_dir = os.path.abspath(args.data_dir)
    port = args.port or _free_port()
    command = [sys.executable, "-m", "device_agent", "serve", "--demo", "--data-dir", data_dir,
               "--port", str(port), "--worker-device", args.device]
    if args.weights:
        command += ["--worker-weights", args.weights]
    print("$ device-agent %s" % " ".join(command[3:]), flush=True)
    proc = subprocess.Popen(command)
    try:
        client = Client("http://127.0.0.1:%d" % port)
        deadline = time.time() + 60
        while not os.path.exists(os.path.join(data_dir, "token")) and time.time() < deadline:
            time.sleep(0.2)
        with open(os.path.join(data_dir, "token")) as handle:
            client.token = handle.read().strip()
        _wait_ready(client, proc)
        jobs = [j for j in client.jobs() if j["domain"] == DEMO_DOMAIN]
        print("the demo domain %r: handwritten digits (UCI, shipped in scikit-learn)"
              % DEMO_DOMAIN)
        job = follow(client, jobs[-1]["id"]) if jobs else None
        if job is not None and _print_result(job, False) != 0:
            return 1
        print()
        _print_domain(client.domain(DEMO_DOMAIN))
        samples = _sample_digits(write_digits_folder, data_dir)
        result = client.predict(DEMO_DOMAIN, samples, top_k=2)
        print("\npredictions (%.0f ms in the worker):" % result["latency_ms"])
        for path, top in zip(samples, result["predictions"]):
            print("  a %s: %s" % (os.path.basename(os.path.dirname(path)), ", ".join(
                "%s %.3f" % (t["class"], t["probability"]) for t in top)))
        print("\nthe daemon serves http://127.0.0.1:%d (token in %s/token). Try:\n"
              "  device-agent status --server http://127.0.0.1:%d --token $(cat %s/token)"
              % (port, data_dir, port, data_dir))
        if not args.exit:
            print("Ctrl-C stops it.")
            proc.wait()
        return 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def _sample_digits(write_digits_folder, data_dir: str) -> List[str]:
    """One held-out image of three digits (the validation split the job never trained on)."""
    scratch = tempfile.mkdtemp(prefix="samples-", dir=data_dir)
    try:
        write_digits_folder(scratch)
        keep = os.path.join(data_dir, "demo-samples")
        os.makedirs(keep, exist_ok=True)
        samples = []
        for digit in ("3", "5", "8"):
            folder = os.path.join(scratch, "val", digit)
            source = os.path.join(folder, sorted(os.listdir(folder))[0])
            target = os.path.join(keep, digit, os.path.basename(source))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(source, target)
            samples.append(target)
        return samples
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
