"""The `RunStore` of the local runtime: runs and their outbox in SQLite.

A run is stored as a header (the Run without its waves) plus one row per wave, so that a save
rewrites only the waves `decide` changed: `decide` keeps every untouched wave as the very same
object, and a run of 10,000 instances is saved hundreds of times. Every save is a conditional
write on the stored version, checked and written under the write lock (BEGIN IMMEDIATE), so two
processes on one state directory cannot both win.

Beside each run, where its report goes (`--report-dir` of the command that started it), so that
`approve` and `run --resume` write the report there too: a local setting, not part of the Run.

Runs are immutable, so the store keeps the last Run it loaded or saved per run id and returns it
again while a cheap `SELECT version` shows nobody saved since.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from patchpilot.adapters.local._sqlite import Database, epoch
from patchpilot.engine.messages import MESSAGE, Message
from patchpilot.engine.run import Run
from patchpilot.ports import ConflictError, UnknownRunError

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        header TEXT NOT NULL,
        created_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS run_waves (
        run_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (run_id, position)
    )""",
    """CREATE TABLE IF NOT EXISTS outbox (
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        message_id TEXT NOT NULL,
        body TEXT NOT NULL,
        sent INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, seq)
    )""",
    "CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (run_id, seq) WHERE sent = 0",
    "CREATE TABLE IF NOT EXISTS run_report_dirs (run_id TEXT PRIMARY KEY, directory TEXT NOT NULL)",
)


class SqliteRunStore:
    """A `RunStore` on the SQLite database at `db_path`; with `read_only`, on an existing one,
    for loading only (a save raises `sqlite3.OperationalError`)."""

    def __init__(self, db_path: str | Path, *, read_only: bool = False) -> None:
        self._db = Database(db_path, SCHEMA, read_only=read_only)
        self._runs: dict[str, Run] = {}  # the identity map: the last Run seen per id

    # ------------------------------------------------------------ RunStore

    def create(self, run: Run, outbox: Sequence[Message]) -> None:
        try:
            with self._db.transaction() as conn:
                conn.execute(
                    "INSERT INTO runs (run_id, version, header, created_at) VALUES (?, ?, ?, ?)",
                    (run.run_id, run.version, _header(run), epoch(run.created_at)),
                )
                conn.executemany(
                    "INSERT INTO run_waves (run_id, position, data) VALUES (?, ?, ?)",
                    [(run.run_id, i, wave.model_dump_json()) for i, wave in enumerate(run.waves)],
                )
                self._append(conn, run.run_id, outbox)
        except sqlite3.IntegrityError as error:
            raise ConflictError(f"run {run.run_id} exists already") from error
        self._runs[run.run_id] = run

    def load(self, run_id: str) -> Run:
        with self._db.transaction("DEFERRED") as conn:  # header and waves from one snapshot
            row = conn.execute("SELECT version FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise UnknownRunError(run_id)
            cached = self._runs.get(run_id)
            if cached is not None and cached.version == row[0]:
                return cached
            (header,) = conn.execute("SELECT header FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            waves = [
                data
                for (data,) in conn.execute("SELECT data FROM run_waves WHERE run_id = ? ORDER BY position", (run_id,))
            ]
        run = Run.model_validate_json(_with_waves(header, waves))
        self._runs[run_id] = run
        return run

    def save(self, run: Run, outbox: Sequence[Message], previous: Run) -> None:
        if run.run_id != previous.run_id:
            raise ValueError(f"cannot save run {run.run_id} over run {previous.run_id}")
        if run.version != previous.version + 1:
            # Equal versions must mean equal runs, or the identity map of another store would
            # serve a stale run as current.
            raise ValueError(f"run {run.run_id}: version {run.version} does not follow {previous.version}")
        run_id = run.run_id
        with self._db.transaction() as conn:
            row = conn.execute("SELECT version FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise UnknownRunError(run_id)
            if row[0] != previous.version:
                self._runs.pop(run_id, None)
                raise ConflictError(f"run {run_id} is at version {row[0]}, not {previous.version} as loaded")
            conn.execute(
                "UPDATE runs SET version = ?, header = ? WHERE run_id = ?",
                (run.version, _header(run), run_id),
            )
            changed = [
                (run_id, i, wave.model_dump_json())
                for i, wave in enumerate(run.waves)
                if i >= len(previous.waves) or wave is not previous.waves[i]
            ]
            conn.executemany("INSERT OR REPLACE INTO run_waves (run_id, position, data) VALUES (?, ?, ?)", changed)
            if len(run.waves) < len(previous.waves):
                conn.execute("DELETE FROM run_waves WHERE run_id = ? AND position >= ?", (run_id, len(run.waves)))
            self._append(conn, run_id, outbox)
        self._runs[run_id] = run

    def outbox(self, run_id: str) -> list[Message]:
        with self._db.lock:
            rows = self._db.conn.execute(
                "SELECT body FROM outbox WHERE run_id = ? AND sent = 0 ORDER BY seq", (run_id,)
            ).fetchall()
        return [MESSAGE.validate_json(body) for (body,) in rows]

    def mark_sent(self, run_id: str, message_ids: Sequence[str]) -> None:
        with self._db.transaction() as conn:
            conn.executemany(
                "UPDATE outbox SET sent = 1 WHERE run_id = ? AND message_id = ? AND sent = 0",
                [(run_id, message_id) for message_id in message_ids],
            )

    def run_ids(self) -> list[str]:
        with self._db.lock:
            rows = self._db.conn.execute("SELECT run_id FROM runs ORDER BY created_at, rowid").fetchall()
        return [run_id for (run_id,) in rows]

    # ------------------------------------------------------------ local settings per run

    def set_report_dir(self, run_id: str, directory: Path) -> None:
        """Remember where the reports of `run_id` go (an absolute path: later commands may run
        from another directory)."""
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO run_report_dirs (run_id, directory) VALUES (?, ?)",
                (run_id, str(directory.absolute())),
            )

    def report_dir(self, run_id: str) -> Path | None:
        """Where the reports of `run_id` go, if a command gave it; None on a database written
        before this table existed (read only, its schema is not brought up to date)."""
        try:
            with self._db.lock:
                row = self._db.conn.execute(
                    "SELECT directory FROM run_report_dirs WHERE run_id = ?", (run_id,)
                ).fetchone()
        except sqlite3.OperationalError:  # no such table
            return None
        return None if row is None else Path(row[0])

    # ------------------------------------------------------------ the rest

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SqliteRunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _append(conn: sqlite3.Connection, run_id: str, outbox: Sequence[Message]) -> None:
        if not outbox:
            return
        (last,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox WHERE run_id = ?", (run_id,)).fetchone()
        conn.executemany(
            "INSERT INTO outbox (run_id, seq, message_id, body, sent) VALUES (?, ?, ?, ?, 0)",
            [
                (run_id, last + n, message.id, MESSAGE.dump_json(message).decode())
                for n, message in enumerate(outbox, start=1)
            ],
        )


def _header(run: Run) -> str:
    return run.model_dump_json(exclude={"waves"})


def _with_waves(header: str, waves: list[str]) -> str:
    """The JSON of the whole Run: the header object with its `waves` put back."""
    assert header.endswith("}") and len(header) > 2, "a run header is a non-empty JSON object"
    return f'{header[:-1]},"waves":[{",".join(waves)}]}}'
