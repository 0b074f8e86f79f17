"""The `leases` fixture: a maker of Leases adapters on each runtime (SQLite, DynamoDB on moto,
Table Storage on Azurite), for the contract and the security tests; a pytest plugin
(``pytest_plugins = ["azurite", "leases_runtimes"]``). Each call makes a fresh adapter with its
own connection or client, as another process (another run's worker) would have."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from azure.data.tables import TableClient
from moto_support import TABLE, atomic_items, aws, dynamodb

from patchpilot.adapters.aws.leases import DynamoDbLeases
from patchpilot.adapters.azure.leases import TableLeases
from patchpilot.adapters.local.sqlite_leases import SqliteLeases
from patchpilot.ports import Leases

if TYPE_CHECKING:
    from azurite import Azurite


@pytest.fixture(params=["sqlite", "dynamodb", "table"])
def leases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Leases]]:
    if request.param == "sqlite":
        made: list[SqliteLeases] = []

        def sqlite() -> Leases:
            made.append(SqliteLeases(tmp_path / "state.db"))
            return made[-1]

        yield sqlite
        for adapter in made:
            adapter.close()
        return
    if request.param == "dynamodb":
        with aws(), atomic_items():  # moto checks a condition and writes without a lock between
            dynamodb()
            yield lambda: DynamoDbLeases(TABLE, dynamodb())
        return
    azurite: Azurite = request.getfixturevalue("azurite")
    name = azurite.unique_name("runs")
    TableClient.from_connection_string(azurite.connection_string, name).create_table()
    yield lambda: TableLeases(TableClient.from_connection_string(azurite.connection_string, name))
