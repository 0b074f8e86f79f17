"""The Azure Function App as the Functions host sees it, without the host (Core Tools cannot be
installed here): the worker's indexing (`app.get_functions()`, the bindings it reports), then
every function invoked with the payloads the host hands over, decoded through azure.functions'
own converters (a timer's JSON, a queue message with its trigger metadata, HTTP requests).

`deps()` is replaced by `StubRuntime`, which records what the functions ask of the runtime and
answers like `AzureRuntime` does; the runtime itself, on Azurite and the fake ARM, is
tests/test_azure_runtime.py. Deployment files are checked against the code: host.json,
local.settings.json.example, requirements.txt and .funcignore.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.functions import meta
from azure.functions.queue import QueueMessageInConverter
from azure.functions.timer import TimerRequestConverter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the app's root: function_app.py, azure_functions/

import function_app
from azure_functions import http_api, observability, steps, timer
from patchpilot.adapters.azure.secrets import SecretUnavailableError
from patchpilot.app.azure_advisories import AzureAdvisoriesRead
from patchpilot.approvals import ApprovalLinkError, ApprovalRequest, approval_token
from patchpilot.bootstrap.azure import AzureEnvironment
from patchpilot.bootstrap.serverless import ServerlessRuntime
from patchpilot.ports import UnknownRunError
from patchpilot.triggers import TIMER_PERIOD, TriggerDecision

ROOT = Path(__file__).resolve().parents[1]
WAITING = TriggerDecision(False, "next window of monthly starts 2026-12-12T02:00+09:00")


@dataclass
class Context:
    """What the worker passes as `context` (func.Context's properties that the functions use)."""

    invocation_id: str = "3f1c2d4e-0000-4000-8000-000000000001"
    function_name: str = ""


@dataclass
class StubRuntime:
    """Answers like AzureRuntime; `calls` records every call in order."""

    calls: list[tuple[Any, ...]] = field(default_factory=list)
    advisories: AzureAdvisoriesRead = field(default_factory=AzureAdvisoriesRead)
    decision: TriggerDecision = WAITING
    run_of_message: str = "monthly-20261212-0200"
    failure: Exception | None = None
    waiting: bool = True
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def trigger(self) -> TriggerDecision:
        self.calls.append(("trigger",))
        if self.failure:
            raise self.failure
        return self.decision

    def azure_advisories(self) -> AzureAdvisoriesRead:
        self.calls.append(("azure_advisories",))
        return self.advisories

    def purge_lapsed(self) -> int:
        self.calls.append(("purge_lapsed",))
        return 0

    def handle_message(self, message_id: str, body: str, dequeue_count: int, on_run: Any) -> None:
        self.calls.append(("handle_message", message_id, body, dequeue_count))
        on_run(self.run_of_message)
        observability.log.info("inside the handling")
        if self.failure:
            raise self.failure

    answer_approval = ServerlessRuntime.answer_approval  # the real flow, over the stubbed preview and approve

    def preview_approval(self, token: str, caller: object = None) -> tuple[ApprovalRequest, str | None]:
        self.calls.append(("preview_approval", token))
        if token != "good-token":
            raise ApprovalLinkError("the approval link is not valid")
        request = ApprovalRequest("monthly-20261212-0200", "production")
        refusal = None if self.waiting else "run monthly-20261212-0200 is not waiting for approval (succeeded)"
        return request, refusal

    def approve(self, token: str, caller: object = None) -> str:
        self.calls.append(("approve", token))
        return "approved ring production of run monthly-20261212-0200"

    def status(self, run_id: str) -> dict[str, Any]:
        self.calls.append(("status", run_id))
        if run_id not in self.runs:
            raise UnknownRunError(run_id)
        return self.runs[run_id]


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> StubRuntime:
    stub = StubRuntime()
    for module in (timer, steps, http_api):
        monkeypatch.setattr(module, "deps", lambda log=None: stub)
    return stub


class Logged:
    """The JSON lines the functions logged so far."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.entries()[index]

    def entries(self) -> list[dict[str, Any]]:
        return [json.loads(r.getMessage()) for r in self.caplog.records if r.name == "patchpilot"]


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> Logged:
    caplog.set_level("INFO", logger="patchpilot")
    return Logged(caplog)


def _index() -> dict[str, dict[str, Any]]:
    """What the worker indexes (once: get_functions refuses to be asked twice)."""
    found = {}
    for function in function_app.app.get_functions():
        bindings = json.loads(function.get_function_json())["bindings"]
        found[function.get_function_name()] = {b["type"]: b for b in bindings}
    return found


FUNCTIONS = _index()


def functions() -> dict[str, dict[str, Any]]:
    return FUNCTIONS


# ------------------------------------------------------------------ indexing


def test_the_app_indexes_its_nine_functions_with_their_triggers() -> None:
    found = functions()
    assert set(found) == {
        "wake_up",
        "advisory",
        "timer",
        "step_worker",
        "approve",
        "run_status",
        "slack_interaction",
        "pre_maintenance",
        "post_maintenance",
    }
    assert set(found["slack_interaction"]) == {"httpTrigger", "http"}
    assert set(found["advisory"]) == {"eventGridTrigger"}
    assert set(found["pre_maintenance"]) == set(found["post_maintenance"]) == {"eventGridTrigger"}
    assert set(found["wake_up"]) == {"eventGridTrigger"}
    assert set(found["timer"]) == {"timerTrigger"}
    assert set(found["step_worker"]) == {"queueTrigger"}
    assert set(found["approve"]) == set(found["run_status"]) == {"httpTrigger", "http"}


def test_the_timer_fires_every_period_the_trigger_assumes_and_not_at_startup() -> None:
    trigger = functions()["timer"]["timerTrigger"]
    seconds, minutes, *rest = trigger["schedule"].split()
    assert (seconds, rest) == ("0", ["*", "*", "*", "*"])  # six NCRONTAB fields
    assert minutes == f"*/{TIMER_PERIOD // timedelta(minutes=1)}"
    assert trigger["runOnStartup"] is False


def test_the_worker_reads_the_queue_the_runtime_publishes_to() -> None:
    trigger = functions()["step_worker"]["queueTrigger"]
    assert trigger["queueName"] == "%PATCHPILOT_QUEUE%"  # resolved by the host from the app setting
    assert trigger["connection"] == "AzureWebJobsStorage"
    assert AzureEnvironment.model_fields["queue"].alias == "PATCHPILOT_QUEUE"


def test_the_http_functions_need_a_function_key() -> None:
    found = functions()
    approve, status = found["approve"]["httpTrigger"], found["run_status"]["httpTrigger"]
    assert (approve["route"], sorted(approve["methods"]), approve["authLevel"]) == (
        "approve",
        ["GET", "POST"],
        "FUNCTION",
    )
    assert (status["route"], status["methods"], status["authLevel"]) == ("runs/{run_id}", ["GET"], "FUNCTION")


def test_the_app_is_indexed_without_any_setting_or_client() -> None:
    """The worker imports function_app.py to index it: no app setting is read and no client
    built until a function runs (a fresh interpreter with no setting at all)."""
    code = (
        "import function_app\n"
        "from patchpilot.bootstrap.azure import deps\n"
        "names = sorted(f.get_function_name() for f in function_app.app.get_functions())\n"
        "assert deps.cache_info().currsize == 0\n"
        "print(names)"
    )
    environment = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "")}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    expected = [
        "advisory",
        "approve",
        "post_maintenance",
        "pre_maintenance",
        "run_status",
        "slack_interaction",
        "step_worker",
        "timer",
        "wake_up",
    ]
    assert result.stdout.strip() == str(expected)


# ------------------------------------------------------------------ the timer


def timer_request(past_due: bool) -> func.TimerRequest:
    """The JSON the host passes to a timer trigger."""
    payload = {
        "Schedule": {"AdjustForDST": True},
        "ScheduleStatus": {"Last": "2026-12-11T16:45:00+00:00", "Next": "2026-12-11T17:15:00+00:00"},
        "IsPastDue": past_due,
    }
    request: func.TimerRequest = TimerRequestConverter.decode(
        meta.Datum(json.dumps(payload), "json"), trigger_metadata={}
    )
    return request


def test_the_timer_asks_the_runtime_and_logs_the_decision_with_the_invocation(
    runtime: StubRuntime, logged: Logged
) -> None:
    timer.timer(timer_request(past_due=False), Context())
    # Azure's advisories are read each tick; Table Storage has no TTL: each tick cleans up
    assert runtime.calls == [("trigger",), ("azure_advisories",), ("purge_lapsed",)]
    (entry,) = logged.entries()
    assert entry["message"] == runtime.decision.reason
    assert entry["function"] == "timer" and entry["invocation_id"] == Context.invocation_id
    assert entry["start"] is False and "correlation_id" not in entry


def test_a_failed_advisory_read_is_logged_and_the_tick_goes_on(runtime: StubRuntime, logged: Logged) -> None:
    runtime.advisories = None  # type: ignore[assignment]  # reading it fails: .lines() of None
    timer.timer(timer_request(past_due=False), Context())
    assert runtime.calls[-1] == ("purge_lapsed",)
    assert any(e["message"].startswith("Azure's advisories were not read") for e in logged.entries())


def test_a_started_run_becomes_the_correlation_id(runtime: StubRuntime, logged: Logged) -> None:
    runtime.decision = TriggerDecision(True, "window has begun", "monthly-20261212-0200")
    timer.timer(timer_request(past_due=True), Context())
    assert logged[0]["message"].startswith("the timer is late")
    assert logged[-1]["correlation_id"] == "monthly-20261212-0200"


def test_a_broken_policy_fails_the_timer_and_names_every_problem(runtime: StubRuntime, logged: Logged) -> None:
    from patchpilot.errors import InputError

    runtime.failure = InputError.single("blob://patchpilot-config/policy.yaml", "expected a whole number", ("rollout",))
    with pytest.raises(InputError):
        timer.timer(timer_request(past_due=False), Context())
    assert logged[-1]["problems"] == "blob://patchpilot-config/policy.yaml: rollout: expected a whole number"


# ------------------------------------------------------------------ the step worker


def queue_message(body: str, dequeue_count: int) -> func.QueueMessage:
    """A queue trigger's message as the worker decodes it: the body (the host has undone the
    base64 of messageEncoding) and the trigger metadata."""
    metadata = {
        "Id": meta.Datum("b9c1f6a2-3c4d-4e5f-8a9b-0c1d2e3f4a5b", "string"),
        "DequeueCount": meta.Datum(dequeue_count, "int"),
        "PopReceipt": meta.Datum("AgAAAAMAAAAAAAAA", "string"),
        "InsertionTime": meta.Datum("2026-12-11T17:00:00+00:00", "string"),
        "ExpirationTime": meta.Datum("9999-12-31T23:59:59+00:00", "string"),
        "NextVisibleTime": meta.Datum("2026-12-11T17:10:00+00:00", "string"),
    }
    message: func.QueueMessage = QueueMessageInConverter.decode(meta.Datum(body, "string"), trigger_metadata=metadata)
    return message


def test_a_queue_message_reaches_the_runtime_with_its_id_body_and_dequeue_count(
    runtime: StubRuntime, logged: Logged
) -> None:
    body = '{"type": "TimerFired", "id": "t1", "run_id": "monthly-20261212-0200", "command_id": "w1"}'
    steps.step_worker(queue_message(body, dequeue_count=3), Context())
    assert runtime.calls == [("handle_message", "b9c1f6a2-3c4d-4e5f-8a9b-0c1d2e3f4a5b", body, 3)]
    inside, done = logged.entries()
    assert inside["message"] == "inside the handling"
    assert inside["correlation_id"] == "monthly-20261212-0200"  # known before the core runs
    assert (done["message_id"], done["dequeue_count"], done["function"]) == (
        "b9c1f6a2-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
        3,
        "step_worker",
    )


def test_a_failure_propagates_so_the_host_delivers_the_message_again(runtime: StubRuntime) -> None:
    runtime.failure = ConnectionError("storage unreachable")
    with pytest.raises(ConnectionError):
        steps.step_worker(queue_message("{}", dequeue_count=1), Context())


def test_a_body_that_is_not_utf8_still_reaches_the_runtime_to_be_poisoned(runtime: StubRuntime) -> None:
    message = func.QueueMessage(id="m1", body=b"\xff\xfe{")
    steps.handle_step(message.id or "", message.get_body().decode("utf-8", errors="replace"), 1)
    assert runtime.calls[0][2] == "\ufffd\ufffd{"


def test_log_fields_of_one_invocation_do_not_leak_into_the_next(runtime: StubRuntime, logged: Logged) -> None:
    steps.step_worker(queue_message("{}", dequeue_count=1), Context())
    observability.log.info("between invocations")
    assert logged[-1] == {"message": "between invocations"}


# ------------------------------------------------------------------ HTTP


def http(
    method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None, **route: str
) -> func.HttpRequest:
    query = dict(part.split("=", 1) for part in url.partition("?")[2].split("&") if part)
    return func.HttpRequest(method, url, headers=headers or {}, params=query, route_params=route, body=body)


APPROVE_URL = "https://patchpilot-func.azurewebsites.net/api/approve?code=functionkey&token=good-token"


def test_opening_an_approval_link_only_asks_for_confirmation(runtime: StubRuntime) -> None:
    response = http_api.approve(http("GET", APPROVE_URL), Context())
    assert response.status_code == 200 and response.mimetype == "text/html"
    page = response.get_body().decode()
    assert "Approve ring production of run monthly-20261212-0200?" in page
    assert '<form method="post"><input type="hidden" name="token" value="good-token">' in page
    assert ("approve", "good-token") not in runtime.calls  # a link scanner's GET approves nothing


def test_posting_the_confirmation_form_approves(runtime: StubRuntime, logged: Logged) -> None:
    form = http("POST", APPROVE_URL, b"token=good-token", {"Content-Type": "application/x-www-form-urlencoded"})
    response = http_api.approve(form, Context())
    assert response.status_code == 200
    assert "approved ring production of run monthly-20261212-0200" in response.get_body().decode()
    assert runtime.calls[-1] == ("approve", "good-token")
    assert logged[-1]["correlation_id"] == "monthly-20261212-0200"


def test_a_json_post_without_the_token_in_the_url_approves_too(runtime: StubRuntime) -> None:
    url = "https://patchpilot-func.azurewebsites.net/api/approve?code=functionkey"
    request = http("POST", url, json.dumps({"token": "good-token"}).encode(), {"Content-Type": "application/json"})
    assert http_api.approve(request, Context()).status_code == 200
    assert runtime.calls[-1] == ("approve", "good-token")


def test_a_run_no_longer_waiting_is_said_without_a_button(runtime: StubRuntime) -> None:
    runtime.waiting = False
    page = http_api.approve(http("GET", APPROVE_URL), Context()).get_body().decode()
    assert "is not waiting for approval (succeeded)" in page and "<form" not in page


@pytest.mark.parametrize(
    ("url", "status", "text"),
    [
        (APPROVE_URL.replace("good-token", "forged"), 403, "the approval link is not valid"),
        (APPROVE_URL.replace("&token=good-token", ""), 400, "has no token"),
    ],
)
def test_a_bad_link_is_refused_and_approves_nothing(runtime: StubRuntime, url: str, status: int, text: str) -> None:
    for method in ("GET", "POST"):
        response = http_api.approve(http(method, url), Context())
        assert response.status_code == status and text in response.get_body().decode()
    assert not any(call[0] == "approve" for call in runtime.calls)


def test_an_unreadable_signing_key_is_a_503_that_names_the_secret_in_the_log(
    runtime: StubRuntime, logged: Logged, monkeypatch: pytest.MonkeyPatch
) -> None:
    def vault_down(token: str, caller: object = None) -> Any:
        raise SecretUnavailableError(
            "secret 'patchpilot-approval-signing-key' in https://kv could not be read: Forbidden"
        )

    monkeypatch.setattr(runtime, "preview_approval", vault_down)
    response = http_api.approve(http("POST", APPROVE_URL), Context())
    assert response.status_code == 503 and "try again later" in response.get_body().decode()
    assert "patchpilot-approval-signing-key" in logged[-1]["reason"]


def test_the_token_is_escaped_in_the_page(runtime: StubRuntime) -> None:
    assert approval_token({}, b'token=a"><script>', "application/x-www-form-urlencoded") == 'a"><script>'
    page = http_api._page(200, "Approve?", form_token='a"><script>').get_body().decode()
    assert "<script>" not in page and "&quot;&gt;&lt;script&gt;" in page


def test_the_status_of_a_run_is_its_json_document(runtime: StubRuntime) -> None:
    runtime.runs["monthly-20261212-0200"] = {"run_id": "monthly-20261212-0200", "status": "running"}
    url = "https://patchpilot-func.azurewebsites.net/api/runs/monthly-20261212-0200"
    response = http_api.status(http("GET", url, run_id="monthly-20261212-0200"), Context())
    assert (response.status_code, response.mimetype) == (200, "application/json")
    assert json.loads(response.get_body()) == runtime.runs["monthly-20261212-0200"]


def test_the_status_of_an_unknown_run_is_404(runtime: StubRuntime) -> None:
    response = http_api.status(http("GET", "https://x/api/runs/nope", run_id="nope"), Context())
    assert response.status_code == 404 and json.loads(response.get_body()) == {"error": "no run nope"}


# ------------------------------------------------------------------ deployment files


def test_host_json_moves_a_message_to_poison_after_the_queues_own_limit_and_decodes_base64() -> None:
    from patchpilot.adapters.azure.storage_queue import StorageQueue

    host = json.loads((ROOT / "host.json").read_text())
    queues = host["extensions"]["queues"]
    assert queues["messageEncoding"] == "base64"  # StorageQueue writes base64 bodies
    default_limit = StorageQueue.__init__.__kwdefaults__["max_dequeue_count"]
    assert queues["maxDequeueCount"] == default_limit == 5
    assert host["extensionBundle"] == {"id": "Microsoft.Azure.Functions.ExtensionBundle", "version": "[4.*, 5.0.0)"}
    assert host["version"] == "2.0"


def test_the_local_settings_example_is_a_valid_environment() -> None:
    values = json.loads((ROOT / "local.settings.json.example").read_text())["Values"]
    env = AzureEnvironment.from_environ(values)
    assert env.storage_connection == "UseDevelopmentStorage=true" and env.endpoints() is None
    assert env.queue == "patchpilot-steps" and env.policy == "blob://patchpilot-config/policy.yaml"


def test_requirements_install_this_project_with_the_azure_extra() -> None:
    """Generated from uv.lock by `make lock`: the project, then each library at its locked version
    (tests/test_lock.py holds them to the lock)."""
    lines = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    requirements = [line for line in lines if line and not line.startswith("#")]
    assert requirements[0] == "."
    assert any(line.startswith("azure-functions==") for line in requirements)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(dependency.startswith("azure-functions") for dependency in project["optional-dependencies"]["azure"])


def test_the_package_keeps_what_pip_install_dot_needs_and_drops_the_rest() -> None:
    """The files `func azure functionapp publish` uploads (infra/azure/check_package.py lists them
    as it does: git's files minus .funcignore; that script also builds and indexes the package)."""
    sys.path.insert(0, str(ROOT / "infra" / "azure"))
    import check_package

    files = set(check_package.package_files())
    needed = {"function_app.py", "host.json", "requirements.txt", "pyproject.toml", "README.md"}  # README: the build
    assert needed <= files
    assert {"azure_functions/steps.py", "shared/patchpilot/service.py"} <= files
    assert "shared/patchpilot/reports/templates/report.html.j2" in files  # package data
    assert "shared/patchpilot/reports/templates/index.html.j2" in files  # the overview page's
    assert not {f for f in files if f.split("/")[0] in {"tests", "aws_lambda", "infra", "docs", "bench", "examples"}}
    assert not {"template.yaml", "Makefile", "local.settings.json.example"} & files
    patterns = check_package.ignore_patterns()
    assert check_package.ignored(".venv/lib/x.py", patterns) and check_package.ignored("local.settings.json", patterns)
