"""The store's SQLite connections, schema and migrations (stdlib only).

One database in WAL mode, safe to share between threads. Writes go through one connection
and lock; reads through a second one, so that under WAL a read never waits for a write that
waits out a lock an operator holds (a sqlite3 shell, a backup: issue 16). The schema is
versioned (``PRAGMA user_version``) and migrated forward on open, each migration in one
transaction. The tables' records are read and written by the mixins of
:class:`device_agent.store.db.Store`, all of them on this class's connections.
"""
import json
import os
import sqlite3
import threading
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence

from device_agent.errors import AgentError, UnknownName

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
    # 3, the data loop (issue 14): each domain's working set of samples (content-addressed:
    # hash = sha256 of the image bytes, dhash = a 64-bit difference hash, signed as SQLite
    # keeps it), what each archive brought, and the snapshot each job and version trained.
    """
    CREATE TABLE samples (
        domain TEXT NOT NULL REFERENCES domains(name) ON DELETE CASCADE,
        hash TEXT NOT NULL,
        label TEXT NOT NULL,
        split TEXT NOT NULL CHECK (split IN ('train', 'val')),
        source TEXT NOT NULL,
        added_at REAL NOT NULL,
        dhash INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        ext TEXT NOT NULL,
        PRIMARY KEY (domain, hash)
    );
    CREATE INDEX samples_by_class ON samples(domain, label, split);
    CREATE TABLE dataset_samples (
        dataset_id INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
        hash TEXT NOT NULL,
        label TEXT NOT NULL,
        PRIMARY KEY (dataset_id, hash)
    );
    ALTER TABLE jobs ADD COLUMN snapshot_id TEXT;
    ALTER TABLE adapter_versions ADD COLUMN snapshot_id TEXT;
    """,
    # 4, the review queue of doubtful predictions (issue 14; store/review.py): each domain's
    # opt-in settings and its kept predictions (the image file, its top-3, the version)
    """
    CREATE TABLE review_settings (
        domain TEXT PRIMARY KEY REFERENCES domains(name) ON DELETE CASCADE,
        enabled INTEGER NOT NULL,
        threshold REAL NOT NULL,
        max_items INTEGER NOT NULL,
        max_bytes INTEGER NOT NULL
    );
    CREATE TABLE review_items (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        domain TEXT NOT NULL REFERENCES domains(name) ON DELETE CASCADE,
        created_at REAL NOT NULL,
        version INTEGER NOT NULL,
        top TEXT NOT NULL,
        file TEXT NOT NULL,
        media_type TEXT NOT NULL,
        bytes INTEGER NOT NULL
    );
    CREATE INDEX review_items_by_domain ON review_items(domain, id);
    """,
]

Record = Dict[str, object]


def as_record(row: Optional[sqlite3.Row], json_fields: Sequence[str] = ()) -> Optional[Record]:
    """A row as a dict, its JSON-encoded columns decoded; None stays None."""
    if row is None:
        return None
    record = dict(row)
    for field in json_fields:
        record[field] = json.loads(record[field])
    return record


class Database(object):
    """The connections, the write lock and the schema; the base of every record mixin."""

    def __init__(self, path: str, busy_timeout_s: float = 30.0) -> None:
        # busy_timeout_s: how long a statement waits for a lock another process holds (an
        # operator's sqlite3 shell, a backup) before it fails with "database is locked"
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                   timeout=busy_timeout_s)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a power cut loses no committed job
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()
        self._read_lock = threading.Lock()
        self._reader = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                       timeout=busy_timeout_s)
        self._reader.row_factory = sqlite3.Row

    def close(self) -> None:
        with self._read_lock:
            self._reader.close()
        with self._lock:
            self._db.close()

    def _read(self, query: str, args: Sequence[object] = ()) -> List[sqlite3.Row]:
        """One autocommit SELECT on the reader: it sees every committed write."""
        with self._read_lock:
            return self._reader.execute(query, args).fetchall()

    def _one(self, table: str, key: str, value: object, what: str) -> sqlite3.Row:
        rows = self._read("SELECT * FROM %s WHERE %s = ?" % (table, key), (value,))
        if not rows:
            raise UnknownName("%s %r not found" % (what, value))
        return rows[0]

    def _all(self, query: str, args: Sequence[object] = (),
             json_fields: Sequence[str] = ()) -> List[Record]:
        return [as_record(r, json_fields) for r in self._read(query, args)]

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
