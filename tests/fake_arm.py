"""A fake Azure Resource Manager behind the real SDK clients' HTTP transport.

The real azure-mgmt clients serialize their requests, run their pipeline (authentication, retry
with Retry-After, long-running-operation polling) and deserialize the answers; only the last hop
is replaced: a `requests` adapter mounted on https://management.azure.com answers from this
in-process model. Nothing leaves the process.

What the core does, for every resource type:
- resources are JSON documents keyed by their id (case-insensitive, as in ARM);
- GET, PUT (create or replace), PATCH (deep merge) and DELETE by id, with ARM's error shape;
- long-running operations (`accepted`): 202 with `Azure-AsyncOperation` and `Location`, polled
  `InProgress` until the operation's time has come on the test's clock, then `Succeeded` (the
  result read from `Location`) or `Failed` with an error;
- throttling: `throttle(pattern, times)` answers 429 with Retry-After, which the SDK's retry
  policy honours;
- every request is recorded (`calls`), so tests and benchmarks count requests by operation;
- `spec_check` (tests/arm_spec.py's `SpecCheck`, set for every test by tests/conftest.py): every
  request body and api-version is held to the Azure REST API specifications before a handler sees
  it (a 400 with ARM's error body names what is wrong), and every answer is checked against the
  operation's response schema.

Operation-specific behaviour (install patches, Resource Graph tables, the disk swap rules,
maintenance configurations) is added with `on(method, pattern, handler)` by the modules that
model those services; a later registration wins over an earlier one.
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import requests
import urllib3
from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import RequestsTransport

ARM = "https://management.azure.com"


class Clock(Protocol):
    def now(self) -> datetime: ...


class FakeCredential:
    """A TokenCredential that hands out a token without asking anyone."""

    def __init__(self) -> None:
        self.requests = 0

    def get_token(self, *scopes: str, **_: Any) -> AccessToken:
        self.requests += 1
        return AccessToken("fake-token", int(datetime.now(UTC).timestamp()) + 3600)


@dataclass(frozen=True)
class Call:
    method: str
    path: str  # lower-cased, without the query string
    api_version: str | None
    body: Any
    status: int


@dataclass
class Request:
    method: str
    path: str  # as sent (case kept), without the query
    query: dict[str, str]
    body: Any
    headers: dict[str, str]

    def match(self, pattern: str) -> re.Match[str]:
        found = re.fullmatch(pattern, self.path, flags=re.IGNORECASE)
        assert found is not None, f"{pattern} does not match {self.path}"
        return found


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class SpecHook(Protocol):
    """Holds requests and answers to the published API (tests/arm_spec.py's `SpecCheck`)."""

    def request(self, request: Request) -> tuple[str, str] | None:
        """(error code, message) when the request does not follow the specification."""
        ...

    def response(self, request: Request, response: Response) -> None: ...


class ArmError(Exception):
    """Raise from a handler to answer with ARM's error shape."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


Handler = Callable[[Request], Response]
# A Resource Graph table: (the query's text, the subscriptions it names or None) -> every row
TableHandler = Callable[[str, list[str] | None], list[dict[str, Any]]]


@dataclass(frozen=True)
class GraphQuery:
    """A Resource Graph query the fake answered: its text, the subscriptions it named and every
    row of the answer (all pages)."""

    text: str
    subscriptions: list[str] | None  # as the tables saw them: a management group's, when the query named groups
    rows: list[dict[str, Any]]
    management_groups: list[str] | None = None  # the request's managementGroups scope, if it named one


@dataclass
class Operation:
    """A long-running operation: InProgress until `done_at`, then its result or its error."""

    id: str
    done_at: datetime
    result: Any = None
    error: tuple[str, str] | None = None  # code, message
    on_done: Callable[[], None] | None = None  # the state change, made once when it completes
    finished: bool = False
    polls: int = 0


class FakeArm:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.resources: dict[str, dict[str, Any]] = {}
        self.calls: list[Call] = []
        self.operations: dict[str, Operation] = {}
        self.credential = FakeCredential()
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._throttles: list[list[Any]] = []  # [method, pattern, remaining, retry_after]
        self.denied: set[str] = set()  # RBAC actions (lower case) the caller's identity lacks: `deny`
        self._ids = itertools.count(1)
        self.on(
            "GET",
            r"/subscriptions/[^/]+/providers/Microsoft\.[^/]+/locations/[^/]+/operations/[^/]+",
            self._operation_status,
        )
        self.on("GET", r"/fake/operations/[^/]+", self._operation_status)
        self.on("GET", r"/fake/results/[^/]+", self._operation_result)
        self.on("POST", r"/providers/Microsoft\.ResourceGraph/resources", self._graph)
        self._tables: dict[str, TableHandler] = {}
        self.graph_answers: list[GraphQuery] = []  # in the order asked, each once (not per page)
        self.spec_check: SpecHook | None = None
        # Management groups (names) and the subscriptions under each, child groups' included, as a
        # test configures them: a Resource Graph query scoped to groups reads those subscriptions.
        self.management_groups: dict[str, list[str]] = {}

    # ------------------------------------------------------------ wiring the real clients

    def transport(self) -> RequestsTransport:
        session = requests.Session()
        session.mount(ARM, _Adapter(self))
        return RequestsTransport(session=session, session_owner=False)

    def client(self, cls: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A real SDK client (ComputeManagementClient, ResourceGraphClient, ...) on this fake,
        polling long-running operations without sleeping."""
        kwargs.setdefault("polling_interval", 0)
        return cls(self.credential, *args, transport=self.transport(), **kwargs)

    # ------------------------------------------------------------ modelling services

    def on(self, method: str, pattern: str, handler: Handler) -> None:
        """Answer `method` on paths matching `pattern` (a regex over the whole path, ignoring
        case) with `handler`; later registrations are tried first."""
        self._routes.insert(0, (method.upper(), re.compile(pattern, re.IGNORECASE), handler))

    def throttle(self, pattern: str, times: int = 1, method: str = "*", retry_after: int = 0) -> None:
        """The next `times` requests matching `pattern` get 429 Too Many Requests."""
        self._throttles.append([method.upper(), re.compile(pattern, re.IGNORECASE), times, retry_after])

    def deny(self, action: str) -> None:
        """Refuse every request whose RBAC action (tests/azure_rbac.py's `arm_action`) is `action`
        with 403 AuthorizationFailed, worded as ARM words it (the action and the scope named)."""
        self.denied.add(action.lower())

    def table(self, name: str, handler: TableHandler) -> None:
        """Answer Resource Graph queries on table `name` (the query's first word) with `handler`;
        the fake pages its rows by the request's `top` and `$skipToken`."""
        self._tables[name.lower()] = handler

    def add(self, resource: dict[str, Any]) -> dict[str, Any]:
        self.resources[resource["id"].lower()] = resource
        return resource

    def get(self, resource_id: str) -> dict[str, Any]:
        """A resource by id, ignoring case; ARM also takes an id without its leading slash, as the
        official examples write `sourceResourceId` ("subscriptions/{id}/resourceGroups/...")."""
        found = self.resources.get(resource_id.lower()) or self.resources.get("/" + resource_id.strip("/").lower())
        if found is None:
            raise ArmError(404, "ResourceNotFound", f"The Resource '{resource_id}' was not found.")
        return found

    def find(self, resource_type: str) -> Iterator[dict[str, Any]]:
        """Resources of one type (e.g. "Microsoft.Compute/virtualMachines"), in insertion order."""
        wanted = resource_type.lower()
        return (r for r in self.resources.values() if r.get("type", "").lower() == wanted)

    def accepted(
        self,
        location: str,
        after: timedelta = timedelta(0),
        result: Any = None,
        error: tuple[str, str] | None = None,
        on_done: Callable[[], None] | None = None,
        location_only: bool = False,
    ) -> Response:
        """Start a long-running operation that ends `after` from now on the test's clock."""
        op_id = f"op-{next(self._ids)}"
        self.operations[op_id] = Operation(op_id, self.clock.now() + after, result, error, on_done)
        status_url = f"{ARM}/fake/operations/{op_id}"
        headers = {"Location": f"{ARM}/fake/results/{op_id}", "Retry-After": "0"}
        if not location_only:
            headers["Azure-AsyncOperation"] = status_url
        if location.strip():
            headers["x-ms-fake-location"] = location
        return Response(202, None, headers)

    def count(self) -> Counter[str]:
        """Requests by operation: method plus the path with names replaced by `{}`."""
        return Counter(f"{c.method} {_shape(c.path)}" for c in self.calls)

    # ------------------------------------------------------------ answering

    def answer(self, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> Response:
        parts = urlsplit(url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        payload = json.loads(body) if body else None
        request = Request(method.upper(), parts.path, query, payload, headers)
        refused = self.spec_check.request(request) if self.spec_check is not None else None
        response = _error(400, *refused) if refused is not None else self._dispatch(request)
        if self.spec_check is not None:
            self.spec_check.response(request, response)
        self.calls.append(Call(request.method, parts.path.lower(), query.get("api-version"), payload, response.status))
        return response

    def _dispatch(self, request: Request) -> Response:
        for throttle in self._throttles:
            method, pattern, remaining, retry_after = throttle
            if remaining > 0 and method in ("*", request.method) and pattern.fullmatch(request.path):
                throttle[2] -= 1
                return _error(
                    429, "TooManyRequests", "The request is being throttled.", {"Retry-After": str(retry_after)}
                )
        if self.denied and "/providers/" in request.path and not request.path.lower().startswith("/fake/"):
            from azure_rbac import arm_action  # tests/: the action ARM would check

            action = arm_action(request.method, request.path)
            if action in self.denied:
                return _error(
                    403,
                    "AuthorizationFailed",
                    f"The client 'patchpilot-worker' with object id '00000000-0000-0000-0000-0000000000aa' does not "
                    f"have authorization to perform action '{action}' over scope '{request.path}' or the scope is "
                    "invalid. If access was recently granted, please refresh your credentials.",
                )
        try:
            for method, pattern, handler in self._routes:
                if method == request.method and pattern.fullmatch(request.path):
                    return handler(request)
            return self._generic(request)
        except ArmError as exc:
            return _error(exc.status, exc.code, exc.message)

    def _generic(self, request: Request) -> Response:
        resource_id = request.path
        if request.method == "GET":
            return Response(200, self.get(resource_id))
        if request.method == "PUT":
            body = copy.deepcopy(request.body or {})
            existed = resource_id.lower() in self.resources
            body.update(id=_canonical(resource_id), name=resource_id.rsplit("/", 1)[-1], type=_type_of(resource_id))
            self.add(body)
            return Response(200 if existed else 201, body)
        if request.method == "PATCH":
            resource = self.get(resource_id)
            _merge(resource, copy.deepcopy(request.body or {}))
            return Response(200, resource)
        if request.method == "DELETE":
            existed = self.resources.pop(resource_id.lower(), None)
            return Response(200 if existed else 204)
        raise ArmError(405, "MethodNotAllowed", f"{request.method} {resource_id}")

    def _graph(self, request: Request) -> Response:
        body = request.body or {}
        text = str(body.get("query", ""))
        name = text.strip().split(None, 1)[0].lower() if text.strip() else ""
        if name not in self._tables:
            raise ArmError(400, "BadRequest", f"the fake models no Resource Graph table {name!r}")
        groups = body.get("managementGroups")
        subscriptions = body.get("subscriptions")
        if groups:
            if subscriptions:
                raise ArmError(400, "BadRequest", "a query names subscriptions or managementGroups, not both")
            unknown = [g for g in groups if g not in self.management_groups]
            if unknown:  # the fake's wording: the identity reads no such group
                raise ArmError(403, "AuthorizationFailed", f"no access to management group(s) {', '.join(unknown)}")
            subscriptions = sorted({s for g in groups for s in self.management_groups[g]})
        # Groups with no subscription under them answer nothing (a table reads no list as every subscription).
        rows = [] if groups and not subscriptions else self._tables[name](text, subscriptions)
        options = body.get("options") or {}
        top = int(options.get("$top") or 100)
        start = int(options.get("$skipToken") or 0)
        if start == 0:
            self.graph_answers.append(GraphQuery(text, subscriptions, list(rows), groups or None))
        page = rows[start : start + top]
        answer: dict[str, Any] = {
            "totalRecords": len(rows),
            "count": len(page),
            "resultTruncated": "false",
            "data": page,
        }
        if start + top < len(rows):
            answer["$skipToken"] = str(start + top)
        return Response(200, answer)

    def _operation(self, request: Request) -> Operation:
        op_id = request.path.rsplit("/", 1)[-1]
        try:
            operation = self.operations[op_id]
        except KeyError:
            raise ArmError(404, "OperationNotFound", f"no operation {op_id}") from None
        operation.polls += 1
        if not operation.finished and self.clock.now() >= operation.done_at:
            operation.finished = True
            if operation.on_done is not None:
                operation.on_done()
        return operation

    def _operation_status(self, request: Request) -> Response:
        operation = self._operation(request)
        if not operation.finished:
            return Response(200, {"name": operation.id, "status": "InProgress"}, {"Retry-After": "0"})
        if operation.error is not None:
            code, message = operation.error
            return Response(
                200, {"name": operation.id, "status": "Failed", "error": {"code": code, "message": message}}
            )
        return Response(200, {"name": operation.id, "status": "Succeeded"})

    def _operation_result(self, request: Request) -> Response:
        operation = self._operation(request)
        if not operation.finished:
            return Response(202, None, {"Location": f"{ARM}{request.path}", "Retry-After": "0"})
        if operation.error is not None:
            code, message = operation.error
            return _error(400, code, message)
        return Response(200, operation.result) if operation.result is not None else Response(204)


class _Adapter(requests.adapters.BaseAdapter):
    def __init__(self, fake: FakeArm) -> None:
        super().__init__()
        self.fake = fake

    def send(self, request: requests.PreparedRequest, **_: Any) -> requests.Response:
        body = request.body.encode() if isinstance(request.body, str) else request.body
        answer = self.fake.answer(request.method or "GET", request.url or "", body, dict(request.headers))
        content = json.dumps(answer.body).encode() if answer.body is not None else b""
        headers = {"Content-Type": "application/json", "Content-Length": str(len(content)), **answer.headers}
        response = requests.Response()
        response.status_code = answer.status
        response.headers.update(headers)
        response.raw = urllib3.HTTPResponse(
            body=io.BytesIO(content), headers=headers, status=answer.status, preload_content=False
        )
        response.url = request.url or ""
        response.request = request
        response.reason = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content"}.get(answer.status, "Error")
        return response

    def close(self) -> None:
        pass


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(status, {"error": {"code": code, "message": message}}, headers or {})


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """JSON merge patch, as ARM applies a PATCH."""
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        elif value is None:
            target.pop(key, None)
        else:
            target[key] = value


def _canonical(resource_id: str) -> str:
    return resource_id.rstrip("/")


def _type_of(resource_id: str) -> str:
    """`/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/disks/d` -> Microsoft.Compute/disks."""
    parts = resource_id.strip("/").split("/")
    if "providers" not in parts:
        return ""
    at = len(parts) - 1 - parts[::-1].index("providers")
    namespace, rest = parts[at + 1], parts[at + 2 :]
    return "/".join([namespace, *rest[0::2]])


def _shape(path: str) -> str:
    """The operation a path names, its names replaced by {}:
    `/subscriptions/{}/resourcegroups/{}/providers/microsoft.compute/virtualmachines/{}/installpatches`."""
    parts = path.strip("/").split("/")
    shaped: list[str] = []
    index = 0
    while index < len(parts):
        part = parts[index]
        if part == "providers" and index + 1 < len(parts):
            # the namespace, then type and name in turns (an action sits where a type would)
            shaped += [part, parts[index + 1]]
            for turn, segment in enumerate(parts[index + 2 :]):
                shaped.append("{}" if turn % 2 else segment)
            break
        shaped.append(part)
        if part in ("subscriptions", "resourcegroups", "operations", "results") and index + 1 < len(parts):
            shaped.append("{}")
            index += 1
        index += 1
    return "/" + "/".join(shaped)
