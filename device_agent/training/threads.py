"""Threads on a shared CPU: apply a :class:`device_agent.cpu_budget.ThreadPolicy` to torch,
pick the fastest thread count by measuring it (:class:`ThreadTuner`), and measure the CPU a
piece of work got (the figure that tells a slow job from a starved one)."""
import os
import time
from typing import Callable, Dict, List, Optional

import torch

from device_agent.cpu_budget import ThreadPolicy
from device_agent.procfs import cpu_seconds


def set_threads(count: int) -> None:
    """This thread's intra-op count (OpenMP keeps it per calling thread). Only a change is
    applied: torch also resizes its global pthreadpool on every call."""
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)


def apply_policy(policy: ThreadPolicy) -> None:
    """Set torch's thread counts; every thread that runs torch work calls this first."""
    set_threads(policy.intra_op)
    if torch.get_num_interop_threads() != policy.inter_op:
        try:
            torch.set_num_interop_threads(policy.inter_op)
        except RuntimeError:  # settable once, before any inter-op work: keep what runs
            pass


def candidates(most: int) -> List[int]:
    """most, most/2, most/4, ..., 1."""
    counts = [max(1, most)]
    while counts[-1] > 1:
        counts.append(counts[-1] // 2)
    return counts


class ThreadTuner(object):
    """The intra-op thread count for one kind of work, chosen by measured throughput.

    It starts at the most threads and, once that is measured, tries the others: each for
    ``window`` units of work (the first after a switch not counted: a team starting up),
    keeping the fastest; a challenger must beat the current count by ``margin``. It probes
    again after ``period_s`` -- doubled after each probe that changed nothing, up to
    ``max_period_s``, so a steady machine pays little -- or at once when the current
    count's rate falls under ``drop`` x what it measured when chosen (other work arrived).
    A probe costs a few slow steps; a wrong fixed count costs 2-3x for as long as the load
    lasts (device_agent.cpu_budget).

    Thread counts change floating-point reduction order, so a tuned run is reproducible to
    rounding, not bit for bit; a fixed count (DEVICE_AGENT_THREADS) is bit-reproducible.
    """

    def __init__(self, most: int, period_s: float = 30.0, window: int = 3,
                 margin: float = 1.1, drop: float = 0.6, max_period_s: float = 480.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.counts = candidates(most)
        self.window, self.margin, self.drop = window, margin, drop
        self.period_s, self.first_period_s, self.max_period_s = period_s, period_s, max_period_s
        self.clock = clock
        self.current = self.counts[0]
        # the last median rate of each count; the current count's rate when it was chosen
        self.rates = {}  # type: Dict[int, float]
        self.reference = None  # type: Optional[float]
        self.switches = 0
        # counts still to probe, the one running first
        self._queue = []  # type: List[int]
        self._samples = []  # type: List[float]
        self._skip = True  # the first unit after a switch
        self._next_probe = clock()  # explore once the first window is measured

    def threads(self) -> int:
        """The count for the next unit of work."""
        return self._queue[0] if self._queue else self.current

    def record(self, seconds: float, units: float) -> None:
        """One unit of work (a step, a prediction) of ``units`` images took ``seconds``."""
        if len(self.counts) == 1 or seconds <= 0:
            return
        if self._skip:
            self._skip = False
            return
        self._samples.append(units / seconds)
        if len(self._samples) < self.window:
            return
        rate = sorted(self._samples)[len(self._samples) // 2]
        self._samples = []
        if self._queue:
            self._probed(self._queue.pop(0), rate)
        else:
            self._measured(rate)

    def _measured(self, rate: float) -> None:
        self.rates[self.current] = rate
        if self.reference is None:
            self.reference = rate
        dropped = rate < self.drop * self.reference
        if dropped or self.clock() >= self._next_probe:
            if dropped:
                self.period_s = self.first_period_s
            self._queue = [n for n in self.counts if n != self.current]
            self._skip = True

    def _probed(self, count: int, rate: float) -> None:
        self.rates[count] = rate
        self._skip = True
        if self._queue:
            return
        best = max(self.rates, key=lambda n: self.rates[n])
        if best != self.current and self.rates[best] > self.margin * self.rates[self.current]:
            self.current = best
            self.switches += 1
            self.period_s = self.first_period_s
        else:
            self.period_s = min(2 * self.period_s, self.max_period_s)
        self.reference = self.rates[self.current]
        self._next_probe = self.clock() + self.period_s

    def as_dict(self) -> Dict[str, object]:
        return {"threads_in_use": self.threads(), "tuned_rates": {
            str(n): round(r, 2) for n, r in sorted(self.rates.items())},
            "thread_switches": self.switches}


class CpuMeter(object):
    """The CPU a job's threads got since the last reading, as a share of the threads in use:
    1.0 means every thread had a core all along; 0.3 means other work took most of them.

    It counts the whole worker process except its main thread, which answers requests
    (predictions beside the job among them): Linux keeps each thread's CPU time in
    /proc/self/task/<tid>/stat (proc(5)). Where that cannot be read, the whole process."""

    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)
        self.started = self._now()
        self.last = self.started

    @staticmethod
    def _now():
        times = os.times()
        return time.time(), times[0] + times[1] - _main_thread_cpu()

    def _share(self, since, threads: Optional[int]) -> Dict[str, float]:
        wall, cpu = self._now()
        elapsed = max(wall - since[0], 1e-9)
        used = max(0.0, cpu - since[1]) / elapsed
        return {"cpu_used": round(used, 3),
                "cpu_share": round(used / max(1, threads or self.threads), 3)}

    def recent(self, threads: Optional[int] = None) -> Dict[str, float]:
        """Since the previous call; ``threads``: those in use now, if fewer."""
        figures = self._share(self.last, threads)
        self.last = self._now()
        return figures

    def overall(self) -> Dict[str, float]:
        return self._share(self.started, None)


def _main_thread_cpu() -> float:
    """CPU seconds of this process's main thread (its tid is the pid); 0 if unreadable."""
    try:
        return cpu_seconds("/proc/self/task/%d/stat" % os.getpid())
    except (OSError, ValueError, IndexError):
        return 0.0
