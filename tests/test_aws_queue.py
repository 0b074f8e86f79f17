"""The SQS Queue on moto: delays (hops beyond 15 minutes), visibility timeouts, redelivery, dead
letters, polls that do not count as attempts, and Lambda records.

moto's SQS runs on the test's ManualClock here (`sqs_follows`), so a two-hour delay takes no
time; one test keeps moto's real time for a one-second delay. Parameters sent to SQS are read
with a botocore hook (`record`)."""

from __future__ import annotations

import json
import random
import string
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from clocks import ManualClock
from moto_support import Queues, aws, depth, next_due, queues, record, sqs_follows

from patchpilot.adapters.aws.sqs_queue import MAX_BODY_BYTES, SqsQueue
from patchpilot.engine.messages import MESSAGE, Message, Notify, TakeSnapshots, TimerFired
from patchpilot.inventory import Instance
from patchpilot.ports import Delivery

T0 = datetime(2025, 3, 14, 17, 0, tzinfo=UTC)
TIMEOUT = timedelta(minutes=15)  # the queue's visibility timeout
MAX_RECEIVES = 3


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def sqs(clock: ManualClock) -> Iterator[Queues]:
    with aws(), sqs_follows(clock):
        yield queues(visibility_timeout=int(TIMEOUT.total_seconds()), max_receive_count=MAX_RECEIVES)


@pytest.fixture
def queue(sqs: Queues, clock: ManualClock) -> SqsQueue:
    return SqsQueue(sqs.url, sqs.client, clock, sqs.dead_letter_url, wait_seconds=0)


def notice(n: int) -> Notify:
    return Notify(id=f"run-1:notify:{n}", run_id="run-1", topic="run_started", text=f"notice {n}")


def ids(deliveries: list[Delivery]) -> list[str]:
    return [d.message.id for d in deliveries]


def send_raw(sqs: Queues, body: str, message_id: str | None = None) -> None:
    attributes = {} if message_id is None else {"message_id": {"DataType": "String", "StringValue": message_id}}
    sqs.client.send_message(QueueUrl=sqs.url, MessageBody=body, MessageAttributes=attributes)


def lambda_record(raw: dict[str, Any]) -> dict[str, Any]:
    """A record of a Lambda SQS event for a message received from moto."""
    return {
        "messageId": raw["MessageId"],
        "receiptHandle": raw["ReceiptHandle"],
        "body": raw["Body"],
        "attributes": {"ApproximateReceiveCount": raw["Attributes"]["ApproximateReceiveCount"]},
        "messageAttributes": {
            name: {"stringValue": value["StringValue"], "dataType": value["DataType"]}
            for name, value in raw.get("MessageAttributes", {}).items()
        },
        "eventSource": "aws:sqs",
    }


def lambda_receive(sqs: Queues) -> list[dict[str, Any]]:
    """What the event source mapping would hand the function."""
    response = sqs.client.receive_message(
        QueueUrl=sqs.url,
        MaxNumberOfMessages=10,
        MessageSystemAttributeNames=["ApproximateReceiveCount"],
        MessageAttributeNames=["All"],
    )
    return [lambda_record(raw) for raw in response.get("Messages", [])]


# ---------------------------------------------------------------- delivery


def test_published_messages_are_received_up_to_the_limit(queue: SqsQueue, sqs: Queues) -> None:
    calls = record(sqs.client, "SendMessageBatch")
    queue.publish([notice(3), notice(1)])
    queue.publish([notice(2)])

    first = queue.receive(limit=2)
    rest = queue.receive(limit=2)

    assert len(first) == 2 and len(rest) == 1
    assert sorted(ids(first + rest)) == ["run-1:notify:1", "run-1:notify:2", "run-1:notify:3"]
    assert {d.message for d in first + rest} == {notice(1), notice(2), notice(3)}
    assert [d.attempts for d in first] == [1, 1]
    assert [
        e["MessageAttributes"]["message_id"]["StringValue"] for e in calls.of("SendMessageBatch")[0]["Entries"]
    ] == [
        "run-1:notify:3",
        "run-1:notify:1",
    ]


def test_messages_are_sent_ten_per_batch_and_received_ten_at_most(queue: SqsQueue, sqs: Queues) -> None:
    calls = record(sqs.client, "SendMessageBatch", "ReceiveMessage")
    queue.publish([notice(n) for n in range(25)])

    assert [len(c["Entries"]) for c in calls.of("SendMessageBatch")] == [10, 10, 5]
    assert len(queue.receive(limit=50)) == 10
    assert calls.of("ReceiveMessage")[0]["MaxNumberOfMessages"] == 10


