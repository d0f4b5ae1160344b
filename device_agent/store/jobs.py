"""Training jobs: a FIFO queue with explicit state transitions, each logged as an event in
the transaction that makes it, plus each job's progress, report and telemetry summary."""
import json
import sqlite3
import time
import uuid
from typing import Dict, List, Optional

from device_agent.errors import Conflict, InvalidInput, UnknownName
from device_agent.jobspec import JOB_STATES, TERMINAL_STATES, TRANSITIONS  # written once
from device_agent.store.database import Database, Record, as_record
from device_agent.store.domains import find_domain

# A job whose worker died this many times (an OOM kill, a segfault it causes) fails instead
# of going back to the head of the FIFO, where it would block every job behind it forever.
MAX_ATTEMPTS = 3
JOB_JSON = ("params", "progress", "report", "telemetry")


def log_event(db: sqlite3.Connection, job_id: str, kind: str, data: Dict[str, object]) -> None:
    db.execute("INSERT INTO job_events (job_id, at, kind, data) VALUES (?, ?, ?, ?)",
               (job_id, time.time(), kind, json.dumps(data)))


def transition(db: sqlite3.Connection, job_id: str, state: str, error: Optional[str]) -> None:
    """Move the job to ``state`` inside the caller's transaction, if TRANSITIONS allow it."""
    row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise UnknownName("job %r not found" % job_id)
    if state not in TRANSITIONS.get(row["state"], ()):
        raise Conflict("job %s is %s; it cannot become %s" % (job_id, row["state"], state))
    finished = time.time() if state in TERMINAL_STATES else None
    db.execute("UPDATE jobs SET state = ?, error = ?, finished_at = ? WHERE id = ?",
               (state, error, finished, job_id))
    log_event(db, job_id, state, {"error": error} if error else {})


def _requeue_running(db: sqlite3.Connection, job_id: str, reason: Optional[str]) -> None:
    """Interrupted, then queued again -- or failed once it has been started MAX_ATTEMPTS
    times: a job that kills its worker every time is poison, and the queue behind it must
    move on. The reason stays in the job's ``error`` either way."""
    attempts = db.execute("SELECT attempts FROM jobs WHERE id = ?",
                          (job_id,)).fetchone()["attempts"]
    reason = reason or "the agent stopped while the job ran"
    transition(db, job_id, "interrupted", reason)
    if attempts >= MAX_ATTEMPTS:
        transition(db, job_id, "failed", "gave up after %d attempts, each ended by: %s"
                   % (attempts, reason))
    else:
        transition(db, job_id, "queued", "attempt %d of %d ended: %s"
                   % (attempts, MAX_ATTEMPTS, reason))


class JobQueue(Database):
    """The ``jobs`` and ``job_events`` tables."""

    def enqueue_job(self, domain: str, dataset_id: Optional[int],
                    params: Dict[str, object]) -> Record:
        find_domain(self, domain)
        job_id = uuid.uuid4().hex[:16]
        with self._transaction() as db:
            db.execute("INSERT INTO jobs (id, domain, dataset_id, state, params, created_at) "
                       "VALUES (?, ?, ?, 'queued', ?, ?)",
                       (job_id, domain, dataset_id, json.dumps(params), time.time()))
            log_event(db, job_id, "queued", {})
        return self.get_job(job_id)

    def get_job(self, job_id: str) -> Record:
        return as_record(self._one("jobs", "id", job_id, "job"), JOB_JSON)

    def list_jobs(self, domain: Optional[str] = None) -> List[Record]:
        if domain is None:
            return self._all("SELECT * FROM jobs ORDER BY created_at, rowid", (), JOB_JSON)
        return self._all("SELECT * FROM jobs WHERE domain = ? ORDER BY created_at, rowid",
                         (domain,), JOB_JSON)

    def last_job(self, domain: str) -> Optional[Record]:
        rows = self._all("SELECT * FROM jobs WHERE domain = ? ORDER BY created_at DESC, "
                         "rowid DESC LIMIT 1", (domain,), JOB_JSON)
        return rows[0] if rows else None

    def claim_next_job(self) -> Optional[Record]:
        """Atomically move the oldest queued job to running (FIFO)."""
        with self._transaction() as db:
            row = db.execute("SELECT id FROM jobs WHERE state = 'queued' "
                             "ORDER BY created_at, rowid LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = 'running', started_at = ?, "
                       "attempts = attempts + 1 WHERE id = ?", (time.time(), row["id"]))
            log_event(db, row["id"], "running", {})
        return self.get_job(row["id"])

    def set_job_state(self, job_id: str, state: str, error: Optional[str] = None) -> Record:
        if state not in JOB_STATES:
            raise InvalidInput("unknown job state %r" % state)
        with self._transaction() as db:
            transition(db, job_id, state, error)
        return self.get_job(job_id)

    def update_progress(self, job_id: str, progress: Dict[str, object],
                        event: Optional[Dict[str, object]] = None) -> None:
        """Replace the job's progress record, and log ``event`` (one with an "event" kind)
        in the same transaction."""
        with self._transaction() as db:
            db.execute("UPDATE jobs SET progress = ? WHERE id = ?", (json.dumps(progress), job_id))
            if event is not None:
                data = {k: v for k, v in event.items() if k != "event"}
                log_event(db, job_id, str(event["event"]), data)

    def set_report(self, job_id: str, report: Dict[str, object]) -> None:
        with self._transaction() as db:
            db.execute("UPDATE jobs SET report = ? WHERE id = ?", (json.dumps(report), job_id))

    def requeue(self, job_id: str, reason: str) -> bool:
        """Put a running job back in the queue as interrupted (its worker died); atomic, and
        a no-op (False) when the job is no longer running."""
        with self._transaction() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["state"] != "running":
                return False
            _requeue_running(db, job_id, reason)
        return True

    def requeue_interrupted(self) -> List[str]:
        """At start-up: jobs left running by a crash are marked interrupted, then queued
        again (they resume from their checkpoint). Returns their ids."""
        with self._transaction() as db:
            ids = [r["id"] for r in db.execute("SELECT id FROM jobs WHERE state = 'running'")]
            for job_id in ids:
                _requeue_running(db, job_id, None)
        return ids

    def events(self, job_id: str) -> List[Record]:
        return self._all("SELECT at, kind, data FROM job_events WHERE job_id = ? ORDER BY id",
                         (job_id,), ("data",))

    def set_job_snapshot(self, job_id: str, snapshot_id: str) -> None:
        """The snapshot the job trains, fixed at its first start (a resume trains it too)."""
        with self._transaction() as db:
            found = db.execute("UPDATE jobs SET snapshot_id = ? WHERE id = ?",
                               (snapshot_id, job_id)).rowcount
        if not found:
            raise UnknownName("job %r not found" % job_id)

    def job_counts(self) -> Dict[str, int]:
        rows = self._all("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        counts = dict.fromkeys(JOB_STATES, 0)
        counts.update({r["state"]: r["n"] for r in rows})
        return counts

    def job_telemetry(self, job_id: str) -> Dict[str, object]:
        return self.get_job(job_id)["telemetry"]

    def set_job_telemetry(self, job_id: str, summary: Dict[str, object]) -> None:
        with self._transaction() as db:
            found = db.execute("UPDATE jobs SET telemetry = ? WHERE id = ?",
                               (json.dumps(summary), job_id)).rowcount
        if not found:
            raise UnknownName("job %r not found" % job_id)
