"""The fake Resource Graph's KQL evaluator (tests/fake_resource_graph.py): what it answers, and that
it refuses, loudly and by name, what it does not model."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from azure.mgmt.resourcegraph import ResourceGraphClient
from azure.mgmt.resourcegraph.models import QueryRequest
from clocks import ManualClock
from fake_arm import FakeArm
from fake_azure_compute import FakeAzureCompute
from fake_resource_graph import UnsupportedKql, run_kql

ROWS = [
    {"id": "b", "zone": "1", "properties": {"osType": "Linux"}},
    {"id": "A", "zone": "2", "properties": {"osType": "Windows"}},
    {"id": "c", "zone": "1", "properties": {"osType": "linux"}},
]


def ids(query: str) -> list[str]:
    return [row["id"] for row in run_kql(query, ROWS)]


def test_order_by_reads_each_keys_direction_descending_by_default_as_kql() -> None:
    assert ids("resources | order by id asc") == ["A", "b", "c"]
    assert ids("resources | order by id") == ["c", "b", "A"]
    assert ids("resources | order by zone asc, id desc") == ["c", "b", "A"]


def test_where_extend_and_project_compose() -> None:
    query = "resources | where tolower(tostring(properties.osType)) == 'linux' | extend os = properties.osType"
    assert run_kql(query + " | project id, os", ROWS) == [{"id": "b", "os": "Linux"}, {"id": "c", "os": "linux"}]
    assert ids("resources | where id in~ ('a', 'B') and zone == '2'") == ["A"]


def test_substring_and_indexof_take_a_child_resources_parent_id() -> None:
    rows = [{"id": "/s/vm-1/extensions/HealthExtension"}, {"id": "/s/vm-2"}]
    query = "resources | extend vmId = substring(id, 0, indexof(id, '/extensions/')) | project vmId"
    # indexof answers -1 when the text is absent (as KQL's); the fake takes that length as nothing.
    assert run_kql(query, rows) == [{"vmId": "/s/vm-1"}, {"vmId": ""}]
    assert run_kql("resources | project s = substring(id, 3)", rows[1:]) == [{"s": "vm-2"}]


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("resources | take 1", "operator 'take' is not modelled by the fake, in the stage `take 1`"),
        ("resources | order by id asc nulls last", "expected ',', got 'nulls'"),
        ("resources | project properties.osType", "expected ',', got '.', in the stage `project properties.osType`"),
        ("resources | where id == 'a' 'b'", "unexpected 'b' after where"),
        ("resources | where tolower(id, 'x') == 'a'", "tolower() with 2 arguments is not modelled"),
        ("resources | where bag_keys(properties) == 'a'", "function bag_keys() is not modelled"),
        ("resources | 'where' id == 'a'", "expected an operator, got 'where'"),
        ("resources | where (id == 'a'", "expected ')', got 'the end'"),
        ("resources where id == 'a'", "a query starts with one table name, not `resources where id == 'a'`"),
        ("resources | where id !has 'a'", "cannot read at \"!has 'a'\""),
    ],
)
def test_what_the_evaluator_does_not_model_is_refused_by_name(query: str, named: str) -> None:
    with pytest.raises(UnsupportedKql) as refused:
        run_kql(query, ROWS)
    assert named in str(refused.value)


def test_a_refused_query_fails_where_the_sdk_client_sends_it_not_as_a_service_answer() -> None:
    arm = FakeArm(ManualClock(datetime(2026, 12, 8, tzinfo=UTC)))
    FakeAzureCompute(arm).add_vm("web-1")
    graph: ResourceGraphClient = arm.client(ResourceGraphClient)
    assert graph.resources(QueryRequest(query="resources | where name == 'web-1' | project id")).count == 1
    with pytest.raises(UnsupportedKql, match="operator 'summarize'"):  # an HttpResponseError an adapter might handle
        graph.resources(QueryRequest(query="resources | summarize count()"))
