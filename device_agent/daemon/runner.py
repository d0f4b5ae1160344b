"""Feeds the store's job queue to the worker, one job at a time (stdlib only).

The oldest queued job is claimed and the worker trains it into ``jobs/<id>/``, where its
checkpoint lives too. ``job_event``s update the job; on a succeeded ``job_done`` that directory is
renamed into ``domains/<domain>/adapters/<id>/`` and promoted -- version recorded, made
active, job succeeded -- in one store transaction. When the worker dies mid-job, the job is
marked interrupted and queued again: it resumes from its checkpoint in the same directory.
"""
import errno
import logging
import os
import shutil
import sqlite3
import threading
from typing import Callable, Dict, List, Optional, Tuple

from device_agent import artifacts
from device_agent.daemon.heartbeat import Heartbeat, run_guarded
from device_agent.errors import AgentError, WorkerUnavailable
from device_agent.faults import failpoint
from device_agent.store import snapshots
from device_agent.store.db import Store
from device_agent.store.layout import DataPaths

log = logging.getLogger("device_agent.daemon")
LOGGED_EVENTS = ("start", "epoch", "memory_adjusted",  # also kept as job events
                 "warm_start")  # issue 14: whether the job started from the active adapter


def merge_progress(progress: Dict[str, object], event: Dict[str, object]) -> Dict[str, object]:
    """Fold one worker event into the job's progress record.

    ``start`` and ``step`` events carry the latest figures (plan, step, loss, ETA, step
    latency, memory); ``epoch`` events append to ``history`` (one entry per epoch, so a
    resumed job does not repeat one); ``memory_adjusted`` appends to ``memory_adjustments``.
    """
    merged = dict(progress)
    fields = {k: v for k, v in event.items() if k not in ("event", "step_ms_recent")}
    kind = event.get("event")
    if kind == "epoch":
        history = [h for h in merged.get("history", []) if h.get("epoch") != fields.get("epoch")]
        merged["history"] = history + [fields]
    elif kind == "memory_adjusted":
        merged["memory_adjustments"] = list(merged.get("memory_adjustments", [])) + [fields]
        merged["micro_batch"] = fields.get("micro_batch")
    else:
        merged.update(fields)
    return merged


def is_transient(exc: BaseException) -> bool:
    """A store or disk error that passes by itself: a database locked by another writer (a
    backup, an operator's sqlite3 shell), a full disk. Anything else will not heal by retrying."""
    return isinstance(exc, sqlite3.OperationalError) or (
        isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT))


