"""What `patchpilot plan` and `patchpilot validate` load: each module they never use, imported anyway,
is paid for by every plan (bench/bench_cli_plan.py measures it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NEVER_LOADED = [
    "patchpilot.local_runtime",
    "patchpilot.service",
    "patchpilot.engine.messages",
    "patchpilot.ports",
    "patchpilot.notify",
    "patchpilot.reports",
    "patchpilot.adapters.local.sqlite_store",
    "patchpilot.cli_aws",
    "patchpilot.cli_azure",
    "patchpilot.cli_advisory",
    "patchpilot.cli_compliance",
    "patchpilot.cli_maintenance",
    "patchpilot.engine.run",
    "patchpilot.engine.decide",
    "patchpilot.triggers",
    "patchpilot.approvals",
    "patchpilot.wakeups",
    "patchpilot.compliance",
    "patchpilot.maintenance",
    "patchpilot.advisories",
    "patchpilot.adapters.aws",
    "patchpilot.adapters.azure",
    "patchpilot.adapters.local.simulated_fleet",
    "slack_sdk",
    "jinja2",
    "boto3",
    "botocore",
    "azure",
    "jsonschema",
    "requests",
    "ssl",
    "asyncio",
]
# `validate` prints no table: rich stays out too.
NEVER_LOADED_BY_VALIDATE = [*NEVER_LOADED, "rich"]
# The command ends its process (`cli.ends_the_process`): what it loaded is listed at exit.
PROBE = """
import atexit, json, sys
from patchpilot.cli import main
atexit.register(lambda: print(json.dumps([m for m in {never!r} if m in sys.modules])))
sys.argv = ["patchpilot", *{args!r}]
main()
"""


@pytest.mark.parametrize(
    "args",
    [
        ["plan", "--policy", "examples/policy.yaml", "--inventory", "examples/fleet.json"],
        ["plan", "--json", "--policy", "examples/policy.yaml", "--inventory", "examples/fleet.json"],
        ["validate", "--policy", "examples/policy.yaml", "--inventory", "examples/fleet.json"],
        ["validate", "--json", "--policy", "examples/policy.yaml", "--inventory", "examples/fleet.json"],
    ],
)
def test_plan_and_validate_load_no_runtime_report_notifier_or_cloud(args: list[str]) -> None:
    probe = PROBE.format(args=args, never=NEVER_LOADED_BY_VALIDATE if args[0] == "validate" else NEVER_LOADED)
    answer = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(answer.stdout.strip().splitlines()[-1]) == []


def test_the_command_groups_of_other_modules_are_there_when_asked_for() -> None:
    from click.testing import CliRunner

    from patchpilot.cli import COMMANDS_ELSEWHERE, main

    listed = CliRunner().invoke(main, ["--help"])
    assert listed.exit_code == 0
    for name in COMMANDS_ELSEWHERE:
        assert f"  {name} " in listed.output
        assert CliRunner().invoke(main, [name, "--help"]).exit_code == 0


COLLECTIONS = """
import gc, json, sys
collections = []  # those while pydantic and the models load (and after, while the module loads)
def count(phase, info):
    if phase == "start" and "pydantic" in sys.modules:
        collections.append(info["generation"])
gc.callbacks.append(count)
import patchpilot.cli
print(json.dumps({"collections": collections, "enabled": gc.isenabled()}))
"""


def test_loading_the_command_triggers_no_garbage_collection_and_then_collects_again() -> None:
    """patchpilot/loading.py: the collector is paused while pydantic and the command's own
    modules load (some 200,000 objects, each collection a waste), then resumes."""
    answer = subprocess.run(
        [sys.executable, "-c", COLLECTIONS], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(answer.stdout.strip().splitlines()[-1]) == {"collections": [], "enabled": True}
