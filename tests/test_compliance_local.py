"""Compliance on the local runtime: the simulated fleet's assessment (PatchAssessor), the
`patchpilot compliance` command (local and, through a fake, cloud), and the policy kinds of
`patchpilot run`."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from clocks import ManualClock

from patchpilot import cli_compliance
from patchpilot.adapters.local.clock import VirtualClock
from patchpilot.adapters.local.simulated_fleet import CATALOG, SimulatedFleet, lacking
from patchpilot.cli import main
from patchpilot.compliance.model import AssessmentStarted, PatchState
from patchpilot.engine.messages import InstallPatches, InstallTarget, RestoreTarget, RollBack
from patchpilot.inventory import Instance, Simulation
from patchpilot.policy import Policy
from patchpilot.ports import DiscoveryResult, InProgress

ROOT = Path(__file__).resolve().parent.parent
POLICY = str(ROOT / "examples" / "policy.yaml")
FLEET = str(ROOT / "examples" / "fleet.json")
T0 = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def fleet(tmp_path: Path, clock: ManualClock) -> Iterator[SimulatedFleet]:
    with SimulatedFleet(tmp_path / "fleet.db", clock) as fleet:
        yield fleet


def vm(instance_id: str = "i-1", os: str = "linux", **hints: Any) -> Instance:
    simulation = Simulation(**hints) if hints else None
    return Instance(id=instance_id, cloud="aws", region="r", os=os, simulation=simulation)  # type: ignore[arg-type]


def install(
    fleet: SimulatedFleet, clock: ManualClock, *instances: Instance, run_id: str = "run-1", **fields: Any
) -> None:
    command = InstallPatches(
        id=f"{run_id}:install",
        run_id=run_id,
        targets=[InstallTarget(instance=i) for i in instances],
        classifications=["Critical", "Security"],
        **fields,
    )
    while isinstance(progress := fleet.install_patches(command), InProgress):
        clock.set(progress.retry_at)
    assert progress


def roll_back(fleet: SimulatedFleet, clock: ManualClock, *instances: Instance, run_id: str = "run-1") -> None:
    targets = [RestoreTarget(instance=i, snapshot_ids=["snap-1"]) for i in instances]
    command = RollBack(id=f"{run_id}:rollback", run_id=run_id, targets=targets)
    while isinstance(progress := fleet.roll_back(command), InProgress):
        clock.set(progress.retry_at)


def missing_ids(state: PatchState) -> list[str]:
    return [p.id for p in state.missing]


# ---------------------------------------------------------------- the simulated assessment


def test_a_missing_hint_is_what_the_assessment_reports(fleet: SimulatedFleet) -> None:
    (state,) = fleet.patch_states([vm(missing=("KB9999999", "KB5048661"), os="windows")])
    assert missing_ids(state) == ["KB9999999", "KB5048661"]
    known = state.missing[1]
    assert (known.classification, known.severity, known.released_at) == (
        "Security",
        "Critical",
        datetime(2026, 11, 23, tzinfo=UTC),
    )
    (clean,) = fleet.patch_states([vm(missing=())])
    assert clean.missing == () and clean.assessed_at == T0


def test_without_a_hint_each_machine_lacks_a_stable_share_of_the_catalogue(fleet: SimulatedFleet) -> None:
    machines = [vm(f"i-{n}") for n in range(40)]
    first = [missing_ids(s) for s in fleet.patch_states(machines)]
    assert first == [missing_ids(s) for s in fleet.patch_states(machines)]  # deterministic
    catalogue = [p for p, _ in CATALOG["linux"]]
    assert all(set(ids) <= set(catalogue) for ids in first)
    assert len({tuple(ids) for ids in first}) > 5  # not every machine lacks the same


def test_a_patched_machine_lacks_only_what_the_policy_does_not_install(
    fleet: SimulatedFleet, clock: ManualClock
) -> None:
    machine = vm("i-7", missing=("KB0000001",), os="windows")
    install(fleet, clock, machine)
    (state,) = fleet.patch_states([machine])
    assert state.missing == () and state.last_install_at is not None  # an unknown hinted patch counts as Security
    linux = vm("i-8")
    install(fleet, clock, linux, run_id="run-2")
    (after,) = fleet.patch_states([linux])
    assert {p.classification for p in after.missing} <= {"Other"}


def test_a_rolled_back_machine_still_lacks_its_patches(fleet: SimulatedFleet, clock: ManualClock) -> None:
    machine = vm("i-9", missing=("openssl-3.0.13-1.el9",))
    install(fleet, clock, machine)
    roll_back(fleet, clock, machine)
    (state,) = fleet.patch_states([machine])
    assert missing_ids(state) == ["openssl-3.0.13-1.el9"] and state.last_install_at is None


def test_a_failed_install_marks_the_patches_failed(fleet: SimulatedFleet, clock: ManualClock) -> None:
    machine = vm("i-10", missing=("openssl-3.0.13-1.el9",), install="fail")
    install(fleet, clock, machine)
    (state,) = fleet.patch_states([machine])
    assert [p.gap for p in state.missing] == ["failed"]


def test_an_install_without_reboot_leaves_a_pending_reboot(fleet: SimulatedFleet, clock: ManualClock) -> None:
    machine = vm("i-11", missing=("openssl-3.0.13-1.el9",))
    install(fleet, clock, machine, reboot="never")
    (state,) = fleet.patch_states([machine])
    assert state.reboot_pending and [p.gap for p in state.missing] == ["pending_reboot"]


def test_an_offline_agent_gives_no_assessment_and_no_scan(fleet: SimulatedFleet, clock: ManualClock) -> None:
    online, offline = vm("i-on"), vm("i-off", agent="offline")
    started = fleet.start_assessment([online, offline], "t-1")
    assert started.started == 1 and started.refused[0][0] == "i-off"
    states = fleet.patch_states([online, offline])
    assert states[0].assessed_at == T0 and states[1].error.startswith("SSM agent not reporting")


def test_a_scan_is_recorded_once_per_token(fleet: SimulatedFleet, clock: ManualClock) -> None:
    machine = vm("i-1")
    fleet.start_assessment([machine], "t-1")
    clock.advance(timedelta(hours=2))
    fleet.start_assessment([machine], "t-1")  # the same token again: nothing new
    assert fleet.patch_states([machine])[0].assessed_at == T0
    fleet.start_assessment([machine], "t-2")
    assert fleet.patch_states([machine])[0].assessed_at == T0 + timedelta(hours=2)


def test_lacking_is_the_hint_without_repeats() -> None:
    assert lacking(vm(missing=("a", "b", "a"))) == ["a", "b"]


# ---------------------------------------------------------------- patchpilot compliance (local)


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"COLUMNS": "200"}, catch_exceptions=False)


def local(tmp_path: Path, *args: str) -> Result:
    return run("compliance", "--policy", POLICY, "--inventory", FLEET, "--state-dir", str(tmp_path / "state"), *args)


def test_the_example_fleet_gives_a_report_and_exit_1_for_non_compliant_machines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATCHPILOT_VIRTUAL_START", T0.isoformat())  # sql-legacy's exception is in force
    result = local(tmp_path)
    assert result.exit_code == cli_compliance.EXIT_NON_COMPLIANT, result.output
    assert result.stdout.startswith("# Patch compliance: monthly-fleet\n")
    assert "1 machine is EXPOSED" in result.stdout and "ledger-01" in result.stdout
    assert "## Excepted machines" in result.stdout and "| sql-legacy | production | vendor certifies" in result.stdout


def test_after_a_local_run_patched_machines_are_compliant_and_the_rolled_back_one_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATCHPILOT_VIRTUAL_START", T0.isoformat())  # sql-legacy's exception is in force
    state = str(tmp_path / "state")
    assert run("run", "--policy", POLICY, "--inventory", FLEET, "--state-dir", state, "--json").exit_code == 0
    document = json.loads(local(tmp_path, "--json").stdout)
    statuses = {i["name"]: i["status"] for i in document["instances"]}
    assert statuses["api-tyo-05"] == "non_compliant"  # its health check failed: rolled back
    assert statuses["ledger-01"] == "exposed" and statuses["sql-legacy"] == "excepted"
    assert statuses["bastion-01"] == "unmanaged"
    assert [n for n, s in statuses.items() if s == "compliant"] and document["totals"]["machines"]["compliant"] == 62


def test_after_a_local_run_each_patched_machine_names_that_run_and_the_rolled_back_one_none(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    ran = run("run", "--policy", POLICY, "--inventory", FLEET, "--state-dir", state, "--json")
    run_id = json.loads(ran.stdout)["run_id"]
    document = json.loads(local(tmp_path, "--json").stdout)
    last = {i["name"]: i["last_run"] for i in document["instances"]}
    patched = [n for n, s in ((i["name"], i["status"]) for i in document["instances"]) if s == "compliant"]
    assert all(last[n] is not None and last[n]["run_id"] == run_id for n in patched)
    assert last["api-tyo-05"] is None and last["ledger-01"] is None  # rolled back; frozen
    assert document["policies"][0]["runs_read"] is True
    rows = {r["name"]: r for r in csv.DictReader(io.StringIO(local(tmp_path, "--format", "csv").stdout))}
    assert rows[patched[0]]["last_run_id"] == run_id and rows["api-tyo-05"]["last_run_id"] == ""


def test_a_run_store_that_cannot_be_read_leaves_the_last_runs_out_not_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("database disk image is malformed")

    monkeypatch.setattr(cli_compliance, "recent_runs", broken)
    result = CliRunner().invoke(
        main, ["compliance", "--policy", POLICY, "--inventory", FLEET, "--state-dir", str(tmp_path / "s"), "--json"]
    )
    document = json.loads(result.stdout)
    assert result.exit_code == 1 and document["policies"][0]["runs_read"] is False
    assert all(i["last_run"] is None for i in document["instances"])
    assert "last runs not shown, the run store cannot be read: database disk image is malformed" in result.stderr


def test_formats_print_csv_html_and_json(tmp_path: Path) -> None:
    rows = list(csv.DictReader(io.StringIO(local(tmp_path, "--format", "csv").stdout)))
    assert {r["instance_id"] for r in rows} and rows[0]["policy"] == "monthly-fleet"
    assert local(tmp_path, "--format", "html").stdout.startswith("<!DOCTYPE html>")
    assert json.loads(local(tmp_path, "--format", "json").stdout)["version"] == 1


def test_out_writes_the_three_reports_and_prints_where(tmp_path: Path) -> None:
    result = local(tmp_path, "--out", str(tmp_path / "out"))
    paths = result.stdout.split()
    assert [Path(p).suffix for p in paths] == [".md", ".html", ".csv"] and all(Path(p).is_file() for p in paths)
    document = json.loads(local(tmp_path, "--out", str(tmp_path / "out"), "--json").stdout)
    assert set(document["report"]) == {"md", "html", "csv"}


def test_a_scan_is_started_first_and_reported_on_stderr(tmp_path: Path) -> None:
    result = local(tmp_path, "--scan", "--wait", "5m", "--json")
    assert "monthly-fleet: scan started on 66 of 66 machines" in result.stderr
    assert "scan: 66 of 66 machines assessed" in result.stderr
    assert json.loads(result.stdout)["totals"]["instances"] == 66


def test_several_policies_make_one_view(tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(Path(POLICY).read_text().replace("name: monthly-fleet", "name: other-fleet"))
    result = run(
        "compliance",
        "--policy",
        POLICY,
        "--policy",
        str(other),
        "--inventory",
        FLEET,
        "--state-dir",
        str(tmp_path),
        "--json",
    )
    document = json.loads(result.stdout)
    assert [p["name"] for p in document["policies"]] == ["monthly-fleet", "other-fleet"]
    assert document["totals"]["instances"] == 132


def test_an_all_compliant_fleet_exits_0(tmp_path: Path) -> None:
    inventory = tmp_path / "fleet.json"
    inventory.write_text(
        json.dumps(
            {
                "instances": [
                    {
                        "id": "i-1",
                        "cloud": "aws",
                        "region": "r",
                        "os": "linux",
                        "tags": {"Environment": "staging"},
                        "simulation": {"missing": []},
                    }
                ]
            }
        )
    )
    result = run("compliance", "--policy", POLICY, "--inventory", str(inventory), "--state-dir", str(tmp_path / "s"))
    assert result.exit_code == 0, result.output
    assert "**1 of 1 machines compliant**" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give --inventory FILE (the simulated fleet) or --cloud"),
        (("--inventory", FLEET, "--cloud"), "not both"),
        (("--inventory", FLEET, "--wait", "5m"), "--wait waits for the scan that --scan starts"),
        (("--inventory", FLEET, "--json", "--format", "csv"), "--json and --format csv ask for two outputs"),
        (("--inventory", FLEET, "--scan", "--wait", "soon"), 'expected a duration such as "10m"'),
        (("--inventory", FLEET, "--format", "pdf"), "'pdf' is not one of"),
        (("--cloud", "--state-dir", "x"), "--state-dir is the local runtime's"),
    ],
)
def test_bad_options_exit_2_saying_why(args: tuple[str, ...], message: str) -> None:
    result = run("compliance", "--policy", POLICY, *args)
    assert result.exit_code == 2 and message in result.stderr


def test_a_bad_policy_or_inventory_exits_2_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nrings: []\n")
    result = run("compliance", "--policy", str(bad), "--inventory", FLEET)
    assert result.exit_code == 2 and f"{bad}" in result.stderr
    broken = tmp_path / "fleet.json"
    broken.write_text('{"instances": [{"id": "i-1"}]}')
    result = run("compliance", "--policy", POLICY, "--inventory", str(broken), "--state-dir", str(tmp_path))
    assert result.exit_code == 2 and "instances[0]" in result.stderr


def test_the_same_policy_twice_exits_2() -> None:
    result = run("compliance", "--policy", POLICY, "--policy", POLICY, "--inventory", FLEET)
    assert result.exit_code == 2 and "policy monthly-fleet is also in" in result.stderr


# ---------------------------------------------------------------- patchpilot compliance --cloud (a fake fleet)


class FakeCloud:
    """Discovers two machines; a scan is assessed after `polls` reads of patch_states."""

    cloud = "aws"

    def __init__(self, clock: ManualClock, polls: int) -> None:
        self.clock = clock
        self.polls = polls
        self.tokens: list[str] = []
        self.offline: set[str] = set()
        self.scanned_at: datetime | None = None
        self.machines = [
            Instance(id=name, cloud="aws", region="r", os="linux", tags={"Environment": "staging"})
            for name in ("i-a", "i-b")
        ]

    def discover(self, policy: Policy) -> DiscoveryResult:
        return DiscoveryResult(self.machines)

    def start_assessment(self, instances: Sequence[Instance], token: str) -> AssessmentStarted:
        self.tokens.append(token)
        refused = tuple((i.id, "SSM agent not reporting") for i in instances if i.id in self.offline)
        return AssessmentStarted(started=len(instances) - len(refused), refused=refused)

    def patch_states(self, instances: Sequence[Instance]) -> list[PatchState]:
        self.polls -= 1
        at = self.clock.now() if self.polls <= 0 else T0 - timedelta(days=1)
        old = T0 - timedelta(days=3)  # an offline machine keeps its last assessment
        return [PatchState(i.id, assessed_at=old if i.id in self.offline else at) for i in instances]


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch, clock: ManualClock) -> Iterator[FakeCloud]:
    fake = FakeCloud(clock, polls=3)
    monkeypatch.setattr("patchpilot.bootstrap.clouds.cloud_fleets", lambda policy, c: [fake])
    monkeypatch.setattr(cli_compliance, "wall_clock", lambda: clock)
    monkeypatch.setattr(cli_compliance, "sleep", lambda seconds: clock.advance(timedelta(seconds=seconds)))
    yield fake


def test_cloud_scan_waits_until_every_machine_is_assessed_after_it(cloud: FakeCloud, clock: ManualClock) -> None:
    result = run("compliance", "--policy", POLICY, "--cloud", "--scan", "--wait", "10m", "--json")
    assert result.exit_code == 0, result.output
    assert cloud.tokens == ["cli-20261201T000000"]
    assert (
        result.stderr.count("scan: 0 of 2 machines assessed") == 2 and "scan: 2 of 2 machines assessed" in result.stderr
    )
    assert clock.now() == T0 + 2 * cli_compliance.POLL_INTERVAL


def test_cloud_scan_does_not_wait_for_machines_it_could_not_scan(cloud: FakeCloud, clock: ManualClock) -> None:
    cloud.offline = {"i-b"}
    cloud.polls = 1
    result = run("compliance", "--policy", POLICY, "--cloud", "--scan", "--wait", "10m", "--json")
    assert "monthly-fleet: scan started on 1 of 2 machines" in result.stderr
    assert "  not scanned: i-b: SSM agent not reporting" in result.stderr
    assert "scan: 1 of 1 machines assessed" in result.stderr and clock.now() == T0


def test_cloud_scan_gives_up_after_the_wait_and_shows_the_last_assessment(cloud: FakeCloud, clock: ManualClock) -> None:
    cloud.polls = 100
    result = run("compliance", "--policy", POLICY, "--cloud", "--scan", "--wait", "30s", "--json")
    assert "scan: 2 machines not assessed within 30s; their last assessment is shown" in result.stderr
    assert clock.now() == T0 + timedelta(seconds=30)
    assert json.loads(result.stdout)["instances"][0]["assessed_at"] == (T0 - timedelta(days=1)).isoformat()


def test_cloud_without_scan_reads_the_latest_assessment(cloud: FakeCloud) -> None:
    result = run("compliance", "--policy", POLICY, "--cloud", "--json")
    assert cloud.tokens == [] and json.loads(result.stdout)["totals"]["machines"]["compliant"] == 2


def test_a_policy_on_both_clouds_is_one_policy_in_the_view(
    cloud: FakeCloud, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    azure = FakeCloud(clock, polls=0)
    azure.cloud = "azure"
    azure.machines = [
        Instance(
            id="/subscriptions/s/vm-1",
            cloud="azure",
            region="japaneast",
            os="windows",
            tags={"Environment": "production"},
        )
    ]
    monkeypatch.setattr("patchpilot.bootstrap.clouds.cloud_fleets", lambda policy, c: [cloud, azure])
    result = run("compliance", "--policy", POLICY, "--cloud", "--json")
    document = json.loads(result.stdout)
    assert [p["name"] for p in document["policies"]] == ["monthly-fleet"]
    assert {i["cloud"] for i in document["instances"]} == {"aws", "azure"} and document["totals"]["instances"] == 3
    assert "monthly-fleet: 1 machine on azure" in result.stderr


def test_a_policy_without_a_cloud_section_exits_2(tmp_path: Path) -> None:
    cloudless = str(ROOT / "tests" / "fixtures" / "policy.yaml")  # the example has an aws section
    result = run("compliance", "--policy", cloudless, "--cloud")
    assert result.exit_code == 2 and "neither an aws nor an azure section" in result.stderr


# ---------------------------------------------------------------- patchpilot run and the policy kinds


def state_at(directory: Path, start: datetime = T0) -> str:
    """A state directory whose virtual clock starts at `start`."""
    directory.mkdir(parents=True, exist_ok=True)
    VirtualClock(directory / "state.db", start).close()
    return str(directory)


def kind_policy(tmp_path: Path, kind: str, extra: str = "") -> str:
    path = tmp_path / f"{kind}.yaml"
    path.write_text(Path(POLICY).read_text() + f"kind: {kind}\n{extra}")
    return str(path)


def test_run_refuses_a_frozen_policy(tmp_path: Path) -> None:
    result = run("run", "--policy", kind_policy(tmp_path, "frozen"), "--inventory", FLEET, "--state-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "kind: policy monthly-fleet is frozen: it is never patched" in result.stderr


def test_a_non_periodic_policy_with_nothing_pending_skips_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inventory = tmp_path / "fleet.json"
    machines = [
        {
            "id": f"i-{n}",
            "cloud": "aws",
            "region": "r",
            "os": "linux",
            "tags": {"Environment": "staging"},
            "simulation": {"missing": []},
        }
        for n in range(3)
    ]
    inventory.write_text(json.dumps({"instances": machines}))
    state = Path(state_at(tmp_path / "state"))
    result = run(
        "run",
        "--policy",
        kind_policy(tmp_path, "non_periodic"),
        "--inventory",
        str(inventory),
        "--state-dir",
        str(state),
    )
    assert result.exit_code == 0, result.output
    assert "skipped: nothing pending on 3 machines" in result.stdout
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []  # routed without a run
    notices = [json.loads(line) for line in (state / "notifications.jsonl").read_text().splitlines()]
    assert [n["topic"] for n in notices] == ["run_skipped"]
    assert notices[0]["run_id"] == "monthly-fleet-20261212-0200"
    status = run("status", "monthly-fleet-20261212-0200", "--state-dir", str(state))
    assert status.exit_code == 2  # no run was started


def test_a_non_periodic_policy_with_patches_pending_runs(tmp_path: Path) -> None:
    result = run(
        "run",
        "--policy",
        kind_policy(tmp_path, "non_periodic"),
        "--inventory",
        FLEET,
        "--state-dir",
        str(tmp_path),
        "--json",
    )
    assert result.exit_code == 0 and json.loads(result.stdout)["status"] == "succeeded"


def test_an_emergency_policy_runs_now_on_demand_not_at_its_next_window(tmp_path: Path) -> None:
    emergency = "emergency: {min_severity: HIGH}\n"
    state = state_at(tmp_path / "state")
    result = run(
        "run",
        "--policy",
        kind_policy(tmp_path, "emergency", emergency),
        "--inventory",
        FLEET,
        "--state-dir",
        state,
        "--json",
    )
    assert result.exit_code == 0
    assert json.loads(result.stdout)["run_id"].startswith("monthly-fleet-20261201-000000-")  # now, not 2026-12-12
