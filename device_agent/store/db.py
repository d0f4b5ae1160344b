"""The agent's durable state: SQLite (WAL) in the data directory; stdlib only.

Domains, their uploaded datasets, training jobs (a FIFO queue with explicit state
transitions), job events, and adapter versions. A new adapter version becomes active only
in the same transaction that marks its job succeeded; earlier versions are kept, so a
domain can be rolled back. The schema is versioned (``PRAGMA user_version``) and migrated
forward on open, each migration in one transaction.
"""
import json
import os
import re
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional

from device_agent.errors import AgentError, Conflict, InvalidInput, UnknownName

# \Z, not $: "$" also matches before a trailing newline, which let "name\n" through.
DOMAIN_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}\Z")
# A job whose worker died this many times (an OOM kill, a segfault it causes) fails instead
# of going back to the head of the FIFO, where it would block every job behind it forever.
MAX_ATTEMPTS = 3
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
TRANSITIONS = {
    "queued": ("running", "cancelled"),
    "running": ("succeeded", "failed", "cancelled", "interrupted"),
    "interrupted": ("queued", "failed", "cancelled"),  # a crashed job resumes or gives up
}

MIGRATIONS = [
    """
    CREATE TABLE domains (
        name TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        active_version INTEGER
    );
    CREATE TABLE datasets (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        domain TEXT NOT NULL REFERENCES domains(name) ON DELETE CASCADE,
        created_at REAL NOT NULL,
        path TEXT NOT NULL,
        summary TEXT NOT NULL
    );
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        domain TEXT NOT NULL REFERENCES domains(name) ON DELETE CASCADE,
        dataset_id INTEGER REFERENCES datasets(id) ON DELETE SET NULL,
        state TEXT NOT NULL,
        params TEXT NOT NULL,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        progress TEXT NOT NULL DEFAULT '{}',
        report TEXT NOT NULL DEFAULT '{}',
        error TEXT
    );
    CREATE INDEX jobs_by_state ON jobs(state, created_at);
    CREATE TABLE job_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        data TEXT NOT NULL
    );
    CREATE TABLE adapter_versions (
        domain TEXT NOT NULL REFERENCES domains(name) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        path TEXT NOT NULL,
        job_id TEXT,
        created_at REAL NOT NULL,
        summary TEXT NOT NULL,
        PRIMARY KEY (domain, version)
    );
    """,
    """
    ALTER TABLE jobs ADD COLUMN telemetry TEXT NOT NULL DEFAULT '{}';
    CREATE TABLE telemetry (
        ts REAL NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX telemetry_by_time ON telemetry(ts);
    """,
]


def check_domain_name(name: object) -> str:
    if not isinstance(name, str) or not DOMAIN_NAME.match(name):  # match: anchored at 0
        raise InvalidInput("domain names are 1-63 characters of a-z, 0-9, '_' and '-', "
                           "starting with a letter or digit")
    return name


def _row(row: Optional[sqlite3.Row], json_fields=()) -> Optional[Dict[str, object]]:
    if row is None:
        return None
    record = dict(row)
    for field in json_fields:
        record[field] = json.loads(record[field])
    return record


_JOB_JSON = ("params", "progress", "report", "telemetry")


