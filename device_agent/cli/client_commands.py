"""Commands that talk to a running daemon over HTTP: push, status, demo (no torch)."""
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

from device_agent.cli.job_flags import params_from_args
from device_agent.cli.progress import JobProgress
from device_agent.client import (
    DEFAULT_SERVER,
    Client,
    ServerUnreachable,
    archive_folder,
    domain_path,
    resolve_token,
)
from device_agent.errors import AgentError
from device_agent.jobspec import TERMINAL_STATES
from device_agent.store.layout import DataPaths

TERMINAL = TERMINAL_STATES


def _client(args) -> Client:
    return Client(args.server, resolve_token(args.token))


def follow(client: Client, job_id: str, interval: float = 1.0,
           epochs_shown: int = 0) -> Dict[str, object]:
    """Poll the job until it ends, drawing its progress; returns its last record.
    ``epochs_shown``: epochs already reported (a resumed job's), not printed again."""
    render = JobProgress()
    render.epochs_shown = epochs_shown
    while True:
        job = client.job(job_id)
        render(job)
        if job["state"] in TERMINAL:
            return job
        time.sleep(interval)


def run_push(args) -> int:
    client = _client(args)
    domain_path(args.domain)  # a bad name fails here, before the folder is archived
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
    job_id = client.start_job(args.domain, params_from_args(args))
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
              "%.1f MiB, worker peak RSS %.0f MiB | step p50 %.0f ms, %.1f img/s" % (
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
        print("  last job %s: %s, %d%%, eta %s s, peak RSS %s MiB, step p50 %s ms" % (
            last["id"], last["state"], 100 * last["progress"]["fraction"],
            _fmt(last["progress"]["eta_s"]), _fmt(last["memory"]["step_peak_rss_mb"]),
            _fmt(last["latency"]["step_ms_p50"])))


def _fmt(value) -> str:
    return "-" if value is None else "%.0f" % value


# --- the demo: the daemon, a real domain, a prediction ------------------------------------

def _demo_port() -> int:
    """serve's default port when it is free, so the README's examples apply as written; else
    any free port (another daemon serves there). The demo prints the one it took."""
    default = int(DEFAULT_SERVER.rsplit(":", 1)[1])
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", default))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launcher() -> str:
    """A command that runs this very installation from any shell, whatever its PATH: the
    console script beside this interpreter (the virtual environment's), else ``python -m``."""
    script = os.path.join(os.path.dirname(sys.executable), "device-agent")
    if os.path.isfile(script) and os.access(script, os.X_OK):
        return shlex.quote(script)
    return "%s -m device_agent" % shlex.quote(sys.executable)


def demo_hints(port: int, data_dir: str, domain: str) -> List[str]:
    """Commands that work as printed, pasted into any shell, while the demo daemon runs."""
    server = "http://127.0.0.1:%d" % port
    token_file = shlex.quote(DataPaths(data_dir).token)
    return ['%s status %s --server %s --token "$(cat %s)"' % (_launcher(), domain, server,
                                                              token_file),
            'curl -H "Authorization: Bearer $(cat %s)" %s/v1/domains/%s' % (token_file, server,
                                                                           domain)]


def demo_job(client: Client, jobs: List[Dict[str, object]],
             resuming: bool) -> Optional[Dict[str, object]]:
    """The demo domain's latest job (``jobs`` oldest first), followed to its end. An earlier
    demo's job is said to be one: when it already ended it is shown as it ended, and when
    it resumes only its new epochs are printed (none is replayed as if it were new)."""
    if not jobs:
        return None
    latest = jobs[-1]
    done = len(latest["history"]) if resuming else 0
    if resuming and latest["state"] in TERMINAL:
        print("its training ran in the earlier demo: job %s %s" % (latest["id"],
                                                                   latest["state"]))
        return latest
    if done:
        print("resuming job %s after epoch %d of %s" % (latest["id"], done,
                                                        latest["progress"]["epochs"]))
    return follow(client, latest["id"], epochs_shown=done)


def _read_token(path: str, proc: subprocess.Popen, timeout: float = 60) -> str:
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise AgentError("the daemon exited with code %s" % proc.returncode)
        if time.time() > deadline:
            raise AgentError("the daemon wrote no token into %s in %d s" % (path, timeout))
        time.sleep(0.2)
    with open(path) as handle:
        return handle.read().strip()


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
    from device_agent.demo import DEMO_DOMAIN, write_digits_folder

    data_dir = os.path.abspath(args.data_dir)
    paths = DataPaths(data_dir)
    resuming = os.path.exists(paths.database)
    if resuming:
        print("%s holds an earlier demo: resuming it as it is (delete that folder for a "
              "fresh start)" % data_dir, flush=True)
    port = args.port or _demo_port()
    command = [sys.executable, "-m", "device_agent", "serve", "--demo", "--data-dir", data_dir,
               "--port", str(port), "--worker-device", args.device]
    if args.weights:
        command += ["--worker-weights", args.weights]
    print("$ device-agent %s" % " ".join(command[3:]), flush=True)
    proc = subprocess.Popen(command)
    # `kill` or a closed terminal stops the daemon too (through the finally below) instead
    # of leaving it running with nobody to stop it
    for stop in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop, _exit_on_signal)
    try:
        client = Client("http://127.0.0.1:%d" % port, _read_token(paths.token, proc))
        _wait_ready(client, proc)
        jobs = [j for j in client.jobs() if j["domain"] == DEMO_DOMAIN]
        print("the demo domain %r: handwritten digits (UCI, shipped in scikit-learn)"
              % DEMO_DOMAIN)
        job = demo_job(client, jobs, resuming)
        if job is not None and _print_result(job, False) != 0:
            if resuming:
                print("that job is an earlier demo's: delete %s for a fresh start" % data_dir,
                      file=sys.stderr)
            return 1
        print()
        _print_domain(client.domain(DEMO_DOMAIN))
        samples = _sample_digits(write_digits_folder, data_dir)
        result = client.predict(DEMO_DOMAIN, samples, top_k=2)
        print("\npredictions (%.0f ms in the worker):" % result["latency_ms"])
        for path, top in zip(samples, result["predictions"]):
            print("  a %s: %s" % (os.path.basename(os.path.dirname(path)), ", ".join(
                "%s %.3f" % (t["class"], t["probability"]) for t in top)))
        if args.exit:
            print("\n--exit: stopping the daemon", flush=True)
            return 0
        print("\nthe daemon serves http://127.0.0.1:%d (its data and token in %s). "
              "While it runs, from any shell:" % (port, data_dir))
        for line in demo_hints(port, data_dir, DEMO_DOMAIN):
            print("  " + line)
        print("  open http://127.0.0.1:%d/dashboard (it asks for the token) or /docs" % port)
        print("Ctrl-C stops it.", flush=True)
        proc.wait()
        return 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def _exit_on_signal(number, frame) -> None:
    raise SystemExit(128 + number)


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
