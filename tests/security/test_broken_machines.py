"""A machine a run leaves broken (health check failed, and its rollback failed or left it unhealthy:
state `failed`) is never reported as fine: not by the run's status and exit code, not by its last
notice, its report, `patchpilot status`, nor the compliance view.

The runs are driven on the local runtime, as `patchpilot run` drives them; the simulated fleet
breaks api-tyo-05 with its fault hints (`health: fail`, `rollback: fail`). One test drives the pure
engine with a fleet whose check after the rollback fails, which the simulated fleet never does.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from engine_driver import answer_all_ok, drive_to_end

from patchpilot.advisories.models import OpenRun
from patchpilot.cli import main
from patchpilot.compliance import report
from patchpilot.engine.decide import start_run
from patchpilot.engine.messages import CheckHealth, FleetCommand, Notify, Outcome
from patchpilot.engine.run import InstanceRecord, Run
from patchpilot.inventory import Instance, Simulation, load_inventory
from patchpilot.local_runtime import LocalRuntime
from patchpilot.notify.messages import card_for
from patchpilot.notify.slack import slack_message
from patchpilot.notify.teams import teams_message
from patchpilot.planning import plan
from patchpilot.policy import load_policy, parse_policy
from patchpilot.policy.model import TeamsMention
from patchpilot.reports import write_reports

ROOT = Path(__file__).resolve().parent.parent.parent
POLICY = ROOT / "examples" / "policy.yaml"
FLEET = ROOT / "examples" / "fleet.json"
BROKEN = "api-tyo-05"  # the example fleet's one machine that fails its health check
ONCALL_SLACK = "<!subteam^S0ONCALL>"
ONCALL_TEAMS = TeamsMention(name="Patch on-call", id="oncall@contoso.com")


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def broken_fleet(tmp_path: Path) -> Path:
    """The example fleet, where api-tyo-05's rollback fails too: it is left broken."""
    document = json.loads(FLEET.read_text())
    instances = document["instances"] if isinstance(document, dict) else document
    (entry,) = [i for i in instances if i.get("name") == BROKEN]
    entry["simulation"] = {"health": "fail", "rollback": "fail"}
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(document))
    return path


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, dict[str, Any], int]]:
    """(state dir, inventory, `patchpilot run --json` document, exit code) of one run that leaves
    api-tyo-05 broken; shared by the tests that only read it."""
    tmp_path = tmp_path_factory.mktemp("broken")
    inventory = broken_fleet(tmp_path)
    state = tmp_path / "state"
    result = cli("run", "--policy", POLICY, "--inventory", inventory, "--state-dir", state, "--json")
    yield state, inventory, json.loads(result.stdout), result.exit_code


def _the_broken_record(run: Run) -> InstanceRecord:
    (record,) = [r for r in run.records() if r.instance.name == BROKEN]
    return record


# ---------------------------------------------------------------- the run's status and exit code


def test_run_with_a_broken_machine_does_not_end_succeeded(broken_run: tuple[Path, Path, dict[str, Any], int]) -> None:
    _, _, document, code = broken_run
    assert document["status"] == "succeeded_with_failures"
    assert code == 4  # EXIT_BROKEN: neither 0 (succeeded) nor the 1 of a halt
    assert "1 machine is left broken" in document["reason"]
    (broken,) = document["broken"]
    assert broken["name"] == BROKEN and broken["id"] == "i-000000005eedd889"
    assert "rollback failed too" in broken["reason"]
    assert broken["snapshot_ids"] and all(s.startswith("snap-") for s in broken["snapshot_ids"])
    assert document["instances"][broken["id"]]["state"] == "failed"


