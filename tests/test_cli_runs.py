"""`patchpilot runs` (the run history, local and on the clouds), what `patchpilot status` leads
with and how it exits, JSON errors under `--json`, and copyable lines never wrapped."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from test_local_runtime import FLEET, POLICY, policy_variant

from patchpilot.cli import main

pytest_plugins = ["azurite"]


def cli(*args: str | Path, columns: int = 200) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], env={"COLUMNS": str(columns)})


def start(state: Path, policy: Path = POLICY, inventory: Path = FLEET) -> dict[str, Any]:
    result = cli("run", "--policy", policy, "--inventory", inventory, "--state-dir", state, "--json")
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def waiting_run(tmp_path: Path, state: Path) -> str:
    """A run of the example whose production ring waits for an approval."""
    policy = policy_variant(tmp_path, **{"approval: auto ": "approval: required "})
    document = start(state, policy)
    assert document["status"] == "waiting_approval"
    return str(document["run_id"])


def halted_run(tmp_path: Path, state: Path) -> str:
    inventory = json.loads(FLEET.read_text())
    staging = next(i for i in inventory["instances"] if i["tags"].get("Environment") == "staging")
    staging["simulation"] = {"install": "fail"}
    path = tmp_path / "failing.json"
    path.write_text(json.dumps(inventory))
    document = start(state, inventory=path)
    assert document["status"] == "halted"
    return str(document["run_id"])


def lines_of(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


# ---------------------------------------------------------------- runs


def test_runs_lists_the_history_newest_first_with_status_window_counts_and_report(tmp_path: Path) -> None:
    state = tmp_path / "s"
    first = start(state)
    second = waiting_run(tmp_path, state)
    result = cli("runs", "--state-dir", state, "--json")
    assert result.exit_code == 0, result.output
    runs = json.loads(result.stdout)["runs"]
    assert [r["run_id"] for r in runs] == [second, first["run_id"]]
    newest, oldest = runs
    assert newest["status"] == "waiting_approval" and oldest["status"] == "succeeded"
    assert oldest["summary"] == first["summary"]
    assert oldest["window"]["start"] < oldest["window"]["end"]
    assert oldest["report"] == first["report"]["html"] and Path(oldest["report"]).is_file()

    waiting = json.loads(cli("runs", "--state-dir", state, "--status", "waiting_approval", "--json").stdout)
    assert [r["run_id"] for r in waiting["runs"]] == [second]
    other = json.loads(cli("runs", "--state-dir", state, "--policy", "no-such-policy", "--json").stdout)
    assert other["runs"] == []


def test_runs_in_a_directory_without_runs_says_so_and_creates_nothing(tmp_path: Path) -> None:
    result = cli("runs", "--state-dir", tmp_path / "none")
    assert result.exit_code == 2 and "no runs in" in result.stderr
    assert not (tmp_path / "none").exists()


def test_runs_table_keeps_run_ids_and_report_paths_whole_in_a_narrow_terminal(tmp_path: Path) -> None:
    state = tmp_path / "a-rather-long-state-directory-name"
    document = start(state)
    result = cli("runs", "--state-dir", state, columns=40)
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if document["run_id"] in line)
    assert document["report"]["html"] in row and "succeeded" in row


# ---------------------------------------------------------------- runs --cloud


def test_runs_cloud_aws_reads_the_dynamodb_run_table(monkeypatch: pytest.MonkeyPatch) -> None:
    from moto_support import TABLE, aws, dynamodb
    from test_run_store_contract import started

    from patchpilot.adapters.aws.dynamodb_store import DynamoDbRunStore

    with aws():
        store = DynamoDbRunStore(TABLE, dynamodb())
        for run_id in ("run-1", "run-2"):
            run, _ = started(run_id)
            store.create(run, [])
        monkeypatch.setenv("PATCHPILOT_TABLE", TABLE)
        result = cli("runs", "--cloud", "aws", "--json")
        assert result.exit_code == 0, result.output
        runs = json.loads(result.stdout)["runs"]
        assert [r["run_id"] for r in runs] == ["run-2", "run-1"]
        assert runs[0]["status"] == "running" and runs[0]["report"] is None
        assert sum(runs[0]["summary"].values()) == 66  # the example fleet, excluded ones included
        table = cli("runs", "--cloud", "aws", "--status", "succeeded")
        assert table.exit_code == 0 and "No runs match." in table.stdout


def test_runs_cloud_without_a_table_is_bad_input_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PATCHPILOT_TABLE", raising=False)
    result = cli("runs", "--cloud", "aws", "--json")
    assert result.exit_code == 2
    assert "PATCHPILOT_TABLE" in json.loads(result.stderr)["error"]


def test_runs_cloud_refuses_a_state_dir(tmp_path: Path) -> None:
    result = cli("runs", "--cloud", "aws", "--state-dir", tmp_path, "--table", "t")
    assert result.exit_code == 2 and "does not go with --cloud" in result.stderr


@pytest.fixture
def azure_table(azurite: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    table = azurite.unique_name()
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    monkeypatch.setenv("PATCHPILOT_TABLE", table)
    yield table


def test_runs_cloud_azure_reads_the_table_storage_run_table(azurite: Any, azure_table: str) -> None:
    from test_run_store_contract import started

    from patchpilot.adapters.azure.table_store import TableRunStore

    store = TableRunStore.from_connection_string(azurite.connection_string, azure_table)
    for run_id in ("run-a", "run-b"):
        run, _ = started(run_id)
        store.create(run, [])
    result = cli("runs", "--cloud", "azure", "--json")
    assert result.exit_code == 0, result.output
    assert [r["run_id"] for r in json.loads(result.stdout)["runs"]] == ["run-b", "run-a"]


# ---------------------------------------------------------------- status


def test_status_of_a_waiting_run_leads_with_the_approve_and_reject_commands_and_exits_3(tmp_path: Path) -> None:
    state = tmp_path / "s"
    run_id = waiting_run(tmp_path, state)
    result = cli("status", run_id, "--state-dir", state)
    assert result.exit_code == 3, result.output
    lines = lines_of(result.stdout)
    approve = f"patchpilot approve {run_id} --state-dir {state}"
    reject = f"patchpilot reject {run_id} --state-dir {state}"
    assert lines.index(approve) < lines.index(reject) < next(i for i, t in enumerate(lines) if "Instances" in t)
    assert any("ring production waits for your approval" in line for line in lines)

    document = json.loads(cli("status", run_id, "--state-dir", state, "--json").stdout)
    assert [step["command"] for step in document["next"]] == [approve, reject]


def test_status_without_a_state_dir_option_leaves_it_out_of_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PATCHPILOT_STATE_DIR", raising=False)
    run_id = waiting_run(tmp_path, Path(".patchpilot"))
    result = cli("status", run_id)
    assert f"patchpilot approve {run_id}" in lines_of(result.stdout)


def test_status_of_a_halted_run_exits_1_and_shows_the_state_once(tmp_path: Path) -> None:
    state = tmp_path / "s"
    run_id = halted_run(tmp_path, state)
    result = cli("status", run_id, "--state-dir", state)
    assert result.exit_code == 1, result.output
    assert "halted (halted)" not in result.stdout
    assert f"Run {run_id} (policy monthly-fleet): halted" in result.stdout
    assert f"patchpilot report {run_id} --state-dir {state}" in lines_of(result.stdout)
    assert cli("status", run_id, "--state-dir", state, "--json").exit_code == 1


def test_status_of_a_succeeded_run_exits_0(tmp_path: Path) -> None:
    document = start(tmp_path / "s")
    assert cli("status", document["run_id"], "--state-dir", tmp_path / "s").exit_code == 0


def test_status_commands_are_not_wrapped_in_a_narrow_terminal(tmp_path: Path) -> None:
    state = tmp_path / "a-state-directory-with-a-long-name"
    run_id = waiting_run(tmp_path, state)
    result = cli("status", run_id, "--state-dir", state, columns=40)
    assert f"patchpilot approve {run_id} --state-dir {state}" in lines_of(result.stdout)
    assert f"Run {run_id} (policy monthly-fleet): waiting_approval" in result.stdout


# ---------------------------------------------------------------- JSON errors


def test_json_errors_are_json_on_stderr_for_an_unknown_run(tmp_path: Path) -> None:
    start(tmp_path / "s")
    result = cli("status", "no-such-run", "--state-dir", tmp_path / "s", "--json")
    assert result.exit_code == 2 and result.stdout == ""
    error = json.loads(result.stderr)
    assert "no run no-such-run here" in error["error"]
    assert error["problems"][0]["source"] == str(tmp_path / "s")


def test_json_errors_of_a_command_body_have_no_usage_lines(tmp_path: Path) -> None:
    document = start(tmp_path / "s")
    result = cli("approve", document["run_id"], "--state-dir", tmp_path / "s", "--json")
    assert result.exit_code == 2
    assert "Usage:" not in result.stderr
    assert json.loads(result.stderr) == {
        "error": f"run {document['run_id']} is not waiting for approval (it is succeeded)",
        "problems": [],
    }


def test_json_errors_of_a_bad_policy_list_every_problem_with_its_place(tmp_path: Path) -> None:
    policy = tmp_path / "bad.yaml"
    policy.write_text("name: x\nrings: []\nrollout: {mode: sideways}\n")
    result = cli("plan", "--policy", policy, "--inventory", FLEET, "--json")
    assert result.exit_code == 2 and result.stdout == ""
    error = json.loads(result.stderr)
    assert error["problems"] and all(p["source"] == str(policy) for p in error["problems"])
    assert all(p["line"] is not None for p in error["problems"])


def test_run_prints_the_approve_command_and_report_path_whole_in_a_narrow_terminal(tmp_path: Path) -> None:
    policy = policy_variant(tmp_path, **{"approval: auto ": "approval: required "})
    state = tmp_path / "a-state-directory-with-a-long-name"
    result = cli("run", "--policy", policy, "--inventory", FLEET, "--state-dir", state, columns=40)
    assert result.exit_code == 3, result.output
    run_id = result.stdout.split()[1].rstrip(":")
    assert f"Approve with: patchpilot approve {run_id} --state-dir {state}" in lines_of(result.stdout)
    assert f"Report: {state}/reports/{run_id}.html" in lines_of(result.stdout)
    assert any(
        line.startswith(f"Run {run_id}: ") and line.endswith(f"state in {state}") for line in lines_of(result.stdout)
    )


def test_runs_cloud_aws_with_a_missing_table_is_one_line_naming_it() -> None:
    from moto_support import aws

    with aws():
        result = cli("runs", "--cloud", "aws", "--table", "no-such-table")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.splitlines()[0].startswith("aws run table no-such-table: (top level): cannot be read: ")


def test_json_errors_of_compliance_with_format_json_are_json(tmp_path: Path) -> None:
    policy = tmp_path / "bad.yaml"
    policy.write_text("name: x\nrings: []\n")
    result = cli("compliance", "--policy", policy, "--inventory", FLEET, "--format", "json")
    assert result.exit_code == 2 and result.stdout == ""
    assert json.loads(result.stderr)["problems"][0]["source"] == str(policy)


# ---------------------------------------------------------------- shell completion


def test_shell_completion_offers_the_run_ids_of_the_state_dir_newest_first(tmp_path: Path) -> None:
    from click.shell_completion import ShellComplete

    state = tmp_path / "s"
    first = start(state)["run_id"]
    second = waiting_run(tmp_path, state)
    complete = ShellComplete(main, {}, "patchpilot", "_PATCHPILOT_COMPLETE")
    for command in (["status"], ["approve"], ["reject"], ["report"]):
        offered = [c.value for c in complete.get_completions([*command, "--state-dir", str(state)], "")]
        assert offered == [second, first], command
    resume = complete.get_completions(["run", "--state-dir", str(state), "--resume"], "monthly")
    assert [c.value for c in resume] == [second, first]
    assert complete.get_completions(["status", "--state-dir", str(tmp_path / "none")], "") == []
    assert not (tmp_path / "none").exists()


# ---------------------------------------------------------------- status of a run still running


def started_run(state: Path) -> str:
    """A run started and never driven: `running`, as a run whose process was killed is."""
    from patchpilot.inventory import load_inventory
    from patchpilot.local_runtime import LocalRuntime
    from patchpilot.policy import load_policy

    runtime = LocalRuntime.open(state)
    return runtime.start(load_policy(str(POLICY)), load_inventory(str(FLEET))).run_id


def test_status_of_an_interrupted_run_says_to_resume_it_and_exits_0(tmp_path: Path) -> None:
    state = tmp_path / "s"
    run_id = started_run(state)
    result = cli("status", run_id, "--state-dir", state)
    assert result.exit_code == 0, result.output
    assert "interrupted: no process drives it" in result.stdout
    assert f"patchpilot run --resume {run_id} --state-dir {state}" in lines_of(result.stdout)


def test_status_of_a_run_another_process_drives_names_it_and_offers_no_resume(tmp_path: Path) -> None:
    from patchpilot.adapters.local.state_lock import state_lock

    state = tmp_path / "s"
    run_id = started_run(state)
    with state_lock(state, "patchpilot run --policy p.yaml", wait=0):
        result = cli("status", run_id, "--state-dir", state)
        document = json.loads(cli("status", run_id, "--state-dir", state, "--json").stdout)
    assert result.exit_code == 0, result.output
    assert "drives it" in result.stdout and "patchpilot run --policy p.yaml" in result.stdout
    assert "--resume" not in result.stdout
    assert document["next"] == [] and "patchpilot run --policy p.yaml" in document["driven_by"]
