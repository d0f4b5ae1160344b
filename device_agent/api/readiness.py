"""Whether the store can take writes, for ``/readyz``: the data dir writable and the
database intact by SQLite's ``integrity_check``.

The check runs in a thread of its own with a deadline, so a database locked by another
writer answers "busy" rather than hanging the probe (or filling the thread pool that
blocking routes use), and at most every ``STORE_CHECK_TTL_S``: it reads the whole database.
"""
import asyncio
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

from device_agent.store.db import Store

STORE_CHECK_TIMEOUT_S = 2.0
STORE_CHECK_TTL_S = 30.0
_store_checks = ThreadPoolExecutor(1, thread_name_prefix="readyz-store")


class StoreCheck(object):
    def __init__(self, store: Store, data_dir: str) -> None:
        self.store = store
        self.data_dir = data_dir
        self._checked_at = float("-inf")
        self._verdict = ""

    async def problem(self) -> str:
        """Why the store cannot take writes, or "" when it can."""
        if not os.access(self.data_dir, os.W_OK):
            return "the data dir is not writable"
        if time.monotonic() - self._checked_at > STORE_CHECK_TTL_S:
            loop = asyncio.get_event_loop()
            try:
                verdict = await asyncio.wait_for(loop.run_in_executor(
                    _store_checks, _integrity, self.store), STORE_CHECK_TIMEOUT_S)
            except asyncio.TimeoutError:
                return "the store is busy (locked by another writer?)"
            self._checked_at, self._verdict = time.monotonic(), verdict
        return "" if self._verdict == "ok" else "the store is not intact: %s" % self._verdict


def _integrity(store: Store) -> str:
    try:
        return store.integrity_check()
    except sqlite3.DatabaseError as exc:  # "database disk image is malformed"
        return str(exc)
