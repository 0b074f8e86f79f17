"""The maintenance watch (`patchpilot.maintenance.watch`): what the sources found, by due time,
flagged against the next patch window; its digest and alerts and how their cards render; the
simulated source of the local runtime."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_notify_cards import ONCALL, assert_slack_within_limits, assert_teams_within_limits, card_content

from patchpilot.adapters.local.simulated_maintenance import SimulatedMaintenance
from patchpilot.errors import InputError
from patchpilot.inventory import Instance, MaintenanceHint, Simulation, load_inventory, parse_inventory
from patchpilot.maintenance.model import MaintenanceItem, WatchResult
from patchpilot.maintenance.watch import alert_notices, digest_notice, watch_view
from patchpilot.notify.messages import card_for
from patchpilot.notify.slack import slack_message
from patchpilot.notify.teams import teams_message
from patchpilot.policy import Policy, load_policy

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
POLICY = load_policy(str(EXAMPLES / "policy.yaml"))  # windows: the Saturday after Patch Tuesday, 02:00 Tokyo
NOW = datetime(2026, 12, 7, 0, 0, tzinfo=UTC)  # Monday; the next window is Saturday 12 December 02:00 JST
WINDOW = datetime(2026, 12, 11, 17, 0, tzinfo=UTC)
WEB = Instance(
    id="i-0web", cloud="aws", region="ap-northeast-1", os="linux", name="web-1", tags={"Environment": "production"}
)
LEDGER = Instance(
    id="i-0ledger",
    cloud="aws",
    region="ap-northeast-1",
    os="linux",
    name="ledger-01",
    tags={"Environment": "production", "PatchPolicy": "frozen"},
)
LOOSE = Instance(id="i-0loose", cloud="aws", region="ap-northeast-1", os="linux", name="bastion", tags={})
FLEET = [WEB, LEDGER, LOOSE]


def item(key: str, starts: datetime | None, **kw: Any) -> MaintenanceItem:
    fields: dict[str, Any] = {
        "id": f"ec2:{key}",
        "source": "ec2",
        "cloud": "aws",
        "resource_id": kw.get("instance_id") or f"arn:aws:rds:ap-northeast-1:123456789012:db:{key}",
        "resource_name": key,
        "kind": "system-reboot",
        "description": "",
        "starts_at": starts,
        "region": "ap-northeast-1",
    }
    return MaintenanceItem(**{**fields, **kw})


def policy(**changes: Any) -> Policy:
    return Policy.model_validate({**POLICY.model_dump(mode="json", exclude_none=True), **changes})


# ---------------------------------------------------------------- the view


def test_items_are_sorted_by_due_time_flagged_against_the_next_window_and_ended_ones_dropped() -> None:
    result = WatchResult(
        items=(
            item("late", WINDOW + timedelta(days=2), instance_id="i-0web"),
            item("soon", WINDOW - timedelta(hours=1), instance_id="i-0web", downtime=True),
            item("undated", None, source="rds", kind="db-upgrade"),
            item("deadline", None, deadline=NOW + timedelta(days=1), source="rds", kind="system-update"),
            item("over", NOW - timedelta(hours=3), ends_at=NOW - timedelta(hours=1), instance_id="i-0web"),
            item("now", NOW - timedelta(hours=1), ends_at=NOW + timedelta(hours=1), instance_id="i-0web"),
            item("far", NOW + timedelta(days=30), instance_id="i-0web"),
        )
    )
    view = watch_view(result, POLICY, FLEET, NOW)
    assert view.next_window is not None and view.next_window.start == WINDOW == view.alert_before
    assert [w.item.resource_name for w in view.items] == ["now", "deadline", "soon", "late", "far", "undated"]
    assert [w.item.resource_name for w in view.due] == ["now", "deadline", "soon"]
    assert [w.item.resource_name for w in view.listed] == ["now", "deadline", "soon", "late", "undated"]
    assert view.items[0].in_progress and not view.items[2].in_progress
    assert view.complete


def test_what_an_item_concerns_managed_frozen_outside_the_rings_or_another_resource() -> None:
    result = WatchResult(
        items=(
            item("web", NOW + timedelta(days=1), instance_id="I-0WEB"),  # ids compare without case (ARM ids)
            item("ledger", NOW + timedelta(days=1), instance_id="i-0ledger"),
            item("bastion", NOW + timedelta(days=1), instance_id="i-0loose"),
            item("db", NOW + timedelta(days=1), source="rds", warning="single-AZ database: downtime"),
            item("gone", NOW + timedelta(days=1), instance_id="i-0terminated"),
        )
    )
    concerns = {w.item.resource_name: (w.concern, w.note) for w in watch_view(result, POLICY, FLEET, NOW).items}
    assert concerns == {
        "web": ("fleet", ""),
        "ledger": ("frozen", "frozen: tag PatchPolicy=frozen"),
        "bastion": ("other", "in no ring of the policy"),
        "db": ("other", ""),
        "gone": ("other", ""),
    }
    frozen = watch_view(result, policy(kind="frozen"), FLEET, NOW).items
    assert {w.concern for w in frozen if w.item.instance_id in ("I-0WEB", "i-0ledger", "i-0loose")} == {"frozen"}


def test_without_a_schedule_or_with_a_kind_that_never_patches_on_schedule_the_horizon_decides() -> None:
    result = WatchResult(items=(item("a", NOW + timedelta(days=3)), item("b", NOW + timedelta(days=9))))
    for unscheduled in (policy(schedule=None), policy(kind="emergency")):
        view = watch_view(result, unscheduled, FLEET, NOW, horizon=timedelta(days=5))
        assert view.next_window is None and view.alert_before == NOW + timedelta(days=5)
        assert [w.item.resource_name for w in view.due] == ["a"]
        assert [w.item.resource_name for w in view.listed] == ["a"]


def test_a_digest_without_a_window_ahead_and_a_multi_line_description_stay_readable() -> None:
    text = "Maintenance on the host.\n- not a list entry\nResource: not a fact"
    result = WatchResult(items=(item("a", NOW + timedelta(days=1), description=text),))
    notice = digest_notice(watch_view(result, policy(schedule=None), FLEET, NOW), NOW)
    assert notice.text.splitlines()[0] == (
        "1 maintenance item within 14d for policy monthly-fleet: no patch window ahead."
        " Act on each one due within 14d: it has an alert of its own."
    )
    card = card_for(notice)
    assert card.items == (
        "2026-12-08 00:00 UTC · a · EC2 scheduled event system-reboot · Maintenance on the host. - not a list entry"
        " Resource: not a fact · before the next window",
    )
    (alert,) = alert_notices(watch_view(result, policy(schedule=None), FLEET, NOW))
    assert dict(card_for(alert).facts)["Resource"] == "arn:aws:rds:ap-northeast-1:123456789012:db:a"
    assert "within 14d." in alert.text


def test_the_document_is_the_json_contract() -> None:
    result = WatchResult(
        items=(item("db", NOW + timedelta(hours=5), source="rds", kind="db-upgrade", warning="single-AZ"),),
        unavailable=(("health", "SubscriptionRequiredException: a Business support plan is needed"),),
    )
    document = watch_view(result, POLICY, FLEET, NOW).document()
    json.dumps(document)  # JSON as it is
    assert document["next_window"] == {"start": "2026-12-12T02:00:00+09:00", "end": "2026-12-12T13:00:00+09:00"}
    assert document["complete"] is False
    assert document["unavailable"] == [
        {"what": "health", "reason": "SubscriptionRequiredException: a Business support plan is needed"}
    ]
    assert document["summary"] == {"items": 1, "within_horizon": 1, "before_window": 1, "downtime": 0, "warnings": 1}
    (entry,) = document["items"]
    assert entry["due_at"] == "2026-12-07T05:00:00+00:00" and entry["source_name"] == "RDS pending maintenance"
    assert entry["before_window"] and entry["concern"] == "other" and entry["warning"] == "single-AZ"
    assert set(entry) >= {"id", "resource_id", "starts_at", "ends_at", "deadline", "instance_id", "in_progress"}


# ---------------------------------------------------------------- notices


def test_an_alert_per_item_due_before_the_window_whose_id_follows_the_due_time() -> None:
    reboot = item("web", NOW + timedelta(days=1), instance_id="i-0web", downtime=True, description="host maintenance")
    later = item("late", WINDOW + timedelta(days=1), instance_id="i-0web")
    view = watch_view(WatchResult(items=(reboot, later)), POLICY, FLEET, NOW)
    (alert,) = alert_notices(view)
    assert alert.topic == "maintenance_alert" and alert.severity == "warning" and alert.run_id == "monthly-fleet"
    assert alert.id == "monthly-fleet:maintenance-alert:ec2:web:20261208T0000Z"
    assert alert.text.splitlines() == [
        "web: EC2 scheduled event system-reboot due 2026-12-08 09:00 JST, before the next patch window"
        " (2026-12-12 02:00 JST). Plan for its downtime, or move it into a patch window where the cloud allows.",
        "host maintenance",
        "Resource: i-0web",
        "Downtime: expected",
    ]
    again = alert_notices(watch_view(WatchResult(items=(reboot, later)), POLICY, FLEET, NOW + timedelta(hours=1)))
    assert [n.id for n in again] == [alert.id]  # a repeated read: the same alert
    moved = replace(reboot, starts_at=NOW + timedelta(days=2))
    (rescheduled,) = alert_notices(watch_view(WatchResult(items=(moved,)), POLICY, FLEET, NOW))
    assert rescheduled.id != alert.id  # rescheduled: alerted again


def test_the_alert_card_mentions_on_call_and_shows_the_resource_and_downtime_as_facts() -> None:
    db = item(
        "orders",
        NOW + timedelta(hours=6),
        source="rds",
        kind="db-upgrade",
        downtime=True,
        warning="single-AZ database: this maintenance means downtime",
        deadline=NOW + timedelta(days=3),
    )
    (alert,) = alert_notices(watch_view(WatchResult(items=(db,)), POLICY, FLEET, NOW))
    card = card_for(alert)
    assert card.alert and card.title == "Cloud maintenance before the next window: monthly-fleet"
    assert "WARNING single-AZ database: this maintenance means downtime" in card.text
    assert dict(card.facts) == {
        "Policy": "monthly-fleet",
        "Resource": "arn:aws:rds:ap-northeast-1:123456789012:db:orders",
        "Deadline": "2026-12-10 09:00 JST",
        "Downtime": "expected",
    }
    slack = slack_message(card, "<!subteam^S0ONCALL>")
    assert_slack_within_limits(slack)
    assert slack["blocks"][1]["text"]["text"].startswith(":warning: <!subteam^S0ONCALL> orders: RDS pending")
    teams = teams_message(card, ONCALL)
    assert_teams_within_limits(teams)
    assert card_content(teams)["msteams"]["entities"][0]["text"] == "<at>Patch on-call</at>"


def test_the_digest_lists_everything_within_the_horizon_and_says_loudly_what_was_not_read() -> None:
    result = WatchResult(
        items=(
            item("web", NOW + timedelta(days=1), instance_id="i-0web", downtime=True),
            item("ledger", WINDOW + timedelta(days=3), instance_id="i-0ledger", kind="instance-retirement"),
            item("far", NOW + timedelta(days=40), instance_id="i-0web"),
        ),
        unavailable=(("rds 123456789012 ap-northeast-3", "AccessDenied"),),
    )
    notice = digest_notice(watch_view(result, POLICY, FLEET, NOW), NOW)  # the digest's cron time
    assert notice.id == "monthly-fleet:maintenance-digest:20261207T0000Z" and notice.topic == "maintenance_digest"
    assert notice.severity == "warning"
    lines = notice.text.splitlines()
    assert lines[0] == (
        "2 maintenance items within 14d for policy monthly-fleet: 1 before the next window, 1 with downtime."
        " Act on each one due before the next window: it has an alert of its own."
        " 1 source could not be read: what it holds is unknown; fix its access (Not read, below)."
    )
    assert "Not read: rds 123456789012 ap-northeast-3: AccessDenied" in lines
    card = card_for(notice)
    assert not card.alert and card.items_label == "Maintenance (2)"
    assert (
        card.items[0]
        == "2026-12-08 09:00 JST · web · EC2 scheduled event system-reboot · downtime · before the next window"
    )
    assert "ledger (frozen: tag PatchPolicy=frozen)" in card.items[1]
    assert ("Next window", "2026-12-12 02:00 JST") in card.facts
    assert "Not read: rds 123456789012 ap-northeast-3: AccessDenied" in card.text
    for message in (slack_message(card), teams_message(card)):
        assert "Not read: rds" in json.dumps(message)
    assert_slack_within_limits(slack_message(card))
    assert_teams_within_limits(teams_message(card))


def test_an_empty_digest_says_nothing_is_scheduled_unless_a_source_was_not_read() -> None:
    quiet = digest_notice(watch_view(WatchResult(), POLICY, FLEET, NOW), NOW)
    assert quiet.text.startswith("No maintenance scheduled by the clouds within 14d for policy monthly-fleet.")
    assert quiet.severity == "info"
    blind = digest_notice(watch_view(WatchResult(unavailable=(("azure", "403"),)), POLICY, FLEET, NOW), NOW)
    assert blind.text.startswith("No maintenance scheduled in the sources read within 14d")
    assert "Not read: azure: 403" in blind.text and blind.severity == "warning"


def test_a_digest_of_a_thousand_items_fits_both_platforms() -> None:
    items = tuple(item(f"db-{n:04d}", NOW + timedelta(minutes=n), source="rds") for n in range(1000))
    notice = digest_notice(watch_view(WatchResult(items=items), POLICY, FLEET, NOW), NOW)
    assert "800 more are not listed here" in notice.text
    card = card_for(notice)
    assert len(card.items) == 200
    assert_slack_within_limits(slack_message(card))
    assert_teams_within_limits(teams_message(card))


# ---------------------------------------------------------------- the simulated source


def test_simulated_hints_count_from_the_hour_of_the_read_so_reads_within_it_agree() -> None:
    hints = Simulation(
        maintenance=(
            MaintenanceHint(in_hours=30, description="host"),
            MaintenanceHint(
                kind="Redeploy", at=datetime(2026, 12, 20, tzinfo=UTC), duration_minutes=60, downtime=False
            ),
        )
    )
    vm = Instance(
        id="/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/virtualMachines/vm1",
        cloud="azure",
        region="japaneast",
        os="windows",
        simulation=hints,
    )
    source = SimulatedMaintenance()
    first = source.upcoming_maintenance(POLICY, [vm, WEB], NOW + timedelta(minutes=5))
    second = source.upcoming_maintenance(POLICY, [vm, WEB], NOW + timedelta(minutes=50))
    assert first == second and not first.unavailable
    reboot, redeploy = first.items
    assert reboot.starts_at == NOW + timedelta(hours=30) and reboot.ends_at == NOW + timedelta(hours=32)
    assert reboot.source == "azure" and reboot.instance_id == vm.id and reboot.resource_name == "vm1"
    assert redeploy.kind == "Redeploy" and not redeploy.downtime
    ended = source.upcoming_maintenance(POLICY, [vm], datetime(2026, 12, 20, 1, 0, tzinfo=UTC))
    assert [i.kind for i in ended.items] == ["system-reboot"]  # the Redeploy is over


def test_a_hint_needs_exactly_one_time() -> None:
    entry = {"id": "i-1", "cloud": "aws", "region": "r", "os": "linux"}
    for hint in ({"kind": "system-reboot"}, {"in_hours": 1, "at": "2026-12-20T00:00Z"}):
        with pytest.raises(InputError, match="give exactly one of in_hours or at"):
            parse_inventory({"instances": [{**entry, "simulation": {"maintenance": [hint]}}]}, "inv.json")


def test_the_example_fleet_announces_maintenance_on_a_managed_a_frozen_and_an_azure_machine() -> None:
    instances = load_inventory(str(EXAMPLES / "fleet.json"))
    view = watch_view(SimulatedMaintenance().upcoming_maintenance(POLICY, instances, NOW), POLICY, instances, NOW)
    assert {(w.item.resource_name, w.concern) for w in view.items} == {
        ("api-tyo-02", "fleet"),
        ("sql-01", "fleet"),
        ("ledger-01", "frozen"),
    }


def test_the_simulated_fleet_of_the_local_runtime_reports_the_same_hints(tmp_path: Path) -> None:
    from clocks import ManualClock

    from patchpilot.adapters.local.simulated_fleet import SimulatedFleet

    instances = load_inventory(str(EXAMPLES / "fleet.json"))
    with SimulatedFleet(tmp_path / "state.db", ManualClock(NOW)) as fleet:
        found = fleet.upcoming_maintenance(POLICY, instances, NOW)
    assert found == SimulatedMaintenance().upcoming_maintenance(POLICY, instances, NOW)
    assert len(found.items) == 3