def test_a_message_published_for_later_is_not_received_before_then(
    queue: SqsQueue, sqs: Queues, clock: ManualClock
) -> None:
    calls = record(sqs.client, "SendMessageBatch")
    timer = TimerFired(id="run-1:poll:done", run_id="run-1", command_id="run-1:poll")
    queue.publish([timer], at=T0 + timedelta(minutes=10))
    queue.publish([notice(1)])

    assert [e["DelaySeconds"] for c in calls.of("SendMessageBatch") for e in c["Entries"]] == [600, 0]
    (now,) = queue.receive()
    assert now.message == notice(1)
    queue.ack(now)
    clock.advance(timedelta(minutes=10) - timedelta(seconds=1))
    assert queue.receive() == []
    clock.advance(timedelta(seconds=1, milliseconds=1))
    assert [d.message for d in queue.receive()] == [timer]


def test_a_message_due_beyond_15_minutes_hops_until_due_unseen_by_the_receiver(
    queue: SqsQueue, sqs: Queues, clock: ManualClock
) -> None:
    calls = record(sqs.client, "SendMessageBatch", "DeleteMessage")
    timer = TimerFired(id="run-1:soak:done", run_id="run-1", command_id="run-1:soak")
    due = T0 + timedelta(hours=2)
    queue.publish([timer], at=due)

    received: list[Delivery] = []
    while not received:
        moment = next_due(sqs.name)
        assert moment is not None and moment <= due + timedelta(seconds=1)
        clock.set(moment)
        received = queue.receive()

    assert [d.message for d in received] == [timer]
    assert clock.now() >= due
    entries = [e for c in calls.of("SendMessageBatch") for e in c["Entries"]]
    assert [e["DelaySeconds"] for e in entries] == [900] * 8  # 8 × 15 minutes = 2 hours
    hops, last = entries[:-1], entries[-1]
    assert all(json.loads(e["MessageBody"])["hop_until"] == due.isoformat(timespec="microseconds") for e in hops)
    assert MESSAGE.validate_json(last["MessageBody"]) == timer  # the last 15 minutes need no hop
    assert len(calls.of("DeleteMessage")) == 7  # each hop was deleted once forwarded
    assert received[0].attempts == 1


def test_an_unacknowledged_message_comes_back_after_the_visibility_timeout_with_a_new_receipt(
    queue: SqsQueue, clock: ManualClock
) -> None:
    queue.publish([notice(1)])
    (first,) = queue.receive()

    clock.advance(TIMEOUT - timedelta(seconds=1))
    assert queue.receive() == []
    clock.advance(timedelta(seconds=1, milliseconds=1))
    (second,) = queue.receive()

    assert second.message == first.message
    assert second.receipt != first.receipt
    assert second.attempts == 2


def test_an_acknowledged_message_is_gone(queue: SqsQueue, sqs: Queues, clock: ManualClock) -> None:
    queue.publish([notice(1)])
    (delivery,) = queue.receive()

    queue.ack(delivery)

    assert depth(sqs.client, sqs.url) == 0
    clock.advance(TIMEOUT * 2)
    assert queue.receive() == []


def test_acknowledging_with_a_stale_or_used_receipt_does_not_raise(
    queue: SqsQueue, sqs: Queues, clock: ManualClock
) -> None:
    """SQS may or may not delete on a receipt older than the last receive (moto does); either
    way the message was handled once by whoever acks. A receipt used up does nothing."""
    queue.publish([notice(1)])
    (first,) = queue.receive()
    clock.advance(TIMEOUT + timedelta(milliseconds=1))
    (second,) = queue.receive()

    queue.ack(second)
    queue.ack(first)
    queue.ack(second)

    assert depth(sqs.client, sqs.url) == 0


def test_publishing_an_id_still_queued_delivers_it_twice(queue: SqsQueue) -> None:
    """The one divergence from the port: a standard queue cannot drop a duplicate publish. The
    engine makes a duplicate harmless (events by id, commands idempotent per command id)."""
    queue.publish([notice(1)])
    queue.publish([notice(1)])

    assert ids(queue.receive()) == ["run-1:notify:1", "run-1:notify:1"]