class JobRunner(object):
    """A store write that settles a job (requeue, fail, promote) and meets a transient error
    is kept and retried by the job loop, with backoff, until it succeeds; no new job starts
    meanwhile, so the job's state ends consistent once the store is writable again. Progress
    that could not be written is kept in memory and written with the next event."""

    def __init__(self, store: Store, paths: DataPaths, poll_s: float = 0.2,
                 stuck_after_s: float = 120.0) -> None:
        self.store = store
        self.paths = paths
        self.poll_s = poll_s
        self.supervisor = None
        self.current = None  # type: Optional[str]
        self.listeners: List[Callable[[str, Dict[str, object]], None]] = []
        self.heartbeat = Heartbeat("job-runner", stuck_after_s)
        self._unsettled: Dict[str, Tuple[Callable[[], None], str]] = {}
        self._unwritten: Dict[str, Tuple[Dict[str, object], List[Dict[str, object]]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None  # type: Optional[threading.Thread]

    def attach(self, supervisor) -> None:
        self.supervisor = supervisor

    def start(self) -> None:
        self._stop.clear()
        self._thread = self.heartbeat.start(self._loop)

    def stop(self) -> None:
        self._stop.set()
        self.heartbeat.stopping = True
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self) -> None:
        run_guarded(self.heartbeat, self._step, self._stop, self.poll_s, "the job loop")

    def _step(self) -> None:
        if self._unsettled:
            self._settle_deferred()  # raises while the store still refuses: backoff, retry
        elif self.current is None and self.supervisor.ready:
            self._start_next()

    def _start_next(self) -> None:
        if self.supervisor.long_request.locked():  # an export holds the worker: wait
            return
        job = self.store.claim_next_job()
        if job is None:
            return
        with self._lock:
            self.current = job["id"]
        try:
            dataset_dir = self._training_dir(job)
            with self.heartbeat.waiting():  # the worker's answer, bounded by the timeout
                accepted = self.supervisor.request(
                    "train", timeout=300, job_id=job["id"], domain=job["domain"],
                    dataset_dir=dataset_dir, out_dir=self.paths.job(job["id"]),
                    params=job["params"], warm_from=self._warm_from(job))
            if accepted.get("started") is not True:  # a protocol bug, never a silent start
                raise AgentError("the worker did not start job %s: %r" % (job["id"], accepted))
            log.info("job %s started: %d classes, %s train / %s val images", job["id"],
                     len(accepted.get("classes") or ()), accepted.get("train_images"),
                     accepted.get("val_images"))
        except WorkerUnavailable:  # the worker died before or while taking the job
            self._settle(job["id"], lambda: self._requeue(job["id"]), "requeueing a job")
        except AgentError as exc:
            message = exc.message
            self._settle(job["id"], lambda: self._finish(job["id"], "failed", message),
                         "failing a job")
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._settle(job["id"], lambda: self._requeue(job["id"]), "requeueing a job")

    def _training_dir(self, job: Dict[str, object]) -> str:
        """The ImageFolder the job trains: the snapshot of the working set (or of the
        archive it names) as it is NOW, when the job starts -- samples added while it trains
        are not in it -- recorded on the job before the worker sees it. A resumed job trains
        the snapshot it started on. An archive recorded before the working set existed
        (schema < 3) is trained as it was unpacked, with no snapshot."""
        domain = str(job["domain"])
        if job.get("snapshot_id"):
            return snapshots.materialized(self.paths.snapshots(domain), str(job["snapshot_id"]))
        if job["dataset_id"] is None:
            lines = self.store.working_set_lines(domain)
        else:
            lines = self.store.dataset_lines(int(job["dataset_id"]))
            if not lines:
                return str(self.store.get_dataset(int(job["dataset_id"]))["path"])
        directory = snapshots.materialize(
            self.paths.snapshots(domain), lines,
            lambda line: self.store.sample_path(domain, line.hash, line.ext))
        self.store.set_job_snapshot(str(job["id"]), os.path.basename(directory))
        return directory

    def _warm_from(self, job: Dict[str, object]) -> str:
        """The active adapter's directory when the job asks to warm-start ("" otherwise);
        the worker decides whether it fits (same classes) and says so."""
        if not job["params"].get("warm_start"):
            return ""
        adapter = self.store.active_adapter(str(job["domain"]))
        return str(adapter["path"]) if adapter is not None else ""

    # --- settling a job: retried until the store takes it ------------------------------

    def _settle(self, job_id: str, action: Callable[[], None], what: str) -> None:
        """Run ``action`` (pending progress first); on a transient error keep it for the job
        loop to retry. A later action for the same job replaces an earlier one."""
        try:
            self._flush_progress(job_id)
            action()
        except Exception as exc:
            if not is_transient(exc):
                raise
            self.heartbeat.failed(exc, what)
            with self._lock:
                self._unsettled[job_id] = (action, what)

    def _settle_deferred(self) -> None:
        with self._lock:
            deferred = list(self._unsettled.items())
        for job_id, (action, what) in deferred:
            self._flush_progress(job_id)
            action()
            with self._lock:
                if self._unsettled.get(job_id, (None, ""))[0] is action:
                    del self._unsettled[job_id]
            log.warning("job %s settled after the store came back (%s)", job_id, what)

    def _flush_progress(self, job_id: str) -> None:
        unwritten = self._unwritten.get(job_id)
        if unwritten is None:
            return
        progress, events = unwritten
        self.store.update_progress(job_id, progress)
        while events:  # each logged event once, even when a write fails half-way
            self.store.update_progress(job_id, progress, events[0])
            events.pop(0)
        self._unwritten.pop(job_id, None)

    def _release(self, job_id: str) -> None:
        self._unwritten.pop(job_id, None)
        with self._lock:
            if self.current == job_id:
                self.current = None

    # --- from the supervisor's reader thread --------------------------------------------

    def on_event(self, header: Dict[str, object]) -> None:
        """A ``job_event`` (progress) or a ``job_done`` (the end) from the worker."""
        job_id, done = str(header["job_id"]), header["kind"] == "job_done"
        event = {"event": "job_done", "state": header["state"]} if done else header["event"]
        for listener in self.listeners:  # e.g. metrics; they must not fail the job
            try:
                listener(job_id, event)
            except Exception:
                log.exception("a job event listener failed")
        if done:
            self._on_done(job_id, str(header["state"]), header["report"], header["error"])
        else:
            self._record_progress(job_id, event, event.get("event"))

    def _on_done(self, job_id: str, state: str, report: Dict[str, object],
                 error: Dict[str, object]) -> None:
        if state == "succeeded":
            self._settle(job_id, lambda: self._promote(job_id, report), "promoting an adapter")
        else:
            message = str(error.get("message")) if state == "failed" else None
            self._settle(job_id, lambda: self._finish(job_id, state, message), "finishing a job")

    def _record_progress(self, job_id: str, event: Dict[str, object], kind: object) -> None:
        unwritten = self._unwritten.get(job_id)
        progress = unwritten[0] if unwritten else self.store.get_job(job_id)["progress"]
        events = (unwritten[1] if unwritten else []) + ([event] if kind in LOGGED_EVENTS else [])
        self._unwritten[job_id] = (merge_progress(progress, event), events)
        try:
            self._flush_progress(job_id)
        except Exception as exc:  # kept in memory: written with the next event or settle
            if not is_transient(exc):
                raise
            self.heartbeat.failed(exc, "recording job progress")

    def recover(self) -> List[str]:
        """At start-up, before any job runs: a job left running by a crash is promoted when
        its adapter was already moved into place (the crash hit the promotion), otherwise
        marked interrupted and queued again to resume from its checkpoint."""
        for job in self.store.list_jobs():
            if job["state"] != "running":
                continue
            target = self.paths.adapter(job["domain"], job["id"])
            if os.path.isdir(target):
                if job["report"] and all(os.path.isfile(os.path.join(target, name))
                                         for name in artifacts.FILES):
                    self.store.promote_adapter(job["id"], target, job["report"])
                    continue
                os.rename(target, self.paths.job(job["id"]))  # back where it resumes
        return self.store.requeue_interrupted()

    def on_worker_exit(self) -> None:
        with self._lock:
            job_id = self.current
        if job_id is not None:
            self._settle(job_id, lambda: self._requeue(job_id), "requeueing a job")

    def _requeue(self, job_id: str) -> None:
        """The job resumes from its checkpoint when the worker is back -- unless this was its
        last attempt (the store then fails it: a poison job), when nothing is left to
        resume from."""
        self.store.requeue(job_id, "the worker process died")
        if self.store.get_job(job_id)["state"] == "failed":
            shutil.rmtree(self.paths.job(job_id), ignore_errors=True)
        self._release(job_id)

    def _promote(self, job_id: str, result: Dict[str, object]) -> None:
        """Report first, then the rename, then one transaction: a crash anywhere in between
        is completed (or undone) by :meth:`recover` at the next start, and a transient error
        (a locked store, a full disk) by retrying this whole method, which is idempotent."""
        try:
            job = self.store.get_job(job_id)
            if job["state"] != "running":  # settled by an earlier try whose answer was lost
                self._release(job_id)
                return
            target = self.paths.adapter(job["domain"], job_id)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            self.store.set_report(job_id, result)
            if not os.path.isdir(target):
                os.rename(self.paths.job(job_id), target)
            failpoint("promote.after_rename")
            self.store.promote_adapter(job_id, target, result)
        except (AgentError, OSError) as exc:
            if is_transient(exc):
                raise
            self._finish(job_id, "failed", "could not store the adapter: %s" % exc)
            return
        self._release(job_id)

    def _finish(self, job_id: str, state: str, error: Optional[str]) -> None:
        try:
            self.store.set_job_state(job_id, state, error)
        except AgentError as exc:  # already settled elsewhere (cancelled, deleted)
            log.warning("job %s not marked %s: %s", job_id, state, exc.message)
        shutil.rmtree(self.paths.job(job_id), ignore_errors=True)  # nothing to resume
        self._release(job_id)

    def cancel(self, job_id: str) -> Dict[str, object]:
        job = self.store.get_job(job_id)
        if job["state"] == "queued":
            self.store.set_job_state(job_id, "cancelled")
            return self.store.get_job(job_id)
        if job["state"] == "running" and self.current == job_id:
            self.supervisor.request("cancel", job_id=job_id)
        return self.store.get_job(job_id)
