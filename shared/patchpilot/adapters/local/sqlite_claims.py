"""The `Claims` port of the local runtime: a row per key in the state database, claimed under the
write lock (BEGIN IMMEDIATE), so two processes on one state directory cannot both win."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from patchpilot.adapters.local._sqlite import Database, epoch
from patchpilot.ports import Clock

SCHEMA = ("CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, until REAL NOT NULL)",)


class SqliteClaims:
    def __init__(self, db_path: str | Path, clock: Clock) -> None:
        self._db = Database(db_path, SCHEMA)
        self.clock = clock

    def claim(self, key: str, until: datetime) -> bool:
        with self._db.transaction() as conn:
            held = conn.execute("SELECT until FROM claims WHERE key = ?", (key,)).fetchone()
            if held is not None and held[0] >= epoch(self.clock.now()):
                return False
            conn.execute("INSERT OR REPLACE INTO claims (key, until) VALUES (?, ?)", (key, epoch(until)))
        return True

    def renew(self, key: str, until: datetime) -> None:
        with self._db.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO claims (key, until) VALUES (?, ?)", (key, epoch(until)))

    def close(self) -> None:
        self._db.close()