def test_a_machine_still_unhealthy_after_its_rollback_does_not_let_the_run_end_succeeded() -> None:
    policy = parse_policy(
        """
name: one-ring
rings: [{name: all, select: {tags: {Environment: "*"}}}]
rollout: {disruption_budget: 2, canary: 0, max_failures: 1}
"""
    )
    instances = [
        Instance(id=f"i-{n}", cloud="aws", region="eu-west-1", os="linux", tags={"Environment": "production"})
        for n in range(4)
    ]

    def unhealthy_i2(command: FleetCommand) -> list[Outcome]:
        outcomes = answer_all_ok(command)
        if isinstance(command, CheckHealth):  # i-2 fails its check, after patching and after the rollback
            return [o.model_copy(update={"ok": False, "detail": "HTTP 503"}) if o.id == "i-2" else o for o in outcomes]
        return outcomes

    now = datetime(2026, 12, 12, 2, 0, tzinfo=UTC)
    run = drive_to_end(start_run("r1", policy, plan(policy, instances), now), unhealthy_i2)
    assert run.state == "succeeded_with_failures" and run.status == "succeeded_with_failures"
    assert run.finished and "1 machine is left broken" in run.reason
    assert [r.id for r in run.broken()] == ["i-2"] and "still unhealthy" in run.broken()[0].reason
    assert run.may_follow_up  # the promoted set was tested: follow-ups may still start
    assert run.log[-1].level == "error"


def test_status_of_a_broken_run_says_to_restore_it_from_its_snapshots(
    broken_run: tuple[Path, Path, dict[str, Any], int],
) -> None:
    state, _, document, _ = broken_run
    result = CliRunner().invoke(main, ["status", document["run_id"], "--state-dir", str(state)], terminal_width=250)
    assert result.exit_code == 4, result.output  # status exits as `run` did: succeeded_with_failures
    assert "succeeded_with_failures" in result.output
    assert "Left broken" in result.output and BROKEN in result.output
    for snapshot in document["broken"][0]["snapshot_ids"]:
        assert snapshot in result.output
    assert "Restore each by hand from its snapshots" in result.output


def test_an_advisory_is_not_merged_into_a_run_that_left_machines_broken() -> None:
    run = OpenRun("fleet-emergency-CVE-2026-1-20261212-0200", "CVE-2026-1", "succeeded_with_failures", frozenset())
    assert run.finished  # an ended run: a new advisory starts a run or a follow-up, never merges as if open


# ---------------------------------------------------------------- the run's last notice


def _drive(tmp_path: Path, instances: list[Instance], policy_text: str | None = None) -> tuple[Run, list[Notify]]:
    notices: list[Notify] = []
    runtime = LocalRuntime.open(tmp_path / "state", on_notice=notices.append)
    policy = parse_policy(policy_text) if policy_text else load_policy(str(POLICY))
    run = runtime.start(policy, instances)
    return runtime.drive(run.run_id), notices


def test_run_finished_notice_names_broken_machines(tmp_path: Path) -> None:
    run, notices = _drive(tmp_path, load_inventory(str(broken_fleet(tmp_path))))
    (finished,) = [n for n in notices if n.topic == "run_finished"]
    record = _the_broken_record(run)
    assert finished.severity == "error"
    for fact in (record.instance.short_name, record.id, record.reason, *record.snapshot_ids):
        assert fact in finished.text
    card = card_for(finished, run)
    assert card.alert and "left broken" in card.title
    assert ONCALL_SLACK in json.dumps(slack_message(card, ONCALL_SLACK))
    assert "entities" in json.dumps(teams_message(card, ONCALL_TEAMS))


def test_run_finished_notice_names_ten_broken_machines_then_how_many_more(tmp_path: Path) -> None:
    instances = [
        Instance(
            id=f"i-{n:02d}",
            name=f"web-{n:02d}",
            cloud="aws",
            region="eu-west-1",
            os="linux",
            tags={"Environment": "production"},
            simulation=Simulation(health="fail", rollback="fail"),
        )
        for n in range(12)
    ]
    policy = """
name: all-at-once
rings: [{name: all, select: {tags: {Environment: "*"}}}]
rollout: {mode: concurrent_zones, disruption_budget: "100%", canary: 0, max_failures: "100%"}
"""
    run, notices = _drive(tmp_path, instances, policy)
    assert run.status == "succeeded_with_failures" and "12 machines are left broken" in run.reason
    (finished,) = [n for n in notices if n.topic == "run_finished"]
    named = [f"web-{n:02d} (i-{n:02d})" for n in range(12)]
    assert all(name in finished.text for name in named[:10])
    assert not any(name in finished.text for name in named[10:])
    assert "and 2 more" in finished.text


