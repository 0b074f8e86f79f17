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
from dataclasses import dataclass
from datetime import timedelta
from operator import attrgetter
from typing import TYPE_CHECKING, Literal, NamedTuple

from patchpilot.inventory import Instance, Simulation
from patchpilot.policy.fields import format_duration

if TYPE_CHECKING:  # the engine imports this module; it needs neither
    from patchpilot.planning.planner import Plan
    from patchpilot.policy import Policy

SNAPSHOT_MINUTES = (3, 6)  # (shortest, longest), per machine
INSTALL_MINUTES = (20, 50)
REBOOT_MINUTES = 4
HEALTH_MINUTES = 2
ROLLBACK_MINUTES = (8, 14)

ESTIMATE_SOURCE = "the estimate of its steps"  # how a run names an estimate it did not measure


def machine_estimate(instance: Instance, reboot: Literal["if_required", "always", "never"]) -> timedelta:
    """The longest one machine's snapshot, install, reboot and health check are expected to take."""
    return _estimate(_install_hint(instance), reboot)


def _install_hint(instance: Instance) -> int | None:
    return instance.simulation.install_minutes if instance.simulation else None


def _estimate(hinted: int | None, reboot: Literal["if_required", "always", "never"]) -> timedelta:
    minutes = SNAPSHOT_MINUTES[1] + (hinted or INSTALL_MINUTES[1]) + HEALTH_MINUTES
    if reboot != "never":
        minutes += REBOOT_MINUTES
    return timedelta(minutes=minutes)


def wave_estimate(instances: Iterable[Instance], reboot: Literal["if_required", "always", "never"]) -> timedelta:
    """The longest a wave of these machines is expected to take (0 for no machine)."""
    # A few values for a wave of thousands: the distinct simulation hints first.
    return simulations_estimate(set(map(attrgetter("simulation"), instances)), reboot)


def simulations_estimate(
    simulations: Iterable[Simulation | None], reboot: Literal["if_required", "always", "never"]
) -> timedelta:
    """`wave_estimate` of a wave whose machines have these simulation hints (None for machines that
    are not simulated; each distinct one once): the longest of their install hints (`_install_hint`)."""
    hints = {s.install_minutes if s else None for s in simulations}
    return max((_estimate(hinted, reboot) for hinted in hints), default=timedelta(0))


@dataclass(frozen=True)
class WaveFit:
    """One wave of a plan against the window: when it is expected to start (from the window's
    start) and whether it would, by the rule the engine applies (engine/decide.py `_does_not_fit`)."""

    index: int
    ring: str
    expected: timedelta
    starts_after: timedelta
    starts: bool


class WindowFit(NamedTuple):
    """A plan against the policy's window: every wave's estimate, and the run's total (the waves
    one after the other, with the soaks between rings; the time an approval takes is not known)."""

    window: timedelta | None
    cutoff: timedelta | None
    waves: tuple[WaveFit, ...]
    total: timedelta

    @property
    def fits(self) -> bool:
        return all(w.starts for w in self.waves)

    def document(self) -> dict[str, object]:
        """`{"window", "cutoff", "expected_total", "fits", "waves": [{"index", "ring", "expected",
        "starts_after", "starts"}]}`, durations as in the policy (`1h2m`); window null without a schedule."""
        return {
            "window": format_duration(self.window) if self.window is not None else None,
            "cutoff": format_duration(self.cutoff) if self.cutoff is not None else None,
            "expected_total": format_duration(self.total),
            "fits": self.fits,
            "waves": [
                {
                    "index": w.index,
                    "ring": w.ring,
                    "expected": format_duration(w.expected),
                    "starts_after": format_duration(w.starts_after),
                    "starts": w.starts,
                }
                for w in self.waves
            ],
        }


def window_fit(policy: Policy, result: Plan) -> WindowFit:
    """Walk the plan's waves through the window as a run would: each wave starts when the one
    before it ended (after the ring's soak at a ring's end) if it fits what is left: with
    `rollout.cutoff`, more than the cutoff is left; else its estimate fits (the engine uses the
    run's longest wave so far once one has finished, which this estimate bounds)."""
    window = policy.schedule.duration if policy.schedule else None
    cutoff = policy.rollout.cutoff
    soaks = {ring.name: ring.soak for ring in policy.rings}
    fits: list[WaveFit] = []
    clock = timedelta(0)
    waves = result.waves
    for position, wave in enumerate(waves):
        expected = simulations_estimate(wave.simulations, policy.reboot)  # as wave_estimate(wave.instances)
        left = window - clock if window is not None else None
        if left is None or (cutoff is not None and cutoff == timedelta(0)):
            starts = left is None or left > timedelta(0)
        elif cutoff is not None:
            starts = left > cutoff
        else:
            starts = expected <= left
        fits.append(WaveFit(wave.index, wave.ring, expected, clock, starts))
        clock += expected
        last_of_ring = position + 1 == len(waves) or waves[position + 1].ring != wave.ring
        if last_of_ring and position + 1 < len(waves):
            clock += soaks.get(wave.ring, timedelta(0))
    return WindowFit(window, cutoff, tuple(fits), clock)


def window_warnings(policy: Policy, result: Plan, fit: WindowFit | None = None) -> list[str]:
    """What does not fit the window, in words: [] when every wave would start, without a schedule,
    for a frozen policy, and with azure.maintenance (a cloud-scheduled run: Update Manager starts at its own time).
    `fit`: `window_fit(policy, result)` when the caller has it already."""
    if policy.kind == "frozen" or (policy.azure is not None and policy.azure.maintenance is not None):
        return []
    fit = fit or window_fit(policy, result)
    if fit.window is None or fit.fits:
        return []
    late = [w for w in fit.waves if not w.starts]
    first = late[0]
    rule = f"rollout.cutoff {format_duration(fit.cutoff)}" if fit.cutoff is not None else "its estimate"
    more = f" and the {len(late) - 1} after it" if len(late) > 1 else ""
    return [
        f"the waves are expected to take {format_duration(fit.total)} (soaks included, approvals not), "
        f"the window is {format_duration(fit.window)}: wave {first.index} ({first.ring}, expected "
        f"{format_duration(first.expected)}, from {format_duration(first.starts_after)} into the window)"
        f"{more} would not start by {rule}; lengthen schedule.duration, raise rollout.disruption_budget "
        "(fewer, larger waves) or split the fleet"
    ]
