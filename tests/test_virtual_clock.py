"""The virtual clock of the local runtime: persisted, shared, never backwards."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from patchpilot.adapters.local.clock import VirtualClock

T0 = datetime(2025, 3, 14, 17, 0, tzinfo=UTC)


def test_a_new_clock_starts_at_start_in_utc(tmp_path: Path) -> None:
    tokyo = timezone(timedelta(hours=9))
    with VirtualClock(tmp_path / "db", start=datetime(2025, 3, 15, 2, 0, tzinfo=tokyo)) as clock:
        now = clock.now()
    assert now == T0 and now.utcoffset() == timedelta(0)


def test_a_new_clock_without_start_starts_at_the_real_now(tmp_path: Path) -> None:
    before = datetime.now(UTC)
    with VirtualClock(tmp_path / "db") as clock:
        now = clock.now()
    assert before <= now <= datetime.now(UTC)


def test_advance_to_moves_forward_but_never_back(tmp_path: Path) -> None:
    with VirtualClock(tmp_path / "db", start=T0) as clock:
        assert clock.advance_to(T0 + timedelta(hours=2)) == T0 + timedelta(hours=2)
        assert clock.advance_to(T0 + timedelta(hours=1)) == T0 + timedelta(hours=2)
        assert clock.advance(timedelta(minutes=5)) == T0 + timedelta(hours=2, minutes=5)
        assert clock.now() == T0 + timedelta(hours=2, minutes=5)
        with pytest.raises(ValueError):
            clock.advance(timedelta(seconds=-1))


def test_a_reopened_clock_continues_its_virtual_time_and_ignores_start(tmp_path: Path) -> None:
    with VirtualClock(tmp_path / "db", start=T0) as clock:
        clock.advance_to(T0 + timedelta(days=1))
    with VirtualClock(tmp_path / "db", start=T0 + timedelta(days=30)) as resumed:
        assert resumed.now() == T0 + timedelta(days=1)


def test_two_clocks_on_one_database_share_the_time(tmp_path: Path) -> None:
    with VirtualClock(tmp_path / "db", start=T0) as one, VirtualClock(tmp_path / "db") as two:
        one.advance_to(T0 + timedelta(minutes=7))
        assert two.now() == T0 + timedelta(minutes=7)
