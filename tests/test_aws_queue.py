"""The SQS Queue on moto beyond the contract (test_queue_contract.py): what goes on the wire
(batches of ten, DelaySeconds, hops beyond 15 minutes, compression), the documented divergences
(a duplicate publish is delivered twice, receipts), the dead-letter queue, and Lambda records.

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
from moto_support import Queues, aws, depth, next_due, queues, record
from test_queue_contract import T0, TIMEOUT, ids, notice, open_sqs, send_raw, sqs_queue

from patchpilot.adapters.aws.sqs_queue import MAX_BODY_BYTES, SqsQueue
from patchpilot.engine.messages import MESSAGE, Notify, TakeSnapshots, TimerFired
from patchpilot.inventory import Instance
from patchpilot.ports import Delivery


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def sqs(clock: ManualClock) -> Iterator[Queues]:
    with open_sqs(clock) as opened:
        yield opened


@pytest.fixture
def queue(sqs: Queues, clock: ManualClock) -> SqsQueue:
    return sqs_queue(sqs, clock)


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


def test_messages_are_sent_ten_per_batch_and_received_ten_at_most(queue: SqsQueue, sqs: Queues) -> None:
    calls = record(sqs.client, "SendMessageBatch", "ReceiveMessage")
    queue.publish([notice(n) for n in range(25)])

    entries = [c["Entries"] for c in calls.of("SendMessageBatch")]
    assert [len(e) for e in entries] == [10, 10, 5]
    sent_ids = [e["MessageAttributes"]["message_id"]["StringValue"] for batch in entries for e in batch]
    assert sent_ids == [notice(n).id for n in range(25)]  # in publish order
    assert len(queue.receive(limit=50)) == 10
    assert calls.of("ReceiveMessage")[0]["MaxNumberOfMessages"] == 10


def test_a_delay_up_to_15_minutes_is_sent_as_delay_seconds(queue: SqsQueue, sqs: Queues) -> None:
    calls = record(sqs.client, "SendMessageBatch")
    timer = TimerFired(id="run-1:poll:done", run_id="run-1", command_id="run-1:poll")

    queue.publish([timer], at=T0 + timedelta(minutes=10))
    queue.publish([notice(1)])

    entries = [e for c in calls.of("SendMessageBatch") for e in c["Entries"]]
    assert [e["DelaySeconds"] for e in entries] == [600, 0]
    assert [MESSAGE.validate_json(e["MessageBody"]) for e in entries] == [timer, notice(1)]  # no hop


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


# ---------------------------------------------------------------- retries and dead letters


def test_dead_letters_are_read_from_the_dead_letter_queue_and_left_in_it(queue: SqsQueue, sqs: Queues) -> None:
    sqs.client.send_message(QueueUrl=sqs.dead_letter_url, MessageBody=notice(1).model_dump_json())  # as redrive does

    (dead,) = queue.dead_letters()

    assert "redrive" in dead.reason
    assert MESSAGE.validate_json(dead.body) == notice(1)
    assert queue.dead_letters() == [dead]
    assert depth(sqs.client, sqs.dead_letter_url) == 1


def test_a_body_that_does_not_inflate_is_dead_lettered(queue: SqsQueue, sqs: Queues) -> None:
    send_raw(sqs, '{"zlib":"bm90IHpsaWI="}', "bad-zlib")

    assert queue.receive() == []

    (dead,) = queue.dead_letters()
    assert dead.message_id == "bad-zlib" and "zlib" in dead.reason
    assert depth(sqs.client, sqs.url) == 0


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
