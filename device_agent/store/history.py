"""Telemetry history: the downsampled samples of the ``telemetry`` table, kept for the
retention period (each job's own telemetry summary lives with the job, in jobs.py)."""
import json
from typing import Dict, List, Optional

from device_agent.store.database import Database


class TelemetryHistory(Database):

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
