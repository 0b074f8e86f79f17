"""Rings and availability-first waves."""

from patchpilot.planning.planner import (
    Exclusion,
    Plan,
    RingPlan,
    Wave,
    placement,
    plan,
    plan_document,
)

__all__ = ["Exclusion", "Plan", "RingPlan", "Wave", "placement", "plan", "plan_document"]
