"""The CPUs this process may really use, and the thread policy that follows (stdlib only,
Python 3.6 syntax: the torch side applies it before ``import torch``, the API reports it).

Why: torch sizes its OpenMP team by the host's core count, and OpenMP's idle threads spin
while a partner waits for a core. On a shared CPU -- ROS nodes, a camera pipeline, our own
predictions, a k3s quota below the core count -- a step then runs several times slower
(issue 18). Two rules follow:

- Never more threads than CPUs we may use: the affinity mask (cpusets included) and the
  cgroup CPU quota -- v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``, v2 ``cpu.max``
  (https://docs.kernel.org/admin-guide/cgroup-v2.html#cpu-interface-files) -- on the
  process's cgroup and every ancestor, the smallest winning.
- Within that, the count is measured, not guessed (:class:`device_agent.training.threads.
  ThreadTuner`): passive waiting (``OMP_WAIT_POLICY=PASSIVE``) was tried and cost an idle
  machine 30-65% of its training speed, because every parallel region then wakes sleeping
  threads (DA2 on EfficientNet-Lite0, 96 px, 2 cores, benchmarks/wait_policy.py: 46.5-47.6
  img/s spinning, 16.9-34.0 passive), while beside one busy process one thread beat both
  (32-38.6 img/s; 2 spinning threads 14-15, passive 20). No fixed choice is good in both
  cases; trying the candidates now and then is.

Overrides, strongest first: ``DEVICE_AGENT_THREADS=N``, then an ``OMP_NUM_THREADS`` the
operator set; either fixes the count (no tuning: bit-reproducible runs). Environment
variables the operator set are never overwritten (``OMP_WAIT_POLICY`` included).
"""
import math
import os
from typing import Dict, List, MutableMapping, NamedTuple, Optional, Set, Tuple

from device_agent.errors import InvalidInput

THREADS_ENV = "DEVICE_AGENT_THREADS"
PREDICT_THREADS_ENV = "DEVICE_AGENT_PREDICT_THREADS"  # a prediction's threads beside a job
# Set beside the variables that configure_process chose itself, so that a child process
# (under another affinity or quota) recomputes them instead of taking them as an override.
AUTO_MARK = "DEVICE_AGENT_AUTO_THREADS"
# The libraries torch may run its threads in: OpenMP (libgomp on x86 and aarch64 wheels),
# MKL, OpenBLAS (numpy); each reads its variable when it is loaded.
THREAD_COUNT_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
DEFAULT_WAIT = "default (spin, then sleep)"


class CpuBudget(NamedTuple):
    host_cpus: int
    affinity_cpus: int              # CPUs in this process's affinity mask (cpusets included)
    quota_cpus: Optional[float]     # the cgroup CPU quota in CPUs; None: no quota
    quota_file: Optional[str]       # the file that set it

    @property
    def usable_cpus(self) -> float:
        if self.quota_cpus is None:
            return float(self.affinity_cpus)
        return min(float(self.affinity_cpus), self.quota_cpus)

    @property
    def limited_by(self) -> str:
        if self.quota_cpus is not None and self.quota_cpus < self.affinity_cpus:
            return "cgroup quota"
        return "affinity" if self.affinity_cpus < self.host_cpus else "host"


class ThreadPolicy(NamedTuple):
    intra_op: int                   # the most intra-op threads (torch.set_num_threads)
    inter_op: int                   # torch.set_num_interop_threads
    predict_while_training: int     # the most intra-op threads of a prediction beside a job
    adaptive: bool                  # measure which count up to intra_op runs fastest
    wait_policy: str                # OMP_WAIT_POLICY as the operator set it, or the default
    chosen_by: str                  # "cpu budget", THREADS_ENV or "OMP_NUM_THREADS"
    budget: CpuBudget

    def env(self) -> Dict[str, str]:
        """The variables that make the native libraries follow this policy."""
        return {name: str(self.intra_op) for name in THREAD_COUNT_VARS}

    def as_dict(self) -> Dict[str, object]:
        return {"intra_op": self.intra_op, "inter_op": self.inter_op,
                "predict_while_training": self.predict_while_training,
                "adaptive": self.adaptive, "wait_policy": self.wait_policy,
                "chosen_by": self.chosen_by,
                "host_cpus": self.budget.host_cpus,
                "affinity_cpus": self.budget.affinity_cpus,
                "quota_cpus": self.budget.quota_cpus,
                "usable_cpus": self.budget.usable_cpus,
                "limited_by": self.budget.limited_by}


# --- reading the budget -----------------------------------------------------------------


def read_budget(root: str = "/", affinity: Optional[Set[int]] = None) -> CpuBudget:
    """This process's CPU budget; ``root`` and ``affinity`` let tests fake /proc and /sys."""
    host = os.cpu_count() or 1
    if affinity is None and hasattr(os, "sched_getaffinity"):
        affinity = os.sched_getaffinity(0)
    allowed = len(affinity) if affinity else host
    quota, source = cgroup_quota(root)
    return CpuBudget(host, allowed, quota, source)


