"""The envelopes the cloud queues (SQS, Storage Queues) put around a message's JSON on the wire,
and take off again, so the shell never sees them:

- **zlib** ``{"zlib": <base64>}``: a body too long for the queue, compressed (a command for a
  wave of thousands of instances is megabytes of JSON but compresses 10-50 times).
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


def compress(body: str) -> str:
    """The zlib envelope of `body`."""
    packed = base64.b64encode(zlib.compress(body.encode(), 6)).decode("ascii")
    return json.dumps({"zlib": packed}, separators=(",", ":"))


def decompress(body: str) -> str | bytes:
    """The message JSON of a wire body: unpacked when it is a zlib envelope, else as it is.
    ValueError when the envelope is damaged."""
    if body.startswith(ZLIB_PREFIX):
        try:
            packed = json.loads(body)["zlib"]
            return zlib.decompress(base64.b64decode(packed, validate=True))
        except (KeyError, TypeError, zlib.error, ValueError) as error:
            raise ValueError(f"bad zlib envelope: {error}") from error
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
