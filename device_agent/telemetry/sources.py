"""Where samples come from: jtop, tegrastats, Linux (/proc, /sys) or a replayed log.

Every source has ``read() -> sample`` (blocking at most about one interval) and
``close()``. :func:`open_source` picks one: ``auto`` tries jtop (only when
``/run/jtop.sock`` exists and jetson-stats imports), then tegrastats (on PATH), then Linux,
which works on any laptop or CI machine.
"""
import os
import re
import shutil
import subprocess
import time
from typing import Dict, List, Optional

from device_agent.procfs import kib_fields
from device_agent.telemetry import tegrastats
from device_agent.telemetry.sample import empty_sample, keep_temperature, total_power_mw

JTOP_SOCKET = "/run/jtop.sock"
THERM_SUFFIX = re.compile(r"[-_]therm(al)?$")  # Jetson zones: CPU-therm, GPU-therm


class TelemetryUnavailable(Exception):
    pass


# --- Linux ---------------------------------------------------------------------------------

def read_meminfo(path: str = "/proc/meminfo") -> Dict[str, float]:
    """/proc/meminfo in MB (kB / 1024)."""
    return {name: kib / 1024.0 for name, kib in kib_fields(path).items()}


def read_cpu_times(path: str = "/proc/stat") -> Dict[str, List[int]]:
    times = {}
    with open(path) as handle:
        for line in handle:
            if line.startswith("cpu") and line[3:4].isdigit():
                name, *fields = line.split()
                times[name] = [int(f) for f in fields]
    return times


def read_thermal(root: str = "/sys/class/thermal") -> Dict[str, float]:
    temps = {}  # type: Dict[str, float]
    try:
        zones = sorted(z for z in os.listdir(root) if z.startswith("thermal_zone"))
    except OSError:
        return temps
    for zone in zones:
        try:
            with open(os.path.join(root, zone, "type")) as handle:
                name = handle.read().strip() or zone
            with open(os.path.join(root, zone, "temp")) as handle:
                value = int(handle.read().strip()) / 1000.0
        except (OSError, ValueError):
            continue
        keep_temperature(temps, THERM_SUFFIX.sub("", name) or name, value)
    return temps


class LinuxSource(object):
    """RAM and swap from /proc/meminfo, per-core load from /proc/stat deltas, clocks from
    cpufreq, temperatures from thermal zones. No GPU or power figures."""

    name = "linux"

    def __init__(self, interval: float = 1.0, proc: str = "/proc", sys: str = "/sys") -> None:
        self.interval = interval
        self.proc, self.sys = proc, sys
        self.previous = read_cpu_times(os.path.join(proc, "stat"))
        self.next_at = time.time() + interval

    def read(self) -> Dict[str, object]:
        time.sleep(max(0.0, self.next_at - time.time()))
        self.next_at = max(self.next_at + self.interval, time.time())
        return self.sample()

    def sample(self) -> Dict[str, object]:
        sample = empty_sample(self.name, time.time())
        memory = read_meminfo(os.path.join(self.proc, "meminfo"))
        total = memory.get("MemTotal")
        if total is not None:
            available = memory.get("MemAvailable", memory.get("MemFree", 0.0))
            sample.update(ram_total_mb=total, ram_used_mb=total - available)
        if memory.get("SwapTotal") is not None:
            sample.update(swap_total_mb=memory["SwapTotal"],
                          swap_used_mb=memory["SwapTotal"] - memory.get("SwapFree", 0.0))
        sample["cpus"] = self._cpus()
        sample["temps_c"] = read_thermal(os.path.join(self.sys, "class", "thermal"))
        return sample

    def _cpus(self) -> List[Optional[Dict[str, float]]]:
        now = read_cpu_times(os.path.join(self.proc, "stat"))
        cores = []  # type: List[Optional[Dict[str, float]]]
        for name in sorted(now, key=lambda n: int(n[3:])):
            before = self.previous.get(name, now[name])
            deltas = [a - b for a, b in zip(now[name], before)]
            busy = sum(deltas) - sum(deltas[3:5])  # idle + iowait
            load = 100.0 * busy / sum(deltas) if sum(deltas) > 0 else 0.0
            cores.append({"load_pct": round(load, 1), "freq_mhz": self._freq(name)})
        self.previous = now
        return cores

    def _freq(self, core: str) -> Optional[float]:
        path = os.path.join(self.sys, "devices/system/cpu", core, "cpufreq/scaling_cur_freq")
        try:
            with open(path) as handle:
                return int(handle.read().strip()) / 1000.0
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        pass


# --- tegrastats and replays ----------------------------------------------------------------

class TegrastatsSource(object):
    """``tegrastats --interval MS`` as a child process, one parsed line per read."""

    name = "tegrastats"

    def __init__(self, interval: float = 1.0, binary: str = "tegrastats") -> None:
        path = shutil.which(binary)
        if path is None:
            raise TelemetryUnavailable("tegrastats is not on PATH")
        self.proc = subprocess.Popen([path, "--interval", str(int(interval * 1000))],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     universal_newlines=True)

    def read(self) -> Dict[str, object]:
        line = self.proc.stdout.readline()
        if not line:
            raise TelemetryUnavailable("tegrastats exited (%s)" % self.proc.poll())
        return tegrastats.stamp_now(tegrastats.parse_line(line, self.name).sample)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)


