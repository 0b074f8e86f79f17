"""One cold start, run by bench_cold_start.py in a clean interpreter that sees only the Lambda artifact:

    python -I -S cold_start_probe.py ARTIFACT FIXTURE.json SCENARIO

Times the import of the handler module, then its first invocation on a realistic event through
the handler itself (powertools decorators, the batch processor, the Function URL resolver), with
the runtime built as `deps()` builds it but on in-memory stand-ins for the AWS clients and for
DynamoDB (a store that keeps each run as JSON, so every load and save validates and serialises
the Run as the DynamoDB store does). Prints one line `COLD {"import_ms": ..., "invoke_ms": ..., ...}`: wall
time, and the CPU time of the process (which other busy processes on the machine disturb less).

Scenarios: `baseline` (boto3 and powertools' Logger, Metrics and Tracer; its invocation is a
no-op handler under the same decorators), `baseline_gc_paused` (the same, loaded with the
garbage collector paused as aws_lambda/__init__.py pauses it for the handlers),
`baseline_libraries` (that, with powertools' batch utility and pydantic: no PatchPilot code), `worker` (an SQS
record carrying the ProbeAgents command a started run issued: validate, load, the issued check,
the SSM agent probe, decide, save, publish), `trigger` (read the policy from S3, no window due)
`approve` (a signed link for a run awaiting approval) and `waker` (the end of an EBS snapshot set:
the runs under way read, the one awaiting its snapshots woken).

Only the standard library is imported here outside the timed parts; what the invocation needs
is imported inside it, where a real invocation would pay for it too.
"""

from __future__ import annotations

import functools
import importlib
import io
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

BASELINE = (
    "import boto3\n"
    "from aws_lambda_powertools import Logger, Metrics, Tracer\n"
    "logger = Logger(service='b'); metrics = Metrics(namespace='b'); tracer = Tracer(service='b')\n"
    "@logger.inject_lambda_context\n"
    "@tracer.capture_lambda_handler\n"
    "@metrics.log_metrics\n"
    "def handler(event, context):\n"
    "    return {}\n"
)
# The baseline with the garbage collector paused while it loads, as aws_lambda/__init__.py does
# for the handlers: the like-for-like reference for what our own code adds.
BASELINE_GC_PAUSED = "import gc\ngc.disable()\n" + BASELINE + "gc.freeze()\ngc.enable()\n"
# That, with the libraries the worker builds on and no PatchPilot code: powertools' batch utility
# and pydantic, imported in the worker's order and building one model (its first model loads the
# rest of pydantic). The floor under the handlers' ratios: what is left is PatchPilot's own.
BASELINE_LIBRARIES = (
    "import gc\ngc.disable()\n"
    + BASELINE
    + "from aws_lambda_powertools.utilities.batch import BatchProcessor\n"
    + "from pydantic import BaseModel\n"
    + "class Record(BaseModel):\n    id: str\n"
    + "Record(id='i-1')\n"
    + "gc.freeze()\ngc.enable()\n"
)
BASELINES = {"baseline": BASELINE, "baseline_gc_paused": BASELINE_GC_PAUSED, "baseline_libraries": BASELINE_LIBRARIES}
HANDLERS = {
    "worker": "aws_lambda.worker",
    "trigger": "aws_lambda.trigger",
    "approve": "aws_lambda.approve",
    "waker": "aws_lambda.waker",
}


class Context:
    """What powertools reads of a Lambda context."""

    function_name = "patchpilot-probe"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:patchpilot-probe"
    aws_request_id = "00000000-0000-4000-8000-000000000000"


class _Events:
    def register(self, *args: Any, **kwargs: Any) -> None:
        pass


class _Meta:
    events = _Events()
    region_name = "us-east-1"


class FakeClients:
    """The `ClientFactory`: one stand-in object per service, recording what was sent. Each is
    built together with the real boto3 client of that service (`AwsSessions`, as Lambda builds
    it; never called), so the invocation pays what building clients costs on a cold start."""

    def __init__(self, fixture: dict[str, Any]) -> None:
        self.fixture = fixture
        self.sent: list[str] = []
        self.built: list[str] = []
        self._sessions: Any = None

    def __call__(self, service: str, account: str | None, region: str) -> Any:
        if self._sessions is None:
            from patchpilot.adapters.aws.sessions import AwsSessions

            self._sessions = AwsSessions()
        self._sessions(service, account, region)
        self.built.append(service)
        return _Client(self, service)


