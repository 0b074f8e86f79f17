"""The Queue contract: what every adapter of the port does alike (delays, visibility timeouts,
redelivery, acks, dead letters, polls that do not count as attempts), checked on each of them:
SqliteQueue, SqsQueue on moto with SQS on the test's clock (`sqs_follows`), and StorageQueue on
Azurite with Azurite on the test's clock (`Azurite.follow`).

Only what they share is here. The documented differences are tested per adapter, in
test_sqlite_queue.py, test_aws_queue.py and test_azure_queue.py: SQLite delivers in publish
order, drops a publish whose id is still queued and fills a receive's limit past the messages
it dead-letters; SQS and Storage Queues deliver a duplicate publish twice and re-publish on
`retry_at`; a Storage Queue message is its body alone, with no message id beside it.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from azure.storage.queue import QueueClient
from clocks import ManualClock
from moto_support import Queues, aws, depth, queues, sqs_follows

from patchpilot.adapters.aws.sqs_queue import SqsQueue
from patchpilot.adapters.azure.storage_queue import StorageQueue
from patchpilot.adapters.local.sqlite_queue import SqliteQueue
from patchpilot.engine.messages import Notify, TimerFired
from patchpilot.ports import Delivery, Queue

pytestmark = pytest.mark.slow  # 12 s alone (SQLite, moto and Azurite): `make test-fast` leaves it out

if TYPE_CHECKING:
    from azurite import Azurite

pytest_plugins = ["azurite"]

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
    ids_beside_bodies: bool = True  # the message id travels beside the body (not on Storage Queues)


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


@dataclass
class StorageQueues:
    queue: StorageQueue
    client: QueueClient  # the queue itself, to send and read bodies as they are
    poison: QueueClient


@contextmanager
def open_storage_queues(
    azurite: Azurite, clock: ManualClock, visibility_timeout: timedelta = TIMEOUT, max_dequeue_count: int = MAX_RECEIVES
) -> Iterator[StorageQueues]:
    """A queue and its poison queue in Azurite, with Azurite on `clock`'s time."""
    name = azurite.unique_name()
    hook = azurite.follow(clock)
    client = QueueClient.from_connection_string(azurite.connection_string, name, raw_request_hook=hook)
    poison = QueueClient.from_connection_string(azurite.connection_string, f"{name}-poison", raw_request_hook=hook)
    try:
        with client, poison:
            client.create_queue()
            poison.create_queue()
            queue = StorageQueue(
                client, poison, clock, visibility_timeout=visibility_timeout, max_dequeue_count=max_dequeue_count
            )
            yield StorageQueues(queue, client, poison)
    finally:
        azurite.release_clock()


def send_base64(client: QueueClient, body: str) -> str:
    """Send a body base64-encoded as the Functions host would, bypassing StorageQueue; its
    Storage message id."""
    return str(client.send_message(base64.b64encode(body.encode()).decode(), time_to_live=-1).id)


def queue_depth(client: QueueClient) -> int:
    return int(client.get_queue_properties().approximate_message_count or 0)


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


@contextmanager
def storage_under_test(azurite: Azurite, clock: ManualClock) -> Iterator[QueueUnderTest]:
    with open_storage_queues(azurite, clock) as opened:

        def publish_raw(message_id: str, body: str) -> None:
            send_base64(opened.client, body)  # the id cannot go with it

        yield QueueUnderTest(
            opened.queue,
            clock,
            past=timedelta(0),
            dead_reason="maximum dequeue count",
            publish_raw=publish_raw,
            depth=lambda: queue_depth(opened.client),
            ids_beside_bodies=False,
        )


ADAPTERS: dict[str, Callable[[pytest.FixtureRequest, Path, ManualClock], Any]] = {
    "sqlite": lambda request, tmp_path, clock: sqlite_under_test(tmp_path, clock),
    "sqs": lambda request, tmp_path, clock: sqs_under_test(tmp_path, clock),
    "storage": lambda request, tmp_path, clock: storage_under_test(request.getfixturevalue("azurite"), clock),
}


@pytest.fixture(params=list(ADAPTERS))
def under_test(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueUnderTest]:
    with ADAPTERS[request.param](request, tmp_path, ManualClock(T0)) as made:
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
    unknown_type = '{"id": "unknown-type", "run_id": "r", "type": "Reboot"}'
    under_test.publish_raw("garbage", "{not json")
    under_test.publish_raw("unknown-type", unknown_type)
    if under_test.ids_beside_bodies:
        under_test.publish_raw("other-id", notice(9).model_dump_json())
    queue.publish([notice(1)])

    assert ids(queue.receive()) == ["run-1:notify:1"]

    dead = {d.body: d for d in queue.dead_letters()}
    garbage, unknown = dead.pop("{not json"), dead.pop(unknown_type)
    assert "json_invalid" in garbage.reason
    assert "Reboot" in unknown.reason and unknown.message_id == "unknown-type"
    if under_test.ids_beside_bodies:
        assert garbage.message_id == "garbage"
        other = dead.pop(notice(9).model_dump_json())
        assert other.message_id == "other-id" and "run-1:notify:9" in other.reason
    assert dead == {}
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


def test_a_dead_lettered_delivery_is_never_delivered_again_and_says_why(
    under_test: QueueUnderTest, queue: Queue, clock: ManualClock
) -> None:
    queue.publish([notice(1), notice(2)])
    first, second = sorted(queue.receive(), key=lambda d: d.message.id)
    queue.dead_letter(first, "refused: never issued")
    queue.ack(second)
    clock.advance(TIMEOUT * 2)
    assert queue.receive() == []
    (letter,) = queue.dead_letters()
    assert letter.message_id == first.message.id and letter.reason == "refused: never issued"
    assert first.message.id in letter.body
