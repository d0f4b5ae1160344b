"""Telemetry: the tegrastats parser over every real sample line, the other sources, the
sampler's buffer, history and per-job meters."""
import json
import os
import random
import subprocess
import sys
import time

import pytest

from device_agent.telemetry import history, sources, tegrastats
from device_agent.telemetry.sample import FIELDS
from device_agent.telemetry.sampler import Sampler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(ROOT, "tests", "data", "tegrastats_samples.txt")


def sample_lines():
    with open(SAMPLES) as handle:
        return [line for line in handle if line.strip() and not line.startswith("#")]


# (board, ram used/total, swap used/total, cores, offline cores, gpu %, temps, total mW)
EXPECTED = [
    ("Nano JP4.6.1", (1923, 3964), (191, 1982), 4, 0, 0.0,
     {"PLL": 37, "CPU": 40, "PMIC": 50, "GPU": 40, "AO": 45, "thermal": 40}, 1750.0),
    ("TX1 legacy", (748, 3854), (0, 0), 4, 0, 52.0, {}, None),
    ("TX2 non-root", (2020, 7852), (None, None), 6, 0, 0.0,
     {"PLL": 42.5, "MCPU": 42.5, "PMIC": 100, "Tboard": 40, "GPU": 41, "BCPU": 42.5,
      "thermal": 41.9, "Tdiode": 41.25}, 3140.0),
    ("AGX Xavier, 4 cores off", (1736, 15827), (None, None), 8, 4, 0.0,
     {"AO": 29, "GPU": 30, "iwlwifi": 34, "Tboard": 30, "Tdiode": 33, "AUX": 29, "CPU": 30,
      "thermal": 29.45, "PMIC": 100}, 466 + 466 + 932 + 0 + 0 + 1854.0),
    ("Xavier NX R35", (3168, 6851), (161, 3426), 6, 0, 0.0,
     {"AUX": 45, "CPU": 46.5, "thermal": 45.6, "AO": 45, "GPU": 45.5, "PMIC": 50}, 2763.0),
    ("AGX Orin JP5", (1282, 62795), (0, 31398), 12, 0, 0.0,
     {"CPU": 42.593, "Tboard": 32, "SOC2": 39.343, "Tdiode": 33.25, "SOC0": 39.375,
      "tj": 42.593, "SOC1": 40.468}, None),
    ("Orin Nano JP6 non-root", (3452, 7620), (1518, 16384), 6, 0, 0.0,
     {"cpu": 50.031, "soc2": 49.031, "soc0": 50, "gpu": 49.031, "tj": 50.25, "soc1": 50.25},
     4824.0),
    ("AGX Orin JP7", (20642, 62817), (None, None), 12, 0, 12.0,
     {"cpu": 52.968, "soc2": 48.406, "soc0": 49.531, "gpu": 47.625}, None),
]


def test_the_samples_file_is_the_one_expected():
    assert len(sample_lines()) == len(EXPECTED)


@pytest.mark.parametrize("index", range(len(EXPECTED)))
def test_every_real_line_parses_to_exact_values(index):
    board, ram, swap, cores, offline, gpu, temps, total = EXPECTED[index]
    sample = tegrastats.parse_line(sample_lines()[index]).sample
    assert list(sample) == list(FIELDS), board
    assert (sample["ram_used_mb"], sample["ram_total_mb"]) == ram, board
    assert (sample["swap_used_mb"], sample["swap_total_mb"]) == swap, board
    assert len(sample["cpus"]) == cores and sample["cpus"].count(None) == offline, board
    assert sample["gpu_load_pct"] == gpu, board
    assert sample["temps_c"] == temps, board
    assert sample["power_total_mw"] == total, board