class ReplaySource(object):
    """A recorded tegrastats log fed at its pace (one line per interval, looping), each
    sample stamped with the time it is replayed. For demos and tests."""

    name = "replay"

    def __init__(self, path: str, interval: float = 1.0) -> None:
        with open(path) as handle:
            self.lines = [line for line in handle
                          if line.strip() and not line.lstrip().startswith("#")]
        if not self.lines:
            raise TelemetryUnavailable("%s holds no tegrastats lines" % path)
        self.interval = interval
        self.position = 0
        self.next_at = time.time()

    def read(self) -> Dict[str, object]:
        time.sleep(max(0.0, self.next_at - time.time()))
        self.next_at = max(self.next_at + self.interval, time.time())
        line = self.lines[self.position % len(self.lines)]
        self.position += 1
        return tegrastats.stamp_now(tegrastats.parse_line(line, self.name).sample)

    def close(self) -> None:
        pass


# --- jtop ------------------------------------------------------------------------------------

class JtopSource(object):
    """jetson-stats' client (the host's jtop.service through /run/jtop.sock)."""

    name = "jtop"

    def __init__(self, interval: float = 1.0) -> None:
        if not os.path.exists(JTOP_SOCKET):
            raise TelemetryUnavailable("%s does not exist (is jtop.service running?)"
                                       % JTOP_SOCKET)
        try:
            from jtop import jtop
        except ImportError as exc:
            raise TelemetryUnavailable("jetson-stats is not installed: %s" % exc) from exc
        self.jetson = jtop(interval=interval)
        try:
            self.jetson.start()
        except Exception as exc:  # JtopException: service down, version mismatch, access
            raise TelemetryUnavailable("jtop: %s" % exc) from exc

    def read(self) -> Dict[str, object]:
        if not self.jetson.ok():
            raise TelemetryUnavailable("jtop stopped answering")
        return from_jtop(self.jetson)

    def close(self) -> None:
        try:
            self.jetson.close()
        except Exception:
            pass


def from_jtop(jetson) -> Dict[str, object]:
    """jtop's structured properties -> the normalized sample. Tolerates 4.x and 7.x: every
    subsystem and field may be missing; offline cores have no load keys."""
    sample = empty_sample("jtop", time.time())
    memory = _get(jetson, "memory") or {}
    for key, name in (("RAM", "ram"), ("SWAP", "swap")):
        block = memory.get(key) or {}
        if "tot" in block:
            sample[name + "_total_mb"] = block["tot"] / 1024.0
            sample[name + "_used_mb"] = block.get("used", 0) / 1024.0
    cpus = (_get(jetson, "cpu") or {}).get("cpu")
    if cpus is not None:
        sample["cpus"] = [_jtop_core(core) for core in cpus]
    gpus = _get(jetson, "gpu") or {}
    for gpu in gpus.values():
        status, freq = gpu.get("status") or {}, gpu.get("freq") or {}
        if status.get("load") is not None:
            sample["gpu_load_pct"] = max(float(status["load"]), sample["gpu_load_pct"] or 0.0)
        if freq.get("cur") is not None:
            sample["gpu_freq_mhz"] = freq["cur"] / 1000.0
    emc = memory.get("EMC") or {}
    if emc.get("val") is not None:
        sample["emc_load_pct"] = float(emc["val"])
    for name, sensor in (_get(jetson, "temperature") or {}).items():
        if sensor.get("online", True) and sensor.get("temp") is not None:
            keep_temperature(sample["temps_c"], name, float(sensor["temp"]))
    rails = ((_get(jetson, "power") or {}).get("rail")) or {}
    sample["power_mw"] = {name: {"cur": float(rail.get("power", 0)),
                                 "avg": float(rail.get("avg", rail.get("power", 0)))}
                          for name, rail in rails.items() if rail.get("online", True)}
    sample["power_total_mw"] = total_power_mw(sample["power_mw"])
    return sample


def _get(jetson, name: str):
    try:
        return getattr(jetson, name)
    except Exception:  # a subsystem the board or the version lacks
        return None


def _jtop_core(core: Dict[str, object]) -> Optional[Dict[str, float]]:
    if not core.get("online", True) or "idle" not in core:
        return None
    freq = (core.get("freq") or {}).get("cur")
    return {"load_pct": round(100.0 - float(core["idle"]), 1),
            "freq_mhz": freq / 1000.0 if freq is not None else None}


def open_source(kind: str = "auto", interval: float = 1.0, replay_path: Optional[str] = None):
    """The source named by ``kind``; ``auto`` falls back jtop -> tegrastats -> linux."""
    if kind == "replay":
        if not replay_path:
            raise TelemetryUnavailable("the replay source needs a tegrastats log file")
        return ReplaySource(replay_path, interval)
    builders = {"jtop": JtopSource, "tegrastats": TegrastatsSource, "linux": LinuxSource}
    if kind != "auto":
        return builders[kind](interval)
    for name in ("jtop", "tegrastats"):
        try:
            return builders[name](interval)
        except TelemetryUnavailable:
            continue
    return LinuxSource(interval)
