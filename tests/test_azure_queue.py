"""The Storage Queue on Azurite beyond the contract (test_queue_contract.py): what goes on the
wire (base64 as the Functions host reads it, compression, hops beyond 7 days), the poison
queue as the Functions host fills it, the queue trigger path, and the clients it accepts.

Azurite runs on the test's ManualClock (`Azurite.follow`), so a visibility timeout of days
takes no time; one test keeps Azurite's real time for a one-second delay."""

from __future__ import annotations

import base64
import json
import random
import string
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from azure.functions import meta
from azure.functions.queue import QueueMessage as FunctionMessage
from azure.functions.queue import QueueMessageInConverter
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy
from clocks import ManualClock
from test_queue_contract import T0, TIMEOUT, StorageQueues, ids, notice, open_storage_queues, queue_depth, send_base64

from patchpilot.adapters.azure.storage_queue import MAX_BODY_BYTES, MAX_DELAY, StorageQueue
from patchpilot.engine.messages import MESSAGE, Notify, TakeSnapshots, TimerFired
from patchpilot.inventory import Instance
from patchpilot.ports import Delivery

if TYPE_CHECKING:
    from azurite import Azurite

pytest_plugins = ["azurite"]

HOST_MAX_DEQUEUE_COUNT = 5  # host.json: extensions.queues.maxDequeueCount


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def opened(azurite: Azurite, clock: ManualClock) -> Iterator[StorageQueues]:
    with open_storage_queues(azurite, clock, max_dequeue_count=HOST_MAX_DEQUEUE_COUNT) as made:
        yield made


@pytest.fixture
def queue(opened: StorageQueues) -> StorageQueue:
    return opened.queue


def raw_messages(client: QueueClient) -> list[Any]:
    """The visible messages of a queue, as they are on the wire, left in it."""
    return list(client.peek_messages(max_messages=32))


def host_receive(client: QueueClient) -> list[FunctionMessage]:
    """What the Functions host hands a queue trigger: a received message, its base64 decoded
    (messageEncoding: base64), through the Python worker's own converter."""
    received = next(client.receive_messages(messages_per_page=32, visibility_timeout=60).by_page(), [])
    return [
        QueueMessageInConverter.decode(
            meta.Datum(base64.b64decode(raw.content).decode(), "string"),
            trigger_metadata={
                "Id": meta.Datum(raw.id, "string"),
                "DequeueCount": meta.Datum(raw.dequeue_count, "int"),
                "PopReceipt": meta.Datum(raw.pop_receipt, "string"),
            },
        )
        for raw in received
    ]


def handed_over(queue: StorageQueue, message: FunctionMessage) -> Delivery | None:
    """What the queue trigger does with the host's message."""
    return queue.from_function_message(message.id, message.get_body().decode(), message.dequeue_count)


def host_poisons(opened: StorageQueues, clock: ManualClock) -> None:
    """The host fails a message `HOST_MAX_DEQUEUE_COUNT` times, then copies it as it is to the
    poison queue and deletes it."""
    for _ in range(HOST_MAX_DEQUEUE_COUNT):
        (raw,) = next(opened.client.receive_messages(visibility_timeout=60).by_page())
        clock.advance(timedelta(seconds=60))
    opened.poison.send_message(raw.content)
    opened.client.delete_message(raw.id, raw.pop_receipt)


def azure_instances(count: int, seed: int, noisy: bool = False) -> list[Instance]:
    """VMs with ARM ids; `noisy` gives them tags that do not compress."""
    rng = random.Random(seed)
    sub = "3f2b6c1e-9a4d-4e7b-8c55-0d1e2f3a4b5c"
    return [
        Instance(
            id=f"/subscriptions/{sub}/resourceGroups/rg-{n % 7}/providers/Microsoft.Compute/virtualMachines/vm-{n:05d}",
            cloud="azure",
            region="westeurope",
            os="linux" if n % 3 else "windows",
            name=f"vm-{n:05d}",
            zone=str(n % 3 + 1),
            account=sub,
            tags={"Owner": "".join(rng.choices(string.printable, k=200))} if noisy else {"Environment": "production"},
        )
        for n in range(count)
    ]


# ---------------------------------------------------------------- the wire


def test_bodies_are_base64_json_that_the_functions_host_hands_over_as_the_message(
    queue: StorageQueue, opened: StorageQueues
) -> None:
    queue.publish([notice(1)])

    (raw,) = raw_messages(opened.client)
    assert json.loads(base64.b64decode(raw.content)) == json.loads(notice(1).model_dump_json())
    (message,) = host_receive(opened.client)
    assert message.dequeue_count == 1
    assert handed_over(queue, message) == Delivery(message=notice(1), receipt=f"function:{raw.id}", attempts=1)


