"""`patchpilot run`, `status`, `approve`, `reject`, `report` and `--resume` on the local runtime."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from patchpilot.adapters.local.clock import VirtualClock
from patchpilot.adapters.local.simulated_fleet import SimulatedFleet
from patchpilot.cli import main
from patchpilot.local_runtime import LocalRuntime

pytestmark = pytest.mark.slow  # a runtime: `make test-fast` leaves it out

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "examples" / "policy.yaml"
FLEET = ROOT / "examples" / "fleet.json"
PATCHPILOT = Path(sys.executable).parent / "patchpilot"


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def run_json(*args: str | Path) -> tuple[int, dict[str, Any]]:
    result = cli("run", *args, "--json")
    return result.exit_code, json.loads(result.stdout)


def policy_variant(tmp_path: Path, **replacements: str) -> Path:
    text = POLICY.read_text()
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


def test_example_run_succeeds_and_rolls_back_the_one_bad_instance(tmp_path: Path) -> None:
    code, document = run_json("--policy", POLICY, "--inventory", FLEET, "--state-dir", tmp_path)
    assert code == 0
    assert document["status"] == "succeeded"
    instances = document["instances"]
    assert len(instances) == 66
    rolled_back = {i: v for i, v in instances.items() if v["state"] == "rolled_back"}
    assert len(rolled_back) == 1
    (record,) = rolled_back.values()
    assert record["ring"] == "production" and "health check failed" in record["reason"]
    assert "rolled back from snap-" in record["reason"]
    assert {v["state"] for v in instances.values()} == {"patched", "rolled_back", "excluded"}
    assert all(set(v) >= {"state", "reason", "ring", "wave"} for v in instances.values())
    assert Path(document["report"]["html"]).is_file() and Path(document["report"]["markdown"]).is_file()


def test_a_simulated_health_failure_names_a_check_the_policy_has(tmp_path: Path) -> None:
    fleet = json.loads(FLEET.read_text())
    aws = next(i["id"] for i in fleet["instances"] if i["name"] == "api-tyo-05")  # health: fail in the example
    azure = next(i for i in fleet["instances"] if i["cloud"] == "azure" and i["tags"]["Environment"] == "production")
    azure["simulation"] = {"health": "fail"}
    inventory = tmp_path / "fleet.json"
    inventory.write_text(json.dumps(fleet))

    def rolled_back(policy: Path, state: str) -> dict[str, str]:
        code, document = run_json("--policy", policy, "--inventory", inventory, "--state-dir", tmp_path / state)
        assert code in (0, 1), document  # two failures in one wave halt the run: reasons are kept
        return {i: v["reason"] for i, v in document["instances"].items() if v["state"] == "rolled_back"}

    assert "health" not in yaml.safe_load(POLICY.read_text())  # the example policy has no checks of its own
    reasons = rolled_back(POLICY, "no-checks")
    assert set(reasons) == {aws, azure["id"]}
    assert (
        "health check failed after patching: EC2 status check: instance impaired, SSM agent not back after the reboot"
        in reasons[aws]
    )
    assert (
        "health check failed after patching: Azure status check: VM agent Not Ready after the reboot"
        in reasons[azure["id"]]
    )
    assert not any("HTTP" in reason for reason in reasons.values())

    checks = 'reboot: if_required\nhealth:\n  http: ["http://{name}:8080/healthz"]\n'
    with_http = policy_variant(tmp_path, **{"reboot: if_required\n": checks})
    reasons = rolled_back(with_http, "http")
    assert "health check failed after patching: GET http://api-tyo-05:8080/healthz: HTTP 503" in reasons[aws]


def test_run_shows_progress_and_where_the_report_is(tmp_path: Path) -> None:
    result = cli("run", "--policy", POLICY, "--inventory", FLEET, "--state-dir", tmp_path)
    assert result.exit_code == 0, result.output
    assert "rolled back" in result.output and "api-tyo-05" in result.output
    assert "ring production" in result.output
    assert "Report: " in result.output and ".html" in result.output


def test_required_approval_pauses_the_run_until_approved(tmp_path: Path) -> None:
    policy = policy_variant(tmp_path, **{"approval: auto ": "approval: required "})
    code, document = run_json("--policy", policy, "--inventory", FLEET, "--state-dir", tmp_path / "s")
    assert code == 3 and document["status"] == "waiting_approval"
    production = [v for v in document["instances"].values() if v["ring"] == "production"]
    assert {v["state"] for v in production} == {"pending"}
    run_id = document["run_id"]

    status = cli("status", run_id, "--state-dir", tmp_path / "s", "--json")
    assert json.loads(status.stdout)["status"] == "waiting_approval"

    approved = cli("approve", run_id, "--state-dir", tmp_path / "s", "--json")
    assert approved.exit_code == 0, approved.output
    assert json.loads(approved.stdout)["status"] == "succeeded"

    again = cli("approve", run_id, "--state-dir", tmp_path / "s")
    assert again.exit_code == 2 and "not waiting for approval" in again.output


def test_approval_required_on_the_first_ring_waits_before_touching_anything(tmp_path: Path) -> None:
    policy = policy_variant(tmp_path, **{"    soak: 1h ": "    approval: required\n    soak: 1h "})
    state = tmp_path / "s"
    code, document = run_json("--policy", policy, "--inventory", FLEET, "--state-dir", state)
    assert code == 3 and document["status"] == "waiting_approval"
    assert {v["state"] for v in document["instances"].values() if v["ring"]} == {"pending"}
    run_id = document["run_id"]
    runtime = LocalRuntime.open(state)
    assert runtime.fleet.effects(run_id) == {}  # nothing leased, snapshotted or patched before the approval
    run = runtime.load(run_id)
    assert run.current.ring == "staging"
    assert run.log[-1].text.startswith(
        f"Ring staging needs approval before it starts: approve it with `patchpilot approve {run_id}`"
    )

    approved = cli("approve", run_id, "--state-dir", state, "--json")
    assert approved.exit_code == 0, approved.output
    assert json.loads(approved.stdout)["status"] == "succeeded"


def test_a_rejected_ring_ends_the_run_cleanly_and_production_is_never_touched(tmp_path: Path) -> None:
    policy = policy_variant(tmp_path, **{"approval: auto ": "approval: required "})
    _, document = run_json("--policy", policy, "--inventory", FLEET, "--state-dir", tmp_path / "s")
    run_id = document["run_id"]
    rejected = cli("reject", run_id, "--reason", "change freeze", "--state-dir", tmp_path / "s", "--json")
    assert rejected.exit_code == 1, rejected.output  # halted: the run ended without production
    final = json.loads(rejected.stdout)
    assert final["status"] == "halted" and final["reason"] == "ring production rejected by cli: change freeze"
    production = [v for v in final["instances"].values() if v["ring"] == "production"]
    assert {v["state"] for v in production} == {"not_started"}
    runtime = LocalRuntime.open(tmp_path / "s")
    effects = runtime.fleet.effects(run_id)
    production_ids = {i for i, v in final["instances"].items() if v["ring"] == "production"}
    assert not {instance for _, instance in effects} & production_ids
    assert runtime.approve(run_id) == f"run {run_id} is not waiting for approval (halted)"  # decided once
    again = cli("reject", run_id, "--state-dir", tmp_path / "s")
    assert again.exit_code == 2 and "not waiting for approval" in again.output


def test_a_failure_in_staging_halts_before_production(tmp_path: Path) -> None:
    inventory = json.loads(FLEET.read_text())
    staging = next(i for i in inventory["instances"] if i["tags"].get("Environment") == "staging")
    staging["simulation"] = {"install": "fail"}
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(inventory))
    code, document = run_json("--policy", POLICY, "--inventory", path, "--state-dir", tmp_path / "s")
    assert code == 1 and document["status"] == "halted"
    production = [v for v in document["instances"].values() if v["ring"] == "production"]
    assert {v["state"] for v in production} == {"not_started"}


def test_a_short_window_leaves_later_waves_not_started(tmp_path: Path) -> None:
    policy = policy_variant(tmp_path, **{"duration: 11h": "duration: 2h"})
    code, document = run_json("--policy", policy, "--inventory", FLEET, "--state-dir", tmp_path / "s")
    assert code == 1 and document["status"] == "incomplete"
    not_started = [v for v in document["instances"].values() if v["state"] == "not_started"]
    # wave 1 took 1h2m, 58m are left: wave 2 is not started (the window is a promise)
    assert not_started and all(v["reason"].endswith("left of the window: not started") for v in not_started)


def test_a_run_whose_staging_selector_matches_nothing_does_not_succeed(tmp_path: Path) -> None:
    policy = policy_variant(tmp_path, **{"{Environment: staging}": "{Environment: stagign}"})
    args = ["run", "--policy", str(policy), "--inventory", str(FLEET), "--state-dir", str(tmp_path / "s")]
    result = CliRunner().invoke(main, args, env={"COLUMNS": "400"})  # wide: rich wraps nothing
    assert result.exit_code == 5, result.output
    reason = (
        "ring staging selected no machine: check its select; no tested set was promoted, "
        "so rings production were not touched"
    )
    assert "nothing_patched" in result.output and f"Reason: {reason}" in result.output
    run_id = result.output.split()[1].rstrip(":")
    status = json.loads(cli("status", run_id, "--state-dir", tmp_path / "s", "--json").stdout)
    assert status["status"] == "nothing_patched" and status["reason"] == reason
    production = [v for v in status["instances"].values() if v["ring"] == "production"]
    assert production and {v["state"] for v in production} == {"skipped"}
    report = Path(next(line.split()[-1] for line in result.output.splitlines() if line.startswith("Report:")))
    assert 'class="status nothing_patched"' in report.read_text()


def test_an_empty_inventory_does_not_succeed(tmp_path: Path) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text('{"instances": []}')
    code, document = run_json("--policy", POLICY, "--inventory", empty, "--state-dir", tmp_path / "s")
    assert code == 5
    assert document["status"] == "nothing_patched" and document["reason"] == "the inventory is empty"


def test_status_and_report_of_a_finished_run(tmp_path: Path) -> None:
    _, document = run_json("--policy", POLICY, "--inventory", FLEET, "--state-dir", tmp_path)
    run_id = document["run_id"]
    status = cli("status", run_id, "--state-dir", tmp_path)
    assert status.exit_code == 0 and "succeeded" in status.output and "Needs attention" in status.output
    report = cli("report", run_id, "--state-dir", tmp_path, "--report-dir", tmp_path / "out")
    assert report.exit_code == 0
    paths = [Path(p) for p in report.output.split()]
    assert {p.suffix for p in paths} == {".md", ".html"} and all(p.parent == tmp_path / "out" for p in paths)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status", "no-such-run"], "no run no-such-run here"),
        (["run", "--resume", "x", "--policy", str(POLICY)], "give neither"),
        (["run", "--policy", str(POLICY)], "give --policy and --inventory"),
    ],
)
def test_run_commands_explain_bad_usage(tmp_path: Path, args: list[str], message: str) -> None:
    result = cli(*args, "--state-dir", tmp_path)
    assert result.exit_code == 2
    assert message in result.output


def test_a_killed_run_resumes_and_ends_like_an_uninterrupted_one(tmp_path: Path) -> None:
    """Kill -9 the process mid-run; `run --resume` finishes without repeating a done step."""
    inventory = _big_inventory(tmp_path, 2000)
    reference_code, reference = run_json("--policy", POLICY, "--inventory", inventory, "--state-dir", tmp_path / "ref")

    state = tmp_path / "killed"
    process = subprocess.Popen(
        [PATCHPILOT, "run", "--policy", POLICY, "--inventory", inventory, "--state-dir", state, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    first = process.stderr.readline()  # "Run <id>: N waves, state in ..."
    run_id = first.split()[1].rstrip(":")
    for line in process.stderr:  # kill once staging is done and production under way
        if line.startswith("Ring staging finished"):
            break
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert LocalRuntime.open(state).load(run_id).status == "running", "killed mid-run"

    code, resumed = run_json("--resume", run_id, "--state-dir", state)
    assert code == reference_code
    assert resumed["status"] == reference["status"]
    states = {i: v["state"] for i, v in resumed["instances"].items()}
    assert states == {i: v["state"] for i, v in reference["instances"].items()}
    fleet = SimulatedFleet(state / "state.db", VirtualClock(state / "state.db"))
    effects = fleet.effects(run_id)
    assert effects and max(effects.values()) == 1


def _big_inventory(tmp_path: Path, count: int) -> Path:
    sys.path.insert(0, str(ROOT / "bench"))
    from fleet import synthetic_fleet  # type: ignore[import-not-found]

    instances = synthetic_fleet(count, seed=3)
    for n, instance in enumerate(instances):
        if n % 97 == 5 and instance["tags"]["Environment"] == "production":
            instance["simulation"] = {"health": "fail"}
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps({"instances": instances}))
    return path


def test_stopped_machines_are_started_patched_and_returned_and_the_report_lists_them(tmp_path: Path) -> None:
    inventory = json.loads(FLEET.read_text())
    production = [i for i in inventory["instances"] if i["tags"].get("Environment") == "production"]
    production = [i for i in production if "PatchPolicy" not in i["tags"] and not i.get("simulation")]
    production[0]["power"] = "deallocated" if production[0]["cloud"] == "azure" else "stopped"
    production[1]["power"] = "stopped"
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(inventory))
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.read_text() + "\nstopped_machines: start\n")
    state = tmp_path / "s"
    code, document = run_json("--policy", policy, "--inventory", path, "--state-dir", state)
    assert code == 0 and document["status"] == "succeeded", document
    fleet = SimulatedFleet(state / "state.db", VirtualClock(state / "state.db"))
    for machine in production[:2]:
        assert document["instances"][machine["id"]]["state"] == "patched"
        found = LocalRuntime.open(state).load(document["run_id"]).records()
        instance = next(r.instance for r in found if r.id == machine["id"])
        assert fleet.power(instance) == machine["power"]  # back as found
    report = Path(document["report"]["markdown"]).read_text()
    assert (
        "| Stopped machines | 2 machines found stopped or deallocated; 2 machines started for their waves and returned"
        in report
    )
