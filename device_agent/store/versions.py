"""Adapter versions: the ``adapter_versions`` table and each domain's active version.

A new version becomes active only in the same transaction that marks its job succeeded;
earlier versions are kept, so a domain can be rolled back.
"""
import json
import sqlite3
import time
from typing import Dict, List, Optional

from device_agent.errors import UnknownName
from device_agent.store.database import Database, Record
from device_agent.store.domains import check_domain_name, find_domain, insert_domain
from device_agent.store.jobs import transition


def _add_version(db: sqlite3.Connection, domain: str, path: str, job_id: Optional[str],
                 summary: Dict[str, object]) -> int:
    """The domain's next version, made active, inside the caller's transaction."""
    last = db.execute("SELECT MAX(version) AS v FROM adapter_versions WHERE domain = ?",
                      (domain,)).fetchone()["v"]
    version = (last or 0) + 1
    # the snapshot its job trained (issue 14): what the version learned from
    db.execute("INSERT INTO adapter_versions (domain, version, path, job_id, created_at, "
               "summary, snapshot_id) VALUES (?, ?, ?, ?, ?, ?, "
               "(SELECT snapshot_id FROM jobs WHERE id = ?))",
               (domain, version, path, job_id, time.time(), json.dumps(summary), job_id))
    db.execute("UPDATE domains SET active_version = ? WHERE name = ?", (version, domain))
    return version


class AdapterVersions(Database):
    """Each domain's trained or imported adapters, one of them active."""

    def promote_adapter(self, job_id: str, path: str, summary: Dict[str, object]) -> int:
        """Record the job's adapter as the domain's next version, make it active and mark
        the job succeeded -- all in one transaction. Returns the new version number."""
        with self._transaction() as db:
            job = db.execute("SELECT domain FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if job is None:
                raise UnknownName("job %r not found" % job_id)
            version = _add_version(db, job["domain"], path, job_id, summary)
            transition(db, job_id, "succeeded", None)
        return version

    def import_adapter(self, domain: str, path: str, summary: Dict[str, object]) -> int:
        """Record an imported (already validated) adapter as the domain's active version,
        creating the domain in the same transaction: a failed import leaves nothing."""
        check_domain_name(domain)
        encoded = json.dumps(summary, allow_nan=False)  # refuse NaN before anything is written
        with self._transaction() as db:
            insert_domain(db, domain)
            return _add_version(db, domain, path, None, json.loads(encoded))

    def versions(self, domain: str) -> List[Record]:
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

    def active_adapter(self, domain: str) -> Optional[Record]:
        active = find_domain(self, domain)["active_version"]
        if active is None:
            return None
        return next(v for v in self.versions(domain) if v["version"] == active)

    def active_summaries(self) -> Dict[str, Dict[str, object]]:
        """Each domain's active adapter summary (domains without one are left out)."""
        rows = self._all("SELECT v.domain, v.summary FROM adapter_versions v JOIN domains d "
                         "ON d.name = v.domain AND d.active_version = v.version", (),
                         ("summary",))
        return {r["domain"]: r["summary"] for r in rows}