def test_details_of_the_formats():
    lines = sample_lines()
    nano = tegrastats.parse_line(lines[0])
    assert nano.sample["cpus"][0] == {"load_pct": 5.0, "freq_mhz": 1224.0}
    assert nano.sample["gpu_freq_mhz"] == 76.0 and nano.sample["emc_load_pct"] == 0.0
    assert nano.sample["power_mw"]["POM_5V_CPU"] == {"cur": 366.0, "avg": 406.0}
    assert "IRAM" in nano.unknown and "APE" in nano.unknown  # kept raw
    legacy = tegrastats.parse_line(lines[1]).sample
    assert legacy["cpus"][1] == {"load_pct": 43.0, "freq_mhz": 1912.0}  # "cpu [..]@MHz"
    assert legacy["gpu_freq_mhz"] == 998.0 and legacy["emc_load_pct"] == 24.0
    nx = tegrastats.parse_line(lines[4]).sample
    assert nx["ts"] == 1720531891.0 and nx["gpu_freq_mhz"] == 114.0  # "0%@[114]"
    orin = tegrastats.parse_line(lines[5]).sample
    assert "GPU" not in orin["temps_c"] and "CV0" not in orin["temps_c"]  # -256C: absent
    assert orin["power_mw"]["VIN_SYS_5V0"] == {"cur": 4032.0, "avg": 4032.0}
    jp7 = tegrastats.parse_line(lines[7])
    assert jp7.sample["gpu_freq_mhz"] == 1300.0 and jp7.sample["emc_load_pct"] == 3.0
    assert jp7.sample["power_mw"]["VDD_GPU_SOC"] == {"cur": 5139.0, "avg": 5139.0}
    assert "NVENC0" in jp7.unknown


def test_garbage_never_crashes_the_parser():
    rng = random.Random(0)
    words = sample_lines()[0].split() + sample_lines()[7].split() + [
        "@", "[", "]", "%@", "-256C", "1/", "/2", "x@yC", "RAM", "CPU", "[off", "GR3D_FREQ", ""]
    for _ in range(2000):
        line = " ".join(rng.choice(words) for _ in range(rng.randint(0, 30)))
        parsed = tegrastats.parse_line(line)
        assert list(parsed.sample) == list(FIELDS)
    assert tegrastats.parse_line("").sample["ram_used_mb"] is None


def test_telemetry_parse_prints_exactly_the_normalized_keys():
    out = subprocess.run([sys.executable, "-m", "device_agent", "telemetry", "parse", SAMPLES],
                         stdout=subprocess.PIPE, universal_newlines=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT), timeout=60, check=True).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == len(EXPECTED)
    assert all(sorted(row) == sorted(FIELDS) for row in rows)
    piped = subprocess.run([sys.executable, "-m", "device_agent", "telemetry", "parse", "-"],
                           input=sample_lines()[6], stdout=subprocess.PIPE,
                           universal_newlines=True, cwd=ROOT, timeout=60, check=True,
                           env=dict(os.environ, PYTHONPATH=ROOT)).stdout
    assert json.loads(piped)["power_total_mw"] == 4824.0


def _fake_linux(tmp_path, user, idle):
    proc, sys_dir = tmp_path / "proc", tmp_path / "sys"
    (proc).mkdir(exist_ok=True)
    (proc / "meminfo").write_text("MemTotal: 4096000 kB\nMemFree: 100000 kB\n"
                                  "MemAvailable: 1024000 kB\nSwapTotal: 2048000 kB\n"
                                  "SwapFree: 1024000 kB\n")
    (proc / "stat").write_text("cpu  10 0 10 80 0 0 0 0 0 0\n"
                               "cpu0 %d 0 0 %d 0 0 0 0 0 0\ncpu1 0 0 0 100 0 0 0 0 0 0\n"
                               % (user, idle))
    zone = sys_dir / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "type").write_text("CPU-therm\n")
    (zone / "temp").write_text("41500\n")
    freq = sys_dir / "devices/system/cpu/cpu0/cpufreq"
    freq.mkdir(parents=True, exist_ok=True)
    (freq / "scaling_cur_freq").write_text("1479000\n")
    return str(proc), str(sys_dir)


