"""The `Queue` on AWS: one SQS standard queue, with a dead-letter queue behind it.

On the wire a message is its JSON, with the message id also in the ``message_id`` message
attribute (for logs and dead letters). Two envelopes, which the queue adds and removes itself
so the shell never sees them:

- **hop**: SQS delays a message by at most 15 minutes. A message due later is sent as
  ``{"hop_until": <iso>, "body": <wire body>}`` with the longest delay; whoever receives it
  before `hop_until` sends it on with the remaining delay (another hop if still too far) and
  deletes it, instead of delivering it.
- **zlib**: a body longer than `COMPRESS_ABOVE` travels as ``{"zlib": <base64>}`` (a command
  for a wave of thousands of instances is megabytes of JSON but compresses 10-50 times). A body
  still bigger than `max_body_bytes` is refused with ValueError: that would need a claim check
  in S3, which nothing needs yet.

Both envelopes are shared with the Storage Queue (`patchpilot.adapters.envelopes`).

Differences from the port's ideal, all safe because every message is idempotent:

- SQS standard queues do not drop a publish whose id is still queued; duplicates are delivered.
- `retry_at` (a poll, "not a failure") re-publishes the message with the delay and deletes the
  delivery, instead of ChangeMessageVisibility: every receive counts towards the redrive
  policy's maxReceiveCount, so a two-hour install polled every ten minutes would otherwise end
  in the dead-letter queue. A fresh copy starts again at zero receives. A crash between the
  two calls leaves one extra copy; a stale receipt (the message was already redelivered to
  someone else) also makes one. Both are a duplicate poll, which the fleet answers alike.
- An unreadable body is sent to the dead-letter queue (with a ``reason`` attribute) and
  deleted; it is also recorded in this object. `dead_letters` reads the dead-letter queue
  without consuming it when there is one (receive with a short visibility timeout, then
  visibility 0 again), else returns what this object recorded.

In Lambda, the event source mapping receives and deletes: `from_sqs_record` turns a record
into a Delivery whose receipt says so. For such a delivery `ack` does nothing (the record is
reported as a success and Lambda deletes it) and `retry_at` only publishes the delayed copy
(the original is then reported as a success and deleted). A hop not yet due or an unreadable
body yields None: forwarded or dead-lettered already, report success. Only an exception from
`Service.handle` should become a batch item failure (a real redelivery, counted).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from botocore.exceptions import ClientError

from patchpilot.adapters.envelopes import HOP_PREFIX as _HOP
from patchpilot.adapters.envelopes import compress, hop, open_hop
from patchpilot.adapters.envelopes import decompress as _decode
from patchpilot.adapters.envelopes import readable as _readable
from patchpilot.batching import chunks
from patchpilot.engine.message_adapter import MESSAGE  # writing loads no message: the first read does
from patchpilot.ports import Clock, DeadLetter, Delivery

if TYPE_CHECKING:
    from mypy_boto3_sqs.client import SQSClient
    from mypy_boto3_sqs.type_defs import MessageAttributeValueTypeDef, SendMessageBatchRequestEntryTypeDef

    from patchpilot.engine.messages import Message

log = logging.getLogger("patchpilot.aws.sqs")

MAX_DELAY_SECONDS = 900  # SQS DelaySeconds
MAX_BATCH = 10  # entries per SendMessageBatch / ReceiveMessage
MAX_BODY_BYTES = 256 * 1024  # SQS takes 1 MiB now; 256 KiB also fits queues created before
COMPRESS_ABOVE = 64 * 1024  # SQS bills per 64 KiB
LAMBDA_RECEIPT = "lambda:"  # prefix of the receipts of deliveries made from Lambda records
PEEK_VISIBILITY_SECONDS = 30


class SettleError(RuntimeError):
    """A hop could not be forwarded or an unreadable message not dead-lettered: the received
    message must stay in the queue (not be deleted) and be tried again."""


class _Outgoing(NamedTuple):
    message_id: str
    body: str
    delay: int


class SqsQueue:
    """A `Queue` on the SQS queue at `queue_url`, timed by `clock`, burying unreadable messages
    in the queue at `dead_letter_url` (which should also be the redrive policy's target)."""

    def __init__(
        self,
        queue_url: str,
        client: SQSClient,
        clock: Clock,
        dead_letter_url: str | None = None,
        *,
        wait_seconds: int = 1,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.queue_url = queue_url
        self.client = client
        self.clock = clock
        self.dead_letter_url = dead_letter_url
        self.wait_seconds = wait_seconds
        self.max_body_bytes = max_body_bytes
        self._buried: list[DeadLetter] = []

    # ------------------------------------------------------------ Queue

    def publish(self, messages: Sequence[Message], at: datetime | None = None) -> None:
        """Send `messages` (in batches of ten), due at `at`. Raises when SQS refuses any; a
        retry of the whole call then sends the others again, which duplicates are allowed to."""
        wire = [(m.id, self._encode(m)) for m in messages]
        self._send([self._outgoing(message_id, body, at) for message_id, body in wire])

    def receive(self, limit: int = 10) -> list[Delivery]:
        response = self.client.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=max(1, min(limit, MAX_BATCH)),
            WaitTimeSeconds=self.wait_seconds,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
            MessageAttributeNames=["All"],
        )
        deliveries: list[Delivery] = []
        for raw in response.get("Messages", []):
            receipt = raw["ReceiptHandle"]
            attributes = {k: v.get("StringValue", "") for k, v in raw.get("MessageAttributes", {}).items()}
            try:
                delivery = self._open(
                    raw["Body"],
                    sqs_id=raw["MessageId"],
                    queued_id=attributes.get("message_id"),
                    receipt=receipt,
                    attempts=int(raw.get("Attributes", {}).get("ApproximateReceiveCount", "1")),
                )
            except SettleError as error:
                log.warning("%s; it stays queued and is tried again after its visibility timeout", error)
                continue
            if delivery is None:
                try:
                    self._delete(receipt)
                except ClientError as error:  # it comes back and is forwarded or buried again
                    log.warning("could not delete settled message %s: %s", raw["MessageId"], error)
            else:
                log.debug("received %s (receive %d)", delivery.message.id, delivery.attempts)
                deliveries.append(delivery)
        return deliveries

    def ack(self, delivery: Delivery) -> None:
        if delivery.receipt.startswith(LAMBDA_RECEIPT):
            return  # reported as a success, Lambda deletes it
        self._delete(delivery.receipt)

    def retry_at(self, delivery: Delivery, at: datetime) -> None:
        """Deliver the message again at `at`: a fresh copy (its receive count starts again),
        then the delivery is deleted (by Lambda, for a record)."""
        self.publish([delivery.message], at=at)
        self.ack(delivery)

    def dead_letters(self) -> list[DeadLetter]:
        if self.dead_letter_url is None:
            return list(self._buried)
        return self._peek_dead_letters(self.dead_letter_url)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Keep the message in the dead letters with `reason`, then delete this delivery.
        SettleError when the dead letters refuse it (then it stays queued and comes back)."""
        self._bury(delivery.message.id, MESSAGE.dump_json(delivery.message).decode(), reason)
        self.ack(delivery)

    # ------------------------------------------------------------ Lambda

    def from_sqs_record(self, record: Mapping[str, Any]) -> Delivery | None:
        """The Delivery of one record of a Lambda SQS event (the raw record dict: with
        powertools' data classes pass `record.raw_event`). None when there is nothing to
        handle: a hop sent on, or an unreadable body dead-lettered; report it as a success.
        SettleError when that forwarding or dead-lettering failed: report a failure."""
        attributes = {
            name: str(value.get("stringValue", value.get("StringValue", "")))
            for name, value in (record.get("messageAttributes") or {}).items()
        }
        return self._open(
            str(record["body"]),
            sqs_id=str(record["messageId"]),
            queued_id=attributes.get("message_id"),
            receipt=LAMBDA_RECEIPT + str(record["receiptHandle"]),
            attempts=int((record.get("attributes") or {}).get("ApproximateReceiveCount", "1")),
        )

    # ------------------------------------------------------------ receiving

    def _open(self, body: str, sqs_id: str, queued_id: str | None, receipt: str, attempts: int) -> Delivery | None:
        """The Delivery of a received body, or None when it was a hop not yet due (sent on)
        or could not be read (buried): the caller deletes the received message then. Raises
        SettleError when forwarding or burying failed: the message must stay queued."""
        if body.startswith(_HOP):
            try:
                due, inner = open_hop(body)
            except ValueError as error:
                self._bury(queued_id or sqs_id, body, f"unreadable hop envelope: {error}")
                return None
            if due > self.clock.now():
                try:
                    self._send([self._outgoing(queued_id or sqs_id, inner, due)])
                except (ClientError, RuntimeError) as error:
                    raise SettleError(f"could not forward the hop of message {queued_id or sqs_id}: {error}") from error
                return None
            body = inner
        try:
            message = MESSAGE.validate_json(_decode(body))
        except ValueError as error:  # pydantic's ValidationError, bad JSON, zlib and base64 included
            self._bury(queued_id or sqs_id, body, f"unreadable message: {error}")
            return None
        if queued_id is not None and message.id != queued_id:
            self._bury(queued_id, body, f"the body's id {message.id!r} is not the queued id {queued_id!r}")
            return None
        return Delivery(message=message, receipt=receipt, attempts=attempts)

    def _bury(self, message_id: str, body: str, reason: str) -> None:
        """Keep an unreadable message for people: in the dead-letter queue and in memory.
        Raises SettleError when the dead-letter queue refuses it (then it must stay queued)."""
        if self.dead_letter_url is not None:
            try:
                self.client.send_message(
                    QueueUrl=self.dead_letter_url,
                    MessageBody=body,
                    MessageAttributes={"message_id": _string(message_id), "reason": _string(reason[:1000])},
                )
            except ClientError as error:
                raise SettleError(f"could not dead-letter message {message_id}: {error}") from error
        log.error("dead-lettered message %s: %s", message_id, reason)
        self._buried.append(DeadLetter(message_id=message_id, body=_readable(body), reason=reason))

    def _peek_dead_letters(self, url: str) -> list[DeadLetter]:
        """Every message of the dead-letter queue, left in it: each is hidden while reading (so
        one pass sees each once) and made visible again at the end."""
        seen: dict[str, tuple[str, DeadLetter]] = {}
        while True:
            response = self.client.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=MAX_BATCH,
                WaitTimeSeconds=0,
                VisibilityTimeout=PEEK_VISIBILITY_SECONDS,
                MessageAttributeNames=["All"],
            )
            batch = response.get("Messages", [])
            if not batch:
                break
            for raw in batch:
                attributes = {k: v.get("StringValue", "") for k, v in raw.get("MessageAttributes", {}).items()}
                reason = attributes.get("reason") or "received too often (moved by the redrive policy)"
                message_id = attributes.get("message_id") or raw["MessageId"]
                dead = DeadLetter(message_id=message_id, body=_readable(raw["Body"]), reason=reason)
                seen[raw["MessageId"]] = (raw["ReceiptHandle"], dead)
        receipts = [receipt for receipt, _ in seen.values()]
        for handles in chunks(receipts, MAX_BATCH):
            self.client.change_message_visibility_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(n), "ReceiptHandle": receipt, "VisibilityTimeout": 0}
                    for n, receipt in enumerate(handles)
                ],
            )
        return [dead for _, dead in seen.values()]

    def _delete(self, receipt: str) -> None:
        try:
            self.client.delete_message(QueueUrl=self.queue_url, ReceiptHandle=receipt)
        except ClientError as error:
            if _code(error) not in {"ReceiptHandleIsInvalid", "InvalidParameterValue"}:
                raise
            log.warning("receipt no longer valid (the message was redelivered or deleted): %s", error)

    # ------------------------------------------------------------ sending

    def _encode(self, message: Message) -> str:
        body = MESSAGE.dump_json(message).decode()
        return compress(body) if len(body) > COMPRESS_ABOVE else body

    def _outgoing(self, message_id: str, body: str, at: datetime | None) -> _Outgoing:
        """The SQS message for `body` due at `at`: delayed up to 15 minutes, hopping beyond."""
        delay = 0
        if at is not None:
            if at.tzinfo is None or at.utcoffset() is None:
                raise ValueError(f"naive datetime {at.isoformat()}: pass an aware (UTC) datetime")
            delay = max(0, math.ceil((at - self.clock.now()).total_seconds()))
            if delay > MAX_DELAY_SECONDS:
                body = hop(body, at)
                delay = MAX_DELAY_SECONDS
        size = len(body.encode())
        if size > self.max_body_bytes:
            raise ValueError(
                f"message {message_id} is {size} bytes on the wire, more than the queue takes ({self.max_body_bytes})"
            )
        return _Outgoing(message_id, body, delay)

    def _send(self, outgoing: Sequence[_Outgoing]) -> None:
        for batch in _batches(outgoing, self.max_body_bytes):
            entries: list[SendMessageBatchRequestEntryTypeDef] = [
                {
                    "Id": str(n),
                    "MessageBody": o.body,
                    "DelaySeconds": o.delay,
                    "MessageAttributes": {"message_id": _string(o.message_id)},
                }
                for n, o in enumerate(batch)
            ]
            response = self.client.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            failed = response.get("Failed", [])
            if failed:
                details = ", ".join(f"{batch[int(f['Id'])].message_id}: {f.get('Message', f['Code'])}" for f in failed)
                raise RuntimeError(f"SQS refused {len(failed)} of {len(batch)} messages: {details}")
            for o in batch:
                log.debug("published %s (delay %ss)", o.message_id, o.delay)


def _batches(outgoing: Sequence[_Outgoing], max_bytes: int) -> Iterator[list[_Outgoing]]:
    """Groups of at most ten whose bodies together stay within `max_bytes` (the batch limit is
    the message limit)."""
    batch: list[_Outgoing] = []
    size = 0
    for o in outgoing:
        length = len(o.body.encode()) + len(o.message_id) + 32
        if batch and (len(batch) == MAX_BATCH or size + length > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(o)
        size += length
    if batch:
        yield batch


def _string(value: str) -> MessageAttributeValueTypeDef:
    return {"DataType": "String", "StringValue": value}


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))
