"""Policy files: models, schedules and loading."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from patchpilot.errors import InputError, Problem
from patchpilot.inputs import Document, parse_yaml, problems_from, read_text
from patchpilot.policy.model import Policy, Ring, Rollout, Schedule, Selector
from patchpilot.policy.schedule import Window

__all__ = [
    "Policy",
    "Ring",
    "Rollout",
    "Schedule",
    "Selector",
    "Window",
    "load_policy",
    "parse_policy",
    "with_freeze_calendar",
]


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


def with_freeze_calendar(policy: Policy, read: Callable[[str], tuple[str, str | bytes]]) -> Policy:
    """`policy` with its `freeze_calendar` read and parsed (unchanged without one). `read(name)` is
    the calendar's location (for messages) and content, from beside the policy; an InputError
    names that location when the file is missing or not iCalendar."""
    if policy.freeze_calendar is None:
        return policy
    from patchpilot.policy.freeze import parse_calendar

    location, data = read(policy.freeze_calendar)
    return policy.with_freeze_calendar(parse_calendar(data, location))


def load_policy(path: str, now: datetime | None = None) -> Policy:
    """A policy file (its exceptions' expiries checked against `now`), with its `freeze_calendar`
    read from the policy's folder."""

    def beside(name: str) -> tuple[str, str]:
        location = str(Path(path).parent / name)
        return location, read_text(location)

    return with_freeze_calendar(parse_policy(read_text(path), path, now), beside)