class Store(object):
    """One SQLite database; safe to share between threads. Writes go through one connection
    and lock; reads through a second one, so that under WAL a read never waits for a write
    that waits out a lock an operator holds (a sqlite3 shell, a backup: issue 16)."""

    def __init__(self, path: str) -> None:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                   timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a power cut loses no committed job
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()
        self._read_lock = threading.Lock()
        self._reader = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                       timeout=30)
        self._reader.row_factory = sqlite3.Row

    def close(self) -> None:
        with self._read_lock:
            self._reader.close()
        with self._lock:
            self._db.close()

    def _read(self, query: str, args=()) -> List[sqlite3.Row]:
        """One autocommit SELECT on the reader: it sees every committed write."""
        with self._read_lock:
            return self._reader.execute(query, args).fetchall()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _migrate(self) -> None:
        with self._lock:
            version = self.schema_version()
            if version > len(MIGRATIONS):
                raise AgentError("store schema %d is newer than this agent (%d)"
                                 % (version, len(MIGRATIONS)))
            for number in range(version, len(MIGRATIONS)):
                script = "BEGIN IMMEDIATE;\n%s\nPRAGMA user_version = %d;\nCOMMIT;" % (
                    MIGRATIONS[number], number + 1)
                try:
                    self._db.executescript(script)
                except sqlite3.Error:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise

    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def integrity_check(self) -> str:
        with self._lock:
            return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    # --- domains ------------------------------------------------------------------------

    def ensure_domain(self, name: str) -> Dict[str, object]:
        check_domain_name(name)
        with self._transaction() as db:
            self._insert_domain(db, name)
        return self.get_domain(name)

    @staticmethod
    def _insert_domain(db: sqlite3.Connection, name: str) -> None:
        db.execute("INSERT OR IGNORE INTO domains (name, created_at) VALUES (?, ?)",
                   (name, time.time()))

    def _one(self, table: str, key: str, value: object, what: str) -> sqlite3.Row:
        rows = self._read("SELECT * FROM %s WHERE %s = ?" % (table, key), (value,))
        if not rows:
            raise UnknownName("%s %r not found" % (what, value))
        return rows[0]

    def _all(self, query: str, args=(), json_fields=()) -> List[Dict[str, object]]:
        return [_row(r, json_fields) for r in self._read(query, args)]

    def get_domain(self, name: str) -> Dict[str, object]:
        return _row(self._one("domains", "name", name, "domain"))

    def list_domains(self) -> List[Dict[str, object]]:
        return self._all("SELECT * FROM domains ORDER BY name")

    def delete_domain(self, name: str) -> None:
        self.get_domain(name)
        with self._transaction() as db:
            running = db.execute("SELECT id FROM jobs WHERE domain = ? AND state = 'running'",
                                 (name,)).fetchone()
            if running is not None:
                raise Conflict("domain %r has a running job %s; cancel it first"
                               % (name, running["id"]))
            db.execute("DELETE FROM domains WHERE name = ?", (name,))

    # --- datasets -----------------------------------------------------------------------

    def add_dataset(self, domain: str, path: str, summary: Dict[str, object],
                    create_domain: bool = False) -> int:
        """Record a dataset; ``create_domain``: make the domain in the same transaction (an
        upload to a new domain creates it only together with its first dataset)."""
        if create_domain:
            check_domain_name(domain)
        else:
            self.get_domain(domain)
        with self._transaction() as db:
            if create_domain:
                self._insert_domain(db, domain)
            cursor = db.execute(
                "INSERT INTO datasets (domain, created_at, path, summary) VALUES (?, ?, ?, ?)",
                (domain, time.time(), path, json.dumps(summary)))
            return int(cursor.lastrowid)

    def get_dataset(self, dataset_id: int) -> Dict[str, object]:
        return _row(self._one("datasets", "id", dataset_id, "dataset"), ("summary",))

    def latest_dataset(self, domain: str) -> Optional[Dict[str, object]]:
        rows = self._read("SELECT * FROM datasets WHERE domain = ? ORDER BY id DESC LIMIT 1",
                          (domain,))
        return _row(rows[0] if rows else None, ("summary",))

    # --- jobs ---------------------------------------------------------------------------

    def enqueue_job(self, domain: str, dataset_id: int,
                    params: Dict[str, object]) -> Dict[str, object]:
        self.get_domain(domain)
        job_id = uuid.uuid4().hex[:16]
        with self._transaction() as db:
            db.execute("INSERT INTO jobs (id, domain, dataset_id, state, params, created_at) "
                       "VALUES (?, ?, ?, 'queued', ?, ?)",
                       (job_id, domain, dataset_id, json.dumps(params), time.time()))
            self._event(db, job_id, "queued", {})
        return self.get_job(job_id)

    def get_job(self, job_id: str) -> Dict[str, object]:
        return _row(self._one("jobs", "id", job_id, "job"), _JOB_JSON)

    def list_jobs(self, domain: Optional[str] = None) -> List[Dict[str, object]]:
        if domain is None:
            return self._all("SELECT * FROM jobs ORDER BY created_at, rowid", (), _JOB_JSON)
        return self._all("SELECT * FROM jobs WHERE domain = ? ORDER BY created_at, rowid",
                         (domain,), _JOB_JSON)

    def last_job(self, domain: str) -> Optional[Dict[str, object]]:
        rows = self._all("SELECT * FROM jobs WHERE domain = ? ORDER BY created_at DESC, "
                         "rowid DESC LIMIT 1", (domain,), _JOB_JSON)
        return rows[0] if rows else None

    def claim_next_job(self) -> Optional[Dict[str, object]]:
        """Atomically move the oldest queued job to running (FIFO)."""
        with self._transaction() as db:
            row = db.execute("SELECT id FROM jobs WHERE state = 'queued' "
                             "ORDER BY created_at, rowid LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = 'running', started_at = ?, "
                       "attempts = attempts + 1 WHERE id = ?", (time.time(), row["id"]))
            self._event(db, row["id"], "running", {})
        return self.get_job(row["id"])

    def set_job_state(self, job_id: str, state: str,
                      error: Optional[str] = None) -> Dict[str, object]:
        if state not in JOB_STATES:
            raise InvalidInput("unknown job state %r" % state)
        with self._transaction() as db:
            self._transition(db, job_id, state, error)
        return self.get_job(job_id)

    def _transition(self, db: sqlite3.Connection, job_id: str, state: str,
                    error: Optional[str]) -> None:
        row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise UnknownName("job %r not found" % job_id)
        if state not in TRANSITIONS.get(row["state"], ()):
            raise Conflict("job %s is %s; it cannot become %s" % (job_id, row["state"], state))
        finished = time.time() if state in ("succeeded", "failed", "cancelled") else None
        db.execute("UPDATE jobs SET state = ?, error = ?, finished_at = ? WHERE id = ?",
                   (state, error, finished, job_id))
        self._event(db, job_id, state, {"error": error} if error else {})

    def update_progress(self, job_id: str, progress: Dict[str, object],
                        event: Optional[Dict[str, object]] = None) -> None:
        """Replace the job's progress record, and log ``event`` (one with an "event" kind)
        in the same transaction."""
        with self._transaction() as db:
            db.execute("UPDATE jobs SET progress = ? WHERE id = ?", (json.dumps(progress), job_id))
            if event is not None:
                data = {k: v for k, v in event.items() if k != "event"}
                self._event(db, job_id, str(event["event"]), data)

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
            self._requeue_running(db, job_id, reason)
        return True

    def _requeue_running(self, db: sqlite3.Connection, job_id: str,
                         reason: Optional[str]) -> None:
        """Interrupted, then queued again -- or failed once it has been started
        MAX_ATTEMPTS times: a job that kills its worker every time is poison, and the queue
        behind it must move on. The reason stays in the job's ``error`` either way."""
        attempts = db.execute("SELECT attempts FROM jobs WHERE id = ?",
                              (job_id,)).fetchone()["attempts"]
        reason = reason or "the agent stopped while the job ran"
        self._transition(db, job_id, "interrupted", reason)
        if attempts >= MAX_ATTEMPTS:
            self._transition(db, job_id, "failed", "gave up after %d attempts, each ended by: %s"
                             % (attempts, reason))
        else:
            self._transition(db, job_id, "queued", "attempt %d of %d ended: %s"
                             % (attempts, MAX_ATTEMPTS, reason))

    def requeue_interrupted(self) -> List[str]:
        """At start-up: jobs left running by a crash are marked interrupted, then queued
        again (they resume from their checkpoint). Returns their ids."""
        with self._transaction() as db:
            ids = [r["id"] for r in db.execute("SELECT id FROM jobs WHERE state = 'running'")]
            for job_id in ids:
                self._requeue_running(db, job_id, None)
        return ids

    def events(self, job_id: str) -> List[Dict[str, object]]:
        return self._all("SELECT at, kind, data FROM job_events WHERE job_id = ? ORDER BY id",
                         (job_id,), ("data",))

    @staticmethod
    def _event(db: sqlite3.Connection, job_id: str, kind: str, data: Dict[str, object]) -> None:
        db.execute("INSERT INTO job_events (job_id, at, kind, data) VALUES (?, ?, ?, ?)",
                   (job_id, time.time(), kind, json.dumps(data)))

    def job_counts(self) -> Dict[str, int]:
        rows = self._all("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        counts = dict.fromkeys(JOB_STATES, 0)
        counts.update({r["state"]: r["n"] for r in rows})
        return counts

    def active_summaries(self) -> Dict[str, Dict[str, object]]:
        """Each domain's active adapter summary (domains without one are left out)."""
        rows = self._all("SELECT v.domain, v.summary FROM adapter_versions v JOIN domains d "
                         "ON d.name = v.domain AND d.active_version = v.version", (),
                         ("summary",))
        return {r["domain"]: r["summary"] for r in rows}

    # --- telemetry ----------------------------------------------------------------------

    def job_telemetry(self, job_id: str) -> Dict[str, object]:
        return self.get_job(job_id)["telemetry"]

    def set_job_telemetry(self, job_id: str, summary: Dict[str, object]) -> None:
        with self._transaction() as db:
            found = db.execute("UPDATE jobs SET telemetry = ? WHERE id = ?",
                               (json.dumps(summary), job_id)).rowcount
        if not found:
            raise UnknownName("job %r not found" % job_id)

    def add_telemetry(self, sample: Dict[str, object], keep_after: float) -> None:
        """One downsampled sample; older history than ``keep_after`` is dropped."""
        with self._transaction() as db:
            db.execute("INSERT INTO telemetry (ts, data) VALUES (?, ?)",
                       (sample["ts"], json.dumps(sample)))
            db.execute("DELETE FROM telemetry WHERE ts < ?", (keep_after,))

    def telemetry(self, since: Optional[float] = None,
                  until: Optional[float] = None) -> List[Dict[str, object]]:
        rows = self._all("SELECT data FROM telemetry WHERE ts >= ? AND ts <= ? ORDER BY ts",
                         (since if since is not None else float("-inf"),
                          until if until is not None else float("inf")), ("data",))
        return [row["data"] for row in rows]

    # --- adapter versions ---------------------------------------------------------------

    def promote_adapter(self, job_id: str, path: str, summary: Dict[str, object]) -> int:
        """Record the job's adapter as the domain's next version, make it active and mark
        the job succeeded -- all in one transaction. Returns the new version number."""
        with self._transaction() as db:
            job = db.execute("SELECT domain FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if job is None:
                raise UnknownName("job %r not found" % job_id)
            version = self._add_version(db, job["domain"], path, job_id, summary)
            self._transition(db, job_id, "succeeded", None)
        return version

    def import_adapter(self, domain: str, path: str, summary: Dict[str, object]) -> int:
        """Record an imported (already validated) adapter as the domain's active version,
        creating the domain in the same transaction: a failed import leaves nothing."""
        check_domain_name(domain)
        encoded = json.dumps(summary, allow_nan=False)  # refuse NaN before anything is written
        with self._transaction() as db:
            self._insert_domain(db, domain)
            return self._add_version(db, domain, path, None, json.loads(encoded))

    @staticmethod
    def _add_version(db: sqlite3.Connection, domain: str, path: str, job_id: Optional[str],
                     summary: Dict[str, object]) -> int:
        last = db.execute("SELECT MAX(version) AS v FROM adapter_versions WHERE domain = ?",
                          (domain,)).fetchone()["v"]
        version = (last or 0) + 1
        db.execute("INSERT INTO adapter_versions (domain, version, path, job_id, created_at, "
                   "summary) VALUES (?, ?, ?, ?, ?, ?)",
                   (domain, version, path, job_id, time.time(), json.dumps(summary)))
        db.execute("UPDATE domains SET active_version = ? WHERE name = ?", (version, domain))
        return version

    def versions(self, domain: str) -> List[Dict[str, object]]:
        return self._all("SELECT * FROM adapter_versions WHERE domain = ? ORDER BY version",
                         (domain,), ("summary",))

    def activate_version(self, domain: str, version: int) -> None:
        """Roll a domain back (or forward) to a kept version."""
        with self._transaction() as db:
            found = db.execute("SELECT 1 FROM adapter_versions WHERE domain = ? AND version = ?",
                               (domain, version)).fetchone()
            if found is None:
                raise UnknownName("domain %r has no adapter version %r" % (domain, version))
            db.execute("UPDATE domains SET active_version = ? WHERE name = ?", (version, domain))

    def active_adapter(self, domain: str) -> Optional[Dict[str, object]]:
        active = self.get_domain(domain)["active_version"]
        if active is None:
            return None
        return next(v for v in self.versions(domain) if v["version"] == active)
