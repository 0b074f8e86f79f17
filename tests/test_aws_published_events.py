"""The EventBridge events PatchPilot consumes, as AWS documents them (tests/events/aws-published/,
each with its source in _sources.json), read by PatchPilot's own parser; and the hand-made
events of tests/events/advisories/ held to the documented shapes.

The hand-made Inspector and Health events in tests/events/advisories/ were written by the project
(shaped after these pages); they stay, because they cover cases the documentation has no sample
for (a CRITICAL openssl finding, a frozen instance, a scheduled reboot). The last test confirms
that they use no field the documented samples or the pages' field tables do not have.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from patchpilot.advisories.models import HealthNotice, Unactionable
from patchpilot.advisories.parsing import parse_event

EVENTS = Path(__file__).resolve().parent / "events"
PUBLISHED = EVENTS / "aws-published"

# Fields the hand-made events use that no recorded sample shows, and where AWS documents them.
DOCUMENTED_ELSEWHERE = {
    "detail.resources[].tags": "Inspector page: 'detail.resources.tags is where key-value data is stored'",
    "detail.packageVulnerabilityDetails.vulnerablePackages[].release": "Inspector page, ECR package vulnerability tab",
    "detail.resources[].details.awsEcrContainerImage": "Inspector page, ECR package vulnerability tab",
    "detail.resources[].details.awsEcrContainerImage.imageHash": "Inspector page, ECR package vulnerability tab",
    "detail.resources[].details.awsEcrContainerImage.repositoryName": "Inspector page, ECR package vulnerability tab",
    "detail.affectedEntities[].tags": "ASSUMED (Health API AffectedEntity has tags; PatchPilot does not read them)",
}


def published(name: str) -> Any:
    return json.loads((PUBLISHED / name).read_text())


def test_every_published_event_names_its_source() -> None:
    sources = json.loads((PUBLISHED / "_sources.json").read_text())
    files = {p.name for p in PUBLISHED.glob("*.json") if not p.name.startswith("_")}
    assert files == {k for k in sources if not k.startswith("_")}
    assert all(sources[name] for name in files)


def test_a_documented_inspector_package_finding_is_read_and_its_closed_status_respected() -> None:
    delivery = parse_event(published("inspector_ec2_package_vulnerability.json"), "sample")
    assert isinstance(delivery, Unactionable)
    assert delivery.source == "inspector"
    assert delivery.reason == "finding is CLOSED, not ACTIVE"


def test_a_documented_inspector_package_finding_once_active_is_an_advisory() -> None:
    """The same sample with status ACTIVE: every field PatchPilot reads is where the docs put it."""
    raw = published("inspector_ec2_package_vulnerability.json")
    raw["detail"]["status"] = "ACTIVE"
    delivery = parse_event(raw, "sample")
    assert not isinstance(delivery, (Unactionable, HealthNotice)), delivery
    document = json.dumps(delivery.document() if hasattr(delivery, "document") else vars(delivery), default=str)
    for value in ("CVE-2024-29069", "MEDIUM", "i-12345678901234567", "snapd"):
        assert value in document


def test_a_documented_network_reachability_finding_is_not_a_patch_advisory() -> None:
    delivery = parse_event(published("inspector_ec2_network_reachability.json"), "sample")
    assert isinstance(delivery, Unactionable)
    assert "NETWORK_REACHABILITY" in delivery.reason


@pytest.mark.parametrize(
    ("name", "category", "affected"),
    [
        ("health_ec2_operational_issue.json", "issue", ()),
        ("health_ec2_instance_store_drive_performance_degraded.json", "issue", ("i-abcd1111",)),
        # the documented sample names the instance by ARN; PatchPilot matches instance ids
        ("health_ec2_instance_retirement_scheduled.json", "scheduledChange", ("i-1234567890abcdef0",)),
    ],
)
def test_documented_health_events_are_read(name: str, category: str, affected: tuple[str, ...]) -> None:
    raw = published(name)
    notice = parse_event(raw, "sample")
    assert isinstance(notice, HealthNotice)
    assert notice.category == category
    assert notice.type_code == raw["detail"]["eventTypeCode"]
    assert notice.region == raw["detail"]["eventRegion"]
    assert notice.affected == affected
    assert notice.start == raw["detail"]["startTime"]


def _paths(value: Any, prefix: str = "") -> set[str]:
    found: set[str] = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            path = f"{prefix}.{key}" if prefix else key
            found.add(path)
            if not path.endswith("tags"):  # user data: any key
                found |= _paths(inner, path)
    elif isinstance(value, list):
        for inner in value:
            found |= _paths(inner, prefix + "[]")
    return found


def test_the_hand_made_inspector_and_health_events_use_only_documented_fields() -> None:
    documented: dict[str, set[str]] = {}
    for path in PUBLISHED.glob("*.json"):
        if not path.name.startswith("_"):
            raw = json.loads(path.read_text())
            documented.setdefault(raw["detail-type"], set()).update(_paths(raw))
    checked = 0
    for path in sorted((EVENTS / "advisories").glob("*.json")):
        try:
            raw = json.loads(path.read_text())
        except ValueError:
            continue  # the deliberately malformed ones
        if not isinstance(raw, dict) or raw.get("detail-type") not in documented:
            continue
        checked += 1
        unknown = _paths(raw) - documented[raw["detail-type"]] - set(DOCUMENTED_ELSEWHERE)
        assert not unknown, f"{path.name} uses fields no AWS sample shows: {sorted(unknown)}"
    assert checked >= 10


# ------------------------------------------- Run Command and EBS events (the speed issue's wake-ups)


def filled(raw: Any, time: str = "2026-01-13T02:10:00Z") -> Any:
    """The EBS page prints placeholder times (yyyy-mm-ddThh:mm:ssZ): a real event has a time."""
    text = json.dumps(raw).replace("yyyy-mm-ddThh:mm:ssZ", time)
    return json.loads(text)


@pytest.mark.parametrize(
    "name",
    [
        "ssm_command_status_change.json",
        "ssm_command_invocation_status_change.json",
        "ebs_create_snapshots_succeeded.json",
        "ebs_create_snapshots_failed.json",
    ],
)
def test_run_command_and_ebs_events_reaching_the_advisory_intake_are_ignored_not_refused(name: str) -> None:
    """PatchPilot does not consume these yet (issue 17 will, as wake-ups); routed to the advisory
    function by a broad rule, each is set aside as not handled, never an error."""
    delivery = parse_event(filled(published(name)), "sample")
    assert isinstance(delivery, Unactionable)
    assert "not handled" in delivery.reason


def test_the_documented_wake_up_events_carry_what_a_wake_up_needs() -> None:
    """What issue 17's handler can key on, as the documentation shows it: the command id and status
    (per instance for invocations); for snapshots, snapshot and volume ARNs only (no instance id,
    no tags: the run is found through the snapshots' tags)."""
    command = published("ssm_command_status_change.json")["detail"]
    assert {"command-id", "document-name", "status"} <= set(command)
    invocation = published("ssm_command_invocation_status_change.json")["detail"]
    assert {"command-id", "instance-id", "status"} <= set(invocation)
    assert "comment" not in command and "comment" not in invocation
    snapshots = published("ebs_create_snapshots_succeeded.json")["detail"]
    assert snapshots["event"] == "createSnapshots" and snapshots["result"] == "succeeded"
    assert all(set(s) == {"snapshot_id", "source", "status"} for s in snapshots["snapshots"])
    assert all(":volume/vol-" in s["source"] for s in snapshots["snapshots"])
