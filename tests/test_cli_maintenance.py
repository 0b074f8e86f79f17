"""`patchpilot maintenance`: the simulated path on the example fleet, the cloud path over fake
fleets (the cloud adapters have their own tests), bad input and the exit statuses."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import patchpilot.cli_maintenance as cli_maintenance
from patchpilot.cli import EXIT_INVALID_INPUT, main
from patchpilot.cli_maintenance import EXIT_DUE, EXIT_NOTHING_DUE, EXIT_UNREAD
from patchpilot.inventory import Cloud, Instance
from patchpilot.maintenance.model import MaintenanceItem, WatchResult
from patchpilot.policy import Policy
from patchpilot.ports import DiscoveryResult

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
POLICY = str(EXAMPLES / "policy.yaml")
FLEET = str(EXAMPLES / "fleet.json")
MONDAY = "2026-12-07T09:00+09:00"  # the next window: Saturday 12 December, 02:00 Tokyo


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["maintenance", *args], env={"COLUMNS": "220"}, catch_exceptions=False)


def test_the_example_fleet_lists_what_is_due_before_the_next_window_first_and_exits_1() -> None:
    result = run("--policy", POLICY, "--inventory", FLEET, "--now", MONDAY)
    assert result.exit_code == EXIT_DUE, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "Next patch window of monthly-fleet: 2026-12-12 02:00 Sat"
    rows: list[str] = []  # a table row may wrap onto several lines: joined again
    for line in (line for line in lines if line.startswith("│")):
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if cells[1]:
            rows.append("")
        rows[-1] = " ".join(filter(None, [rows[-1], *cells]))
    assert [row.split()[3] for row in rows] == ["api-tyo-02", "sql-01", "ledger-01"]
    assert "before the next window" in rows[0] and "before the next window" in rows[1]
    assert "before the next window" not in rows[2] and "frozen: tag PatchPolicy=frozen" in rows[2]
    assert "retired instances are stopped" in rows[2]
    assert lines[-1] == "2 due before the next window"


def test_json_is_the_view_document() -> None:
    result = run("--policy", POLICY, "--inventory", FLEET, "--now", MONDAY, "--horizon", "3d", "--json")
    assert result.exit_code == EXIT_DUE, result.output
    document = json.loads(result.stdout)
    assert document["horizon"] == "3d" and document["complete"] is True
    assert document["summary"]["before_window"] == 2 and document["summary"]["within_horizon"] == 2
    assert [i["resource_name"] for i in document["items"]] == ["api-tyo-02", "sql-01", "ledger-01"]
    assert [i["within_horizon"] for i in document["items"]] == [True, True, False]


def test_nothing_due_exits_0(tmp_path: Path) -> None:
    fleet = json.loads(Path(FLEET).read_text())
    for instance in fleet["instances"]:
        instance.pop("simulation", None)
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(fleet))
    result = run("--policy", POLICY, "--inventory", str(path), "--now", MONDAY)
    assert result.exit_code == EXIT_NOTHING_DUE, result.output
    assert "No maintenance scheduled within 14d." in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "give exactly one of --inventory FILE (simulated) or --cloud"),
        (("--inventory", FLEET, "--cloud"), "give exactly one of --inventory FILE"),
        (("--inventory", FLEET, "--horizon", "two weeks"), 'expected a duration such as "14d"'),
        (("--inventory", FLEET, "--horizon", "0"), "expected a horizon longer than 0"),
        (("--inventory", FLEET, "--now", "monday"), 'expected an ISO time such as "2026-12-10T09:00+09:00"'),
    ],
)
def test_bad_options_exit_2_naming_the_option(args: tuple[str, ...], expected: str) -> None:
    result = run("--policy", POLICY, *args)
    assert result.exit_code == EXIT_INVALID_INPUT
    assert expected in result.stderr


def test_a_bad_inventory_exits_2_naming_the_place(tmp_path: Path) -> None:
    path = tmp_path / "fleet.json"
    hint = {"kind": "system-reboot"}
    path.write_text(
        json.dumps(
            {
                "instances": [
                    {"id": "i-1", "cloud": "aws", "region": "r", "os": "linux", "simulation": {"maintenance": [hint]}}
                ]
            }
        )
    )
    result = run("--policy", POLICY, "--inventory", str(path))
    assert result.exit_code == EXIT_INVALID_INPUT
    assert "instances[0].simulation.maintenance[0]: give exactly one of in_hours or at" in result.stderr


# ---------------------------------------------------------------- --cloud


def test_a_policy_that_names_no_cloud_cannot_be_read_with_cloud_and_exits_2() -> None:
    cloudless = str(Path(__file__).resolve().parent / "fixtures" / "policy.yaml")  # the example has an aws section
    result = run("--policy", cloudless, "--cloud")
    assert result.exit_code == EXIT_INVALID_INPUT
    assert "policy monthly-fleet has neither an aws nor an azure section: no cloud to read" in result.stderr


class FakeFleet:
    """A cloud fleet as `cloud_fleets` returns it: discovery and the maintenance source."""

    def __init__(self, cloud: Cloud, instances: list[Instance], result: WatchResult | Exception) -> None:
        self.cloud = cloud
        self.instances = instances
        self.result = result
        self.read_at: list[datetime] = []

    def discover(self, policy: Policy) -> DiscoveryResult:
        return DiscoveryResult(self.instances)

    def upcoming_maintenance(self, policy: Policy, instances: Sequence[Instance], now: datetime) -> WatchResult:
        assert list(instances) == self.instances  # what discovery found
        self.read_at.append(now)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


WEB = Instance(id="i-0web", cloud="aws", region="ap-northeast-1", os="linux", tags={"Environment": "production"})


def reboot(at: datetime) -> MaintenanceItem:
    return MaintenanceItem(
        id="ec2:instance-event-0123:i-0web",
        source="ec2",
        cloud="aws",
        resource_id="i-0web",
        resource_name="web",
        kind="system-reboot",
        description="scheduled reboot",
        starts_at=at,
        downtime=True,
        instance_id="i-0web",
    )


def with_fleets(monkeypatch: pytest.MonkeyPatch, *fleets: FakeFleet) -> list[Any]:
    calls: list[Any] = []

    def fake(policy: Policy, clock: Any) -> list[FakeFleet]:
        calls.append(clock.now())
        return list(fleets)

    monkeypatch.setattr(cli_maintenance, "cloud_fleets", fake)
    return calls


def test_the_clouds_are_read_after_discovery_and_a_cloud_that_fails_is_not_read_exit_4(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = datetime.fromisoformat(MONDAY)
    aws = FakeFleet("aws", [WEB], WatchResult(items=(reboot(now + timedelta(days=1)),)))
    azure = FakeFleet("azure", [], PermissionError("AuthorizationFailed: Microsoft.ResourceGraph/resources/read"))
    with_fleets(monkeypatch, aws, azure)
    result = run("--policy", POLICY, "--cloud", "--now", MONDAY, "--json")
    assert result.exit_code == EXIT_UNREAD, result.output
    document = json.loads(result.stdout)
    assert aws.read_at == [now] and azure.read_at == [now]
    assert [i["id"] for i in document["items"]] == ["ec2:instance-event-0123:i-0web"]
    assert document["items"][0]["concern"] == "fleet" and document["items"][0]["before_window"] is True
    assert document["unavailable"] == [
        {
            "what": "azure fleet",
            "reason": "PermissionError: AuthorizationFailed: Microsoft.ResourceGraph/resources/read",
        }
    ]


def test_a_source_the_adapter_could_not_read_is_printed_loudly_and_exits_4(monkeypatch: pytest.MonkeyPatch) -> None:
    unread = WatchResult(unavailable=(("health", "SubscriptionRequiredException: needs a Business support plan"),))
    with_fleets(monkeypatch, FakeFleet("aws", [WEB], unread))
    result = run("--policy", POLICY, "--cloud", "--now", MONDAY)
    assert result.exit_code == EXIT_UNREAD, result.output
    assert "Not read: health: SubscriptionRequiredException: needs a Business support plan" in result.stdout
    assert "No maintenance scheduled in the sources read within 14d." in result.stdout


def test_every_cloud_read_and_nothing_due_before_the_window_exits_0(monkeypatch: pytest.MonkeyPatch) -> None:
    later = reboot(datetime.fromisoformat("2026-12-14T09:00+09:00"))  # after the window
    with_fleets(monkeypatch, FakeFleet("aws", [WEB], WatchResult(items=(later,))))
    result = run("--policy", POLICY, "--cloud", "--now", MONDAY)
    assert result.exit_code == EXIT_NOTHING_DUE, result.output
    assert "0 due before the next window" in result.stdout
