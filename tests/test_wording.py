"""The wording and the health verdict both clouds share (patchpilot.wording, patchpilot.verdict)."""

from datetime import UTC, datetime, timedelta

import pytest

from patchpilot.verdict import Verdict
from patchpilot.wording import plural, spoken_duration

NOW = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("count", "word", "expected"),
    [(1, "machine", "1 machine"), (0, "machine", "0 machines"), (3, "patch", "3 patches"), (2, "box", "2 boxes")],
)
def test_plural_says_the_count_and_the_noun(count: int, word: str, expected: str) -> None:
    assert plural(count, word) == expected


@pytest.mark.parametrize(
    ("delta", "expected"),
    [
        (timedelta(seconds=45), "45 s"),
        (timedelta(seconds=90), "90 s"),
        (timedelta(minutes=5), "5 min"),
        (timedelta(minutes=90), "90 min"),
        (timedelta(hours=4), "4 h"),
        (timedelta(hours=9), "9 h"),
    ],
)
def test_spoken_duration(delta: timedelta, expected: str) -> None:
    assert spoken_duration(delta) == expected


def test_a_wait_past_its_deadline_fails_and_says_how_long() -> None:
    timeout = timedelta(minutes=5)
    verdict = Verdict("wait", "VM agent Not Ready").timed(NOW, NOW, timeout)
    assert verdict == Verdict("fail", "VM agent Not Ready (still after 5 min)")


def test_a_wait_before_its_deadline_keeps_waiting_and_remembers_it() -> None:
    deadline = NOW + timedelta(minutes=1)
    verdict = Verdict("wait", "status checks").timed(NOW, deadline, timedelta(minutes=5))
    assert verdict == Verdict("wait", "status checks", deadline)
    assert verdict.plus("HTTP 200").deadline == deadline


def test_pass_and_fail_are_not_timed() -> None:
    passed = Verdict("pass", "status checks 2/2 passed")
    assert passed.timed(NOW, NOW, timedelta(minutes=5)) is passed
    assert passed.plus("HTTP 200").detail == "status checks 2/2 passed, HTTP 200"