def test_a_big_command_travels_compressed_and_one_too_big_is_refused(queue: SqsQueue, sqs: Queues) -> None:
    rng = random.Random(3)
    targets = [
        Instance(
            id=f"i-{rng.getrandbits(68):017x}",
            cloud="aws",
            region="ap-northeast-1",
            os="linux",
            zone="ap-northeast-1a",
            tags={"Owner": "".join(rng.choices(string.ascii_letters, k=12))},
        )
        for _ in range(5000)
    ]
    command = TakeSnapshots(id="run-1:snap:3", run_id="run-1", wave=3, targets=targets)
    assert len(MESSAGE.dump_json(command)) > MAX_BODY_BYTES
    calls = record(sqs.client, "SendMessageBatch")

    queue.publish([command])

    (entry,) = calls.of("SendMessageBatch")[0]["Entries"]
    assert entry["MessageBody"].startswith('{"zlib":') and len(entry["MessageBody"]) < MAX_BODY_BYTES
    (delivery,) = queue.receive()
    assert delivery.message == command

    noise = "".join(random.Random(4).choices(string.printable, k=2 * MAX_BODY_BYTES))
    with pytest.raises(ValueError, match="more than the queue takes"):
        queue.publish([Notify(id="run-1:huge", run_id="run-1", topic="run_started", text=noise)])


def test_a_naive_datetime_is_refused(queue: SqsQueue) -> None:
    with pytest.raises(ValueError, match="naive"):
        queue.publish([notice(1)], at=datetime(2025, 3, 14, 17, 0))


# ---------------------------------------------------------------- retries and dead letters


def test_a_message_received_too_often_is_moved_to_the_dead_letter_queue(
    queue: SqsQueue, sqs: Queues, clock: ManualClock
) -> None:
    queue.publish([notice(1)])
    for attempt in range(1, MAX_RECEIVES + 1):
        deliveries = queue.receive(limit=1)
        assert [(d.message.id, d.attempts) for d in deliveries] == [("run-1:notify:1", attempt)]
        clock.advance(TIMEOUT + timedelta(milliseconds=1))
    queue.publish([notice(2)])

    assert ids(queue.receive()) == ["run-1:notify:2"]

    (dead,) = queue.dead_letters()
    assert dead.message_id == "run-1:notify:1"
    assert "redrive" in dead.reason
    assert MESSAGE.validate_json(dead.body) == notice(1)
    assert queue.dead_letters() == [dead]  # reading does not consume
    assert depth(sqs.client, sqs.dead_letter_url) == 1


def test_an_unreadable_message_is_dead_lettered_without_raising_and_others_still_arrive(
    queue: SqsQueue, sqs: Queues
) -> None:
    send_raw(sqs, "{not json", "garbage")
    send_raw(sqs, '{"id": "unknown-type", "run_id": "r", "type": "Reboot"}', "unknown-type")
    send_raw(sqs, notice(9).model_dump_json(), "other-id")
    send_raw(sqs, '{"zlib":"bm90IHpsaWI="}', "bad-zlib")
    queue.publish([notice(1)])

    assert ids(queue.receive(limit=10)) == ["run-1:notify:1"]

    dead = {d.message_id: d for d in queue.dead_letters()}
    assert sorted(dead) == ["bad-zlib", "garbage", "other-id", "unknown-type"]
    assert dead["garbage"].body == "{not json"
    assert "json_invalid" in dead["garbage"].reason
    assert "Reboot" in dead["unknown-type"].reason
    assert "run-1:notify:9" in dead["other-id"].reason
    assert "zlib" in dead["bad-zlib"].reason
    assert depth(sqs.client, sqs.url) == 1  # only the good one, in flight


def test_without_a_dead_letter_queue_unreadable_messages_are_recorded_and_deleted(
    sqs: Queues, clock: ManualClock
) -> None:
    queue = SqsQueue(sqs.url, sqs.client, clock, wait_seconds=0)
    send_raw(sqs, "{not json", "garbage")

    assert queue.receive() == []

    assert [d.message_id for d in queue.dead_letters()] == ["garbage"]
    assert depth(sqs.client, sqs.url) == 0


def test_an_unreadable_message_the_dead_letter_queue_refuses_stays_queued(sqs: Queues, clock: ManualClock) -> None:
    missing = sqs.dead_letter_url + "-deleted"
    queue = SqsQueue(sqs.url, sqs.client, clock, missing, wait_seconds=0)
    send_raw(sqs, "{not json", "garbage")
    queue.publish([notice(1)])

    assert ids(queue.receive()) == ["run-1:notify:1"]  # no exception

    assert depth(sqs.client, sqs.url) == 2  # garbage still queued (in flight), to be tried again


