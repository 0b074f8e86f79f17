"""Virtual time for the local runtime, kept in the state directory's database.

A local run does not wait two hours for a soak: the driver advances the clock to the next due
message instead. The time lives in the `meta` table (key `clock`), so a resumed run, or a second
process on the same state directory (`patchpilot approve`), continues the same virtual time.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from patchpilot.adapters.local._sqlite import META_SCHEMA, Database, iso
from patchpilot.errors import InputError

VIRTUAL_START_ENV = "PATCHPILOT_VIRTUAL_START"

_KEY = "clock"


class VirtualClock:
    """A `Clock` that only moves when told to, and never backwards."""

    def __init__(self, db_path: str | Path, start: datetime | None = None, *, read_only: bool = False) -> None:
        """On a new database the clock starts at `start` (default: the real UTC now); on an
        existing one it continues where it was and `start` is ignored. With `read_only`, an
        existing database's clock, to read (`now`) only."""
        self._db = Database(db_path, (META_SCHEMA,), read_only=read_only)
        if read_only:
            return
        initial = iso(start if start is not None else datetime.now(UTC))
        with self._db.transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (_KEY, initial))

    def now(self) -> datetime:
        with self._db.lock:
            row = self._db.conn.execute("SELECT value FROM meta WHERE key = ?", (_KEY,)).fetchone()
        if row is None:  # the row was deleted under us: a damaged state directory
            raise RuntimeError("the virtual clock is missing from the state database")
        return datetime.fromisoformat(row[0])

    def advance_to(self, moment: datetime) -> datetime:
        """Move to `moment` if it is later than now; returns the (possibly unchanged) now."""
        target = iso(moment)
        with self._db.transaction() as conn:
            # Fixed-width UTC texts compare as the moments do.
            conn.execute("UPDATE meta SET value = ? WHERE key = ? AND value < ?", (target, _KEY, target))
        return self.now()

    def advance(self, delta: timedelta) -> datetime:
        """Move forward by `delta` (a negative one is refused)."""
        if delta < timedelta(0):
            raise ValueError(f"the clock does not go backwards ({delta})")
        with self._db.transaction() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (_KEY,)).fetchone()
            target = datetime.fromisoformat(row[0]) + delta
            conn.execute("UPDATE meta SET value = ? WHERE key = ?", (iso(target), _KEY))
        return target

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> VirtualClock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def virtual_start() -> datetime | None:
    """Where a new state directory's virtual clock starts when `PATCHPILOT_VIRTUAL_START` (an ISO
    time with its offset) is set; None (the real now) otherwise. Set, the runs are reproducible:
    their ids end in a suffix derived from the run, not a random one (`LocalRuntime.start`). The
    docs' examples are made this way (`patchpilot.tools.doc_examples`)."""
    text = os.environ.get(VIRTUAL_START_ENV, "").strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise InputError.single(
            VIRTUAL_START_ENV, f'expected an ISO time with its offset such as "2026-12-01T00:00:00+00:00", got "{text}"'
        )
    return moment
