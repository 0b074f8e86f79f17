"""The timer that starts scheduled runs: once per window, at its start, in the policy's zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from patchpilot.policy import parse_policy
from patchpilot.triggers import TIMER_PERIOD, scheduled_trigger

POLICY = parse_policy(
    """
name: monthly
schedule: {monthly: "Second Tuesday Offset+4", at: "02:00", timezone: Tokyo Standard Time, duration: 4h}
rings: [{name: all, select: {tags: {Environment: "*"}}}]
"""
)
WINDOW_START = datetime(2026, 12, 12, 2, 0, tzinfo=UTC) - timedelta(hours=9)  # 02:00 JST, Saturday


def test_a_timer_inside_the_first_period_of_the_window_starts_the_run() -> None:
    decision = scheduled_trigger(POLICY, WINDOW_START + timedelta(minutes=3))
    assert decision.start
    assert decision.run_id == "monthly-20261212-0200"


def test_every_timer_of_that_period_names_the_same_run() -> None:
    ids = {scheduled_trigger(POLICY, WINDOW_START + timedelta(minutes=m)).run_id for m in (0, 5, 14)}
    assert ids == {"monthly-20261212-0200"}


def test_a_timer_before_the_window_does_not_start_and_says_when() -> None:
    decision = scheduled_trigger(POLICY, WINDOW_START - timedelta(minutes=1))
    assert not decision.start
    assert "2026-12-12T02:00+09:00" in decision.reason


def test_a_timer_later_in_the_window_does_not_start_another_run() -> None:
    assert not scheduled_trigger(POLICY, WINDOW_START + TIMER_PERIOD + timedelta(minutes=1)).start


def test_a_policy_without_schedule_never_starts_from_the_timer() -> None:
    policy = POLICY.model_copy(update={"schedule": None})
    decision = scheduled_trigger(policy, WINDOW_START)
    assert not decision.start and "no schedule" in decision.reason
