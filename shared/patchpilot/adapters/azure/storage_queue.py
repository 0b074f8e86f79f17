"""The `Queue` on Azure: one Storage Queue, with the poison queue `<queue>-poison` behind it.

On the wire a message is its JSON (in the envelopes of `patchpilot.adapters.envelopes`: zlib
above `COMPRESS_ABOVE`, hops for delays beyond 7 days), UTF-8, base64-encoded: what the
Functions host reads and writes with its default ``messageEncoding: base64``. This queue encodes
and decodes the base64 itself, so its clients must keep the SDK's default of no message encode
or decode policy: `TextBase64DecodePolicy` fails a whole receive on one body that is not
base64, and one bad body must not stop the others.

- A queue message holds at most 64 KiB of base64 text, so a body (envelopes included) of at
  most `MAX_BODY_BYTES` (48 KiB); a bigger one is refused with ValueError (that would need a
  claim check in Blob storage, which nothing needs yet).
- Delays are the visibility timeout of a new message (at most 7 days; hops beyond). Messages
  never expire (``time_to_live=-1``; the default of 7 days would lose them silently).
- A message received more than `max_dequeue_count` times is copied as it is to the poison
  queue and deleted, as the Functions host does after `maxDequeueCount` failed attempts (5 by
  default, like here): the poison queue reads the same whoever moved a message. An unreadable
  body goes there too, after a first line naming it and the reason:
  ``{"poisoned": {"message_id": ..., "reason": ...}}``. `dead_letters` reads the poison queue
  without consuming it.
- `retry_at` (a poll, "not a failure") publishes a delayed copy and deletes the delivery:
  updating the visibility would keep the dequeue count, and a two-hour install polled every ten
  minutes would end in the poison queue. A crash between the two leaves one duplicate poll.
- A publish whose id is still queued is delivered twice, as on SQS: every consumer is idempotent.

In Azure Functions the host receives, deletes on success and counts failures:
`from_function_message` turns a queue trigger's message into a Delivery whose `ack` does nothing
and whose `retry_at` only publishes the delayed copy (the host then deletes the original). A hop
not yet due or an unreadable body yields None: forwarded or poisoned already, return normally.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.storage.queue import (
    BinaryBase64DecodePolicy,
    BinaryBase64EncodePolicy,
    QueueClient,
    QueueMessage,
    TextBase64DecodePolicy,
    TextBase64EncodePolicy,
)

from patchpilot.adapters.envelopes import HOP_PREFIX, compress, decompress, hop, open_hop, readable
from patchpilot.engine.messages import MESSAGE, Message
from patchpilot.ports import Clock, DeadLetter, Delivery

log = logging.getLogger("patchpilot.azure.queue")

MAX_DELAY = timedelta(days=7)  # the longest visibility timeout Storage Queues take
MAX_BODY_BYTES = 48 * 1024  # 64 KiB of base64 text
COMPRESS_ABOVE = 16 * 1024  # small enough that a hop around an uncompressed body always fits
MAX_RECEIVE = 32  # messages per Get Messages
PEEK_VISIBILITY_SECONDS = 30
FUNCTION_RECEIPT = "function:"  # prefix of the receipts of deliveries made from queue triggers
POISON_PREFIX = '{"poisoned":'


class SettleError(RuntimeError):
    """A hop could not be forwarded or an unreadable message not poisoned: the received message
    must stay in the queue (not be deleted) and be tried again."""


class StorageQueue:
    """A `Queue` on the Storage Queue of `client`, timed by `clock`, with the poison queue of
    `poison` (conventionally `<queue>-poison`, where the Functions host puts what fails)."""

    def __init__(
        self,
        client: QueueClient,
        poison: QueueClient,
        clock: Clock,
        *,
        visibility_timeout: timedelta = timedelta(minutes=15),
        max_dequeue_count: int = 5,
    ) -> None:
        for queue_client in (client, poison):
            _check_no_message_policies(queue_client)
        if not timedelta(seconds=1) <= visibility_timeout <= MAX_DELAY:
            raise ValueError(f"visibility_timeout must be between 1 second and 7 days, not {visibility_timeout}")
        if max_dequeue_count < 1:
            raise ValueError(f"max_dequeue_count must be at least 1, not {max_dequeue_count}")
        self.client = client
        self.poison = poison
        self.clock = clock
        self.visibility_timeout = visibility_timeout
        self.max_dequeue_count = max_dequeue_count

    @classmethod
    def from_connection_string(cls, conn: str, name: str, clock: Clock, **kw: Any) -> StorageQueue:
        """The queue `name` and its poison queue `<name>-poison` of the storage account of `conn`,
        each created if missing. `kw` goes to the constructor."""
        clients = [QueueClient.from_connection_string(conn, queue) for queue in (name, f"{name}-poison")]
        for queue_client in clients:
            with contextlib.suppress(ResourceExistsError):
                queue_client.create_queue()
        return cls(clients[0], clients[1], clock, **kw)

    # ------------------------------------------------------------ Queue

    def publish(self, messages: Sequence[Message], at: datetime | None = None) -> None:
        """Send `messages`, due at `at`. Raises when Storage refuses one; a retry of the whole
        call then sends the others again, which duplicates are allowed to."""
        delay = self._delay(at)
        outgoing = [(m.id, self._encode(m)) for m in messages]
        for message_id, body in outgoing:
            self._send(message_id, body, delay, at)

    def receive(self, limit: int = 10) -> list[Delivery]:
        received = _receive(self.client, limit, _seconds(self.visibility_timeout))
        deliveries: list[Delivery] = []
        for raw in received:
            receipt = f"{raw.id} {raw.pop_receipt}"
            try:
                if raw.dequeue_count is not None and raw.dequeue_count > self.max_dequeue_count:
                    self._move_to_poison(raw.id, str(raw.content))
                    delivery = None
                else:
                    delivery = self._open_wire(str(raw.content), raw.id, receipt, raw.dequeue_count or 1)
            except SettleError as error:
                log.warning("%s; it stays queued and is tried again after its visibility timeout", error)
                continue
            if delivery is None:
                try:
                    self._delete(receipt)
                except HttpResponseError as error:  # it comes back and is forwarded or poisoned again
                    log.warning("could not delete settled message %s: %s", raw.id, error.message)
            else:
                log.debug("received %s (dequeue %d)", delivery.message.id, delivery.attempts)
                deliveries.append(delivery)
        return deliveries

    def ack(self, delivery: Delivery) -> None:
        if delivery.receipt.startswith(FUNCTION_RECEIPT):
            return  # the Functions host deletes it when the function returns
        self._delete(delivery.receipt)

    def retry_at(self, delivery: Delivery, at: datetime) -> None:
        """Deliver the message again at `at`: a fresh copy (its dequeue count starts again),
        then the delivery is deleted (by the Functions host, for a queue trigger's message)."""
        self.publish([delivery.message], at=at)
        self.ack(delivery)

    def dead_letters(self) -> list[DeadLetter]:
        """Every message of the poison queue, left in it: each is hidden while reading (so one
        pass sees each once) and made visible again at the end."""
        seen: dict[str, tuple[str, DeadLetter]] = {}
        while True:
            batch = _receive(self.poison, MAX_RECEIVE, PEEK_VISIBILITY_SECONDS)
            if not batch:
                break
            for raw in batch:
                seen[raw.id] = (str(raw.pop_receipt), self._dead_letter(raw.id, str(raw.content)))
        for storage_id, (pop_receipt, _) in seen.items():
            self.poison.update_message(storage_id, pop_receipt, visibility_timeout=0)
        return [dead for _, dead in seen.values()]

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Keep the message in the dead letters with `reason`, then delete this delivery.
        SettleError when the dead letters refuse it (then it stays queued and comes back)."""
        self._bury(delivery.message.id, MESSAGE.dump_json(delivery.message).decode(), reason)
        self.ack(delivery)

    # ------------------------------------------------------------ Azure Functions

    def from_function_message(self, message_id: str, body: str, dequeue_count: int) -> Delivery | None:
        """The Delivery of a queue trigger's message (`msg.id`, `msg.get_body().decode()` -- the
        host has decoded the base64 -- and `msg.dequeue_count`). None when there is nothing to
        handle: a hop sent on, or an unreadable body poisoned; return normally. SettleError
        when that forwarding or poisoning failed: let the function fail."""
        return self._open(body, message_id, FUNCTION_RECEIPT + message_id, dequeue_count)

    # ------------------------------------------------------------ receiving

    def _open_wire(self, content: str, storage_id: str, receipt: str, attempts: int) -> Delivery | None:
        try:
            body = base64.b64decode(content, validate=True).decode("utf-8")
        except (binascii.Error, ValueError) as error:
            self._bury(storage_id, content, f"not base64-encoded UTF-8 text: {error}")
            return None
        return self._open(body, storage_id, receipt, attempts)

    def _open(self, body: str, storage_id: str, receipt: str, attempts: int) -> Delivery | None:
        """The Delivery of a received body, or None when it was a hop not yet due (sent on) or
        could not be read (poisoned): the received message is to be deleted then. Raises
        SettleError when forwarding or poisoning failed: the message must stay queued."""
        if body.startswith(HOP_PREFIX):
            try:
                due, inner = open_hop(body)
            except ValueError as error:
                self._bury(_claimed_id(body) or storage_id, body, f"unreadable hop envelope: {error}")
                return None
            if due > self.clock.now():
                try:
                    self._send(storage_id, inner, self._delay(due), due)
                except HttpResponseError as error:
                    raise SettleError(f"could not forward the hop of message {storage_id}: {error}") from error
                return None
            body = inner
        try:
            message = MESSAGE.validate_json(decompress(body))
        except ValueError as error:  # pydantic's ValidationError, bad JSON and zlib included
            self._bury(_claimed_id(body) or storage_id, body, f"unreadable message: {error}")
            return None
        return Delivery(message=message, receipt=receipt, attempts=attempts)

    def _bury(self, message_id: str, body: str, reason: str) -> None:
        """Keep an unreadable message for people, in the poison queue after a line naming it and
        the reason (the body cut short if both would not fit). SettleError when that fails."""
        header = json.dumps({"poisoned": {"message_id": message_id, "reason": reason[:1000]}}, separators=(",", ":"))
        room = MAX_BODY_BYTES - len(header.encode()) - 1
        kept = body.encode()[:room].decode(errors="ignore")
        try:
            self.poison.send_message(_base64(f"{header}\n{kept}"), time_to_live=-1)
        except HttpResponseError as error:
            raise SettleError(f"could not poison message {message_id}: {error}") from error
        log.error("poisoned message %s: %s", message_id, reason)

    def _move_to_poison(self, storage_id: str, content: str) -> None:
        """Copy a message received too often, as it is, to the poison queue (then deleted)."""
        try:
            self.poison.send_message(content, time_to_live=-1)
        except HttpResponseError as error:
            raise SettleError(f"could not move message {storage_id} to the poison queue: {error}") from error
        log.error(
            "message %s was received more than %d times: moved to the poison queue", storage_id, self.max_dequeue_count
        )

    def _dead_letter(self, storage_id: str, content: str) -> DeadLetter:
        try:
            text = base64.b64decode(content, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return DeadLetter(message_id=storage_id, body=content, reason="poisoned: not base64-encoded UTF-8 text")
        if text.startswith(POISON_PREFIX):
            header, _, body = text.partition("\n")
            try:
                about = json.loads(header)["poisoned"]
                return DeadLetter(message_id=str(about["message_id"]), body=body, reason=str(about["reason"]))
            except (ValueError, KeyError, TypeError):
                pass  # not one of ours after all: shown as it is
        body = readable(text)
        reason = f"received too often (moved to {self.poison.queue_name} after the maximum dequeue count)"
        return DeadLetter(message_id=_claimed_id(body) or storage_id, body=body, reason=reason)

    def _delete(self, receipt: str) -> None:
        storage_id, _, pop_receipt = receipt.partition(" ")
        try:
            self.client.delete_message(storage_id, pop_receipt)
        except HttpResponseError as error:
            if error.status_code not in (400, 404):  # MessageNotFound, PopReceiptMismatch
                raise
            log.warning("receipt no longer valid (the message was redelivered or deleted): %s", error.message)

    # ------------------------------------------------------------ sending

    def _encode(self, message: Message) -> str:
        body = MESSAGE.dump_json(message).decode()
        return compress(body) if len(body) > COMPRESS_ABOVE else body

    def _delay(self, at: datetime | None) -> int:
        if at is None:
            return 0
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError(f"naive datetime {at.isoformat()}: pass an aware (UTC) datetime")
        return max(0, math.ceil((at - self.clock.now()).total_seconds()))

    def _send(self, message_id: str, body: str, delay: int, at: datetime | None) -> None:
        """Send `body` visible after `delay` seconds; beyond 7 days as a hop until `at`."""
        if delay > _seconds(MAX_DELAY):
            assert at is not None, "only a message due at some time has a delay"
            body = hop(body, at)
            delay = _seconds(MAX_DELAY)
        size = len(body.encode())
        if size > MAX_BODY_BYTES:
            raise ValueError(
                f"message {message_id} is {size} bytes on the wire, more than the queue takes ({MAX_BODY_BYTES})"
            )
        self.client.send_message(_base64(body), visibility_timeout=delay, time_to_live=-1)
        log.debug("published %s (delay %ss)", message_id, delay)


def _receive(client: QueueClient, limit: int, visibility_timeout: int) -> list[QueueMessage]:
    """One Get Messages: up to `limit` (at most 32) messages, hidden for `visibility_timeout` seconds."""
    pages = client.receive_messages(
        messages_per_page=max(1, min(limit, MAX_RECEIVE)), visibility_timeout=visibility_timeout
    ).by_page()
    return list(next(pages, []))


def _base64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def _seconds(delta: timedelta) -> int:
    return math.ceil(delta.total_seconds())


def _claimed_id(body: str) -> str | None:
    """The id a body names, when it is a JSON object with one (even if it is no message)."""
    try:
        data = json.loads(decompress(body))
    except ValueError:
        return None
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str) and value else None


def _check_no_message_policies(client: QueueClient) -> None:
    """This queue does the base64 itself; a client encoding too would encode twice."""
    policies = (getattr(client, "_message_encode_policy", None), getattr(client, "_message_decode_policy", None))
    encoding = (TextBase64EncodePolicy, BinaryBase64EncodePolicy, TextBase64DecodePolicy, BinaryBase64DecodePolicy)
    if any(isinstance(policy, encoding) for policy in policies):
        raise ValueError(
            f"queue client {client.queue_name!r} has a message encode or decode policy: pass one without"
            " (StorageQueue base64-encodes the bodies itself)"
        )
