"""The Queue contract: what every adapter of the port does alike (delays, visibility timeouts,
redelivery, acks, dead letters, polls that do not count as attempts), checked on each of them:
SqliteQueue, and SqsQueue on moto with SQS on the test's clock (`sqs_follows`).

Only what the two share is here. The documented differences are tested per adapter, in
test_sqlite_queue.py and test_aws_queue.py: SQLite delivers in publish order, drops a publish
whose id is still queued and fills a receive's limit past the messages it dead-letters; SQS
delivers a duplicate publish twice and re-publishes on `retry_at`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from clocks import ManualClock
from moto_support import Queues, aws, depth, queues, sqs_follows

from patchpilot.adapters.aws.sqs_queue import SqsQueue
from patchpilot.adapters.local.sqlite_queue import SqliteQueue
from patchpilot.engine.messages import Notify, TimerFired
from patchpilot.ports import Delivery, Queue

T0 = datetime(2025, 3, 14, 17, 0, tzinfo=UTC)
TIMEOUT = timedelta(minutes=15)  # the queue's visibility timeout
MAX_RECEIVES = 3  # receives before a message goes to the dead letters


def notice(n: int) -> Notify:
    return Notify(id=f"run-1:notify:{n}", run_id="run-1", topic="run_started", text=f"notice {n}")


def ids(deliveries: list[Delivery]) -> list[str]:
    return [d.message.id for d in deliveries]


# ---------------------------------------------------------------- the adapters


@dataclass
class QueueUnderTest:
    queue: Queue
    clock: ManualClock
    past: timedelta  # how long after its time a message shows: moto's SQS needs the time strictly past
    dead_reason: str  # part of the reason given for a message received too often
    publish_raw: Callable[[str, str], None]  # queue a body as it is (readable or not) under a message id
    depth: Callable[[], int]  # messages in the queue: waiting, delayed and in flight


@contextmanager
def open_sqlite_queue(db: Path, clock: ManualClock) -> Iterator[SqliteQueue]:
    with SqliteQueue(db, clock, visibility_timeout=TIMEOUT, max_attempts=MAX_RECEIVES) as queue:
        yield queue


@contextmanager
def open_sqs(clock: ManualClock) -> Iterator[Queues]:
    """A queue and its dead-letter queue in moto, with SQS on `clock`'s time."""
    with aws(), sqs_follows(clock):
        yield queues(visibility_timeout=int(TIMEOUT.total_seconds()), max_receive_count=MAX_RECEIVES)


def sqs_queue(sqs: Queues, clock: ManualClock) -> SqsQueue:
    return SqsQueue(sqs.url, sqs.client, clock, sqs.dead_letter_url, wait_seconds=0)


def send_raw(sqs: Queues, body: str, message_id: str | None = None) -> None:
    """Send a body as it is, bypassing SqsQueue's encoding."""
    attributes = {} if message_id is None else {"message_id": {"DataType": "String", "StringValue": message_id}}
    sqs.client.send_message(QueueUrl=sqs.url, MessageBody=body, MessageAttributes=attributes)


@contextmanager
def sqlite_under_test(tmp_path: Path, clock: ManualClock) -> Iterator[QueueUnderTest]:
    with open_sqlite_queue(tmp_path / "patchpilot.db", clock) as queue:
        reason = f"received {MAX_RECEIVES} times without being acknowledged"
        yield QueueUnderTest(queue, clock, timedelta(0), reason, queue.publish_raw, queue.pending_count)


@contextmanager
def sqs_under_test(tmp_path: Path, clock: ManualClock) -> Iterator[QueueUnderTest]:
    with open_sqs(clock) as sqs:
        yield QueueUnderTest(
            sqs_queue(sqs, clock),
            clock,
            past=timedelta(milliseconds=1),
            dead_reason="redrive",
            publish_raw=lambda message_id, body: send_raw(sqs, body, message_id),
            depth=lambda: depth(sqs.client, sqs.url),
        )


ADAPTERS = {"sqlite": sqlite_under_test, "sqs": sqs_under_test}


@pytest.fixture(params=list(ADAPTERS))
def under_test(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueUnderTest]:
    with ADAPTERS[request.param](tmp_path, ManualClock(T0)) as made:
        yield made


@pytest.fixture
def queue(under_test: QueueUnderTest) -> Queue:
    return under_test.queue


@pytest.fixture
def clock(under_test: QueueUnderTest) -> ManualClock:
    return under_test.clock


# ---------------------------------------------------------------- delivery


def test_published_messages_are_received_up_to_the_limit(queue: Queue) -> None:
    queue.publish([notice(3), notice(1)])
    queue.publish([notice(2)])

    first = queue.receive(limit=2)
    rest = queue.receive(limit=2)

    assert len(first) == 2 and len(rest) == 1
    assert sorted(ids(first + rest)) == ["run-1:notify:1", "run-1:notify:2", "run-1:notify:3"]
    assert {d.message for d in first + rest} == {notice(1), notice(2), notice(3)}
    assert [d.attempts for d in first] == [1, 1]


