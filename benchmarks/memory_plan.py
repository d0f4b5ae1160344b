"""The memory planner against the worker's whole RSS in real jobs.

    python benchmarks/memory_plan.py [--images-per-class 30] [--epochs 2]
                                     [--out docs/benchmarks-memory-plan.md]

Each configuration runs as a job in a fresh worker process (``python -m device_agent.worker``,
driven over its pipes exactly as the daemon drives it) on the handwritten digits scikit-learn
ships. The job's ``start`` event carries the plan (the resident RSS it saw, the estimate per
part, the planned peak); its result carries the worker's RSS high-water mark over the whole
job (steps, evaluations, checkpoints). The table prints both and their ratio: the plan must be
the larger. Random weights: memory does not depend on their values.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, List

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
sys.path.insert(0, ROOT)

from device_agent import atomic  # noqa: E402
from device_agent.demo import write_digits_folder  # noqa: E402
from device_agent.protocol.peer import Peer  # noqa: E402

# (backbone, method, resolution, batch): the demo's job first, then larger inputs, another
# architecture, and finetune, whose optimizer state and checkpoints hold a whole backbone.
CONFIGS = [("efficientnet_lite0", "da2", 64, 32), ("efficientnet_lite0", "da2", 128, 16),
           ("efficientnet_lite0", "finetune", 64, 32), ("mobilenet_v2", "da2", 96, 32),
           ("resnet18", "finetune", 96, 16), ("resnet18", "tinytl_lite_residual", 64, 32)]


def run_job(dataset: str, out_dir: str, backbone: str, method: str, resolution: int,
            batch: int, epochs: int) -> Dict[str, object]:
    """One job in a fresh worker: the plan from its start event, the result from its end."""
    proc = subprocess.Popen([sys.executable, "-m", "device_agent.worker", "--device", "cpu",
                             "--weights", "random"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=os.path.abspath(ROOT)))
    peer = Peer(proc.stdout, proc.stdin)
    try:
        peer.receive()  # hello
        params = {"backbone": backbone, "method": method, "epochs": epochs,
                  "batch_size": batch, "resolution": resolution, "hflip": False, "seed": 0}
        peer.send("train", job_id="plan", domain="digits", dataset_dir=dataset,
                  out_dir=out_dir, params=params)
        plan, done = {}, None
        while done is None:
            header, _ = peer.receive()
            if header["kind"] == "job_event" and header["event"].get("event") == "start":
                plan = header["event"]
            elif header["kind"] == "job_done":
                done = header
            elif header["kind"] == "error":
                raise RuntimeError(header)
        if done["state"] != "succeeded":
            raise RuntimeError("the job did not succeed: %s" % done["error"])
        return {"plan": plan, "report": done["report"]}
    finally:
        proc.kill()
        proc.wait()


def row(config, job: Dict[str, object]) -> List[str]:
    plan = job["plan"]  # the planner counts 10^6 bytes; the report, bytes
    measured = job["report"]["peak_rss_bytes"] / 1e6
    planned = float(plan["estimated_peak_mb"])
    resident = float(plan["resident_mb"])
    growth = measured - resident
    return ["%s %s %dpx b%d" % config, "%.0f" % resident, "%.0f" % plan["estimated_step_mb"],
            "%.0f" % plan["estimated_job_mb"], "%.0f" % planned, "%.0f" % measured,
            "%.0f" % growth, "%.2f" % (growth / max(float(plan["estimated_job_mb"]), 1e-9)),
            "yes" if planned >= measured else "**no**"]


HEADER = ["job", "resident at plan (MB)", "step estimate", "job estimate", "planned peak",
          "measured peak", "measured growth", "growth / job estimate", "plan bounds peak"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-class", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", help="write the table (markdown) here too")
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="memory-plan-")
    try:
        dataset = os.path.join(scratch, "digits")
        write_digits_folder(dataset, per_class=args.images_per_class)
        rows = []
        for index, config in enumerate(CONFIGS):
            job = run_job(dataset, os.path.join(scratch, "job%d" % index), *config,
                          epochs=args.epochs)
            rows.append(row(config, job))
            print(" | ".join(rows[-1]), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    table = ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    print("\n".join(table))
    if args.out:
        text = ("# The memory plan against the worker's peak\n\n"
                "Command: `python benchmarks/memory_plan.py --images-per-class %d --epochs %d`, "
                "torch %s, on this machine.\n\n%s\n"
                % (args.images_per_class, args.epochs, _torch_version(), "\n".join(table)))
        atomic.write_bytes(args.out, text.encode("utf-8"))
    return 0


def _torch_version() -> str:
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                         stdout=subprocess.PIPE, universal_newlines=True)
    return out.stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
