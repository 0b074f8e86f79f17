"""The Azure REST API specifications, as recorded in tests/fixtures/arm-examples/: the official
examples of the operations PatchPilot calls and the operations' schemas (schemas.json), and
`SpecCheck`, which holds the fake ARM to them.

`FakeArm.spec_check = SpecCheck()` makes the fake
- refuse a request whose body does not validate against the operation's request schema, or whose
  api-version is not one the SDK clients send: 400 with ARM's error body, every problem named
  with its place in the body;
- check every answer it gives (including a long-running operation's final result, followed from
  its Location) against the operation's response schema, recording what does not validate in
  `problems` and what it checked in `seen`.

Nothing is fetched: the schemas were transcribed from the specifications at the commits
schemas.json names. Validation is JSON Schema draft 4 (Swagger 2.0's dialect) with two readings
ARM makes: a null value counts as absent, and enum values are compared ignoring case.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from fake_arm import Request, Response
from jsonschema import Draft4Validator, validators
from jsonschema.exceptions import ValidationError

EXAMPLES = Path(__file__).parent / "fixtures" / "arm-examples"

# The api-versions the fake speaks, by provider: the ones the installed SDK clients send
# (test_arm_examples checks them against the clients), and the preview the cancel is sent at.
API_VERSIONS = {
    "microsoft.compute": frozenset({"2026-04-01", "2026-03-02"}),  # virtual machines; disks and snapshots
    "microsoft.hybridcompute": frozenset({"2026-07-15"}),
    "microsoft.maintenance": frozenset({"2023-04-01", "2023-09-01-preview"}),
    "microsoft.network": frozenset({"2026-03-01"}),  # NICs, load balancers, Application Gateways (traffic pools)
    "microsoft.resourcegraph": frozenset({"2021-03-01"}),
}

_RG = r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers"
_VM = _RG + r"/Microsoft\.Compute/virtualMachines/[^/]+"
_ARC = _RG + r"/Microsoft\.HybridCompute/machines/[^/]+"
_MC = _RG + r"/Microsoft\.Maintenance/maintenanceConfigurations/[^/]+"
_NET = _RG + r"/Microsoft\.Network"
# (method, path, operation): the operations schemas.json holds a schema for
ROUTES = [
    ("POST", _VM + r"/installPatches", "VirtualMachines_InstallPatches"),
    ("POST", _ARC + r"/installPatches", "Machines_InstallPatches"),
    ("POST", _VM + r"/assessPatches", "VirtualMachines_AssessPatches"),
    ("PUT", _VM + r"/runCommands/[^/]+", "VirtualMachineRunCommands_CreateOrUpdate"),
    ("GET", _VM + r"/runCommands/[^/]+", "VirtualMachineRunCommands_GetByVirtualMachine"),
    ("POST", r"/providers/Microsoft\.ResourceGraph/resources", "Resources"),
    ("PUT", _MC, "MaintenanceConfigurations_CreateOrUpdate"),
    (
        "PUT",
        r"/subscriptions/.+/providers/Microsoft\.Maintenance/configurationAssignments/[^/]+",
        "ConfigurationAssignments_CreateOrUpdate",
    ),
    ("PUT", _MC + r"/providers/Microsoft\.Maintenance/applyUpdates/[^/]+", "ApplyUpdates_Cancel"),
    ("GET", _MC + r"/providers/Microsoft\.Maintenance/applyUpdates/[^/]+", "ApplyUpdates_Get"),
    ("GET", _NET + r"/networkInterfaces/[^/]+", "NetworkInterfaces_Get"),
    ("PUT", _NET + r"/networkInterfaces/[^/]+", "NetworkInterfaces_CreateOrUpdate"),
    ("GET", _NET + r"/loadBalancers/[^/]+", "LoadBalancers_Get"),
    ("GET", _NET + r"/applicationGateways/[^/]+", "ApplicationGateways_Get"),
    ("POST", _NET + r"/loadBalancers/[^/]+/loadBalancingRules/[^/]+/health", "LoadBalancerLoadBalancingRules_Health"),
    ("POST", _NET + r"/applicationGateways/[^/]+/backendhealth", "ApplicationGateways_BackendHealth"),
]


@cache
def schemas() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EXAMPLES / "schemas.json").read_text())
    return loaded


def example(name: str) -> dict[str, Any]:
    """One recorded example file: {"source": ..., "call": ..., "spec": ..., "example": ...}."""
    loaded: dict[str, Any] = json.loads((EXAMPLES / name).read_text())
    return loaded


def examples() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(EXAMPLES.glob("*.json")):
        if path.name != "schemas.json":
            yield path.name, example(path.name)


def _enum_ignoring_case(validator: Any, enums: list[Any], instance: Any, schema: Any) -> Iterator[ValidationError]:
    folded = {e.lower() if isinstance(e, str) else e for e in enums}
    if (instance.lower() if isinstance(instance, str) else instance) not in folded:
        yield ValidationError(f"{instance!r} is not one of {enums}")


_Validator = validators.extend(Draft4Validator, {"enum": _enum_ignoring_case})


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def problems(definition: str, instance: Any) -> list[str]:
    """What in `instance` does not validate against the recorded definition, each with its place."""
    schema = {"$ref": f"#/definitions/{definition}", "definitions": schemas()["definitions"]}
    errors = _Validator(schema).iter_errors(_without_nulls(instance))
    return sorted(f"{'.'.join(str(p) for p in e.absolute_path) or 'the body'}: {e.message}" for e in errors)


def operation_of(method: str, path: str) -> str | None:
    for route_method, pattern, operation in ROUTES:
        if route_method == method.upper() and re.fullmatch(pattern, path, flags=re.IGNORECASE):
            return operation
    return None


def _provider(path: str) -> str | None:
    """The namespace ARM routes a request to: the last one its path names (an assignment on a
    VM is Microsoft.Maintenance's)."""
    found = re.findall(r"/providers/(Microsoft\.[A-Za-z]+)", path, flags=re.IGNORECASE)
    return found[-1].lower() if found else None


class SpecCheck:
    """See the module's docstring. `problems` lists every answer that broke its schema."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.seen: Counter[str] = Counter()  # operation -> answers checked against its schema
        self.refused: list[str] = []
        self._results: dict[str, str] = {}  # a long-running operation's result path -> operation

    def request(self, request: Request) -> tuple[str, str] | None:
        provider = _provider(request.path)
        version = request.query.get("api-version")
        if provider in API_VERSIONS and version not in API_VERSIONS[provider]:
            self.refused.append(f"{request.method} {request.path}: api-version {version}")
            return (
                "InvalidApiVersionParameter",
                f"The api-version '{version}' is invalid. The supported versions are "
                f"'{', '.join(sorted(API_VERSIONS[provider]))}'.",
            )
        operation = operation_of(request.method, request.path)
        definition = schemas()["operations"].get(operation or "", {}).get("request")
        if definition is None or request.body is None:
            return None
        found = problems(definition, request.body)
        if not found:
            return None
        self.refused.append(f"{operation}: {'; '.join(found)}")
        return "InvalidRequestContent", f"The request content of {operation} is not valid: {'; '.join(found)}"

    def response(self, request: Request, response: Response) -> None:
        operation = operation_of(request.method, request.path)
        location = response.headers.get("Location", "")
        if operation is not None and response.status == 202 and "/fake/results/" in location:
            self._results[location.split("management.azure.com", 1)[-1].lower()] = operation
        operation = operation or self._results.get(request.path.lower())
        definition = schemas()["operations"].get(operation or "", {}).get("response")
        if definition is None or response.body is None or response.status >= 300:
            return
        self.seen[operation or ""] += 1
        self.problems += [f"{operation} answer: {p}" for p in problems(definition, response.body)]
