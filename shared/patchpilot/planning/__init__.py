"""Rings and availability-first waves.

The names below are loaded on first use (PEP 562): the engine imports `planning.estimate` on
every Lambda cold start, and importing this package must not load the planner with it
(tests/test_handler_imports.py keeps it so)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from patchpilot.planning.estimate import WindowFit, wave_estimate, window_fit, window_warnings
    from patchpilot.planning.planner import (
        NO_RING,
        Exclusion,
        Outline,
        Plan,
        RingPlan,
        Selection,
        Wave,
        assign,
        outline,
        placement,
        plan,
        plan_cloud_scheduled,
        plan_document,
        pool_members,
        pool_shares,
        pool_text,
        ring_of,
        select,
    )

_ESTIMATE = ("WindowFit", "wave_estimate", "window_fit", "window_warnings")

__all__ = [
    "NO_RING",
    "Exclusion",
    "Outline",
    "Plan",
    "RingPlan",
    "Selection",
    "Wave",
    "WindowFit",
    "assign",
    "outline",
    "placement",
    "plan",
    "plan_cloud_scheduled",
    "plan_document",
    "pool_members",
    "pool_shares",
    "pool_text",
    "ring_of",
    "select",
    "wave_estimate",
    "window_fit",
    "window_warnings",
]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{'estimate' if name in _ESTIMATE else 'planner'}")
    value = getattr(module, name)
    globals()[name] = value  # found once: later look-ups do not come here
    return value
