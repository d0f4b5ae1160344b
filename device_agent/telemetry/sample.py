"""The normalized telemetry sample: fixed keys, explicit units, every value optional.

=================  ==============================================================
``ts``             Unix time of the sample (s); null for a log line without a time
``ram_used_mb``    RAM in use (MB; on Jetson the GPU's memory is part of it)
``ram_total_mb``   RAM size (MB)
``swap_used_mb``   swap in use (MB); null when the source does not report swap
``swap_total_mb``  swap size (MB)
``cpus``           one ``{"load_pct", "freq_mhz"}`` per core, null for an offline core
``gpu_load_pct``   integrated GPU load (%) (the busiest GPC / GR3D engine)
``gpu_freq_mhz``   GPU clock (MHz)
``emc_load_pct``   memory-controller bandwidth in use (% of the current EMC clock)
``temps_c``        sensor -> degrees C; absent sensors (-256 C) are dropped
``power_mw``       rail -> ``{"cur", "avg"}`` in mW
``power_total_mw`` the module's input power (mW) by the board's rule (see below)
``source``         jtop, tegrastats, linux, replay
=================  ==============================================================

Total power: ``POM_5V_IN`` on the Nano, ``VDD_IN`` on TX2, Xavier NX and Orin NX/Nano
(they measure the whole module), the sum of the rails on AGX Xavier (no input rail), and
null on AGX Orin, whose rails do not add up to the module's input.
"""
from typing import Dict, Optional

FIELDS = ("ts", "ram_used_mb", "ram_total_mb", "swap_used_mb", "swap_total_mb", "cpus",
          "gpu_load_pct", "gpu_freq_mhz", "emc_load_pct", "temps_c", "power_mw",
          "power_total_mw", "source")
WHOLE_MODULE_RAILS = ("POM_5V_IN", "VDD_IN")
AGX_ORIN_RAILS = ("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0")
ABSENT_SENSOR_C = -256.0


def empty_sample(source: str, ts: Optional[float] = None) -> Dict[str, object]:
    sample = dict.fromkeys(FIELDS)  # type: Dict[str, object]
    sample.update(ts=ts, temps_c={}, power_mw={}, source=source)
    return sample


def total_power_mw(rails: Dict[str, Dict[str, float]]) -> Optional[float]:
    """The module's input power by the board's rule (see the module docstring)."""
    for rail in WHOLE_MODULE_RAILS:
        if rail in rails:
            return rails[rail]["cur"]
    if not rails or any(rail in rails for rail in AGX_ORIN_RAILS):
        return None
    return float(sum(rail["cur"] for rail in rails.values()))


def keep_temperature(temps: Dict[str, float], name: str, value: float) -> None:
    if value > ABSENT_SENSOR_C + 1:
        temps[name] = value
