"""The Claims port (a key claimed once: replayed Slack requests, notices already sent) on every
runtime: SQLite locally, DynamoDB on moto, Table Storage on Azurite; and the routed notifier
sending a notice once across two workers that share one."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from azure.data.tables import TableClient
from clocks import ManualClock
from moto_support import TABLE, atomic_items, aws, dynamodb
from test_notify_cards import notice
from test_notify_delivery import ROUTING, SLACK, TEAMS, notifier, run_with
from webhook_server import webhook_server

from patchpilot.adapters.aws.claims import DynamoDbClaims
from patchpilot.adapters.azure.claims import TableClaims
from patchpilot.adapters.local.sqlite_claims import SqliteClaims
from patchpilot.ports import Claims

if TYPE_CHECKING:
    from azurite import Azurite

pytest_plugins = ["azurite"]

T0 = datetime(2026, 12, 12, 1, 0, tzinfo=UTC)
HOLD = timedelta(minutes=10)


@pytest.fixture(params=["sqlite", "dynamodb", "table"])
def claims(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Callable[[], Claims], ManualClock]]:
    clock = ManualClock(T0)
    if request.param == "sqlite":  # each worker its own connection, as two processes would have
        yield (lambda: SqliteClaims(tmp_path / "state.db", clock)), clock
        return
    if request.param == "dynamodb":
        with aws(), atomic_items():  # moto checks a condition and writes without a lock between
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


def test_a_renewed_claim_holds_until_its_new_time_and_one_renewed_to_the_past_is_given_up(
    claims: tuple[Callable[[], Claims], ManualClock],
) -> None:
    make, clock = claims
    worker = make()
    assert worker.claim("notice:n1:ops", T0 + HOLD)  # the lease
    worker.renew("notice:n1:ops", T0 + timedelta(days=14))  # delivered: the record
    clock.advance(HOLD + timedelta(minutes=1))
    assert not make().claim("notice:n1:ops", clock.now() + HOLD)
    worker.renew("notice:n1:ops", clock.now() - timedelta(seconds=1))  # given up
    assert make().claim("notice:n1:ops", clock.now() + HOLD)
    make().renew("notice:n2:ops", clock.now() + HOLD)  # renewing a key never claimed claims it
    assert not make().claim("notice:n2:ops", clock.now() + HOLD)


def test_lapsed_claims_are_purged_from_table_storage_a_bounded_number_at_a_time(azurite: Azurite) -> None:
    """Table Storage has no TTL: the Azure timer calls `purge_lapsed`."""
    table = TableClient.from_connection_string(azurite.connection_string, azurite.unique_name("claims"))
    table.create_table()
    clock = ManualClock(T0)
    claims = TableClaims(table, clock)
    for n in range(4):
        assert claims.claim(f"slack:v0={n}", T0 + HOLD)
    claims.renew("notice:n1:ops", T0 + timedelta(days=14))  # a delivered notice's record
    claims.renew("slack:v0=0", T0 + 3 * HOLD)  # extended: not lapsed
    after = T0 + 2 * HOLD
    assert claims.purge_lapsed(after, limit=2) == 2
    assert claims.purge_lapsed(after) == 1
    assert claims.purge_lapsed(after) == 0
    assert len(list(table.list_entities())) == 2
    clock.set(after)
    assert not claims.claim("slack:v0=0", after + HOLD)
    assert not claims.claim("notice:n1:ops", after + HOLD)
    assert claims.claim("slack:v0=1", after + HOLD)


def test_a_notice_delivered_to_two_workers_is_posted_once_per_channel(
    claims: tuple[Callable[[], Claims], ManualClock],
) -> None:
    """Two notifiers (two containers) sharing one claims store, posting to the real local webhook server."""
    make, clock = claims
    with webhook_server() as server:
        first, second = (notifier(server, run_with(ROUTING), claims=make, clock=clock) for _ in range(2))
        first.notify(notice("run_halted"))
        second.notify(notice("run_halted"))  # the same Notify command, delivered to another worker
        clock.advance(timedelta(days=2))  # long after any lease: the delivered record still holds
        notifier(server, run_with(ROUTING), claims=make, clock=clock).notify(notice("run_halted"))
        assert sorted(p.path for p in server.posts) == sorted([SLACK, TEAMS])
