"""Domains and their uploaded datasets: the ``domains`` and ``datasets`` tables."""
import json
import re
import sqlite3
import time
from typing import Dict, List, Optional

from device_agent.errors import Conflict, InvalidInput
from device_agent.store.database import Database, Record, as_record

# \Z, not $: "$" also matches before a trailing newline, which let "name\n" through.
DOMAIN_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}\Z")


def check_domain_name(name: object) -> str:
    if not isinstance(name, str) or not DOMAIN_NAME.match(name):  # match: anchored at 0
        raise InvalidInput("domain names are 1-63 characters of a-z, 0-9, '_' and '-', "
                           "starting with a letter or digit")
    return name


def insert_domain(db: sqlite3.Connection, name: str) -> None:
    """Create the domain inside the caller's transaction (no-op when it exists)."""
    db.execute("INSERT OR IGNORE INTO domains (name, created_at) VALUES (?, ?)",
               (name, time.time()))


def insert_dataset(db: sqlite3.Connection, domain: str, path: str,
                   summary: Dict[str, object]) -> int:
    """Record a dataset inside the caller's transaction; its id."""
    cursor = db.execute(
        "INSERT INTO datasets (domain, created_at, path, summary) VALUES (?, ?, ?, ?)",
        (domain, time.time(), path, json.dumps(summary)))
    return int(cursor.lastrowid)


def find_domain(database: Database, name: str) -> Record:
    """The domain's record; UnknownName when there is none."""
    return as_record(database._one("domains", "name", name, "domain"))


class DomainRecords(Database):
    """Domains and datasets. A domain is made by its first dataset or adapter import (or
    ``ensure_domain``); deleting one cascades to its datasets, jobs and versions."""

    def ensure_domain(self, name: str) -> Record:
        check_domain_name(name)
        with self._transaction() as db:
            insert_domain(db, name)
        return self.get_domain(name)

    def get_domain(self, name: str) -> Record:
        return find_domain(self, name)

    def list_domains(self) -> List[Record]:
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
                insert_domain(db, domain)
            return insert_dataset(db, domain, path, summary)

    def get_dataset(self, dataset_id: int) -> Record:
        return as_record(self._one("datasets", "id", dataset_id, "dataset"), ("summary",))

    def latest_dataset(self, domain: str) -> Optional[Record]:
        rows = self._read("SELECT * FROM datasets WHERE domain = ? ORDER BY id DESC LIMIT 1",
                          (domain,))
        return as_record(rows[0] if rows else None, ("summary",))
