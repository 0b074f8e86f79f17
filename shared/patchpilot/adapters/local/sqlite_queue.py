"""The `Queue` of the local runtime: SQS-like delivery on a SQLite table and a virtual clock.

At least once: a received message stays in the table, hidden until `visible_at`, and is
delivered again (with a new receipt) unless acknowledged in time. Delays are a future
`visible_at`. A message received `max_attempts` times without an ack, or one whose body cannot
be read, moves to `dead_letters` instead of being delivered; `receive` never raises for it.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from patchpilot.adapters.local._sqlite import META_SCHEMA, Database, epoch, from_epoch, iso
from patchpilot.engine.messages import MESSAGE, Message
from patchpilot.ports import Clock, DeadLetter, Delivery

SCHEMA = (
    META_SCHEMA,
    """CREATE TABLE IF NOT EXISTS messages (
        id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        body TEXT NOT NULL,
        visible_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        receipt TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS messages_due ON messages (visible_at, seq)",
    """CREATE TABLE IF NOT EXISTS dead_letters (
        message_id TEXT NOT NULL,
        body TEXT NOT NULL,
        reason TEXT NOT NULL,
        at TEXT NOT NULL
    )""",
)

_SEQ_KEY = "queue_seq"  # in `meta`: the last seq given, so publish order survives acks


class SqliteQueue:
    """A `Queue` on the SQLite database at `db_path`, timed by `clock`."""

    def __init__(
        self,
        db_path: str | Path,
        clock: Clock,
        visibility_timeout: timedelta = timedelta(minutes=15),
        max_attempts: int = 5,
    ) -> None:
        if visibility_timeout <= timedelta(0):
            raise ValueError(f"visibility_timeout must be positive, not {visibility_timeout}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {max_attempts}")
        self.clock = clock
        self.visibility_timeout = visibility_timeout
        self.max_attempts = max_attempts
        self._db = Database(db_path, SCHEMA)

    # ------------------------------------------------------------ Queue

    def publish(self, messages: Sequence[Message], at: datetime | None = None) -> None:
        self._insert([(m.id, MESSAGE.dump_json(m).decode()) for m in messages], at)

    def receive(self, limit: int = 10) -> list[Delivery]:
        now = self.clock.now()
        due, hidden_until = epoch(now), epoch(now + self.visibility_timeout)
        deliveries: list[Delivery] = []
        with self._db.transaction() as conn:
            # Dead-lettered rows leave the table and delivered ones become invisible (the
            # timeout is positive), so each round makes progress and the loop ends.
            while len(deliveries) < limit:
                rows = conn.execute(
                    "SELECT id, body, attempts FROM messages WHERE visible_at <= ? ORDER BY visible_at, seq LIMIT ?",
                    (due, limit - len(deliveries)),
                ).fetchall()
                if not rows:
                    break
                for message_id, body, attempts in rows:
                    if attempts >= self.max_attempts:
                        reason = f"received {attempts} times without being acknowledged"
                        self._bury(conn, message_id, body, reason, now)
                        continue
                    try:
                        message = MESSAGE.validate_json(body)
                    except ValueError as error:  # pydantic's ValidationError, bad JSON included
                        self._bury(conn, message_id, body, f"unreadable message: {error}", now)
                        continue
                    if message.id != message_id:
                        reason = f"the body's id {message.id!r} is not the queued id {message_id!r}"
                        self._bury(conn, message_id, body, reason, now)
                        continue
                    receipt = uuid.uuid4().hex
                    conn.execute(
                        "UPDATE messages SET attempts = attempts + 1, receipt = ?, visible_at = ? WHERE id = ?",
                        (receipt, hidden_until, message_id),
                    )
                    deliveries.append(Delivery(message=message, receipt=receipt, attempts=attempts + 1))
        return deliveries

    def ack(self, delivery: Delivery) -> None:
        """Delete the message if `delivery` is its latest receipt; a stale one does nothing."""
        with self._db.transaction() as conn:
            conn.execute(
                "DELETE FROM messages WHERE id = ? AND receipt = ?",
                (delivery.message.id, delivery.receipt),
            )

    def retry_at(self, delivery: Delivery, at: datetime) -> None:
        """Show the message again at `at`; this receive does not count as an attempt."""
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE messages SET visible_at = ?, attempts = MAX(attempts - 1, 0) WHERE id = ? AND receipt = ?",
                (epoch(at), delivery.message.id, delivery.receipt),
            )

    def dead_letters(self) -> list[DeadLetter]:
        with self._db.lock:
            rows = self._db.conn.execute("SELECT message_id, body, reason FROM dead_letters ORDER BY rowid").fetchall()
        return [DeadLetter(message_id=i, body=body, reason=reason) for i, body, reason in rows]

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        body = MESSAGE.dump_json(delivery.message).decode()
        with self._db.transaction() as conn:
            self._bury(conn, delivery.message.id, body, reason, self.clock.now())

    # ------------------------------------------------------------ beyond the port

    def next_due(self) -> datetime | None:
        """When the earliest message (waiting, delayed or in flight) becomes visible; None
        when the queue is empty. The virtual-clock driver advances to it when idle."""
        with self._db.lock:
            (earliest,) = self._db.conn.execute("SELECT MIN(visible_at) FROM messages").fetchone()
        return None if earliest is None else from_epoch(earliest)

    def pending_count(self) -> int:
        """Messages not yet acknowledged nor dead-lettered, in flight ones included."""
        with self._db.lock:
            (count,) = self._db.conn.execute("SELECT COUNT(*) FROM messages").fetchone()
        return int(count)

    def publish_raw(self, message_id: str, body: str, at: datetime | None = None) -> None:
        """Queue a body as is, readable or not: for tests of what a damaged message does."""
        self._insert([(message_id, body)], at)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SqliteQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ helpers

    def _insert(self, entries: Sequence[tuple[str, str]], at: datetime | None) -> None:
        if not entries:
            return
        visible_at = epoch(at if at is not None else self.clock.now())
        with self._db.transaction() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (_SEQ_KEY,)).fetchone()
            last = int(row[0]) if row is not None else 0
            conn.executemany(
                "INSERT OR IGNORE INTO messages (id, seq, body, visible_at, attempts, receipt)"
                " VALUES (?, ?, ?, ?, 0, NULL)",
                [(message_id, last + n, body, visible_at) for n, (message_id, body) in enumerate(entries, 1)],
            )
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (_SEQ_KEY, str(last + len(entries))))

    @staticmethod
    def _bury(conn: sqlite3.Connection, message_id: str, body: str, reason: str, now: datetime) -> None:
        conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))
        conn.execute(
            "INSERT INTO dead_letters (message_id, body, reason, at) VALUES (?, ?, ?, ?)",
            (message_id, body, reason, iso(now)),
        )
