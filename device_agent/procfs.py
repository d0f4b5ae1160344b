"""Linux /proc readers (stdlib only): the worker's memory watch and the API's telemetry share
them. Values come back in kB, as the kernel writes them; each caller picks its unit."""
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