def test_a_big_command_travels_compressed_and_one_too_big_is_refused(
    queue: StorageQueue, opened: StorageQueues
) -> None:
    command = TakeSnapshots(id="run-1:snap:3", run_id="run-1", wave=3, targets=azure_instances(1000, seed=1))
    assert len(MESSAGE.dump_json(command)) > 4 * MAX_BODY_BYTES

    queue.publish([command])

    (raw,) = raw_messages(opened.client)
    assert base64.b64decode(raw.content).startswith(b'{"zlib":') and len(raw.content) <= 64 * 1024
    (delivery,) = queue.receive()
    assert delivery.message == command
    noisy = TakeSnapshots(id="run-1:snap:4", run_id="run-1", wave=4, targets=azure_instances(400, 2, noisy=True))
    with pytest.raises(ValueError, match=r"run-1:snap:4 is \d+ bytes on the wire, more than the queue takes"):
        queue.publish([noisy])


def test_publishing_an_id_still_queued_delivers_it_twice(queue: StorageQueue) -> None:
    queue.publish([notice(1)])
    queue.publish([notice(1)])

    assert ids(queue.receive()) == ["run-1:notify:1", "run-1:notify:1"]


def test_a_message_due_beyond_7_days_hops_until_due_unseen_by_the_receiver(
    queue: StorageQueue, opened: StorageQueues, clock: ManualClock
) -> None:
    timer = TimerFired(id="run-1:soak:done", run_id="run-1", command_id="run-1:soak")
    due = T0 + MAX_DELAY + timedelta(days=3)
    queue.publish([timer], at=due)

    clock.advance(MAX_DELAY)
    assert queue.receive() == []  # the hop arrived, was sent on for the last 3 days and deleted
    assert queue_depth(opened.client) == 1
    clock.set(due - timedelta(seconds=1))
    assert queue.receive() == []
    clock.set(due)

    (delivery,) = queue.receive()
    assert delivery.message == timer and delivery.attempts == 1


def test_a_short_delay_is_honoured_by_azurite_in_real_time(azurite: Azurite) -> None:
    """No virtual clock: Azurite's own time, with a delay of one second."""

    class UtcClock:
        def now(self) -> datetime:
            return datetime.now(UTC)

    queue = StorageQueue.from_connection_string(azurite.connection_string, azurite.unique_name(), UtcClock())
    queue.publish([notice(1)], at=datetime.now(UTC) + timedelta(seconds=1))
    assert queue.receive() == []
    time.sleep(1.1)
    assert ids(queue.receive()) == ["run-1:notify:1"]


# ---------------------------------------------------------------- poison queue


def test_after_the_maximum_dequeue_count_the_message_is_copied_to_the_poison_queue_as_it_is(
    queue: StorageQueue, opened: StorageQueues, clock: ManualClock
) -> None:
    queue.publish([notice(1)])
    (original,) = raw_messages(opened.client)
    for attempt in range(1, HOST_MAX_DEQUEUE_COUNT + 1):
        assert [d.attempts for d in queue.receive()] == [attempt]
        clock.advance(TIMEOUT)

    assert queue.receive() == []

    assert [m.content for m in raw_messages(opened.poison)] == [original.content]  # as the host copies it
    assert queue_depth(opened.client) == 0
    (dead,) = queue.dead_letters()
    assert dead.message_id == notice(1).id and dead.body == notice(1).model_dump_json()


def test_dead_letters_read_what_the_functions_host_poisoned(
    queue: StorageQueue, opened: StorageQueues, clock: ManualClock
) -> None:
    big = Notify(id="run-1:notify:big", run_id="run-1", topic="run_started", text="x" * 100_000)  # compressed
    queue.publish([big])
    host_poisons(opened, clock)

    (dead,) = queue.dead_letters()

    assert dead.message_id == big.id
    assert MESSAGE.validate_json(dead.body) == big
    assert "maximum dequeue count" in dead.reason
    assert queue.dead_letters() == [dead]  # reading does not consume


def test_a_body_that_is_not_base64_is_poisoned_and_does_not_stop_the_others(
    queue: StorageQueue, opened: StorageQueues
) -> None:
    sent = opened.client.send_message("{plain text, not base64}")
    queue.publish([notice(1)])

    assert ids(queue.receive()) == ["run-1:notify:1"]

    (dead,) = queue.dead_letters()
    assert dead.message_id == sent.id and dead.body == "{plain text, not base64}"
    assert "not base64" in dead.reason


