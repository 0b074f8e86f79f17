"""The Claims port (a key claimed once, for replayed Slack requests) on both serverless
runtimes: DynamoDB on moto, Table Storage on Azurite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from azure.data.tables import TableClient
from clocks import ManualClock
from moto_support import TABLE, aws, dynamodb

from patchpilot.adapters.aws.claims import DynamoDbClaims
from patchpilot.adapters.azure.claims import TableClaims
from patchpilot.ports import Claims

if TYPE_CHECKING:
    from azurite import Azurite

pytest_plugins = ["azurite"]

T0 = datetime(2026, 12, 12, 1, 0, tzinfo=UTC)
HOLD = timedelta(minutes=10)


@pytest.fixture(params=["dynamodb", "table"])
def claims(request: pytest.FixtureRequest) -> Iterator[tuple[Callable[[], Claims], ManualClock]]:
    clock = ManualClock(T0)
    if request.param == "dynamodb":
        with aws():
            client = dynamodb()
            yield (lambda: DynamoDbClaims(TABLE, client, clock)), clock
        return
    azurite: Azurite = request.getfixturevalue("azurite")
    table = TableClient.from_connection_string(azurite.connection_string, azurite.unique_name("claims"))
    table.create_table()
    yield (lambda: TableClaims(table, clock)), clock


def test_a_key_is_claimed_once_while_its_claim_holds(claims: tuple[Callable[[], Claims], ManualClock]) -> None:
    make, clock = claims
    first, other = make(), make()  # two workers on the same table
    assert first.claim("slack:v0=abc", T0 + HOLD)
    assert not other.claim("slack:v0=abc", T0 + HOLD)
    assert other.claim("slack:v0=def", T0 + HOLD)
    clock.advance(HOLD + timedelta(seconds=1))
    assert other.claim("slack:v0=abc", clock.now() + HOLD)  # lapsed: claimed anew
    assert not first.claim("slack:v0=abc", clock.now() + HOLD)


def test_of_simultaneous_claims_exactly_one_wins(claims: tuple[Callable[[], Claims], ManualClock]) -> None:
    make, _ = claims
    workers = [make() for _ in range(6)]
    with ThreadPoolExecutor(len(workers)) as pool:
        won = list(pool.map(lambda c: c.claim("slack:v0=race", T0 + HOLD), workers))
    assert won.count(True) == 1
