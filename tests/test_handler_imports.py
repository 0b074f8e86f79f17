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
    # the Windows time zone names: read only for a name that could be one (policy/fields.py)
    "tzlocal",
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
# What one handler never needs to start, where another does.
NOT_AT_IMPORT_OF = {
    # the wake-ups' signals: the waker's; the worker's fleet reads a command's targets with them
    # only for the polls of the steps the waker covers
    "aws_lambda.worker": ["patchpilot.wakeups"],
    # The events, the commands other than the fleet's, and the union of every message
    # (engine/messages.py): the worker's. The waker builds wake-ups and reads runs, which hold the
    # fleet command they await; an approval loads the engine with its first request
    # (`service.grant_approval`); `MESSAGE` writes a message without the union.
    "aws_lambda.waker": [
        "patchpilot.engine.events",
        "patchpilot.engine.commands",
        "patchpilot.engine.messages",
        "patchpilot.engine.message_union",
    ],
    "aws_lambda.approve": [
        "patchpilot.engine.events",
        "patchpilot.engine.commands",
        "patchpilot.engine.messages",
        "patchpilot.engine.message_union",
    ],
}


def _printed(probe: str) -> str:
    """The last line `probe` prints, run in a fresh interpreter (what a cold start has loaded)."""
    answer = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    return answer.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "module", ["aws_lambda.worker", "aws_lambda.approve", "aws_lambda.trigger", "aws_lambda.waker", "function_app"]
)
def test_a_handler_imports_no_module_it_does_not_need_to_start(module: str) -> None:
    never = NEVER_AT_IMPORT + NOT_AT_IMPORT_OF.get(module, [])
    probe = f"import json, sys, {module}; print(json.dumps([m for m in {never!r} if m in sys.modules]))"
    assert json.loads(_printed(probe)) == []


def test_a_notifier_loads_the_webhook_client_with_its_first_post_only() -> None:
    """Every handler's service builds the routed notifier; most deliveries send no notice, and
    slack_sdk is some 16 ms of a cold start."""
    probe = (
        "import sys; from patchpilot.notify import RoutedNotifier; "
        "RoutedNotifier(None, lambda run_id: None, None, clock=None); "
        "print([m for m in ('slack_sdk', 'patchpilot.notify.webhook', 'patchpilot.notify.slack') if m in sys.modules])"
    )
    assert _printed(probe) == "[]"


def test_a_timer_tick_without_a_maintenance_watch_loads_no_report_renderer() -> None:
    """The timer ticks every 15 minutes; the watch's reads and the overview's renderer (jinja2)
    load only when the policy has a watch and an hourly read or digest is due."""
    probe = (
        "import sys; from datetime import UTC, datetime; "
        "from patchpilot.app.overview import Overview; from patchpilot.app.watch import MaintenanceWatch; "
        "from patchpilot.policy import parse_policy; "
        "policy = parse_policy('name: p\\nrings: [{name: all, select: {tags: {Environment: production}}}]\\n'); "
        "watch = MaintenanceWatch(source=None, announcer=None, discovered=None, overview=Overview(None, None, None)); "
        "assert watch.tick(policy, datetime(2026, 12, 12, 2, 0, tzinfo=UTC)) == []; "
        "loaded = ('jinja2', 'patchpilot.reports.overview', 'patchpilot.maintenance.watch'); "
        "print([m for m in loaded if m in sys.modules])"
    )
    assert _printed(probe) == "[]"


def test_the_timer_function_imports_no_engine() -> None:
    """A tick reads the policy and its schedule: the engine's models (the run, its messages) load
    only when a run starts or a heads-up is sent."""
    engine = ["patchpilot.engine.messages", "patchpilot.engine.run", "patchpilot.ports", "patchpilot.service"]
    probe = f"import json, sys, aws_lambda.trigger; print(json.dumps([m for m in {engine!r} if m in sys.modules]))"
    assert json.loads(_printed(probe)) == []


