"""The review queue of doubtful predictions: each domain's opt-in settings and its queued
items (the ``review_settings`` and ``review_items`` tables of migration 4; stdlib only).

An item is a predicted image whose top probability fell under the domain's threshold: the
image's file (its name chosen by the keeper, never by a caller), its top-3 and the adapter
version that predicted it. Item ids come from AUTOINCREMENT, so an id is never reused: a
stale label for a dropped item cannot land on a newer image that took its number.
"""
import json
import time
from typing import List, NamedTuple, Optional, Sequence, Tuple

from device_agent.errors import UnknownName
from device_agent.store.database import Database
from device_agent.store.domains import find_domain


class ReviewSettings(NamedTuple):
    """A domain's review settings; these defaults hold until the domain sets its own."""

    enabled: bool = False
    threshold: float = 0.5  # keep a prediction whose top probability is under this
    max_items: int = 200
    max_bytes: int = 50 << 20


class ReviewItem(NamedTuple):
    id: int
    domain: str
    created_at: float
    version: int
    top: List[Tuple[str, float]]  # (class, probability), most probable first
    file: str  # a name inside the domain's review directory
    media_type: str
    bytes: int


class NewReviewItem(NamedTuple):
    version: int
    top: Sequence[Tuple[str, float]]
    file: str
    media_type: str
    bytes: int


def _item(row) -> ReviewItem:
    top = [(str(name), float(p)) for name, p in json.loads(row["top"])]
    return ReviewItem(int(row["id"]), row["domain"], float(row["created_at"]),
                      int(row["version"]), top, row["file"], row["media_type"],
                      int(row["bytes"]))


class ReviewQueue(Database):
    """Per-domain review settings and the bounded queue of kept predictions."""

    def review_settings(self, domain: str) -> ReviewSettings:
        """The domain's settings (the defaults until it sets its own); UnknownName when the
        domain does not exist."""
        find_domain(self, domain)
        rows = self._read("SELECT * FROM review_settings WHERE domain = ?", (domain,))
        if not rows:
            return ReviewSettings()
        row = rows[0]
        return ReviewSettings(bool(row["enabled"]), float(row["threshold"]),
                              int(row["max_items"]), int(row["max_bytes"]))

    def set_review_settings(self, domain: str, settings: ReviewSettings) -> ReviewSettings:
        find_domain(self, domain)
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO review_settings (domain, enabled, threshold, "
                       "max_items, max_bytes) VALUES (?, ?, ?, ?, ?)",
                       (domain, int(settings.enabled), settings.threshold, settings.max_items,
                        settings.max_bytes))
        return settings

    def add_review_item(self, domain: str, item: NewReviewItem, max_items: int,
                        max_bytes: int) -> Tuple[int, List[str]]:
        """Queue ``item`` and drop the oldest items until the queue holds at most
        ``max_items`` items and ``max_bytes`` bytes, in one transaction. (the new item's id,
        the files of the dropped items: the caller deletes them)."""
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO review_items (domain, created_at, version, top, file, media_type,"
                " bytes) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (domain, time.time(), item.version, json.dumps([list(t) for t in item.top]),
                 item.file, item.media_type, item.bytes))
            rows = db.execute("SELECT id, file, bytes FROM review_items WHERE domain = ? "
                              "ORDER BY id DESC", (domain,)).fetchall()
            kept, total = 0, 0
            for kept, row in enumerate(rows):  # newest first, up to the first over a bound
                if kept + 1 > max_items or total + row["bytes"] > max_bytes:
                    break
                total += row["bytes"]
            else:
                kept = len(rows)
            dropped = rows[kept:][::-1]  # oldest first
            db.executemany("DELETE FROM review_items WHERE id = ?",
                           [(row["id"],) for row in dropped])
            return int(cursor.lastrowid), [row["file"] for row in dropped]

    def review_items(self, domain: str, limit: int,
                     before: Optional[int] = None) -> List[ReviewItem]:
        """Up to ``limit`` items, newest first; ``before``: only items older than that id."""
        find_domain(self, domain)
        rows = self._read("SELECT * FROM review_items WHERE domain = ? AND id < ? "
                          "ORDER BY id DESC LIMIT ?",
                          (domain, before if before is not None else 2 ** 63 - 1, limit))
        return [_item(row) for row in rows]

    def review_totals(self, domain: str) -> Tuple[int, int]:
        """(items, bytes) in the domain's queue."""
        row = self._read("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM review_items "
                         "WHERE domain = ?", (domain,))[0]
        return int(row[0]), int(row[1])

    def review_item(self, domain: str, item_id: int) -> ReviewItem:
        """The item, only if it is in this domain's queue (another domain's id is unknown
        here, the same answer as an id that never was)."""
        rows = self._read("SELECT * FROM review_items WHERE domain = ? AND id = ?",
                          (domain, item_id))
        if not rows:
            raise UnknownName("review item %d not found in domain %r" % (item_id, domain))
        return _item(rows[0])

    def remove_review_item(self, domain: str, item_id: int) -> ReviewItem:
        """Take the item out of the queue; the caller deletes its file."""
        item = self.review_item(domain, item_id)
        with self._transaction() as db:
            gone = db.execute("DELETE FROM review_items WHERE domain = ? AND id = ?",
                              (domain, item_id)).rowcount
        if not gone:  # taken by a concurrent request between the read and the delete
            raise UnknownName("review item %d not found in domain %r" % (item_id, domain))
        return item
