"""Every command that prints data takes `--json`: `validate` and `report`, driven through the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from patchpilot.cli import main

ROOT = Path(__file__).resolve().parent.parent
POLICY = str(ROOT / "examples" / "policy.yaml")
FLEET = str(ROOT / "examples" / "fleet.json")


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_validate_json_says_valid_with_the_policy_rings_and_inventory() -> None:
    result = cli("validate", "--policy", POLICY, "--inventory", FLEET, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "valid": True,
        "policy": "monthly-fleet",
        "rings": ["staging", "production"],
        "inventory": {"path": FLEET, "instances": 66},
        "problems": [],
        "warnings": [f"{FLEET}: pool tg-admin-tyo has one member: it will be down during its install"],
    }
    assert result.stderr == ""


def test_validate_json_without_an_inventory_has_none() -> None:
    result = cli("validate", "--policy", POLICY, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["inventory"] is None


def test_validate_json_lists_each_problem_with_its_place_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        Path(POLICY)
        .read_text()
        .replace('at: "02:00"', 'at: "25:00"')
        .replace('disruption_budget: "50%"', "disruption_budget: ten")
    )
    result = cli("validate", "--policy", bad, "--json")
    assert result.exit_code == 2
    document = json.loads(result.stdout)
    assert document["valid"] is False and document["policy"] is None
    assert [(p["source"], p["path"], p["line"]) for p in document["problems"]] == [
        (str(bad), "schedule.at", 7),
        (str(bad), "rollout.disruption_budget", 19),
    ]
    assert "expected a 24-hour time" in document["problems"][0]["message"]
    # the failure itself, as every --json command says it: the same problems, on stderr, no Usage: lines
    error = json.loads(result.stderr)
    assert error == {"error": f"{bad}: 2 problems found.", "problems": document["problems"]}


def test_validate_json_names_the_policy_when_only_the_inventory_is_wrong(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.json"
    fleet.write_text('{"instances": [{"id": "i-1", "cloud": "gcp", "region": "r", "os": "linux"}]}')
    result = cli("validate", "--policy", POLICY, "--inventory", fleet, "--json")
    assert result.exit_code == 2
    document = json.loads(result.stdout)
    assert (document["valid"], document["policy"], document["inventory"]) == (False, "monthly-fleet", None)
    ((problem),) = document["problems"]
    assert (problem["source"], problem["path"]) == (str(fleet), "instances[0].cloud")


def test_validate_json_lists_the_ring_warnings(tmp_path: Path) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text(Path(POLICY).read_text().replace("{Environment: production}", "{Enviroment: production}"))
    result = cli("validate", "--policy", typo, "--inventory", FLEET, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["valid"] is True
    assert document["warnings"] == [
        f"{typo}: rings[1].select: ring production selects no machine of {FLEET} (66 instances); check its select"
    ]
    assert result.stderr == ""  # with --json the warnings are in the document, not on stderr


def _finished_run(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    state = tmp_path / "state"
    result = cli("run", "--policy", POLICY, "--inventory", FLEET, "--state-dir", state, "--json")
    assert result.exit_code == 0, result.output
    return state, json.loads(result.stdout)


def test_report_json_prints_the_run_document_and_the_paths_written(tmp_path: Path) -> None:
    state, ran = _finished_run(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    result = cli("report", ran["run_id"], "--state-dir", state, "--report-dir", elsewhere, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    # what `run --json` printed: the run document and where its report is
    assert {"run_id", "status", "summary", "instances", "broken", "report"} <= document.keys()
    assert {k: v for k, v in document.items() if k != "report"} == {k: ran[k] for k in document if k != "report"}
    markdown, html = Path(document["report"]["markdown"]), Path(document["report"]["html"])
    assert (markdown.parent, html.parent) == (elsewhere, elsewhere)
    assert markdown.read_text().startswith("# ") and html.read_text().lstrip().startswith("<!")
    assert document["summary"] == {"excluded": 3, "patched": 62, "rolled_back": 1}


def test_report_json_for_an_unknown_run_is_a_json_error(tmp_path: Path) -> None:
    state, _ = _finished_run(tmp_path)
    result = cli("report", "no-such-run", "--state-dir", state, "--json")
    assert result.exit_code == 2
    assert result.stdout == ""
    error = json.loads(result.stderr)
    assert error["error"].startswith(f"{state}: (top level): no run no-such-run here (latest runs: monthly-fleet-")


def test_a_cloud_refusing_the_pools_a_policy_needs_is_one_line_and_exit_1() -> None:
    """Discovery for a policy with a pool budget that cannot read the pools (PoolsUnreadableError)
    ends any command in one line naming the missing permission, text or JSON: never a traceback."""
    import click

    from patchpilot.cli_common import reports_input_errors
    from patchpilot.ports import PoolsUnreadableError

    @click.command()
    @click.option("--json", "as_json", is_flag=True)
    @reports_input_errors
    def discovering(as_json: bool) -> None:
        raise PoolsUnreadableError(
            "123456789012/eu-west-1", "elasticloadbalancing:DescribeTargetGroups", "AccessDenied"
        )

    text = CliRunner().invoke(discovering, [])
    assert text.exit_code == 1 and "Traceback" not in text.output
    assert text.stderr.strip().splitlines() == [
        "Error: traffic pools not readable in 123456789012/eu-west-1: AccessDenied; discovery reads them because "
        "the policy sets rollout.pool_budget (needs elasticloadbalancing:DescribeTargetGroups)"
    ]
    as_json = CliRunner().invoke(discovering, ["--json"])
    assert as_json.exit_code == 1
    assert "elasticloadbalancing:DescribeTargetGroups" in json.loads(as_json.stderr)["error"]


def test_a_cloud_refusing_the_scaling_group_read_is_one_line_and_exit_1() -> None:
    """Discovery always reads Auto Scaling membership; a refusal (ScalingGroupsUnreadableError, a
    DiscoveryReadRefusedError like PoolsUnreadableError) ends any command in one line, text or JSON."""
    import click

    from patchpilot.cli_common import reports_input_errors
    from patchpilot.ports import ScalingGroupsUnreadableError

    @click.command()
    @click.option("--json", "as_json", is_flag=True)
    @reports_input_errors
    def discovering(as_json: bool) -> None:
        raise ScalingGroupsUnreadableError(
            "123456789012/eu-west-1", "autoscaling:DescribeAutoScalingInstances", "AccessDenied"
        )

    text = CliRunner().invoke(discovering, [])
    assert text.exit_code == 1 and "Traceback" not in text.output
    assert text.stderr.strip().splitlines() == [
        "Error: scaling groups not readable in 123456789012/eu-west-1: AccessDenied; discovery reads them so that "
        "no member of an Auto Scaling group is patched in place (needs autoscaling:DescribeAutoScalingInstances)"
    ]
    as_json = CliRunner().invoke(discovering, ["--json"])
    assert as_json.exit_code == 1
    assert "autoscaling:DescribeAutoScalingInstances" in json.loads(as_json.stderr)["error"]
