"""Rings and availability-first waves."""

from patchpilot.planning.estimate import WindowFit, wave_estimate, window_fit, window_warnings
from patchpilot.planning.planner import (
    NO_RING,
    Exclusion,
    Plan,
    RingPlan,
    Wave,
    assign,
    placement,
    plan,
    plan_cloud_scheduled,
    plan_document,
    pool_members,
    pool_shares,
    pool_text,
    ring_of,
)

__all__ = [
    "NO_RING",
    "Exclusion",
    "Plan",
    "RingPlan",
    "Wave",
    "WindowFit",
    "assign",
    "placement",
    "plan",
    "plan_cloud_scheduled",
    "plan_document",
    "pool_members",
    "pool_shares",
    "pool_text",
    "ring_of",
    "wave_estimate",
    "window_fit",
    "window_warnings",
]