def test_an_unreadable_body_without_an_id_is_named_by_its_storage_message_id(
    queue: StorageQueue, opened: StorageQueues
) -> None:
    storage_id = send_base64(opened.client, '{"zlib":"bm90IHpsaWI="}')

    assert queue.receive() == []

    (dead,) = queue.dead_letters()
    assert dead.message_id == storage_id and "zlib" in dead.reason
    assert queue_depth(opened.client) == 0


def test_acknowledging_with_a_stale_or_used_receipt_does_not_raise(
    queue: StorageQueue, opened: StorageQueues, clock: ManualClock
) -> None:
    queue.publish([notice(1)])
    (first,) = queue.receive()
    clock.advance(TIMEOUT)
    (second,) = queue.receive()

    queue.ack(first)  # the pop receipt changed: Storage refuses, and the message stays
    assert queue_depth(opened.client) == 1
    queue.ack(second)
    queue.ack(second)

    assert queue_depth(opened.client) == 0


# ---------------------------------------------------------------- Azure Functions


def test_a_trigger_message_becomes_a_delivery_whose_ack_leaves_the_delete_to_the_host(
    queue: StorageQueue, opened: StorageQueues
) -> None:
    queue.publish([notice(1)])
    (message,) = host_receive(opened.client)
    delivery = handed_over(queue, message)
    assert delivery is not None

    queue.ack(delivery)

    assert queue_depth(opened.client) == 1  # the host deletes it when the function returns


def test_a_poll_from_a_trigger_publishes_a_delayed_copy_and_lets_the_host_delete_the_original(
    queue: StorageQueue, opened: StorageQueues, clock: ManualClock
) -> None:
    queue.publish([notice(1)])
    (message,) = host_receive(opened.client)
    delivery = handed_over(queue, message)
    assert delivery is not None

    queue.retry_at(delivery, clock.now() + timedelta(minutes=10))

    assert queue_depth(opened.client) == 2  # the original and its copy
    opened.client.delete_message(message.id, message.pop_receipt)  # the host, on success
    clock.advance(timedelta(minutes=10) - timedelta(seconds=1))
    assert host_receive(opened.client) == []
    clock.advance(timedelta(seconds=1))
    (again,) = host_receive(opened.client)
    assert handed_over(queue, again) == Delivery(message=notice(1), receipt=f"function:{again.id}", attempts=1)


def test_trigger_messages_of_hops_not_due_and_unreadable_bodies_need_no_handling(
    queue: StorageQueue, opened: StorageQueues, clock: ManualClock
) -> None:
    queue.publish([notice(1)], at=T0 + MAX_DELAY + timedelta(hours=1))
    garbage_id = send_base64(opened.client, "{not json")
    clock.advance(MAX_DELAY)
    messages = host_receive(opened.client)
    assert len(messages) == 2

    assert [handed_over(queue, m) for m in messages] == [None, None]

    (dead,) = queue.dead_letters()
    assert dead.message_id == garbage_id and dead.body == "{not json" and "json_invalid" in dead.reason
    assert queue_depth(opened.client) == 3  # the two, until the host deletes them, and the next hop
    for m in messages:
        opened.client.delete_message(m.id, m.pop_receipt)
    clock.advance(timedelta(hours=1))
    assert ids(queue.receive()) == ["run-1:notify:1"]


# ---------------------------------------------------------------- clients


def test_clients_that_encode_base64_themselves_are_refused(azurite: Azurite, clock: ManualClock) -> None:
    conn = azurite.connection_string
    encoding = QueueClient.from_connection_string(conn, "q", message_encode_policy=TextBase64EncodePolicy())
    decoding = QueueClient.from_connection_string(conn, "q-poison", message_decode_policy=TextBase64DecodePolicy())
    plain = QueueClient.from_connection_string(conn, "q")

    with pytest.raises(ValueError, match="base64-encodes the bodies itself"):
        StorageQueue(encoding, plain, clock)
    with pytest.raises(ValueError, match="'q-poison' has a message encode or decode policy"):
        StorageQueue(plain, decoding, clock)


def test_from_connection_string_creates_the_queue_and_its_poison_queue_once(
    azurite: Azurite, clock: ManualClock
) -> None:
    name = azurite.unique_name()
    first = StorageQueue.from_connection_string(azurite.connection_string, name, clock)
    first.publish([notice(1)])

    again = StorageQueue.from_connection_string(azurite.connection_string, name, clock, max_dequeue_count=2)

    assert again.poison.queue_name == f"{name}-poison" and again.max_dequeue_count == 2
    assert queue_depth(again.client) == 1  # the same queue, not a new one