def test_the_linux_source_reads_proc_and_sys(tmp_path):
    proc, sys_dir = _fake_linux(tmp_path, user=0, idle=100)
    source = sources.LinuxSource(0.01, proc, sys_dir)
    _fake_linux(tmp_path, user=50, idle=150)  # cpu0: +50 busy of +100 since the first read
    sample = source.read()
    assert sample["ram_total_mb"] == 4000.0 and sample["ram_used_mb"] == 3000.0
    assert sample["swap_total_mb"] == 2000.0 and sample["swap_used_mb"] == 1000.0
    assert sample["cpus"][0] == {"load_pct": 50.0, "freq_mhz": 1479.0}
    assert sample["cpus"][1]["freq_mhz"] is None
    assert sample["temps_c"] == {"CPU": 41.5} and sample["source"] == "linux"
    real = sources.LinuxSource(0.01).read()  # this machine
    assert real["ram_total_mb"] > 0 and len(real["cpus"]) == os.cpu_count()


class FakeJtop(object):
    """The shapes jetson-stats 4.x documents, with an offline core and a missing GPU."""

    memory = {"RAM": {"tot": 4051032, "used": 2048000}, "SWAP": {"tot": 2025512, "used": 0},
              "EMC": {"online": True, "val": 12}}
    cpu = {"cpu": [{"online": True, "idle": 75.0, "freq": {"cur": 1479000}},
                   {"online": False, "freq": {"cur": 0}}]}
    temperature = {"CPU": {"online": True, "temp": 41.0}, "GPU": {"online": True, "temp": -256},
                   "PLL": {"online": False, "temp": 30.0}}
    power = {"rail": {"POM_5V_IN": {"online": True, "power": 3500, "avg": 3100},
                      "POM_5V_GPU": {"online": True, "power": 500, "avg": 450}},
             "tot": {"power": 3500}}

    @property
    def gpu(self):
        raise AttributeError("no GPU subsystem in this version")


def test_jtop_fields_are_normalized_tolerantly():
    sample = sources.from_jtop(FakeJtop())
    assert round(sample["ram_total_mb"]) == 3956 and round(sample["ram_used_mb"]) == 2000
    assert sample["cpus"] == [{"load_pct": 25.0, "freq_mhz": 1479.0}, None]
    assert sample["gpu_load_pct"] is None and sample["emc_load_pct"] == 12.0
    assert sample["temps_c"] == {"CPU": 41.0}
    assert sample["power_total_mw"] == 3500.0 and sample["source"] == "jtop"


def test_auto_falls_back_to_linux_without_jtop_or_tegrastats(monkeypatch):
    monkeypatch.setattr(sources, "JTOP_SOCKET", "/nonexistent/jtop.sock")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert sources.open_source("auto", 0.01).name == "linux"
    with pytest.raises(sources.TelemetryUnavailable):
        sources.open_source("tegrastats", 0.01)
    with pytest.raises(sources.TelemetryUnavailable):
        sources.open_source("jtop", 0.01)


def test_replay_feeds_the_log_at_its_pace_and_loops():
    replay = sources.ReplaySource(SAMPLES, interval=0.05)
    started = time.time()
    samples = [replay.read() for _ in range(len(EXPECTED) + 1)]
    assert time.time() - started >= 0.05 * len(EXPECTED) * 0.9
    assert samples[0]["ram_total_mb"] == 3964.0 and samples[-1]["ram_total_mb"] == 3964.0
    assert all(s["source"] == "replay" and s["ts"] >= started for s in samples)


def _sample(ts, ram, power=None, temp=40.0):
    return {"ts": ts, "ram_used_mb": ram, "ram_total_mb": 4000.0, "swap_used_mb": 0.0,
            "swap_total_mb": 0.0, "cpus": [{"load_pct": ram / 100.0, "freq_mhz": 1000.0}, None],
            "gpu_load_pct": None, "gpu_freq_mhz": None, "emc_load_pct": None,
            "temps_c": {"CPU": temp}, "power_mw": {}, "power_total_mw": power,
            "source": "test"}


