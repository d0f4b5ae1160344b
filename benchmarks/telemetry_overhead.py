"""CPU cost of the daemon's telemetry sampler, as a share of one core.

    python benchmarks/telemetry_overhead.py [--seconds 30] [--interval 1.0]

Runs the real Sampler (ring buffer, SSE fan-out, per-job meter, history writes to a SQLite
store) for a fixed time with each source that works here -- Linux (/proc, /sys) and the
replay of a tegrastats log (the parser's cost) -- and prints the sampler thread's CPU time
over the wall time. Also the parser alone: microseconds per tegrastats line.
"""
import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
sys.path.insert(0, ROOT)

from device_agent.store.db import Store  # noqa: E402
from device_agent.telemetry import tegrastats  # noqa: E402
from device_agent.telemetry.sampler import Sampler  # noqa: E402
from device_agent.telemetry.sources import LinuxSource, ReplaySource  # noqa: E402

REPLAY = os.path.join(ROOT, "deploy", "replay", "nano-training.log")
REAL = os.path.join(ROOT, "tests", "data", "tegrastats_samples.txt")


def run(source, seconds: float) -> float:
    with tempfile.TemporaryDirectory() as scratch:
        store = Store(os.path.join(scratch, "agent.db"))
        store.ensure_domain("bench")
        dataset = store.add_dataset("bench", scratch, {"classes": []})
        job_id = store.enqueue_job("bench", dataset, {})["id"]
        sampler = Sampler(source, store, worker=lambda: {"pid": os.getpid()},
                          running_job=lambda: job_id, history_step_s=10.0)
        sampler.subscribe()  # one SSE client listening
        started = time.time()
        sampler.start()
        time.sleep(seconds)
        sampler.stop()
        wall = time.time() - started
        store.close()
    return 100.0 * sampler.cpu_seconds / wall


def parser_cost_us() -> float:
    with open(REAL) as handle:
        lines = [line for line in handle if line.strip() and not line.startswith("#")]
    rounds = 2000
    started = time.perf_counter()
    for _ in range(rounds):
        for line in lines:
            tegrastats.parse_line(line)
    return 1e6 * (time.perf_counter() - started) / (rounds * len(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    rows = [("linux", run(LinuxSource(args.interval), args.seconds)),
            ("replay (tegrastats parser)", run(ReplaySource(REPLAY, args.interval),
                                               args.seconds))]
    print("| source | sampler CPU, %% of one core at %g Hz |" % (1.0 / args.interval))
    print("|---|---:|")
    for name, percent in rows:
        print("| %s | %.3f%% |" % (name, percent))
    print("\ntegrastats parser: %.1f us per line (mean over the real sample lines)"
          % parser_cost_us())


if __name__ == "__main__":
    main()
