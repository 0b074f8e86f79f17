"""Queue messages that cannot hurt the worker reading them: a zlib envelope inflates to at most
8 MiB (`envelopes.MAX_UNPACKED_BYTES`), found without inflating more; past that the message is
dead-lettered like any unreadable one and the rest of the batch is delivered. Checked on every
queue adapter (SQLite, SQS on moto, Storage Queue on Azurite) with the contract's fixtures."""

from __future__ import annotations

import base64
import json
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from clocks import ManualClock
from test_queue_contract import ADAPTERS, T0, QueueUnderTest, ids, notice

from patchpilot.adapters.envelopes import MAX_UNPACKED_BYTES, OversizedMessageError, compress, decompress

pytest_plugins = ["azurite"]


def zlib_bomb(size: int) -> str:
    """A zlib envelope of `size` zero bytes: kilobytes on the wire."""
    return json.dumps({"zlib": base64.b64encode(zlib.compress(b"0" * size, 9)).decode("ascii")})


@pytest.fixture(params=list(ADAPTERS))
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def under_test(adapter: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueUnderTest]:
    with ADAPTERS[adapter](request, tmp_path, ManualClock(T0)) as made:
        yield made


def test_oversized_compressed_message_is_dead_lettered(adapter: str, under_test: QueueUnderTest) -> None:
    queue = under_test.queue
    bomb = zlib_bomb(MAX_UNPACKED_BYTES + 1)
    assert len(bomb) < 16 * 1024  # fits every queue: the attack is cheap to send
    under_test.publish_raw("bomb", bomb)
    queue.publish([notice(1), notice(2)])

    received = queue.receive(limit=10)
    received += queue.receive(limit=10)

    assert sorted(ids(received)) == ["run-1:notify:1", "run-1:notify:2"]
    (dead,) = queue.dead_letters()
    assert dead.body == bomb
    if adapter != "sqlite":  # SQLite never packs: an envelope there is no message at all
        assert f"inflates to more than {MAX_UNPACKED_BYTES} bytes" in dead.reason


def test_zlib_bomb_is_refused_without_inflating_past_the_cap() -> None:
    bomb = zlib_bomb(1 << 30)  # 1 GiB of zeros, about 1.4 MB on the wire

    tracemalloc.start()
    try:
        with pytest.raises(OversizedMessageError, match="inflates to more than 8388608 bytes"):
            decompress(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 4 * MAX_UNPACKED_BYTES  # the cap plus the wire body, never the gigabyte


def test_a_message_at_the_cap_still_travels_and_one_past_it_is_refused_by_the_sender() -> None:
    body = "x" * MAX_UNPACKED_BYTES
    assert decompress(compress(body)) == body.encode()
    with pytest.raises(OversizedMessageError, match="more than a zlib envelope may hold"):
        compress(body + "x")