# ---------------------------------------------------------------- the report


def test_report_opens_its_summary_with_the_broken_machines(tmp_path: Path) -> None:
    run, _ = _drive(tmp_path, load_inventory(str(broken_fleet(tmp_path))))
    record = _the_broken_record(run)
    markdown_path, html_path = write_reports(run, tmp_path / "reports")
    markdown, html = markdown_path.read_text(), html_path.read_text()
    summary = markdown.split("## Patch summary", 1)[1]
    assert summary.lstrip().startswith("### Left broken: restore by hand")
    broken_part = summary.split("### Promoted set", 1)[0]
    assert record.instance.short_name in broken_part and record.snapshot_ids[0] in broken_part
    html_summary = html.split('<h2 id="patches">Patch summary</h2>', 1)[1]
    assert html_summary.lstrip().startswith('<div class="exposed" id="broken">')
    assert record.snapshot_ids[0] in html_summary.split("Promoted set", 1)[0]
    # its patches may still be on it: it is not among the machines "a rollback removed" patches from
    assert "had patches installed that a rollback removed" not in markdown
    assert "had patches installed that a rollback removed" not in html


# ---------------------------------------------------------------- the compliance view


def test_broken_machine_is_never_compliant(broken_run: tuple[Path, Path, dict[str, Any], int]) -> None:
    state, inventory, document, _ = broken_run
    args: list[str | Path] = ["compliance", "--policy", POLICY, "--inventory", inventory, "--state-dir", state]
    result = cli(*args, "--json")
    assert result.exit_code == 1, result.output
    view = json.loads(result.stdout)
    (machine,) = [i for i in view["instances"] if i["name"] == BROKEN]
    assert machine["status"] == "needs_attention"
    assert document["run_id"] in machine["reason"] and "rollback failed too" in machine["reason"]
    assert machine["left_failed"]["run_id"] == document["run_id"]
    assert machine["left_failed"]["snapshot_ids"] == document["broken"][0]["snapshot_ids"]
    assert view["totals"]["machines"]["needs_attention"] == 1
    assert view["totals"]["machines"]["non_compliant"] == 0  # counted apart, never twice

    rows = list(csv.DictReader(io.StringIO(cli(*args, "--format", "csv").stdout)))
    mine = [r for r in rows if r["name"] == BROKEN]  # a row per patch it lacks, or one
    assert mine and all(r["status"] == "needs_attention" for r in mine)
    assert {r["left_failed_run_id"] for r in mine} == {document["run_id"]}
    markdown = cli(*args).stdout
    assert "NEEDS ATTENTION" in markdown and document["run_id"] in markdown


def test_a_later_run_that_patches_the_broken_machine_clears_its_attention(
    broken_run: tuple[Path, Path, dict[str, Any], int],
) -> None:
    state, inventory, document, _ = broken_run
    runtime = LocalRuntime.open(state)
    broken = runtime.load(document["run_id"])
    record = _the_broken_record(broken)
    later = broken.model_copy(
        update={
            "run_id": "monthly-fleet-later",
            "waves": tuple(
                w.model_copy(
                    update={
                        "finished_at": (w.finished_at or broken.created_at) + timedelta(days=31),
                        "records": {k: r.model_copy(update={"state": "patched"}) for k, r in w.records.items()},
                    }
                )
                for w in broken.waves
            ),
        }
    )
    policy = load_policy(str(POLICY))
    assert set(report.left_failed([broken], policy.name)) == {record.id}
    assert report.left_failed([later, broken], policy.name) == {} == report.left_failed([broken, later], policy.name)
    instances = load_inventory(str(inventory))
    states = runtime.fleet.patch_states(instances)
    now = runtime.clock.now()
    runs = [broken]
    view = report.build_view(
        policy, instances, states, now, report.last_patched(runs, policy.name), report.left_failed(runs, policy.name)
    )
    assert {i.name: i.status for i in view.instances}[BROKEN] == "needs_attention"
