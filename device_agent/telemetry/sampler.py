"""The daemon's sampler: one thread reading a source at a fixed interval into a bounded
ring buffer, feeding live subscribers (SSE), per-job meters, and a downsampled history in
the store. A failing source degrades to the Linux one; the daemon never stops for it."""
import collections
import logging
import queue
import threading
import time
from typing import Callable, Dict, List, Optional

from device_agent.daemon.heartbeat import Heartbeat
from device_agent.procfs import status_kib
from device_agent.telemetry.history import JobMeter, downsample, merge
from device_agent.telemetry.sources import LinuxSource, TelemetryUnavailable

log = logging.getLogger("device_agent.telemetry")
_thread_time = getattr(time, "thread_time", time.process_time)  # per thread from 3.7
Extra = Callable[[], Dict[str, object]]


def process_rss_mb(pid: Optional[int]) -> Optional[float]:
    kib = status_kib("VmRSS", pid) if pid else None
    return kib / 1024.0 if kib is not None else None


class Sampler(object):
    def __init__(self, source, store=None, worker: Optional[Extra] = None,
                 running_job: Optional[Callable[[], Optional[str]]] = None,
                 buffer_size: int = 3600, history_step_s: float = 10.0,
                 retention_s: float = 7 * 86400.0, stuck_after_s: float = 120.0) -> None:
        self.source = source
        self.store = store
        self.worker = worker or (lambda: {})
        self.running_job = running_job or (lambda: None)
        self.ring = collections.deque(maxlen=buffer_size)  # type: collections.deque
        self.history_step_s = history_step_s
        self.retention_s = retention_s
        self.pending = []  # type: List[Dict[str, object]]
        self.meters = {}  # type: Dict[str, JobMeter]
        self.subscribers = []  # type: List[queue.Queue]
        self.cpu_seconds = 0.0  # this thread's own cost, for the overhead benchmark
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None  # type: Optional[threading.Thread]
        self.heartbeat = Heartbeat("telemetry", stuck_after_s)

    @property
    def source_name(self) -> str:
        return self.source.name

    def start(self) -> None:
        self._stop.clear()
        self._thread = self.heartbeat.start(self._loop)

    def stop(self) -> None:
        self._stop.set()
        self.heartbeat.stopping = True
        if self._thread is not None:
            self._thread.join(5)
        self._flush_history(force=True)
        self.source.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sample_once()
            except Exception as exc:  # a full disk, a locked store: telemetry never stops
                self._stop.wait(self.heartbeat.failed(exc, "recording a sample"))
                continue
            self.heartbeat.succeeded()

    def _sample_once(self) -> None:
        started = _thread_time()  # sleeping inside read() costs no CPU time
        try:
            with self.heartbeat.waiting():  # the source sleeps the sampling interval
                sample = self.source.read()
        except (TelemetryUnavailable, OSError, ValueError) as exc:
            log.warning("telemetry source %s failed (%s); using linux", self.source.name, exc)
            self.source.close()
            self.source = LinuxSource()
            return
        try:
            self.record(sample)
        finally:
            self.cpu_seconds += _thread_time() - started

    def record(self, sample: Dict[str, object]) -> Dict[str, object]:
        """Add the worker's figures, then buffer, meter, publish and persist the sample."""
        sample = dict(sample, worker=self._worker_figures())
        with self._lock:
            self.ring.append(sample)
            subscribers = list(self.subscribers)
        for subscriber in subscribers:
            try:
                subscriber.put_nowait(sample)
            except queue.Full:
                pass  # a slow client misses samples, never slows the sampler
        self._meter(sample)
        self.pending.append(sample)
        self._flush_history()
        return sample

    def _worker_figures(self) -> Dict[str, object]:
        try:
            figures = dict(self.worker())
        except Exception as exc:  # the worker restarting: the sample goes on without it
            figures = {"error": str(exc)}
        figures.setdefault("rss_mb", process_rss_mb(figures.get("pid")))
        return figures

    def _meter(self, sample: Dict[str, object]) -> None:
        job_id = self.running_job()
        for finished in [j for j in self.meters if j != job_id]:
            self._save_meter(finished, self.meters.pop(finished))
        if job_id is None:
            return
        if job_id not in self.meters:
            earlier = self.store.job_telemetry(job_id) if self.store is not None else {}
            self.meters[job_id] = JobMeter(earlier)
        meter = self.meters[job_id]
        meter.add(sample)
        if meter.samples % 5 == 0:
            self._save_meter(job_id, meter)

    def _save_meter(self, job_id: str, meter: JobMeter) -> None:
        if self.store is not None:
            try:
                self.store.set_job_telemetry(job_id, meter.summary())
            except Exception as exc:  # a deleted job: nothing to keep
                log.debug("job %s telemetry not kept: %s", job_id, exc)

    def _flush_history(self, force: bool = False) -> None:
        if self.store is None or not self.pending:
            return
        if not force and self.pending[-1]["ts"] - self.pending[0]["ts"] < self.history_step_s:
            return
        batch, self.pending = self.pending, []
        self.store.add_telemetry(merge(batch), keep_after=time.time() - self.retention_s)

    # --- readers ------------------------------------------------------------------------

    def latest(self) -> Optional[Dict[str, object]]:
        with self._lock:
            return self.ring[-1] if self.ring else None

    def window(self, since: Optional[float] = None, until: Optional[float] = None,
               step: float = 0.0) -> List[Dict[str, object]]:
        """Samples in [since, until]: the store's history before the ring buffer begins,
        then the buffer itself; merged into ``step``-second buckets when asked."""
        with self._lock:
            recent = list(self.ring)
        begin = recent[0]["ts"] if recent else float("inf")
        older = []  # type: List[Dict[str, object]]
        if self.store is not None and (since is None or since < begin):
            older = [s for s in self.store.telemetry(since, until) if s["ts"] < begin]
        samples = [s for s in older + recent
                   if (since is None or s["ts"] >= since) and (until is None or s["ts"] <= until)]
        return downsample(samples, step)

    def subscribe(self) -> "queue.Queue":
        subscriber = queue.Queue(maxsize=100)  # type: queue.Queue
        with self._lock:
            self.subscribers.append(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: "queue.Queue") -> None:
        with self._lock:
            if subscriber in self.subscribers:
                self.subscribers.remove(subscriber)
