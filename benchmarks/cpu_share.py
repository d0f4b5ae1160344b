"""Training on a shared CPU: images/s alone, beside one CPU-bound process, beside a steady
stream of predictions, and under a one-CPU cgroup quota -- side by side in one run, each as
a share of the fair share -- with the prediction latency while training.

    python benchmarks/cpu_share.py [--seconds 30] [--code DIR] [--out FILE.md]
    python benchmarks/cpu_share.py --plot FILE.png --tables FILE.md   # the runs it appended

Starts `device-agent serve` on a free loopback port (CPU, untrained backbone weights, so no
downloads) from this checkout, or from ``--code DIR`` (e.g. a `git worktree` of an older
commit, for the before/after contrast). The one-CPU case starts a second daemon inside a
fresh cgroup v1 ``cpu`` group with ``cpu.cfs_quota_us = cfs_period_us`` (root); where that
cannot be written, under ``taskset -c 0`` instead, and the table says which.

Each case measures a fresh job over ``--seconds`` after its first 10 steps (start-up and the
thread tuner's first exploration); the other work runs from the job's start. Fair shares:
beside one busy process, half the machine (the goal is at least 0.8x of it, i.e. 0.4x of
alone on 2 cores); beside predictions, what the predictions' own CPU time -- worker and API,
measured alone at the same rate -- leaves, and never less than half; under a one-CPU limit,
1 / the CPUs alone had.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid

from load import JOB, Api, _dataset, _multipart, _pct, _png, _port, _steps

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
sys.path.insert(0, ROOT)

from device_agent.procfs import cpu_seconds  # noqa: E402

CGROUP_V1_CPU = "/sys/fs/cgroup/cpu"


class Daemon(object):
    """A daemon from ``code`` with its own data dir; ``prefix`` wraps its command."""

    def __init__(self, code: str, backbone: str, prefix=(), extra_env=None) -> None:
        self.data_dir, port, token = tempfile.mkdtemp(), _port(), uuid.uuid4().hex
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("OMP_", "MKL_", "KMP_", "OPENBLAS_", "DEVICE_AGENT_"))}
        self.proc = subprocess.Popen(list(prefix) + [
            sys.executable, "-m", "device_agent", "serve", "--data-dir", self.data_dir,
            "--port", str(port), "--token", token, "--worker-device", "cpu",
            "--worker-weights", "random"], env=dict(env, PYTHONPATH=code, **(extra_env or {})),
            cwd=code)
        self.api = Api("http://127.0.0.1:%d" % port, token)
        self.api.backbone = backbone
        for _ in range(900):
            try:
                if self.api("GET", "/readyz")["status"] == "ready":
                    break
            except Exception:
                time.sleep(0.2)
        for domain in ("ready", "bench"):
            self.api("POST", "/v1/domains/%s/datasets" % domain,
                     *_multipart([("d.zip", _dataset())]))
        ready = self.api("POST", "/v1/domains/ready/jobs", json.dumps(
            {"backbone": backbone, "epochs": 1, "resolution": JOB["resolution"]}).encode())
        self.api.wait_state(ready["job_id"], ("succeeded",))
        self.worker = self.api("GET", "/healthz")["worker"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def _cpu_seconds(pid: int) -> float:
    return cpu_seconds("/proc/%d/stat" % pid)


def train_rate(api: Api, seconds: float, load=None, warmup_steps: int = 10):
    """Images/s of a fresh job over ``seconds`` once it has done ``warmup_steps`` (start-up,
    and the thread tuner's first exploration), with ``load(stop)`` running from the job's
    start until ``stop`` is set; returns (images/s, the job's last record)."""
    job_id = api.job(dict(JOB, backbone=api.backbone))
    stop = threading.Event()
    beside = threading.Thread(target=load, args=(stop,)) if load else None
    if beside is not None:
        beside.start()
    try:
        api.wait_state(job_id, ("running",))
        while _steps(api("GET", "/v1/jobs/" + job_id)) < warmup_steps:
            time.sleep(0.2)
        first, started = api("GET", "/v1/jobs/" + job_id), time.time()
        time.sleep(seconds)
        last = api("GET", "/v1/jobs/" + job_id)
        elapsed = time.time() - started
    finally:
        stop.set()
        if beside is not None:
            beside.join()
    api("POST", "/v1/jobs/%s/cancel" % job_id)
    api.wait_state(job_id, ("cancelled", "failed", "succeeded"))
    return (_steps(last) - _steps(first)) * JOB["batch_size"] / elapsed, last


def busy_process(stop: threading.Event) -> None:
    """One single-threaded CPU-bound process: a ROS node, a camera pipeline."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    stop.wait()
    hog.kill()
    hog.wait()


def prediction_stream(api: Api, rate: float, latencies: list):
    """Open loop: one predict every 1/rate s on two clients (a late answer delays only its
    own client's next request) until ``stop`` is set; latencies appended in ms."""
    body = _multipart([("x.png", _png((200, 40, 40)))])

    def run(stop: threading.Event) -> None:
        def client(offset: float) -> None:
            due = time.time() + offset
            while not stop.wait(max(0.0, due - time.time())):
                tick = time.perf_counter()
                api("POST", "/v1/domains/ready/predict", *body)
                latencies.append(1000 * (time.perf_counter() - tick))
                due += 2.0 / rate

        threads = [threading.Thread(target=client, args=(k / rate,)) for k in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    return run


def for_seconds(load, seconds: float) -> None:
    """Run ``load`` alone for ``seconds``."""
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    load(stop)


def one_cpu_prefix():
    """A fresh cgroup with a one-CPU quota (joined by the daemon's shell before exec), or
    taskset -c 0 where cgroups cannot be written; (prefix, label, cleanup)."""
    if os.access(os.path.join(CGROUP_V1_CPU, "cgroup.procs"), os.W_OK):
        group = os.path.join(CGROUP_V1_CPU, "device-agent-bench-" + uuid.uuid4().hex[:8])
        os.mkdir(group)
        with open(os.path.join(group, "cpu.cfs_period_us")) as handle:
            period = handle.read().strip()
        with open(os.path.join(group, "cpu.cfs_quota_us"), "w") as handle:
            handle.write(period)
        join = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', group]
        return join, "cgroup v1 quota of 1 CPU", lambda: os.rmdir(group)
    return ["taskset", "-c", "0"], "taskset -c 0", lambda: None


def measure(code: str, backbone: str, seconds: float, rate: float, extra_env):
    rows, notes = [], []
    daemon = Daemon(code, backbone, extra_env=extra_env)
    try:
        notes.append("worker threads: %s" % json.dumps(daemon.worker.get("threads")))
        alone, job = train_rate(daemon.api, seconds)
        rows.append(("alone", alone, 1.0, None, job))
        busy, job = train_rate(daemon.api, seconds, busy_process)
        rows.append(("beside 1 busy process", busy, 0.5, None, job))
        # What the predictions cost on their own: CPU seconds per second, in the worker
        # (decode, forward) and in the API (HTTP, multipart), with no job running.
        solo, pids = [], (daemon.worker["pid"], daemon.proc.pid)
        cpu_before, wall_before = [_cpu_seconds(p) for p in pids], time.time()
        for_seconds(prediction_stream(daemon.api, rate, solo), seconds)
        wall = time.time() - wall_before
        worker_cpus, api_cpus = [(_cpu_seconds(p) - c) / wall for p, c in zip(pids, cpu_before)]
        predict_cpus = worker_cpus + api_cpus
        cpus = os.cpu_count() or 1
        notes.append("%.1f predictions/s alone took %.2f of the %d CPUs (worker %.2f, API %.2f)"
                     % (len(solo) / seconds, predict_cpus, cpus, worker_cpus, api_cpus))
        latencies = []
        beside, job = train_rate(daemon.api, seconds, prediction_stream(daemon.api, rate,
                                                                          latencies))
        rows.append(("beside %.0f predictions/s" % rate, beside,
                     max(0.5, 1 - predict_cpus / cpus), (solo, latencies), job))
    finally:
        daemon.stop()
    prefix, label, cleanup = one_cpu_prefix()
    try:
        limited_daemon = Daemon(code, backbone, prefix, extra_env)
        try:
            limited, job = train_rate(limited_daemon.api, seconds)
            notes.append("under %s, worker threads: %s" % (
                label, json.dumps(limited_daemon.worker.get("threads"))))
        finally:
            limited_daemon.stop()
    finally:
        cleanup()
    rows.append(("under a 1-CPU limit (%s)" % label, limited, 1.0 / cpus, None, job))
    return rows, alone, notes


def thread_notes(rows):
    """What the tuner chose in each case (from the job's record; absent before the change)."""
    for name, _, _, _, job in rows:
        cpu = job.get("cpu") or {}
        if cpu.get("threads_in_use") is not None:
            yield "%s: %s threads at the end, images/s measured per count %s, %s switches" % (
                name, cpu["threads_in_use"], json.dumps(cpu.get("tuned_rates")),
                cpu.get("thread_switches"))


def table(rows, alone: float) -> str:
    lines = ["| case | images/s | vs alone | fair share | vs fair share | job's CPU share "
             "| predict p50 / p99 ms (alone -> while training) |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name, rate, fair, predictions, job in rows:
        cpu = (job.get("cpu") or {}).get("cpu_share")
        latency = ""
        if predictions:
            solo, loaded = predictions
            latency = "%.0f / %.0f -> %.0f / %.0f" % (_pct(solo, 50), _pct(solo, 99),
                                                      _pct(loaded, 50), _pct(loaded, 99))
        lines.append("| %s | %.1f | %.2fx | %.2fx | **%.2fx** | %s | %s |" % (
            name, rate, rate / alone, fair, rate / alone / fair,
            "%.2f" % cpu if cpu is not None else "n/a", latency))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30, help="per case")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--rate", type=float, default=14.0, help="predictions per second")
    parser.add_argument("--code", default=ROOT, help="the checkout whose daemon is measured")
    parser.add_argument("--label", default="", help="a title for the table")
    parser.add_argument("--out", help="append the table (markdown) to this file")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="for the daemon (e.g. DEVICE_AGENT_PREDICT_THREADS=2)")
    parser.add_argument("--plot", help="draw the tables of --tables (runs this script "
                                       "appended with --out) into this PNG, then stop")
    parser.add_argument("--tables", help="a markdown file of this script's tables")
    args = parser.parse_args()
    if args.plot:
        return plot(read_tables(args.tables), args.plot)
    extra_env = dict(item.split("=", 1) for item in args.env)
    JOB.update(batch_size=16, resolution=96)
    rows, alone, notes = measure(os.path.abspath(args.code), args.backbone, args.seconds,
                                 args.rate, extra_env)
    head = "### %s\n\n%s, %d px, batch %d, da2, CPU (%d cores), %.0f s per case; code: %s%s\n" % (
        args.label or "cpu_share", args.backbone, JOB["resolution"], JOB["batch_size"],
        os.cpu_count() or 1, args.seconds, _describe(args.code),
        "; " + " ".join(args.env) if args.env else "")
    notes += list(thread_notes(rows))
    text = "\n".join([head, table(rows, alone), ""] + ["- " + n for n in notes]) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a") as handle:
            handle.write(text + "\n")
    return 0


def read_tables(path: str):
    """{title: [(case, images/s, x alone, fair share)]} from the markdown this script
    appends."""
    tables, title = {}, None
    with open(path) as handle:
        for line in handle:
            if line.startswith("### "):
                title = line[4:].strip()
                tables[title] = []
            elif title and line.startswith("| ") and not line.startswith("| case"):
                cells = [c.strip().strip("*").rstrip("x") for c in line.strip("|\n").split("|")]
                tables[title].append((cells[0], float(cells[1]), float(cells[2]),
                                      float(cells[3])))
    return tables


def plot(tables, path: str) -> int:
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    titles = list(tables)
    cases = [textwrap.fill(row[0].split(" (")[0], 14) for row in tables[titles[0]]]
    width = 0.8 / len(titles)
    for index, title in enumerate(titles):
        xs = [i + (index - (len(titles) - 1) / 2.0) * width for i in range(len(cases))]
        rows = tables[title]
        axes[0].bar(xs, [row[1] for row in rows], width, label=title)
        axes[1].bar(xs, [row[2] for row in rows], width, label=title)
        axes[1].scatter(xs, [0.8 * row[3] for row in rows], marker="_", s=400, color="black",
                        zorder=3, label="0.8 x fair share (goal)" if index == 0 else None)
    axes[0].set_ylabel("training images/s")
    axes[1].set_ylabel("images/s as a share of its own alone")
    for axis in axes:
        axis.set_xticks(range(len(cases)))
        axis.set_xticklabels(cases, fontsize=8)
        axis.legend(fontsize=8)
    figure.suptitle("DA2 training on a shared 2-core CPU (benchmarks/cpu_share.py)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print("wrote %s" % path)
    return 0


def _describe(code: str) -> str:
    try:
        commit = subprocess.check_output(["git", "-C", code, "log", "-1", "--format=%h %s"],
                                         universal_newlines=True).strip()[:72]
        changed = subprocess.check_output(["git", "-C", code, "status", "--porcelain",
                                           "--untracked-files=no"], universal_newlines=True)
    except (OSError, subprocess.CalledProcessError):
        return code
    return commit + (" + uncommitted changes" if changed.strip() else "")


if __name__ == "__main__":
    sys.exit(main())
