"""Rings and availability-first waves."""

from patchpilot.planning.planner import (
    Exclusion,
    Plan,
    RingPlan,
    Wave,
    placement,
    plan,
    plan_document,
    plan_maintenance,
)

__all__ = ["Exclusion", "Plan", "RingPlan", "Wave", "placement", "plan", "plan_document", "plan_maintenance"]