def cgroup_quota(root: str = "/") -> Tuple[Optional[float], Optional[str]]:
    """The smallest CPU quota (in CPUs) on this process's cgroup path, v2 or v1."""
    limits = []  # type: List[Tuple[float, str]]
    for directory, kind in _cgroup_dirs(root):
        limit = _read_v2(directory) if kind == 2 else _read_v1(directory)
        if limit is not None:
            limits.append(limit)
    if not limits:
        return None, None
    return min(limits)


def _cgroup_dirs(root: str) -> List[Tuple[str, int]]:
    """(directory, version) of each cgroup from this process's own up to the mount root.

    /proc/self/cgroup names the path inside the hierarchy (``0::/a/b`` in v2,
    ``4:cpu,cpuacct:/a/b`` in v1). Inside a container with its own cgroup namespace the
    path is ``/`` and the mount is already the container's cgroup."""
    mount = os.path.join(root, "sys", "fs", "cgroup")
    dirs = []  # type: List[Tuple[str, int]]
    try:
        with open(os.path.join(root, "proc", "self", "cgroup")) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return dirs
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            base = mount if os.path.isfile(os.path.join(mount, "cgroup.controllers")) \
                else os.path.join(mount, "unified")
            dirs += [(d, 2) for d in _ancestors(base, path)]
        elif "cpu" in controllers.split(","):
            for name in (controllers, "cpu,cpuacct", "cpu"):
                base = os.path.join(mount, name)
                if os.path.isdir(base):
                    dirs += [(d, 1) for d in _ancestors(base, path)]
                    break
    return dirs


def _ancestors(base: str, path: str) -> List[str]:
    """``base/path`` and each parent up to ``base``; ``base`` alone when the path is not
    there (a mount that already is the process's cgroup)."""
    parts = [p for p in path.split("/") if p and p not in (".", "..")]
    found = [os.path.join(base, *parts[:n]) for n in range(len(parts), 0, -1)]
    found = [d for d in found if os.path.isdir(d)]
    return found + [base] if os.path.isdir(base) else found


def _read_v2(directory: str) -> Optional[Tuple[float, str]]:
    path = os.path.join(directory, "cpu.max")
    fields = _read_words(path)
    if len(fields) < 2 or fields[0] == "max":
        return None
    return _ratio(fields[0], fields[1], path)


def _read_v1(directory: str) -> Optional[Tuple[float, str]]:
    path = os.path.join(directory, "cpu.cfs_quota_us")
    quota = _read_words(path)
    period = _read_words(os.path.join(directory, "cpu.cfs_period_us"))
    if not quota or not period or quota[0].startswith("-"):
        return None
    return _ratio(quota[0], period[0], path)


def _read_words(path: str) -> List[str]:
    try:
        with open(path) as handle:
            return handle.read().split()
    except OSError:
        return []


def _ratio(quota: str, period: str, path: str) -> Optional[Tuple[float, str]]:
    try:
        cpus = int(quota) / float(int(period))
    except (ValueError, ZeroDivisionError):
        return None
    return (cpus, path) if cpus > 0 else None


# --- choosing and applying the policy -----------------------------------------------------


def plan_threads(environ: MutableMapping[str, str], budget: CpuBudget) -> ThreadPolicy:
    """At most the CPUs we may use, rounded down (a quota of 1.5 CPUs runs 1 thread, which
    the quota never throttles mid-barrier), at least 1; an override wins and fixes it."""
    chosen_by, threads = "cpu budget", max(1, int(math.floor(budget.usable_cpus + 1e-9)))
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = environ.get(name, "").strip()
        if value and not _ours(environ, name):
            threads, chosen_by = _positive(name, value), name
            break
    wait = environ.get("OMP_WAIT_POLICY", "").strip() or DEFAULT_WAIT
    beside = environ.get(PREDICT_THREADS_ENV, "").strip()
    predict = _positive(PREDICT_THREADS_ENV, beside) if beside else max(1, threads // 2)
    adaptive = chosen_by == "cpu budget" and threads > 1
    return ThreadPolicy(threads, 1, predict, adaptive, wait, chosen_by, budget)


def _ours(environ: MutableMapping[str, str], name: str) -> bool:
    return name != THREADS_ENV and environ.get(name) == environ.get(AUTO_MARK)


def _positive(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise InvalidInput("%s must be a whole number >= 1, not %r" % (name, value))
    return number


def configure_process(environ: Optional[MutableMapping[str, str]] = None,
                      root: str = "/") -> ThreadPolicy:
    """Choose the policy and put it into the environment -- before torch (and numpy) are
    imported, since OpenMP, MKL and OpenBLAS read their variables once, when loaded.
    Variables the operator set are kept: their word wins."""
    environ = os.environ if environ is None else environ
    policy = plan_threads(environ, read_budget(root))
    for name, value in policy.env().items():
        if name not in environ or _ours(environ, name):
            environ[name] = value
    environ[AUTO_MARK] = str(policy.intra_op)
    return policy