def test_retry_at_postpones_without_counting_an_attempt(queue: SqsQueue, sqs: Queues, clock: ManualClock) -> None:
    queue.publish([notice(1)])
    for _ in range(10):  # far more polls than the redrive policy's maxReceiveCount (3)
        (delivery,) = queue.receive()
        assert delivery.attempts == 1
        queue.retry_at(delivery, clock.now() + timedelta(minutes=1))
        assert queue.receive() == []
        clock.advance(timedelta(minutes=1, milliseconds=1))

    assert queue.dead_letters() == []
    (delivery,) = queue.receive()
    queue.ack(delivery)
    assert depth(sqs.client, sqs.url) == 0


def test_retry_at_beyond_15_minutes_hops(queue: SqsQueue, sqs: Queues, clock: ManualClock) -> None:
    queue.publish([notice(1)])
    (delivery,) = queue.receive()
    calls = record(sqs.client, "SendMessageBatch")
    due = T0 + timedelta(hours=1)

    queue.retry_at(delivery, due)

    received: list[Delivery] = []
    while not received:
        clock.set(next_due(sqs.name) or clock.now())
        received = queue.receive()
    assert clock.now() >= due
    assert ids(received) == ["run-1:notify:1"] and received[0].attempts == 1
    bodies = [e["MessageBody"] for c in calls.of("SendMessageBatch") for e in c["Entries"]]
    assert len(bodies) == 4 and all(b.startswith('{"hop_until":') for b in bodies[:3])


# ---------------------------------------------------------------- real time


def test_a_short_delay_is_honoured_by_sqs_in_real_time() -> None:
    """No virtual clock: moto's own timing, with a delay of one second."""

    class UtcClock:
        def now(self) -> datetime:
            return datetime.now(UTC)

    with aws():
        sqs = queues(name="realtime")
        queue = SqsQueue(sqs.url, sqs.client, UtcClock(), sqs.dead_letter_url, wait_seconds=0)
        queue.publish([notice(1)], at=datetime.now(UTC) + timedelta(seconds=1))
        assert queue.receive() == []
        time.sleep(1.1)
        assert ids(queue.receive()) == ["run-1:notify:1"]


# ---------------------------------------------------------------- Lambda records


def test_a_lambda_record_becomes_a_delivery_and_ack_leaves_the_delete_to_lambda(queue: SqsQueue, sqs: Queues) -> None:
    queue.publish([notice(1)])
    (record_,) = lambda_receive(sqs)

    delivery = queue.from_sqs_record(record_)

    assert delivery is not None and delivery.message == notice(1) and delivery.attempts == 1
    calls = record(sqs.client, "DeleteMessage", "ChangeMessageVisibility")
    queue.ack(delivery)
    assert calls.made == []  # reported as a success, Lambda deletes it


def test_a_poll_from_lambda_publishes_a_delayed_copy_and_lets_lambda_delete_the_record(
    queue: SqsQueue, sqs: Queues, clock: ManualClock
) -> None:
    queue.publish([notice(1)])
    (record_,) = lambda_receive(sqs)
    delivery = queue.from_sqs_record(record_)
    assert delivery is not None
    calls = record(sqs.client, "SendMessageBatch", "DeleteMessage")

    queue.retry_at(delivery, clock.now() + timedelta(minutes=10))

    assert [e["DelaySeconds"] for e in calls.of("SendMessageBatch")[0]["Entries"]] == [600]
    assert calls.of("DeleteMessage") == []
    sqs.client.delete_message(QueueUrl=sqs.url, ReceiptHandle=record_["receiptHandle"])  # Lambda, on success
    clock.advance(timedelta(minutes=10, milliseconds=1))
    (again,) = lambda_receive(sqs)
    assert queue.from_sqs_record(again) == Delivery(
        message=notice(1), receipt="lambda:" + again["receiptHandle"], attempts=1
    )


def test_lambda_records_of_hops_not_due_and_unreadable_bodies_need_no_handling(
    queue: SqsQueue, sqs: Queues, clock: ManualClock
) -> None:
    queue.publish([notice(1)], at=T0 + timedelta(hours=1))
    send_raw(sqs, "{not json", "garbage")
    clock.advance(timedelta(minutes=15, milliseconds=1))
    records = lambda_receive(sqs)
    assert len(records) == 2

    assert [queue.from_sqs_record(r) for r in records] == [None, None]

    assert [d.message_id for d in queue.dead_letters()] == ["garbage"]
    assert depth(sqs.client, sqs.url) == 3  # the two records, until Lambda deletes them, and the next hop


def messages_of(deliveries: list[Delivery]) -> list[Message]:
    return [d.message for d in deliveries]
