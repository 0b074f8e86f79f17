"""No test double may answer an AWS call with something AWS could not send.

Every boto3 client of the test process gets three botocore built-in handlers (installed on
import, for every session made afterwards, as moto installs its own):

- a last `before-call` handler that marks the call as sent on: it runs only when no earlier
  handler answered, so the answer then comes over botocore's HTTP path (moto, behind
  `before-send`) and is parsed from the wire by botocore's parser for the service's protocol;
- an `after-call` handler that checks every other answer, i.e. every answer a `before-call`
  hook gave (a botocore Stubber, the services of tests/fake_aws.py, a test's own hook):
  a success must validate against the operation's output shape (botocore's
  `validate_parameters`, the check `Stubber.add_response` makes), an error must carry a code
  that botocore's model declares for the service, or that AWS documents as common to all
  services or to this one (tests/fixtures/aws-published/error-codes.json, with the sources);
- a `before-parameter-build` handler on SSM SendCommand that refuses a document or a document
  parameter AWS does not publish, or a value the document does not allow
  (tests/fixtures/aws-published/ssm-documents.json, with the sources), whichever double is
  to answer the call.

A bad answer or command raises `UnvalidatedAnswer`, a BaseException so that an adapter's broad
`except Exception` (a health check that counts any failure as a failed check) cannot swallow
it; it is also kept in `VIOLATIONS`, which the autouse fixture `aws_answers_checked` (imported
by tests/conftest.py) asserts empty after each test.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore import handlers
from botocore.exceptions import ParamValidationError
from botocore.model import OperationModel
from botocore.validate import validate_parameters

PUBLISHED = Path(__file__).resolve().parent / "fixtures" / "aws-published"
SENT = "aws_fidelity.sent"  # set in the request context when no hook answered the call

VIOLATIONS: list[str] = []


class UnvalidatedAnswer(BaseException):
    """A test double answered an AWS call with something the service model does not allow."""


@cache
def documented_errors(service: str) -> frozenset[str]:
    """The error codes AWS documents beyond the model: the common ones and the service's own."""
    recorded = json.loads((PUBLISHED / "error-codes.json").read_text())
    extra = recorded["services"].get(service, {}).get("codes", [])
    return frozenset([*recorded["common"]["codes"], *extra])


def declared_errors(model: OperationModel) -> frozenset[str]:
    """The error codes botocore's model declares for the operation's service (shape names and
    the wire codes query-protocol services give them)."""
    shapes = [*model.error_shapes, *model.service_model.error_shapes]
    codes = {shape.name for shape in shapes}
    codes |= {str(shape.metadata["error"]["code"]) for shape in shapes if "code" in shape.metadata.get("error", {})}
    return frozenset(codes)


def problem(model: OperationModel, status: int, parsed: dict[str, Any]) -> str | None:
    """What is wrong with a hook's answer to `model`'s operation; None when AWS could send it."""
    where = f"{model.service_model.service_name} {model.name}"
    if status >= 300:
        code = parsed.get("Error", {}).get("Code")
        if not isinstance(code, str) or not code:
            return f"{where}: an error answer without Error.Code"
        if code not in declared_errors(model) and code not in documented_errors(model.service_model.service_name):
            return (
                f"{where}: error code {code!r} is neither declared by botocore's model nor documented "
                "(add it with its source to tests/fixtures/aws-published/error-codes.json if AWS sends it)"
            )
        return None
    body = {k: v for k, v in parsed.items() if k != "ResponseMetadata"}
    if model.output_shape is None:
        return f"{where}: the operation has no output, the answer has {sorted(body)}" if body else None
    try:
        validate_parameters(body, model.output_shape)
    except ParamValidationError as error:
        return f"{where}: the answer does not validate against the output shape: {error}"
    return None


@cache
def published_documents() -> dict[str, Any]:
    """The recorded SSM documents: name -> {"parameters": ..., "exclusive": ..., "source": ...}."""
    recorded: dict[str, Any] = json.loads((PUBLISHED / "ssm-documents.json").read_text())
    return {name: document for name, document in recorded.items() if not name.startswith("_")}


def unpublished(document: str, parameters: dict[str, list[str]]) -> list[str]:
    """What in a SendCommand's DocumentName and Parameters the document does not publish."""
    published = published_documents().get(document)
    if published is None:
        return [f"document {document!r} is not recorded in tests/fixtures/aws-published/ssm-documents.json"]
    found: list[str] = []
    spec: dict[str, dict[str, Any]] = published["parameters"]
    for name, values in parameters.items():
        rule = spec.get(name)
        if rule is None:
            found.append(f"{document}: parameter {name!r} is not one of {sorted(spec)}")
            continue
        if "minItems" in rule and len(values) < rule["minItems"]:
            found.append(f"{document}: {name} needs at least {rule['minItems']} value(s), got {len(values)}")
        if "minItems" not in rule and len(values) != 1:
            found.append(f"{document}: {name} is a String parameter (one value), got {len(values)}")
        for value in values:
            if "allowedValues" in rule and value not in rule["allowedValues"]:
                found.append(f"{document}: {name}={value!r} is not one of {rule['allowedValues']}")
            if "allowedPattern" in rule and re.fullmatch(rule["allowedPattern"], value) is None:
                found.append(f"{document}: {name}={value!r} does not match {rule['allowedPattern']}")
            if "maxChars" in rule and len(value) > rule["maxChars"]:
                found.append(f"{document}: {name} is longer than {rule['maxChars']} characters")
    found += [
        f"{document}: parameter {name!r} is required"
        for name, r in spec.items()
        if r.get("required") and name not in parameters
    ]
    for group in published.get("exclusive", []):
        given = [name for name in group if parameters.get(name, [""]) != [""]]
        if len(given) > 1:
            found.append(f"{document}: {' and '.join(given)} cannot be used together")
    return found


def _check_command(params: dict[str, Any], **_: Any) -> None:
    found = unpublished(str(params.get("DocumentName", "")), dict(params.get("Parameters") or {}))
    if found:
        message = "ssm SendCommand: " + "; ".join(found)
        VIOLATIONS.append(message)
        raise UnvalidatedAnswer(message)


def _mark_sent(context: dict[str, Any], **_: Any) -> None:
    context[SENT] = True


def _check(
    http_response: Any, parsed: dict[str, Any], model: OperationModel, context: dict[str, Any], **_: Any
) -> None:
    if context.get(SENT) and getattr(http_response, "raw", None) is not None:
        return  # parsed by botocore from moto's wire answer
    found = problem(model, int(http_response.status_code), parsed)
    if found is not None:
        VIOLATIONS.append(found)
        raise UnvalidatedAnswer(found)


def install() -> None:
    """Add the three handlers to botocore's built-ins (once); drop boto3's default session so
    that the next one is made with them."""
    if any(spec[1] is _check for spec in handlers.BUILTIN_HANDLERS):
        return
    handlers.BUILTIN_HANDLERS.append(("before-call", _mark_sent, handlers.REGISTER_LAST))
    handlers.BUILTIN_HANDLERS.append(("after-call", _check))
    handlers.BUILTIN_HANDLERS.append(("before-parameter-build.ssm.SendCommand", _check_command))
    boto3.DEFAULT_SESSION = None


@pytest.fixture(autouse=True)
def aws_answers_checked() -> Iterator[None]:
    """Fail the test if a test double gave an AWS call an answer AWS could not send (even if
    the code under test caught the error raised at the call)."""
    VIOLATIONS.clear()
    yield
    found, VIOLATIONS[:] = list(VIOLATIONS), []
    assert not found, "unvalidated AWS answers: " + "; ".join(found)


install()
