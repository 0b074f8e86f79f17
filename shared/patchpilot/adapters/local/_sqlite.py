"""What the SQLite adapters of the local runtime share: connections, transactions, time stamps.

Every adapter opens its own connection to the one database of the state directory. WAL lets
readers run beside the single writer; writes take the write lock up front (BEGIN IMMEDIATE) so
a read-check-write sequence cannot be overtaken by another connection, in this process or
another (`patchpilot approve` while a run is going). A read-only connection (`mode=ro`) neither
creates the database nor changes its schema: what `status` and `report` open.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

BUSY_TIMEOUT_MS = 30_000

META_SCHEMA = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


class Database:
    """One connection, serialised by a lock so it may be handed between threads."""

    def __init__(self, db_path: str | Path, schema: tuple[str, ...] = (), *, read_only: bool = False) -> None:
        path = Path(db_path)
        self.lock = threading.RLock()
        if read_only:  # an existing database, opened for reading only: no file, table or pragma is written
            self.conn = connect_read_only(path)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(
            str(path), isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
        )
        try:
            self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self.conn.execute("PRAGMA journal_mode = WAL")
            # With WAL, NORMAL stays consistent after a crash; a power cut may lose the last
            # commits, all state of the local runtime together (it lives in this one file).
            self.conn.execute("PRAGMA synchronous = NORMAL")
            with self.transaction():
                for statement in schema:
                    self.conn.execute(statement)
        except BaseException:
            self.conn.close()
            raise

    @contextmanager
    def transaction(self, mode: Literal["IMMEDIATE", "DEFERRED"] = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """BEGIN … COMMIT, rolled back on any exception. IMMEDIATE takes the write lock now;
        DEFERRED gives a consistent snapshot for several reads."""
        with self.lock:
            self.conn.execute(f"BEGIN {mode}")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self.lock:
            self.conn.close()


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A `mode=ro` connection to the database at `path`, which must exist. Reading a WAL
    database needs its `-shm` file; in a directory this process cannot write, where none is
    left, the database is read as `immutable` (safe then: without a `-wal` file every commit is
    in the database file itself)."""
    uri = path.resolve().as_uri()
    try:
        return _connect_checked(f"{uri}?mode=ro")
    except sqlite3.OperationalError:
        if path.with_name(f"{path.name}-wal").exists():
            raise
        return _connect_checked(f"{uri}?mode=ro&immutable=1")


def _connect_checked(uri: str) -> sqlite3.Connection:
    """Connect and read once, so that an unreadable database fails here, not at the first load."""
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except BaseException:
        conn.close()
        raise
    return conn


def epoch(moment: datetime) -> float:
    """Seconds since the epoch of an aware datetime; naive ones are a bug, not local time."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment.isoformat()}: pass an aware (UTC) datetime")
    return moment.timestamp()


def from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def iso(moment: datetime) -> str:
    """A fixed-width UTC ISO 8601 text, so that texts sort as the moments do."""
    epoch(moment)  # rejects naive datetimes
    return moment.astimezone(UTC).isoformat(timespec="microseconds")
