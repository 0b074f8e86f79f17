"""How long a wave is expected to take, from the durations of its steps: the one place these
durations live. The local simulated fleet (adapters/local/simulated_fleet.py) draws each step's
duration from these ranges, so a plan's estimate is what a local run takes at worst.

A wave's machines go through their steps in parallel, so a wave takes as long as its slowest
machine: the longest snapshot, its install (the machine's `install_minutes` hint, else the
longest install), a reboot (unless `reboot: never`) and a health check. A rollback is not
counted: it is the exception, and a rollback of a started wave may run past the window's end.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Literal

from patchpilot.inventory import Instance

SNAPSHOT_MINUTES = (3, 6)  # (shortest, longest), per machine
INSTALL_MINUTES = (20, 50)
REBOOT_MINUTES = 4
HEALTH_MINUTES = 2
ROLLBACK_MINUTES = (8, 14)

ESTIMATE_SOURCE = "the estimate of its steps"  # how a run names an estimate it did not measure


def machine_estimate(instance: Instance, reboot: Literal["if_required", "always", "never"]) -> timedelta:
    """The longest one machine's snapshot, install, reboot and health check are expected to take."""
    hinted = instance.simulation.install_minutes if instance.simulation else None
    minutes = SNAPSHOT_MINUTES[1] + (hinted or INSTALL_MINUTES[1]) + HEALTH_MINUTES
    if reboot != "never":
        minutes += REBOOT_MINUTES
    return timedelta(minutes=minutes)


def wave_estimate(instances: Iterable[Instance], reboot: Literal["if_required", "always", "never"]) -> timedelta:
    """The longest a wave of these machines is expected to take (0 for no machine)."""
    return max((machine_estimate(i, reboot) for i in instances), default=timedelta(0))
