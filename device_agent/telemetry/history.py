"""Downsampling samples into buckets, and per-job meters (peaks, energy)."""
from typing import Dict, List, Optional

SCALARS = ("ram_used_mb", "ram_total_mb", "swap_used_mb", "swap_total_mb", "gpu_load_pct",
           "gpu_freq_mhz", "emc_load_pct", "power_total_mw")


def _mean(values: List[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def merge(samples: List[Dict[str, object]]) -> Dict[str, object]:
    """One sample standing for ``samples``: means of every figure, the first's time."""
    last = samples[-1]
    merged = dict(last, ts=samples[0]["ts"])
    for key in SCALARS:
        merged[key] = _mean([s.get(key) for s in samples])
    temps = {}  # type: Dict[str, float]
    for name in last.get("temps_c") or {}:
        temps[name] = _mean([(s.get("temps_c") or {}).get(name) for s in samples])
    merged["temps_c"] = temps
    rails = {}  # type: Dict[str, Dict[str, float]]
    for name in last.get("power_mw") or {}:
        values = [(s.get("power_mw") or {}).get(name) for s in samples]
        rails[name] = {k: _mean([v[k] for v in values if v]) for k in ("cur", "avg")}
    merged["power_mw"] = rails
    cores = last.get("cpus")
    if cores is not None:
        merged["cpus"] = [None if core is None else {
            "load_pct": _mean([_core(s, i, "load_pct") for s in samples]),
            "freq_mhz": _mean([_core(s, i, "freq_mhz") for s in samples])}
            for i, core in enumerate(cores)]
    if "worker" in last:
        merged["worker"] = dict(last["worker"], rss_mb=_mean(
            [(s.get("worker") or {}).get("rss_mb") for s in samples]))
    return merged


def _core(sample: Dict[str, object], index: int, key: str) -> Optional[float]:
    cores = sample.get("cpus") or []
    core = cores[index] if index < len(cores) else None
    return core.get(key) if core else None


def downsample(samples: List[Dict[str, object]], step: float) -> List[Dict[str, object]]:
    """Samples (ordered by time) merged into buckets of ``step`` seconds."""
    if step <= 0 or not samples:
        return list(samples)
    buckets = []  # type: List[List[Dict[str, object]]]
    start = None
    for sample in samples:
        if start is None or sample["ts"] >= start + step:
            start = sample["ts"] - (sample["ts"] % step)
            buckets.append([])
        buckets[-1].append(sample)
    return [merge(bucket) for bucket in buckets]


class JobMeter(object):
    """What one job did to the board: peaks, power and energy, from the samples taken while
    it ran. Starts from an earlier summary when a job resumes after a crash."""

    FIELDS = ("peak_ram_mb", "peak_swap_mb", "worker_peak_rss_mb", "cuda_peak_mb",
              "peak_power_mw", "max_temp_c")

    def __init__(self, summary: Optional[Dict[str, object]] = None) -> None:
        summary = summary or {}
        self.peaks = {k: summary.get(k) for k in self.FIELDS}  # type: Dict[str, object]
        self.energy_j = float(summary.get("energy_j") or 0.0)
        self.power_seconds = float(summary.get("power_seconds") or 0.0)
        self.samples = int(summary.get("samples") or 0)
        self.last_ts = None  # type: Optional[float]

    def add(self, sample: Dict[str, object]) -> None:
        worker = sample.get("worker") or {}
        temps = list((sample.get("temps_c") or {}).values())
        for key, value in (("peak_ram_mb", sample.get("ram_used_mb")),
                           ("peak_swap_mb", sample.get("swap_used_mb")),
                           ("worker_peak_rss_mb", worker.get("rss_mb")),
                           ("cuda_peak_mb", worker.get("cuda_peak_mb")),
                           ("peak_power_mw", sample.get("power_total_mw")),
                           ("max_temp_c", max(temps) if temps else None)):
            if value is not None:
                self.peaks[key] = max(value, self.peaks[key] or value)
        power, ts = sample.get("power_total_mw"), sample.get("ts")
        if power is not None and ts is not None and self.last_ts is not None:
            seconds = max(0.0, min(ts - self.last_ts, 10.0))  # a gap is not energy
            self.energy_j += power / 1000.0 * seconds
            self.power_seconds += seconds
        self.last_ts = ts
        self.samples += 1

    def summary(self) -> Dict[str, object]:
        summary = dict(self.peaks)
        summary.update(energy_j=round(self.energy_j, 3) if self.power_seconds else None,
                       avg_power_mw=round(1000 * self.energy_j / self.power_seconds, 1)
                       if self.power_seconds else None,
                       power_seconds=self.power_seconds, samples=self.samples)
        return summary
