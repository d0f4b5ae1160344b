"""Feeds the store's job queue to the worker, one job at a time (stdlib only).

The oldest queued job is claimed and the worker trains it into ``jobs/<id>/``, where its
checkpoint lives too. Progress events update the job; on ``finished`` that directory is
renamed into ``domains/<domain>/adapters/<id>/`` and promoted -- version recorded, made
active, job succeeded -- in one store transaction. When the worker dies mid-job, the job is
marked interrupted and queued again: it resumes from its checkpoint in the same directory.
"""
import logging
import os
import shutil
import threading
from typing import Callable, Dict, List, Optional

from device_agent import artifacts
from device_agent.errors import AgentError, WorkerUnavailable
from device_agent.faults import failpoint
from device_agent.store.db import Store
from device_agent.store.layout import DataPaths

log = logging.getLogger("device_agent.daemon")
TERMINAL_EVENTS = ("finished", "failed", "cancelled")
LOGGED_EVENTS = ("start", "epoch", "memory_adjusted")  # also kept as job events


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


class JobRunner(object):
    def __init__(self, store: Store, paths: DataPaths, poll_s: float = 0.2) -> None:
        self.store = store
        self.paths = paths
        self.poll_s = poll_s
        self.supervisor = None
        self.current = None  # type: Optional[str]
        self.listeners: List[Callable[[str, Dict[str, object]], None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None  # type: Optional[threading.Thread]

    def attach(self, supervisor) -> None:
        self.supervisor = supervisor

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.current is None and self.supervisor.ready:
                self._start_next()
            self._stop.wait(self.poll_s)

    def _start_next(self) -> None:
        job = self.store.claim_next_job()
        if job is None:
            return
        with self._lock:
            self.current = job["id"]
        try:
            dataset = self.store.get_dataset(job["dataset_id"])
            self.supervisor.request("train", timeout=300, job_id=job["id"], domain=job["domain"],
                                    dataset_dir=dataset["path"], out_dir=self.paths.job(job["id"]),
                                    params=job["params"])
        except WorkerUnavailable:  # the worker died before or while taking the job
            self._requeue(job["id"])
        except AgentError as exc:
            self._finish(job["id"], "failed", exc.message)

    # --- from the supervisor's reader thread --------------------------------------------

    def on_event(self, header: Dict[str, object]) -> None:
        job_id, event = str(header["job_id"]), header["event"]
        kind = event.get("event")
        for listener in self.listeners:  # e.g. metrics; they must not fail the job
            try:
                listener(job_id, event)
            except Exception:
                log.exception("a job event listener failed")
        if kind in TERMINAL_EVENTS:
            if kind == "finished":
                self._promote(job_id, event["result"])
            else:
                error = event.get("error", {}).get("message") if kind == "failed" else None
                self._finish(job_id, kind, error)
        else:
            merged = merge_progress(self.store.get_job(job_id)["progress"], event)
            self.store.update_progress(job_id, merged, event if kind in LOGGED_EVENTS else None)

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
            self._requeue(job_id)

    def _requeue(self, job_id: str) -> None:
        """The job resumes from its checkpoint when the worker is back."""
        self.store.requeue(job_id, "the worker process died")
        with self._lock:
            if self.current == job_id:
                self.current = None

    def _promote(self, job_id: str, result: Dict[str, object]) -> None:
        """Report first, then the rename, then one transaction: a crash anywhere in between
        is completed (or undone) by :meth:`recover` at the next start."""
        try:
            job = self.store.get_job(job_id)
            target = self.paths.adapter(job["domain"], job_id)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            self.store.set_report(job_id, result)
            os.rename(self.paths.job(job_id), target)
            failpoint("promote.after_rename")
            self.store.promote_adapter(job_id, target, result)
        except (AgentError, OSError) as exc:
            self._finish(job_id, "failed", "could not store the adapter: %s" % exc)
            return
        with self._lock:
            self.current = None

    def _finish(self, job_id: str, state: str, error: Optional[str]) -> None:
        try:
            self.store.set_job_state(job_id, state, error)
            shutil.rmtree(self.paths.job(job_id), ignore_errors=True)  # nothing to resume
        finally:
            with self._lock:
                if self.current == job_id:
                    self.current = None

    def cancel(self, job_id: str) -> Dict[str, object]:
        job = self.store.get_job(job_id)
        if job["state"] == "queued":
            self.store.set_job_state(job_id, "cancelled")
            return self.store.get_job(job_id)
        if job["state"] == "running" and self.current == job_id:
            self.supervisor.request("cancel", job_id=job_id)
        return self.store.get_job(job_id)
