"""The SQLite RunStore beyond the contract (test_run_store_contract.py): the state outlives the
process, and writers on separate connections race under SQLite's write lock."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_run_store_contract import started

from patchpilot.adapters.local.sqlite_store import SqliteRunStore
from patchpilot.engine.run import Run
from patchpilot.ports import ConflictError


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "patchpilot.db"


@pytest.fixture
def store(db: Path) -> Iterator[SqliteRunStore]:
    with SqliteRunStore(db) as opened:
        yield opened


def test_a_run_survives_reopening_the_database(db: Path) -> None:
    run, commands = started()
    with SqliteRunStore(db) as first:
        first.create(run, commands)
    with SqliteRunStore(db) as second:
        assert second.load("run-1") == run
        assert second.outbox("run-1") == commands


def test_concurrent_saves_on_separate_connections_let_exactly_one_win(db: Path, store: SqliteRunStore) -> None:
    v1, commands = started()
    store.create(v1, commands)
    contenders = [v1.model_copy(update={"version": 2, "reason": f"writer {n}"}) for n in range(8)]
    barrier = threading.Barrier(len(contenders))
    outcomes: list[str] = []

    def save(run: Run) -> None:
        with SqliteRunStore(db) as own:
            own.load("run-1")
            barrier.wait()
            try:
                own.save(run, [], previous=v1)
                outcomes.append(run.reason)
            except ConflictError:
                outcomes.append("conflict")

    threads = [threading.Thread(target=save, args=(run,)) for run in contenders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    winners = [o for o in outcomes if o != "conflict"]
    assert len(outcomes) == 8 and len(winners) == 1
    assert store.load("run-1").reason == winners[0]