def test_a_message_published_for_later_is_not_received_before_then(
    under_test: QueueUnderTest, queue: Queue, clock: ManualClock
) -> None:
    timer = TimerFired(id="run-1:soak:done", run_id="run-1", command_id="run-1:soak")
    queue.publish([timer], at=T0 + timedelta(hours=2))
    queue.publish([notice(1)])

    (now,) = queue.receive()
    assert now.message == notice(1)
    queue.ack(now)
    clock.advance(timedelta(hours=2) - timedelta(seconds=1))
    assert queue.receive() == []
    clock.advance(timedelta(seconds=1) + under_test.past)
    assert [d.message for d in queue.receive()] == [timer]


def test_an_unacknowledged_message_comes_back_after_the_visibility_timeout_with_a_new_receipt(
    under_test: QueueUnderTest, queue: Queue, clock: ManualClock
) -> None:
    queue.publish([notice(1)])
    (first,) = queue.receive()

    clock.advance(TIMEOUT - timedelta(seconds=1))
    assert queue.receive() == []
    clock.advance(timedelta(seconds=1) + under_test.past)
    (second,) = queue.receive()

    assert second.message == first.message
    assert second.receipt != first.receipt
    assert second.attempts == 2


def test_an_acknowledged_message_is_gone(under_test: QueueUnderTest, queue: Queue, clock: ManualClock) -> None:
    queue.publish([notice(1)])
    (delivery,) = queue.receive()

    queue.ack(delivery)

    assert under_test.depth() == 0
    clock.advance(TIMEOUT * 2)
    assert queue.receive() == []


def test_an_id_published_again_after_its_ack_is_delivered_again(queue: Queue) -> None:
    queue.publish([notice(1)])
    (first,) = queue.receive()
    queue.ack(first)

    queue.publish([notice(1)])

    (again,) = queue.receive()
    assert again.message == notice(1)
    assert again.attempts == 1


def test_a_naive_datetime_is_refused(queue: Queue) -> None:
    with pytest.raises(ValueError, match="naive"):
        queue.publish([notice(1)], at=datetime(2025, 3, 14, 17, 0))


# ---------------------------------------------------------------- retries and dead letters


def test_a_message_received_too_often_goes_to_the_dead_letters(
    under_test: QueueUnderTest, queue: Queue, clock: ManualClock
) -> None:
    queue.publish([notice(1)])
    for attempt in range(1, MAX_RECEIVES + 1):
        deliveries = queue.receive(limit=1)
        assert [(d.message.id, d.attempts) for d in deliveries] == [("run-1:notify:1", attempt)]
        clock.advance(TIMEOUT + under_test.past)
    queue.publish([notice(2)])  # due with the next delivery of notice 1, published after it

    assert ids(queue.receive()) == ["run-1:notify:2"]

    (dead,) = queue.dead_letters()
    assert dead.message_id == "run-1:notify:1"
    assert under_test.dead_reason in dead.reason
    assert dead.body == notice(1).model_dump_json()
    assert queue.dead_letters() == [dead]  # reading does not consume
    assert under_test.depth() == 1  # notice 2, in flight


def test_an_unreadable_message_is_dead_lettered_without_raising_and_others_still_arrive(
    under_test: QueueUnderTest, queue: Queue
) -> None:
    under_test.publish_raw("garbage", "{not json")
    under_test.publish_raw("unknown-type", '{"id": "unknown-type", "run_id": "r", "type": "Reboot"}')
    under_test.publish_raw("other-id", notice(9).model_dump_json())
    queue.publish([notice(1)])

    assert ids(queue.receive()) == ["run-1:notify:1"]

    dead = {d.message_id: d for d in queue.dead_letters()}
    assert sorted(dead) == ["garbage", "other-id", "unknown-type"]
    assert dead["garbage"].body == "{not json"
    assert "json_invalid" in dead["garbage"].reason
    assert "Reboot" in dead["unknown-type"].reason
    assert "run-1:notify:9" in dead["other-id"].reason
    assert under_test.depth() == 1  # only the good one, in flight


def test_retry_at_postpones_without_counting_an_attempt(
    under_test: QueueUnderTest, queue: Queue, clock: ManualClock
) -> None:
    queue.publish([notice(1)])
    for _ in range(10):  # far more polls than MAX_RECEIVES
        (delivery,) = queue.receive()
        assert delivery.attempts == 1
        queue.retry_at(delivery, clock.now() + timedelta(minutes=1))
        assert queue.receive() == []
        clock.advance(timedelta(minutes=1) + under_test.past)

    assert queue.dead_letters() == []
    (delivery,) = queue.receive()
    queue.ack(delivery)
    assert under_test.depth() == 0
