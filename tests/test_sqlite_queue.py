"""The SQLite Queue beyond the contract (test_queue_contract.py): publish order, a publish of an
id still queued is dropped, stale receipts, receives that fill their limit past dead letters,
the state outliving the process, and `next_due` for the virtual-clock driver."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from clocks import ManualClock
from test_queue_contract import MAX_RECEIVES, T0, TIMEOUT, ids, notice, open_sqlite_queue

from patchpilot.adapters.local.sqlite_queue import SqliteQueue


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "patchpilot.db"


@pytest.fixture
def queue(db: Path, clock: ManualClock) -> Iterator[SqliteQueue]:
    with open_sqlite_queue(db, clock) as opened:
        yield opened


# ---------------------------------------------------------------- order


def test_published_messages_are_received_in_publish_order(queue: SqliteQueue) -> None:
    queue.publish([notice(3), notice(1)])
    queue.publish([notice(2)])

    assert ids(queue.receive(limit=2)) == ["run-1:notify:3", "run-1:notify:1"]
    assert ids(queue.receive(limit=2)) == ["run-1:notify:2"]


def test_earlier_visibility_comes_first_whatever_the_publish_order(queue: SqliteQueue, clock: ManualClock) -> None:
    queue.publish([notice(1)], at=T0 + timedelta(minutes=2))
    queue.publish([notice(2)], at=T0 + timedelta(minutes=1))
    clock.advance(timedelta(minutes=5))

    assert ids(queue.receive()) == ["run-1:notify:2", "run-1:notify:1"]


def test_messages_dead_lettered_by_a_receive_leave_room_for_others_and_are_listed_in_order(
    queue: SqliteQueue, clock: ManualClock
) -> None:
    queue.publish([notice(1)])
    for _ in range(MAX_RECEIVES):
        assert ids(queue.receive()) == ["run-1:notify:1"]
        clock.advance(TIMEOUT)
    queue.publish_raw("garbage", "{not json")
    queue.publish([notice(2)])  # due after the fourth delivery of notice 1 and the garbage

    assert ids(queue.receive(limit=1)) == ["run-1:notify:2"]  # the next one fills the limit

    assert [d.message_id for d in queue.dead_letters()] == ["run-1:notify:1", "garbage"]


# ---------------------------------------------------------------- duplicates and stale receipts


def test_acknowledging_with_a_stale_receipt_does_nothing(queue: SqliteQueue, clock: ManualClock) -> None:
    queue.publish([notice(1)])
    (first,) = queue.receive()
    clock.advance(TIMEOUT)
    (second,) = queue.receive()

    queue.ack(first)
    assert queue.pending_count() == 1
    queue.ack(second)
    assert queue.pending_count() == 0
    clock.advance(TIMEOUT)
    assert queue.receive() == []


def test_publishing_an_id_still_queued_does_not_duplicate_it(queue: SqliteQueue, clock: ManualClock) -> None:
    queue.publish([notice(1), notice(1)])
    queue.publish([notice(1)], at=T0 + timedelta(hours=1))
    assert queue.pending_count() == 1
    (delivery,) = queue.receive()

    queue.publish([notice(1)])  # in flight counts as still queued

    assert queue.pending_count() == 1
    assert queue.receive() == []
    queue.ack(delivery)
    clock.advance(timedelta(hours=2))
    assert queue.receive() == []


def test_retry_at_with_a_stale_receipt_does_nothing(queue: SqliteQueue, clock: ManualClock) -> None:
    queue.publish([notice(1)])
    (first,) = queue.receive()
    clock.advance(TIMEOUT)
    (second,) = queue.receive()

    queue.retry_at(first, clock.now())

    assert queue.receive() == []  # still hidden by the second delivery
    assert queue.next_due() == clock.now() + TIMEOUT
    assert second.attempts == 2


# ---------------------------------------------------------------- beyond the port


def test_messages_survive_reopening_the_database(db: Path, clock: ManualClock) -> None:
    with SqliteQueue(db, clock) as first:
        first.publish([notice(1), notice(2)])
        (in_flight,) = first.receive(limit=1)
    with SqliteQueue(db, clock) as second:
        assert ids(second.receive()) == ["run-1:notify:2"]
        second.ack(in_flight)  # the receipt is stored, not held in memory
        assert second.pending_count() == 1


def test_next_due_is_the_earliest_visibility_in_flight_messages_included(
    queue: SqliteQueue, clock: ManualClock
) -> None:
    assert queue.next_due() is None
    queue.publish([notice(1)], at=T0 + timedelta(hours=2))
    queue.publish([notice(2)], at=T0 + timedelta(minutes=30))
    assert queue.next_due() == T0 + timedelta(minutes=30)

    clock.advance(timedelta(minutes=30))
    (delivery,) = queue.receive()
    assert queue.next_due() == T0 + timedelta(minutes=30) + TIMEOUT

    queue.ack(delivery)
    assert queue.next_due() == T0 + timedelta(hours=2)
    due = queue.next_due()
    assert due is not None and due.tzinfo is not None
