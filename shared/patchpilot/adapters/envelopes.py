"""The envelopes the cloud queues (SQS, Storage Queues) put around a message's JSON on the wire,
and take off again, so the shell never sees them:

- **zlib** ``{"zlib": <base64>}``: a body too long for the queue, compressed (a command for a
  wave of thousands of instances is megabytes of JSON but compresses 10-50 times). Unpacked, a
  body is at most `MAX_UNPACKED_BYTES`: a receiver stops inflating there and refuses the
  message (a few kilobytes of zlib can inflate to gigabytes), and a sender refuses to pack more.
- **hop** ``{"hop_until": <iso>, "body": <wire body>}``: a message due later than the queue can
  delay one. It is sent with the longest delay; whoever receives it before `hop_until` sends it
  on with the remaining delay (another hop if still too far) instead of delivering it.
"""

from __future__ import annotations

import base64
import json
import zlib
from datetime import UTC, datetime

ZLIB_PREFIX = '{"zlib":'
HOP_PREFIX = '{"hop_until":'
MAX_UNPACKED_BYTES = 8 * 1024 * 1024  # the most a zlib envelope may hold once inflated


class OversizedMessageError(ValueError):
    """A zlib envelope that holds (or would hold) more than `MAX_UNPACKED_BYTES`."""


def compress(body: str) -> str:
    """The zlib envelope of `body`. OversizedMessageError when `body` is more than
    `MAX_UNPACKED_BYTES`: no receiver would unpack it."""
    size = len(body.encode())
    if size > MAX_UNPACKED_BYTES:
        raise OversizedMessageError(
            f"message body is {size} bytes, more than a zlib envelope may hold ({MAX_UNPACKED_BYTES} bytes)"
        )
    packed = base64.b64encode(zlib.compress(body.encode(), 6)).decode("ascii")
    return json.dumps({"zlib": packed}, separators=(",", ":"))


def decompress(body: str) -> str | bytes:
    """The message JSON of a wire body: unpacked when it is a zlib envelope, else as it is.
    ValueError when the envelope is damaged; OversizedMessageError (a ValueError) when it
    inflates to more than `MAX_UNPACKED_BYTES`, found without inflating more than that."""
    if body.startswith(ZLIB_PREFIX):
        try:
            packed = base64.b64decode(json.loads(body)["zlib"], validate=True)
            inflater = zlib.decompressobj()
            unpacked = inflater.decompress(packed, MAX_UNPACKED_BYTES)
        except (KeyError, TypeError, zlib.error, ValueError) as error:
            raise ValueError(f"bad zlib envelope: {error}") from error
        if inflater.unconsumed_tail or (not inflater.eof and len(unpacked) >= MAX_UNPACKED_BYTES):
            raise OversizedMessageError(
                f"zlib envelope inflates to more than {MAX_UNPACKED_BYTES} bytes ({len(body)} bytes on the wire)"
            )
        if not inflater.eof:
            raise ValueError("bad zlib envelope: incomplete or truncated stream")
        return unpacked
    return body


def hop(body: str, until: datetime) -> str:
    """The hop envelope of `body`, due at `until` (an aware datetime)."""
    hop_until = until.astimezone(UTC).isoformat(timespec="microseconds")
    return json.dumps({"hop_until": hop_until, "body": body}, separators=(",", ":"))


def open_hop(body: str) -> tuple[datetime, str]:
    """When a hop envelope is due, and the wire body inside. ValueError when it is damaged."""
    try:
        data = json.loads(body)
        due = datetime.fromisoformat(data["hop_until"])
        inner = data["body"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(str(error) or type(error).__name__) from error
    if due.tzinfo is None or not isinstance(inner, str):
        raise ValueError("hop_until must have a time zone and body must be text")
    return due, inner


def readable(body: str) -> str:
    """The message JSON for people, where the body is an envelope a queue made; else the body."""
    try:
        if body.startswith(HOP_PREFIX):
            body = open_hop(body)[1]
        decoded = decompress(body)
    except ValueError:
        return body
    return decoded.decode(errors="replace") if isinstance(decoded, bytes) else decoded
