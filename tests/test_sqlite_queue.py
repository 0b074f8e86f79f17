"""The SQLite Queue: delays, visibility timeouts, at-least-once delivery and dead letters."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from clocks import ManualClock

from patchpilot.adapters.local.sqlite_queue import SqliteQueue
from patchpilot.engine.messages import Notify, TimerFired
from patchpilot.ports import Delivery

T0 = datetime(2025, 3, 14, 17, 0, tzinfo=UTC)
TIMEOUT = timedelta(minutes=15)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "patchpilot.db"


@pytest.fixture
def queue(db: Path, clock: ManualClock) -> Iterator[SqliteQueue]:
    with SqliteQueue(db, clock, visibility_timeout=TIMEOUT, max_attempts=3) as opened:
        yield opened


def notice(n: int) -> Notify:
    return Notify(id=f"run-1:notify:{n}", run_id="run-1", topic="run_started", text=f"notice {n}")


def ids(deliveries: list[Delivery]) -> list[str]:
    return [d.message.id for d in deliveries]


# ---------------------------------------------------------------- delivery


def test_published_messages_are_received_in_publish_order_up_to_the_limit(queue: SqliteQueue) -> None:
    queue.publish([notice(3), notice(1)])
    queue.publish([notice(2)])

    first = queue.receive(limit=2)
    rest = queue.receive(limit=2)

    assert ids(first) == ["run-1:notify:3", "run-1:notify:1"]
    assert ids(rest) == ["run-1:notify:2"]
    assert first[0].message == notice(3)
    assert [d.attempts for d in first] == [1, 1]


def test_a_message_published_for_later_is_not_received_before_then(queue: SqliteQueue, clock: ManualClock) -> None:
    timer = TimerFired(id="run-1:soak:done", run_id="run-1", command_id="run-1:soak")
    queue.publish([timer], at=T0 + timedelta(hours=2))
    queue.publish([notice(1)])

    (now,) = queue.receive()
    assert now.message == notice(1)
    queue.ack(now)
    clock.advance(timedelta(hours=2) - timedelta(seconds=1))
    assert queue.receive() == []
    clock.advance(timedelta(seconds=1))
    assert [d.message for d in queue.receive()] == [timer]


def test_earlier_visibility_comes_first_whatever_the_publish_order(queue: SqliteQueue, clock: ManualClock) -> None:
    queue.publish([notice(1)], at=T0 + timedelta(minutes=2))
    queue.publish([notice(2)], at=T0 + timedelta(minutes=1))
    clock.advance(timedelta(minutes=5))

    assert ids(queue.receive()) == ["run-1:notify:2", "run-1:notify:1"]


def test_an_unacknowledged_message_comes_back_after_the_visibility_timeout_with_a_new_receipt(
    queue: SqliteQueue, clock: ManualClock
) -> None:
    queue.publish([notice(1)])
    (first,) = queue.receive()

    clock.advance(TIMEOUT - timedelta(seconds=1))
    assert queue.receive() == []
    clock.advance(timedelta(seconds=1))
    (second,) = queue.receive()

    assert second.message == first.message
    assert second.receipt != first.receipt
    assert second.attempts == 2


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


def test_an_id_published_again_after_its_ack_is_delivered_again(queue: SqliteQueue) -> None:
    queue.publish([notice(1)])
    (first,) = queue.receive()
    queue.ack(first)

    queue.publish([notice(1)])

    (again,) = queue.receive()
    assert again.message == notice(1)
    assert again.attempts == 1


def test_messages_survive_reopening_the_database(db: Path, clock: ManualClock) -> None:
    with SqliteQueue(db, clock) as first:
        first.publish([notice(1), notice(2)])
        (in_flight,) = first.receive(limit=1)
    with SqliteQueue(db, clock) as second:
        assert ids(second.receive()) == ["run-1:notify:2"]
        second.ack(in_flight)  # the receipt is stored, not held in memory
        assert second.pending_count() == 1


# ---------------------------------------------------------------- retries and dead letters


def test_a_message_received_too_often_goes_to_the_dead_letters(queue: SqliteQueue, clock: ManualClock) -> None:
    queue.publish([notice(1)])
    for attempt in (1, 2, 3):
        deliveries = queue.receive(limit=1)
        assert [(d.message.id, d.attempts) for d in deliveries] == [("run-1:notify:1", attempt)]
        clock.advance(TIMEOUT)
    queue.publish([notice(2)])  # due with the fourth delivery of notice 1, published after it

    assert ids(queue.receive(limit=1)) == ["run-1:notify:2"]  # the next one fills the limit

    (dead,) = queue.dead_letters()
    assert dead.message_id == "run-1:notify:1"
    assert dead.reason == "received 3 times without being acknowledged"
    assert dead.body == notice(1).model_dump_json()
    assert queue.pending_count() == 1


def test_an_unreadable_message_is_dead_lettered_without_raising_and_others_still_arrive(
    queue: SqliteQueue,
) -> None:
    queue.publish_raw("garbage", "{not json")
    queue.publish_raw("unknown-type", '{"id": "unknown-type", "run_id": "r", "type": "Reboot"}')
    queue.publish_raw("other-id", notice(9).model_dump_json())
    queue.publish([notice(1)])

    assert ids(queue.receive(limit=1)) == ["run-1:notify:1"]

    dead = {d.message_id: d for d in queue.dead_letters()}
    assert list(dead) == ["garbage", "unknown-type", "other-id"]
    assert dead["garbage"].body == "{not json"
    assert "json_invalid" in dead["garbage"].reason
    assert "Reboot" in dead["unknown-type"].reason
    assert "run-1:notify:9" in dead["other-id"].reason
    assert queue.pending_count() == 1


def test_retry_at_postpones_without_counting_an_attempt(queue: SqliteQueue, clock: ManualClock) -> None:
    queue.publish([notice(1)])
    for _ in range(10):  # far more polls than max_attempts (3)
        (delivery,) = queue.receive()
        assert delivery.attempts == 1
        queue.retry_at(delivery, clock.now() + timedelta(minutes=1))
        assert queue.receive() == []
        clock.advance(timedelta(minutes=1))

    assert queue.dead_letters() == []
    (delivery,) = queue.receive()
    queue.ack(delivery)
    assert queue.pending_count() == 0


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


def test_a_naive_datetime_is_refused(queue: SqliteQueue) -> None:
    with pytest.raises(ValueError, match="naive"):
        queue.publish([notice(1)], at=datetime(2025, 3, 14, 17, 0))
