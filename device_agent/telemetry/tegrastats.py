"""A tolerant, token-based parser of tegrastats lines from L4T R28 to JetPack 7.

Handles (see tests/data/tegrastats_samples.txt): the legacy ``cpu [a%,b%]@MHz`` form;
``CPU [a%@MHz,off,..]``; a leading ``MM-DD-YYYY HH:MM:SS``; ``GR3D_FREQ x%@MHz``,
``x%@[MHz,..]`` per GPC, ``x%`` (non-root) and ``GR3D2_FREQ``; ``NAME@tC`` and
``NAME@tC/tC`` sensors, ``-256C`` for absent ones; rails as ``cur/avg``, ``curmW/avgmW``
and ``a mW/b mW/c mW`` (JetPack 7: cur/avg/max). Tokens it does not know are kept in
``unknown`` and never stop the parse.
"""
import calendar
import re
import time
from typing import Dict, List, NamedTuple, Optional, Tuple

from device_agent.telemetry.sample import empty_sample, keep_temperature, total_power_mw

TIMESTAMP = re.compile(r"^(\d\d)-(\d\d)-(\d{4}) (\d\d):(\d\d):(\d\d)\s+")
USED_TOTAL = re.compile(r"^(\d+)/(\d+)([kM]B)")
CORE = re.compile(r"^(\d+)%(?:@(\d+))?$")
LOAD_FREQ = re.compile(r"^(\d+)%(?:@\[?([\d,]*)\]?)?$")
TEMPERATURE = re.compile(r"^([A-Za-z][\w.-]*)@(-?[\d.]+)C(?:/(-?[\d.]+)C)*$")
RAIL_VALUES = re.compile(r"^(\d+)(?:mW)?/(\d+)(?:mW)?(?:/(\d+)(?:mW)?)?$")
GPU_ENGINE = re.compile(r"^GR3D\d*(_FREQ)?$")


class Parsed(NamedTuple):
    sample: Dict[str, object]
    unknown: List[str]


def _mb(value: str, unit: str) -> float:
    return float(value) / 1024.0 if unit == "kB" else float(value)


def _timestamp(line: str) -> Tuple[Optional[float], str]:
    """tegrastats prints local time without a zone; it is read as UTC (boards keep UTC)."""
    match = TIMESTAMP.match(line)
    if not match:
        return None, line
    month, day, year, hour, minute, second = (int(g) for g in match.groups())
    ts = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    return float(ts), line[match.end():]


def _cpus(text: str, legacy_freq: Optional[str]) -> List[Optional[Dict[str, float]]]:
    cores = []  # type: List[Optional[Dict[str, float]]]
    for item in text.strip("[]").split(","):
        match = CORE.match(item.strip())
        if match is None:  # "off" (hotplugged) or anything unreadable
            cores.append(None)
            continue
        freq = match.group(2) or legacy_freq
        cores.append({"load_pct": float(match.group(1)),
                      "freq_mhz": float(freq) if freq else None})
    return cores


def _gpu(sample: Dict[str, object], value: str) -> bool:
    match = LOAD_FREQ.match(value)
    if match is None:
        return False
    load = float(match.group(1))
    freqs = [float(f) for f in (match.group(2) or "").split(",") if f]
    sample["gpu_load_pct"] = max(load, sample["gpu_load_pct"] or 0.0)
    if freqs:
        sample["gpu_freq_mhz"] = max(max(freqs), sample["gpu_freq_mhz"] or 0.0)
    return True


def parse_line(line: str, source: str = "tegrastats") -> Parsed:
    """One tegrastats line -> the normalized sample, plus the tokens it did not know."""
    ts, rest = _timestamp(line.strip())
    sample = empty_sample(source, ts)
    temps, rails = {}, {}  # type: Dict[str, float], Dict[str, Dict[str, float]]
    unknown = []  # type: List[str]
    tokens = rest.split()
    i = 0
    while i < len(tokens):
        token = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        consumed = 2
        if token in ("RAM", "SWAP") and USED_TOTAL.match(following):
            used, total, unit = USED_TOTAL.match(following).groups()
            key = token.lower()
            sample[key + "_used_mb"], sample[key + "_total_mb"] = _mb(used, unit), _mb(total, unit)
            while i + consumed < len(tokens) and tokens[i + consumed].startswith("("):
                consumed += 1  # "(lfb 2x2MB)", "(cached 6MB)": two tokens each
                while not tokens[i + consumed - 1].endswith(")") and i + consumed < len(tokens):
                    consumed += 1
        elif token in ("CPU", "cpu") and following.startswith("["):
            cores, _, legacy = following.partition("]@")  # legacy "cpu [a%,b%]@MHz"
            sample["cpus"] = _cpus(cores, legacy or None)
        elif token in ("EMC_FREQ", "EMC") and LOAD_FREQ.match(following):
            sample["emc_load_pct"] = float(LOAD_FREQ.match(following).group(1))
        elif GPU_ENGINE.match(token) and _gpu(sample, following):
            pass
        elif TEMPERATURE.match(token):
            name, value = TEMPERATURE.match(token).group(1, 2)
            keep_temperature(temps, name, float(value))
            consumed = 1
        elif RAIL_VALUES.match(following) and token.replace("_", "").isalnum():
            values = RAIL_VALUES.match(following).groups()
            rails[token] = {"cur": float(values[0]), "avg": float(values[1])}
        else:
            unknown.append(token)
            consumed = 1
        i += consumed
    sample["temps_c"], sample["power_mw"] = temps, rails
    sample["power_total_mw"] = total_power_mw(rails)
    return Parsed(sample, unknown)


def parse_stream(lines, source: str = "tegrastats"):
    """Samples of every non-blank, non-comment line."""
    for line in lines:
        if line.strip() and not line.lstrip().startswith("#"):
            yield parse_line(line, source).sample


def stamp_now(sample: Dict[str, object]) -> Dict[str, object]:
    """Live output: the time of reading (R32 lines carry no time of their own)."""
    sample["ts"] = time.time()
    return sample
