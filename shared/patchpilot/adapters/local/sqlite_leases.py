"""The `Leases` port of the local runtime: a row per machine in the state database.

An acquire is one transaction under the write lock (BEGIN IMMEDIATE): per instance a conditional
upsert that writes only when the row is absent, the caller's own, or lapsed, and the holder read
back where it did not. Two processes on one state directory therefore never both hold a machine.
Instance ids compare without case (ARM ids do): the row's key is the id in lower case, the id as
its holder gave it is kept beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from patchpilot.adapters.local._sqlite import Database, epoch

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS leases ("
    " key TEXT PRIMARY KEY, instance_id TEXT NOT NULL, holder TEXT NOT NULL, until REAL NOT NULL)",
)

# Written unless another holder's lease has not lapsed: held through `until`, as claims are.
_TAKE = (
    "INSERT INTO leases (key, instance_id, holder, until) VALUES (:key, :instance_id, :holder, :until)"
    " ON CONFLICT (key) DO UPDATE SET instance_id = excluded.instance_id, holder = excluded.holder,"
    " until = excluded.until WHERE leases.holder = excluded.holder OR leases.until < :now"
)


class SqliteLeases:
    def __init__(self, db_path: str | Path) -> None:
        self._db = Database(db_path, SCHEMA)

    def acquire(self, instance_ids: Sequence[str], holder: str, until: datetime, now: datetime) -> dict[str, str]:
        held: dict[str, str] = {}
        row = {"holder": holder, "until": epoch(until), "now": epoch(now)}
        with self._db.transaction() as conn:
            for instance_id in instance_ids:
                key = instance_id.lower()
                if conn.execute(_TAKE, {**row, "key": key, "instance_id": instance_id}).rowcount == 0:
                    (other,) = conn.execute("SELECT holder FROM leases WHERE key = ?", (key,)).fetchone()
                    held[instance_id] = str(other)
        return held

    def release(self, instance_ids: Sequence[str], holder: str) -> None:
        with self._db.transaction() as conn:
            conn.executemany(
                "DELETE FROM leases WHERE key = ? AND holder = ?", [(i.lower(), holder) for i in instance_ids]
            )

    def close(self) -> None:
        self._db.close()
