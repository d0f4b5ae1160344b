"""Linux /proc readers (stdlib only): the worker's memory watch and CPU meter, the API's
telemetry and the benchmarks share them. Memory comes back in kB, as the kernel writes it
(each caller picks its unit); CPU time in seconds."""
import os
from typing import Dict, Optional, Union


def kib_fields(path: str) -> Dict[str, int]:
    """``Name: N kB`` lines (/proc/meminfo, /proc/<pid>/status) -> {name: N}. Raises OSError
    when the file cannot be read."""
    values = {}
    with open(path) as handle:
        for line in handle:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                values[name] = int(parts[0])
    return values


def status_kib(field: str, pid: Union[int, str] = "self") -> Optional[int]:
    """One field of /proc/<pid>/status (VmRSS, VmHWM, ...); None when it cannot be read."""
    try:
        return kib_fields("/proc/%s/status" % pid).get(field)
    except OSError:
        return None


def cpu_seconds(stat_path: str) -> float:
    """User + system CPU seconds from a ``/proc/<pid>/stat`` or ``/proc/<pid>/task/<tid>/stat``
    file (fields 14 and 15, in clock ticks: proc(5)); the command name before them may hold
    spaces, so fields are counted after its closing parenthesis. Raises OSError/ValueError
    when the file cannot be read or parsed."""
    with open(stat_path) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / float(os.sysconf("SC_CLK_TCK"))
