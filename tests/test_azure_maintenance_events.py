"""Update Manager maintenance runs: pre/post events, a run's machines, cancelling a run.

- pure: `parse_maintenance_event(s)` over recorded-style payloads in tests/events/azure/ (both
  Event Grid schemas, both key casings, malformed ones), built on Microsoft's documented samples
  (event-schema-maintenance-configuration.md; the PascalCase keys of the Functions tutorial).
- fake ARM: `machines_in_run` and `cancel_maintenance_run` through the real maintenance and
  Resource Graph clients against tests/fake_azure_maintenance.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from clocks import ManualClock
from fake_arm import FakeArm
from fake_azure_maintenance import FakeMaintenance, arc_document, vm_document

from patchpilot.adapters.azure.clients import AzureClients
from patchpilot.adapters.azure.maintenance_events import (
    MaintenanceEvent,
    MaintenanceRunError,
    NotMaintenanceEvent,
    RunMachine,
    UpdateManagerCanceller,
    cancel_maintenance_run,
    machines_in_run,
    parse_maintenance_event,
    parse_maintenance_events,
)
from patchpilot.engine.messages import CancelCloudScheduledRun, Outcome
from patchpilot.errors import InputError

EVENTS = Path(__file__).parent / "events" / "azure"
SUB = "11111111-1111-4111-8111-111111111111"
SUB2 = "22222222-2222-4222-8222-222222222222"
MC = (
    f"/subscriptions/{SUB}/resourceGroups/rg-patch"
    "/providers/Microsoft.Maintenance/maintenanceConfigurations/patchpilot-monthly-staging"
)
RUN = f"{MC}/providers/microsoft.maintenance/applyupdates/20261211170000"
START = datetime(2026, 12, 11, 17, 0, tzinfo=UTC)
END = datetime(2026, 12, 11, 20, 0, tzinfo=UTC)
EXAMPLE = "2026-12-08T15:00:00Z"  # the example time the parser's messages give


def recorded(name: str) -> Any:
    return json.loads((EVENTS / name).read_text(encoding="utf-8"))


def event(**fields: Any) -> MaintenanceEvent:
    base: dict[str, Any] = {
        "event_id": RUN,
        "correlation_id": RUN,
        "maintenance_configuration_id": MC,
        "start": START,
        "end": END,
        "cancellation_cut_off": None,
        "status": None,
        "subscription_ids": (SUB,),
        "event_time": None,
    }
    return MaintenanceEvent(**(base | fields))


EXPECTED = {
    "pre_eventgrid.json": event(
        kind="pre",
        schema="eventgrid",
        cancellation_cut_off=datetime(2026, 12, 11, 16, 50, tzinfo=UTC),
        subscription_ids=(SUB, SUB2),
        event_time=datetime(2026, 12, 11, 16, 25, 0, 371747, tzinfo=UTC),
    ),
    "pre_cloudevents.json": event(
        kind="pre",
        schema="cloudevents",
        cancellation_cut_off=datetime(2026, 12, 11, 16, 50, tzinfo=UTC),
        event_time=datetime(2026, 12, 11, 16, 25, 0, 371747, tzinfo=UTC),
    ),
    "post_eventgrid_pascalcase.json": event(
        kind="post",
        schema="eventgrid",
        status="Succeeded",
        event_time=datetime(2026, 12, 11, 18, 55, 0, 371747, tzinfo=UTC),
    ),
    "post_cloudevents_pascalcase.json": event(
        kind="post", schema="cloudevents", status="Failed", event_time=datetime(2026, 12, 11, 20, 0, 7, tzinfo=UTC)
    ),
    "pre_eventgrid_data_as_text.json": event(
        kind="pre", schema="eventgrid", subscription_ids=(), event_time=datetime(2026, 12, 11, 16, 25, tzinfo=UTC)
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recorded_maintenance_events_parse_in_both_schemas_and_casings(name: str) -> None:
    assert parse_maintenance_events(recorded(name), name) == [EXPECTED[name]]


def test_the_same_event_parses_from_json_text_and_bytes() -> None:
    text = (EVENTS / "pre_eventgrid.json").read_text(encoding="utf-8")
    assert parse_maintenance_events(text) == parse_maintenance_events(text.encode()) == [EXPECTED["pre_eventgrid.json"]]
    assert parse_maintenance_event(recorded("pre_eventgrid.json")[0]) == EXPECTED["pre_eventgrid.json"]


def test_a_parsed_event_names_its_run_and_when_it_can_still_be_cancelled() -> None:
    pre = EXPECTED["pre_eventgrid.json"]
    assert (pre.run_name, pre.configuration_name) == ("20261211170000", "patchpilot-monthly-staging")
    assert pre.cancel_by == datetime(2026, 12, 11, 16, 50, tzinfo=UTC)
    assert EXPECTED["pre_eventgrid_data_as_text.json"].cancel_by == START - timedelta(minutes=10)


def test_other_event_types_are_not_maintenance_events() -> None:
    (validation,) = parse_maintenance_events(recorded("subscription_validation.json"))
    assert validation == NotMaintenanceEvent(
        "Microsoft.EventGrid.SubscriptionValidationEvent", "2d1781af-3a4c-4d7c-bd0c-e34b19da4e66"
    )
    assert validation.reason == "not a maintenance event: Microsoft.EventGrid.SubscriptionValidationEvent"
    untyped = parse_maintenance_event({"id": "x", "data": {}})
    assert isinstance(untyped, NotMaintenanceEvent) and untyped.reason == "not a maintenance event: no event type"


def test_the_event_type_is_matched_ignoring_case() -> None:
    raw = recorded("pre_eventgrid.json")[0] | {"eventType": "microsoft.maintenance.premaintenanceevent"}
    assert parse_maintenance_event(raw) == EXPECTED["pre_eventgrid.json"]


@pytest.mark.parametrize(
    ("name", "problems"),
    [
        (
            "malformed_pre_missing_fields.json",
            [
                "data.correlationId: expected a maintenance run id (…/applyUpdates/<run>), got nothing",
                "data.maintenanceConfigurationId: expected a maintenance configuration id, "
                'got "patchpilot-monthly-staging"',
                f'data.startDateTime: expected an ISO 8601 time such as "{EXAMPLE}", got "next friday"',
                f'data.cancellationCutOffDateTime: expected an ISO 8601 time such as "{EXAMPLE}", got 1765471800',
            ],
        ),
        (
            "malformed_post_ends_before_start.json",
            [
                "data.resourceSubscriptionIds: expected a list of subscription ids, got [42]",
                "data.endDateTime: ends (2026-12-11T16:00:00+00:00) before it starts (2026-12-11T17:00:00+00:00)",
            ],
        ),
        (
            "malformed_pre_without_data.json",
            ["data: expected an object with the maintenance run, got ['not', 'an', 'object']"],
        ),
    ],
)
def test_a_malformed_maintenance_event_names_every_bad_field(name: str, problems: list[str]) -> None:
    with pytest.raises(InputError) as caught:
        parse_maintenance_events(recorded(name), name)
    assert caught.value.source == name
    assert [f"{'.'.join(map(str, p.path))}: {p.message}" for p in caught.value.problems] == problems


def test_not_json_and_not_an_object_are_clear_errors() -> None:
    with pytest.raises(InputError, match=r"event: \(top level\): not JSON: Expecting property name"):
        parse_maintenance_event("{not json")
    with pytest.raises(InputError, match=r"event: .*expected an event object, got list"):
        parse_maintenance_event([1, 2])


# ------------------------------------------------------------------ through the fake ARM


@dataclass
class Cloud:
    arm: FakeArm
    clock: ManualClock
    maintenance: FakeMaintenance
    clients: AzureClients


@pytest.fixture
def cloud() -> Iterator[Cloud]:
    clock = ManualClock(START - timedelta(minutes=35))  # when the pre-event arrives
    arm = FakeArm(clock)
    fake = FakeMaintenance(arm)
    clients = AzureClients(arm.credential, transport=arm.transport(), polling_interval=0, retry_backoff_factor=0)
    yield Cloud(arm, clock, fake, clients)


def vm_id(name: str, subscription: str = SUB) -> str:
    return str(vm_document(subscription, "rg-app", name)["id"])


def test_machines_in_run_are_the_runs_vms_and_arc_servers_only(cloud: Cloud) -> None:
    arc = str(arc_document(SUB2, "rg-edge", "edge1")["id"])
    run = cloud.maintenance.schedule_run(MC, START, [vm_id("vm2"), vm_id("vm1"), arc])
    other = MC.replace("staging", "production")
    cloud.maintenance.schedule_run(other, START, [vm_id("vm9")])
    assert machines_in_run(cloud.clients, run, [SUB, SUB2]) == [
        RunMachine(vm_id("vm1"), "Pending"),
        RunMachine(vm_id("vm2"), "Pending"),
        RunMachine(arc, "Pending"),
    ]
    assert machines_in_run(cloud.clients, run, [SUB]) == [
        RunMachine(vm_id("vm1"), "Pending"),
        RunMachine(vm_id("vm2"), "Pending"),
    ]
    (graph,) = [c for c in cloud.arm.calls if "resourcegraph" in c.path][:1]
    assert f"properties.correlationId =~ '{run}'" in graph.body["query"]


def test_a_run_is_cancelled_before_its_cut_off_and_a_second_cancel_changes_nothing(cloud: Cloud) -> None:
    run = cloud.maintenance.schedule_run(MC, START, [vm_id("vm1")])
    assert cancel_maintenance_run(cloud.clients, run) == "cancelled"
    assert cloud.maintenance.run_status(run) == "Cancelled"
    (put,) = [c for c in cloud.arm.calls if c.method == "PUT"]
    assert (put.path, put.api_version, put.body) == (
        run.lower(),
        "2023-09-01-preview",
        {"properties": {"status": "Cancel"}},
    )
    assert cancel_maintenance_run(cloud.clients, run) == "already_cancelled"
    assert len([c for c in cloud.arm.calls if c.method == "PUT"]) == 1  # the second one only looked


def test_a_cancel_past_the_cut_off_is_a_clear_error(cloud: Cloud) -> None:
    run = cloud.maintenance.schedule_run(MC, START, [vm_id("vm1")])
    cloud.clock.set(START - timedelta(minutes=5))
    with pytest.raises(MaintenanceRunError) as caught:
        cancel_maintenance_run(cloud.clients, run)
    message = str(caught.value)
    assert f"Update Manager refused to cancel maintenance run {run} (HTTP 400, status Pending)" in message
    assert "MaintenanceRunNotCancellable" in message and "cancellationCutOffDateTime" in message
    assert cloud.maintenance.run_status(run) == "Pending"


def test_a_run_that_has_started_is_not_cancelled(cloud: Cloud) -> None:
    run = cloud.maintenance.schedule_run(MC, START, [vm_id("vm1")], status="InProgress")
    with pytest.raises(MaintenanceRunError, match=r"has already started \(status InProgress\): too late to cancel"):
        cancel_maintenance_run(cloud.clients, run)
    assert not [c for c in cloud.arm.calls if c.method == "PUT"]


def test_cancelling_something_that_is_not_a_run_id_names_it(cloud: Cloud) -> None:
    with pytest.raises(ValueError, match=r'not a maintenance run id .*: "' + MC):
        cancel_maintenance_run(cloud.clients, MC)
    assert cloud.arm.calls == []


def test_the_canceller_port_answers_with_an_outcome_either_way(cloud: Cloud) -> None:
    run = cloud.maintenance.schedule_run(MC, START, [vm_id("vm1")])
    canceller = UpdateManagerCanceller(cloud.clients)
    command = CancelCloudScheduledRun(
        id="r:w1:cancel", run_id="r", maintenance_run=run, reason="snapshots failed for vm1"
    )
    assert canceller.cancel_maintenance(command) == Outcome(
        id=run, ok=True, detail="cancelled (snapshots failed for vm1)"
    )
    assert canceller.cancel_maintenance(command).detail == "already cancelled (snapshots failed for vm1)"
    late = cloud.maintenance.schedule_run(MC.replace("staging", "production"), START, [vm_id("vm2")])
    cloud.clock.set(START - timedelta(minutes=5))
    refused = canceller.cancel_maintenance(command.model_copy(update={"maintenance_run": late}))
    assert not refused.ok and "refused to cancel" in refused.detail
