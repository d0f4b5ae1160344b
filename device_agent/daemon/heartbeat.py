"""Heartbeats of the daemon's long-lived threads (stdlib only).

Each long-lived thread (worker supervisor, job runner, telemetry sampler) beats once per
iteration, and an exception ends one iteration, never the thread: it is counted, logged (at
most once per ``LOG_EVERY_S`` per thread, so a failing store cannot flood the log) and waited
out with a capped backoff. ``/healthz`` fails when a thread is dead (it ended although the
daemon was not stopping) or stuck (busy, with no beat for ``stuck_after_s``), so Docker or k8s
restart a daemon that cannot heal itself. A thread that waits on purpose -- a pipe read, the
sampling interval, a worker's answer -- says so and is not called stuck for it.
"""
import logging
import threading
import time
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional

log = logging.getLogger("device_agent.daemon")
BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
LOG_EVERY_S = 30.0


class Heartbeat(object):
    def __init__(self, name: str, stuck_after_s: float = 120.0) -> None:
        self.name = name
        self.stuck_after_s = stuck_after_s
        self.thread = None  # type: Optional[threading.Thread]
        self.stopping = False  # a deliberate stop is not a death
        self.failures = 0
        self.last_error = None  # type: Optional[str]
        self._consecutive = 0
        self._failing_since = None  # type: Optional[float]
        self._last_beat = time.monotonic()
        self._waiting = 0
        self._logged_at = float("-inf")

    def start(self, target: Callable[[], None]) -> threading.Thread:
        self.stopping = False
        self.beat()
        self.thread = threading.Thread(target=target, name=self.name, daemon=True)
        self.thread.start()
        return self.thread

    def beat(self) -> None:
        self._last_beat = time.monotonic()

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """A wait that is part of the work (not a hang): no beat is due meanwhile."""
        self._waiting += 1
        try:
            yield
        finally:
            self._waiting -= 1
            self.beat()

    def succeeded(self) -> None:
        self._consecutive = 0
        self._failing_since = None
        self.beat()

    def failed(self, exc: BaseException, what: str = "an iteration") -> float:
        """Count and log one failed iteration; returns the backoff before the next one."""
        self.failures += 1
        self._consecutive += 1
        self.last_error = "%s: %s" % (type(exc).__name__, exc)
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        if now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            log.error("%s: %s failed (%d so far), retrying: %s", self.name, what, self.failures,
                      self.last_error, exc_info=exc)
        self.beat()  # it failed, it did not hang
        return BACKOFF_S[min(self._consecutive, len(BACKOFF_S)) - 1]

    def problem(self) -> Optional[str]:
        """Why this thread cannot be trusted to go on, or None."""
        if self.thread is None or self.stopping:
            return None
        if not self.thread.is_alive():
            return "the %s thread has died (last error: %s)" % (self.name, self.last_error)
        idle = time.monotonic() - self._last_beat
        if not self._waiting and idle > self.stuck_after_s:
            return "the %s thread is stuck: no heartbeat for %.0f s" % (self.name, idle)
        failing = time.monotonic() - (self._failing_since or float("inf"))
        if failing > self.stuck_after_s:  # alive, but it has not healed by retrying
            return "the %s thread has failed for %.0f s: %s" % (self.name, failing,
                                                                  self.last_error)
        return None

    def report(self) -> Dict[str, object]:
        return {"alive": bool(self.thread and self.thread.is_alive()),
                "seconds_since_beat": round(time.monotonic() - self._last_beat, 1),
                "waiting": bool(self._waiting), "failures": self.failures,
                "last_error": self.last_error}


def run_guarded(heartbeat: Heartbeat, step: Callable[[], None], stop: threading.Event,
                pause_s: float, what: str) -> None:
    """Call ``step`` every ``pause_s`` until ``stop`` is set; an exception costs one
    iteration and a backoff, never the thread."""
    while not stop.is_set():
        try:
            step()
        except Exception as exc:
            stop.wait(heartbeat.failed(exc, what))
            continue
        heartbeat.succeeded()
        with heartbeat.waiting():
            stop.wait(pause_s)


def problems(heartbeats: List[Heartbeat]) -> List[str]:
    return [p for p in (h.problem() for h in heartbeats) if p]
