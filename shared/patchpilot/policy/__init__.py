"""Policy files: models, schedules and loading."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import ValidationError

from patchpilot.errors import InputError, Problem
from patchpilot.inputs import Document, parse_yaml, problems_from, read_text
from patchpilot.policy.model import Policy, Ring, Rollout, Schedule, Selector
from patchpilot.policy.schedule import Window

__all__ = ["Policy", "Ring", "Rollout", "Schedule", "Selector", "Window", "load_policy", "parse_policy"]


def parse_policy(text: str, source: str = "<policy>", now: datetime | None = None) -> Policy:
    """Parse and validate a policy; an InputError names every problem with its line. `now` (the
    caller's clock; default: the real time) bounds how far ahead an exception may expire."""
    document = parse_yaml(text, source)
    if not isinstance(document.data, dict):
        raise InputError.single(source, "expected a mapping of policy fields at the top level")
    try:
        policy = Policy.model_validate(document.data)
    except ValidationError as exc:
        raise InputError(source, problems_from(exc, Policy, document.locate)) from None
    found = [*policy.problems(), *policy.exception_problems(now or datetime.now(UTC))]
    problems = [_placed(p, document) for p in found]
    if problems:
        raise InputError(source, problems)
    return policy


def _placed(problem: Problem, document: Document) -> Problem:
    pos = document.locate(problem.path)
    return Problem(problem.path, problem.message, *(pos or (None, None)))


def load_policy(path: str, now: datetime | None = None) -> Policy:
    return parse_policy(read_text(path), path, now)