def test_downsampling_merges_buckets():
    samples = [_sample(100.0 + i, 1000.0 + 100 * i) for i in range(10)]
    merged = history.downsample(samples, 5.0)
    assert [m["ts"] for m in merged] == [100.0, 105.0]
    assert merged[0]["ram_used_mb"] == 1200.0 and merged[1]["ram_used_mb"] == 1700.0
    assert merged[0]["cpus"][0]["load_pct"] == 12.0 and merged[0]["cpus"][1] is None
    assert history.downsample(samples, 0) == samples


def test_a_job_meter_integrates_energy_and_keeps_peaks():
    meter = history.JobMeter()
    for i, power in enumerate([2000.0, 4000.0, 4000.0]):
        meter.add(dict(_sample(10.0 + i, 1000.0 + i, power, temp=40 + i),
                       worker={"rss_mb": 300.0 + i}))
    summary = meter.summary()
    assert summary["energy_j"] == 8.0 and summary["avg_power_mw"] == 4000.0  # 2 x 1 s x 4 W
    assert summary["peak_power_mw"] == 4000.0 and summary["max_temp_c"] == 42.0
    assert summary["peak_ram_mb"] == 1002.0 and summary["worker_peak_rss_mb"] == 302.0
    resumed = history.JobMeter(summary)  # a resumed job goes on from here
    resumed.add(dict(_sample(20.0, 500.0, 1000.0), worker={}))
    assert resumed.summary()["peak_ram_mb"] == 1002.0 and resumed.summary()["samples"] == 4


class ListSource(object):
    name = "list"

    def __init__(self, samples):
        self.samples = list(samples)

    def read(self):
        if not self.samples:
            raise sources.TelemetryUnavailable("done")
        return self.samples.pop(0)

    def close(self):
        pass


def test_the_sampler_buffers_meters_and_keeps_history(tmp_path):
    from device_agent.store.db import Store

    store = Store(str(tmp_path / "agent.db"))
    store.ensure_domain("d")
    dataset = store.add_dataset("d", str(tmp_path), {"classes": []})
    job_id = store.enqueue_job("d", dataset, {})["id"]
    running = {"job": job_id}
    sampler = Sampler(ListSource([]), store, worker=lambda: {"pid": os.getpid()},
                      running_job=lambda: running["job"], buffer_size=5, history_step_s=2.0)
    subscriber = sampler.subscribe()
    now = time.time()
    for i in range(8):
        sampler.record(_sample(now - 8 + i, 1000.0 + i, power=1000.0))
    running["job"] = None
    sampler.record(_sample(now, 2000.0))
    assert len(sampler.ring) == 5 and sampler.latest()["ram_used_mb"] == 2000.0
    assert subscriber.qsize() == 9
    assert sampler.latest()["worker"]["rss_mb"] > 10  # this process's RSS, read from /proc
    telemetry = store.job_telemetry(job_id)
    assert telemetry["samples"] == 8 and telemetry["energy_j"] == 7.0
    assert telemetry["peak_ram_mb"] == 1007.0
    sampler._flush_history(force=True)
    stored = store.telemetry()
    assert len(stored) >= 3 and stored[0]["ts"] == now - 8
    window = sampler.window(since=now - 8.5)
    assert [s["ts"] for s in window][:1] == [now - 8] and window[-1]["ts"] == now
    assert len(sampler.window(since=now - 8.5, step=4.0)) <= 4


def test_a_failing_source_degrades_to_linux():
    sampler = Sampler(ListSource([_sample(time.time(), 1.0)]), None, buffer_size=10)
    sampler.start()
    deadline = time.time() + 10
    while sampler.source_name != "linux" and time.time() < deadline:
        time.sleep(0.05)
    sampler.stop()
    assert sampler.source_name == "linux"