# Modules whose models a handler creates at import and that keep postponed annotations, with why.
POSTPONED_ANNOTATIONS = {
    # one small model (AwsEnvironment); the rest of its annotations name imports made only for
    # the type checker
    "patchpilot.bootstrap.aws",
}


@pytest.mark.parametrize("module", ["aws_lambda.worker", "aws_lambda.approve", "aws_lambda.waker"])
def test_the_models_a_handler_creates_at_import_have_evaluated_annotations(module: str) -> None:
    """pydantic evaluates each field's annotation when it creates a model class; with
    `from __future__ import annotations` every one is a string it compiles and evaluates first,
    about a third of the cost of creating a deferred model (Python 3.11). The run, message, policy
    and inventory models are created by every handler's cold start, so their modules do without."""
    probe = (
        "import __future__, json, sys, pydantic, pydantic.dataclasses; "
        f"import {module}; "
        "from pydantic._internal._model_construction import ModelMetaclass; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('patchpilot') "
        "and any(isinstance(v, ModelMetaclass) or pydantic.dataclasses.is_pydantic_dataclass(v) "
        "for v in vars(sys.modules[m]).values() if isinstance(v, type) and v.__module__ == m) "
        "and getattr(sys.modules[m], 'annotations', None) is __future__.annotations)))"
    )
    assert set(json.loads(_printed(probe))) <= POSTPONED_ANNOTATIONS


# The stdlib dataclasses the handlers' imports create, each with why it is not a NamedTuple
# (patchpilot/loading.py: a frozen dataclass costs some 0.57 ms of a cold import, a NamedTuple 0.10).
EVERY_HANDLERS_DATACLASSES = {  # each reads a policy
    "patchpilot.inventory.Instance": "a pydantic dataclass: validated and serialised as an object",
    "patchpilot.policy.freeze.Freezes": "truth-tested by its own __bool__; holds a calendar and a service",
}
WORKER_DATACLASSES = {
    **EVERY_HANDLERS_DATACLASSES,
    "patchpilot.planning.estimate.WaveFit": "its field `index` would hide tuple.index",
    "patchpilot.service.Service": "not a value: the imperative shell",
}


@pytest.mark.parametrize(
    ("module", "dataclasses"),
    [
        ("aws_lambda.worker", WORKER_DATACLASSES),
        ("aws_lambda.approve", EVERY_HANDLERS_DATACLASSES),
        ("aws_lambda.waker", EVERY_HANDLERS_DATACLASSES),
        ("aws_lambda.trigger", EVERY_HANDLERS_DATACLASSES),
    ],
)
def test_a_handler_builds_no_dataclass_where_a_named_tuple_does(module: str, dataclasses: dict[str, str]) -> None:
    """Each dataclass a handler's import creates compiles six methods (3.11): the handlers' value
    records are NamedTuples but for those named here, each with its reason."""
    probe = (
        "import dataclasses, json; made = []; process = dataclasses._process_class\n"
        "def counted(cls, *args):\n"
        "    made.append(f'{cls.__module__}.{cls.__qualname__}'); return process(cls, *args)\n"
        "dataclasses._process_class = counted\n"
        f"import {module}\n"
        "print(json.dumps([m for m in made if m.startswith('patchpilot.')]))"
    )
    assert sorted(json.loads(_printed(probe))) == sorted(dataclasses)


@pytest.mark.parametrize(
    ("module", "built"),
    [
        ("aws_lambda.worker", False),
        ("aws_lambda.approve", False),
        ("aws_lambda.waker", False),
        ("aws_lambda.trigger", True),
    ],
)
def test_only_the_timer_builds_the_policy_s_own_validator_at_import(module: str, built: bool) -> None:
    """A run builds the policy into its own validator; the policy's own is for reading a policy
    file, which the timer does at every tick and the worker, approvals and wake-ups never do."""
    probe = f"import {module}; from patchpilot.policy import Policy; print(Policy.__pydantic_complete__)"
    assert _printed(probe) == str(built)
