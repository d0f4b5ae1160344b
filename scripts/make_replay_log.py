"""Write deploy/replay/nano-training.log: a SYNTHETIC tegrastats log for demos and the
dashboard test, shaped on the real Jetson Nano line in tests/data/tegrastats_samples.txt
(same tokens, rails and sensors), with values that rise and fall as during a training job.
It is labelled synthetic in its header; parser tests use only the real lines.

    python scripts/make_replay_log.py
"""
import math
import os
import random

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(ROOT, "deploy", "replay", "nano-training.log")
LINE = ("RAM {ram}/3964MB (lfb 2x2MB) SWAP {swap}/1982MB (cached 6MB) IRAM 0/252kB(lfb 252kB) "
        "CPU [{c0}%@1479,{c1}%@1479,{c2}%@1479,{c3}%@1479] EMC_FREQ {emc}%@1600 "
        "GR3D_FREQ {gpu}%@921 APE 25 PLL@{pll}C CPU@{cpu}C PMIC@50C GPU@{gput}C AO@{ao}C "
        "thermal@{th}C POM_5V_IN {pin}/{pin_avg} POM_5V_GPU {pgpu}/{pgpu_avg} "
        "POM_5V_CPU {pcpu}/{pcpu_avg}")


def main(seconds: int = 180) -> None:
    rng = random.Random(7)
    lines = ["# SYNTHETIC tegrastats log (scripts/make_replay_log.py): the real Nano line's "
             "format, invented values.",
             "# One line per second: idle, a training job from 20 s to 140 s, idle again."]
    heat = 0.0
    averages = {"pin": 0.0, "pgpu": 0.0, "pcpu": 0.0}
    for t in range(seconds):
        busy = 1.0 if 20 <= t < 140 else 0.0
        ramp = min(1.0, max(0.0, (t - 20) / 10.0)) * busy
        heat += (ramp - heat) * 0.04
        gpu = int(busy * (70 + 25 * math.sin(t / 3.0) ** 2) + rng.randint(0, 3))
        cores = [int(8 + busy * 55 + rng.randint(0, 20)) for _ in range(4)]
        power = {"pin": int(1700 + 3300 * ramp + rng.randint(-60, 60)),
                 "pgpu": int(40 + 1900 * ramp * gpu / 100.0 + rng.randint(0, 20)),
                 "pcpu": int(360 + 900 * ramp + rng.randint(-30, 30))}
        for key, value in power.items():
            averages[key] += (value - averages[key]) / (t + 1)
        temp = 40.0 + 18.0 * heat
        values = dict(ram=int(1923 + 1250 * ramp + rng.randint(-8, 8)),
                      swap=int(191 + 260 * heat), c0=cores[0], c1=cores[1], c2=cores[2],
                      c3=cores[3], emc=int(4 + 40 * ramp), gpu=gpu, pll="%.1f" % (temp - 3),
                      cpu="%.1f" % temp, gput="%.1f" % (temp - 0.5), ao="%.1f" % (temp + 4),
                      th="%.2f" % (temp - 0.2))
        values.update({k: v for k, v in power.items()})
        values.update({k + "_avg": int(v) for k, v in averages.items()})
        lines.append(LINE.format(**values))
    os.makedirs(os.path.dirname(TARGET), exist_ok=True)
    with open(TARGET, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print("wrote %s (%d lines)" % (TARGET, seconds))


if __name__ == "__main__":
    main()
