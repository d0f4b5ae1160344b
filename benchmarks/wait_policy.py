"""OpenMP thread counts and wait policies for DA2 training steps, alone and beside one busy
process: why the worker tunes its thread count instead of fixing a wait policy
(device_agent/cpu_budget.py; README: Sharing the CPU).

    python benchmarks/wait_policy.py [--backbone efficientnet_lite0] [--steps 8]

Each configuration runs in a fresh process (OpenMP reads its variables once, when loaded):
two warm-up steps, then ``--steps`` timed lean DA2 steps at 96 px, batch 16, random weights.
"""
import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
CONFIGS = [("2 threads, default wait (spin, then sleep)", {"T": "2"}),
           ("2 threads, OMP_WAIT_POLICY=PASSIVE", {"T": "2", "OMP_WAIT_POLICY": "PASSIVE"}),
           ("2 threads, GOMP_SPINCOUNT=10000", {"T": "2", "GOMP_SPINCOUNT": "10000"}),
           ("1 thread", {"T": "1"})]
CHILD = """
import os, sys, time
sys.path.insert(0, %(root)r)
import torch
from device_agent.model.builder import build_net
from device_agent.training.step import make_optimizer, train_step
torch.set_num_threads(int(os.environ["T"]))
torch.manual_seed(0)
net = build_net(%(backbone)r, "da2", 3, weights="random").train()
optimizer = make_optimizer(net, 1e-3)
images, labels = torch.randn(16, 3, 96, 96), torch.arange(16) %% 3
for _ in range(2):
    train_step(net, optimizer, images, labels, lean=True)
started = time.time()
for _ in range(%(steps)d):
    train_step(net, optimizer, images, labels, lean=True)
print(%(steps)d * 16 / (time.time() - started))
"""


def rate(backbone: str, steps: int, env) -> float:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("OMP_", "GOMP_", "MKL_", "KMP_", "DEVICE_AGENT_"))}
    code = CHILD % {"root": ROOT, "backbone": backbone, "steps": steps}
    out = subprocess.check_output([sys.executable, "-c", code], env=dict(clean, **env),
                                  universal_newlines=True)
    return float(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    rows = []
    for name, env in CONFIGS:
        alone = rate(args.backbone, args.steps, env)
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)
        try:
            beside = rate(args.backbone, args.steps, env)
        finally:
            hog.kill()
            hog.wait()
        rows.append((name, alone, beside))
    best = max(row[1] for row in rows)
    print("%s, DA2, 96 px, batch 16, %d CPUs\n" % (args.backbone, os.cpu_count() or 1))
    print("| threads and wait policy | alone img/s | beside 1 busy process img/s | beside / "
          "best alone |\n|---|---:|---:|---:|")
    for name, alone, beside in rows:
        print("| %s | %.1f | %.1f | %.2fx |" % (name, alone, beside, beside / best))
    return 0


if __name__ == "__main__":
    sys.exit(main())