class _Client:
    meta = _Meta()

    def __init__(self, owner: FakeClients, service: str) -> None:
        self.owner = owner
        self.service = service

    def send_message_batch(self, QueueUrl: str, Entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
        self.owner.sent.extend(entry["MessageBody"] for entry in Entries)
        return {"Successful": [{"Id": e["Id"], "MessageId": e["Id"]} for e in Entries], "Failed": []}

    def get_paginator(self, operation: str) -> Any:
        """SSM's DescribeInstanceInformation: every instance asked for has its agent online."""
        assert operation == "describe_instance_information", operation
        return self

    def paginate(self, Filters: Sequence[dict[str, Any]] = (), **_: Any) -> list[dict[str, Any]]:
        ids = [i for f in Filters if f["Key"] == "InstanceIds" for i in f["Values"]]
        online = [{"InstanceId": i, "PingStatus": "Online", "AgentVersion": "3.3"} for i in ids]
        return [{"InstanceInformationList": online}]

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        return {"Body": io.BytesIO(self.owner.fixture["policy_yaml"].encode())}

    def get_secret_value(self, SecretId: str, **_: Any) -> dict[str, Any]:
        return {"Name": SecretId, "SecretString": self.owner.fixture["secret"]}


class JsonRunStore:
    """A `RunStore` keeping each run and outbox message as JSON, as a real store does; the
    DynamoDB client is built when the store is first used."""

    def __init__(self, runs: dict[str, str], client: Callable[[], object]) -> None:
        self.runs = dict(runs)
        self.outboxes: dict[str, list[bytes]] = {}
        self._client: Callable[[], object] | None = client

    def _use(self) -> None:
        if self._client is not None:
            self._client()
            self._client = None

    def create(self, run: Any, outbox: Sequence[Any]) -> None:
        self.save(run, outbox, run)

    def load(self, run_id: str) -> Any:
        from patchpilot.engine.run import Run

        self._use()
        return Run.model_validate_json(self.runs[run_id])

    def save(self, run: Any, outbox: Sequence[Any], previous: Any) -> None:
        from patchpilot.engine.messages import MESSAGE

        self._use()
        self.runs[run.run_id] = run.model_dump_json()
        self.outboxes.setdefault(run.run_id, []).extend(MESSAGE.dump_json(m) for m in outbox)

    def outbox(self, run_id: str) -> list[Any]:
        from patchpilot.engine.messages import MESSAGE

        return [MESSAGE.validate_json(body) for body in self.outboxes.get(run_id, [])]

    def mark_sent(self, run_id: str, message_ids: Sequence[str]) -> None:
        self.outboxes[run_id] = []

    def run_ids(self) -> list[str]:
        return list(self.runs)

    def active_run_ids(self) -> list[str]:
        self._use()
        return list(self.runs)


def runtime_on_fakes(fixture: dict[str, Any], logger: Any, clients: FakeClients) -> Any:
    """What `deps()` builds, on the stand-ins."""
    from patchpilot.bootstrap.aws import AwsEnvironment, AwsRuntime

    runtime: Any = AwsRuntime.build(AwsEnvironment.from_environ(fixture["environment"]), logger, clients)
    region = fixture["environment"]["AWS_REGION"]
    store = JsonRunStore(fixture["runs"], lambda: clients("dynamodb", None, region))
    if isinstance(getattr(type(runtime), "store", None), functools.cached_property):
        runtime.store = store  # before the service is built on it
    else:  # an artifact of a version that builds everything at once
        runtime.service.store = store
    return runtime


def check(scenario: str, result: Any, clients: FakeClients) -> None:
    """Fail loudly when the invocation did not do its work (a probe that measures an error is worthless)."""
    if scenario == "worker":
        ok = result == {"batchItemFailures": []} and any('"TakeSnapshots"' in body for body in clients.sent)
    elif scenario == "trigger":
        ok = result["start"] is False and "next window" in result["reason"]
    elif scenario == "approve":
        # the fixture's staging patched nothing, so the approved run ends `nothing_patched`: its
        # last notices and the release of its leases are what the invocation sends
        ok = result["statusCode"] == 200 and "approved ring" in result["body"] and bool(clients.sent)
    elif scenario == "waker":
        ok = len(result["woken"]) == 1 and any('"LookNow"' in body for body in clients.sent)
    else:
        ok = result == {}
    if not ok:
        raise SystemExit(f"{scenario}: unexpected result {result!r}, sent {clients.sent!r}")


def main(artifact: str, fixture_path: str, scenario: str) -> None:
    sys.path.insert(0, artifact)
    with open(fixture_path) as file:
        fixture = json.load(file)
    event = fixture["events"].get(scenario, {})
    clients = FakeClients(fixture)
    if scenario.startswith("baseline"):
        namespace: dict[str, Any] = {}
        start, start_cpu = time.perf_counter(), time.process_time()
        exec(BASELINES[scenario], namespace)  # our own constants
        imported, imported_cpu = time.perf_counter(), time.process_time()
        handler: Callable[[Any, Any], Any] = namespace["handler"]
        result = handler(event, Context())
        done, done_cpu = time.perf_counter(), time.process_time()
    else:
        start, start_cpu = time.perf_counter(), time.process_time()
        module = importlib.import_module(HANDLERS[scenario])
        imported, imported_cpu = time.perf_counter(), time.process_time()
        runtime = runtime_on_fakes(fixture, module.logger, clients)
        module.deps = lambda log=None: runtime  # type: ignore[attr-defined]
        result = module.handler(event, Context())
        done, done_cpu = time.perf_counter(), time.process_time()
    check(scenario, result, clients)
    figures = {
        "import_ms": (imported - start) * 1000,
        "invoke_ms": (done - imported) * 1000,
        "import_cpu_ms": (imported_cpu - start_cpu) * 1000,
        "invoke_cpu_ms": (done_cpu - imported_cpu) * 1000,
        "clients": clients.built,
    }
    print("COLD " + json.dumps(figures))


if __name__ == "__main__":
    main(*sys.argv[1:4])
