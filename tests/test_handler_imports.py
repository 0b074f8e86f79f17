"""What the handlers load at cold start: each module a handler never uses, imported anyway, is
paid for by every cold start (bench/bench_cold_start.py measures the cost)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NEVER_AT_IMPORT = [
    "croniter",
    "yaml",
    "patchpilot.compliance.model",
    "patchpilot.maintenance.model",
    "jinja2",
    # The engine estimates waves (`planning.estimate`); planning itself happens on a run's start and
    # follow-ups, where `service` imports it (the package's names load on first use).
    "patchpilot.planning.planner",
    # The AWS fleet's steps: each is imported by the step that uses it (a cold start handles one).
    "patchpilot.adapters.aws.fleet.install",
    "patchpilot.adapters.aws.fleet.held_baselines",
    "patchpilot.adapters.aws.fleet.rollback",
    "patchpilot.adapters.aws.fleet.health",
    "patchpilot.adapters.aws.fleet.hooks",
    "patchpilot.adapters.aws.fleet.power",
    "patchpilot.adapters.aws.fleet.snapshots",
    "patchpilot.adapters.aws.fleet.discovery",
    # powertools' parser models, which its batch utility builds when pydantic is loaded before it
    # (aws_lambda/worker.py imports the batch utility first)
    "aws_lambda_powertools.utilities.parser",
]


@pytest.mark.parametrize(
    "module", ["aws_lambda.worker", "aws_lambda.approve", "aws_lambda.trigger", "aws_lambda.waker", "function_app"]
)
def test_a_handler_imports_no_module_it_does_not_need_to_start(module: str) -> None:
    probe = f"import json, sys, {module}; print(json.dumps([m for m in {NEVER_AT_IMPORT!r} if m in sys.modules]))"
    answer = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(answer.stdout.strip().splitlines()[-1]) == []


def test_a_notifier_loads_the_webhook_client_with_its_first_post_only() -> None:
    """Every handler's service builds the routed notifier; most deliveries send no notice, and
    slack_sdk is some 16 ms of a cold start."""
    probe = (
        "import sys; from patchpilot.notify import RoutedNotifier; "
        "RoutedNotifier(None, lambda run_id: None, None, clock=None); "
        "print([m for m in ('slack_sdk', 'patchpilot.notify.webhook', 'patchpilot.notify.slack') if m in sys.modules])"
    )
    answer = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    assert answer.stdout.strip().splitlines()[-1] == "[]"
