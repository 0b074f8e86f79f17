"""One discovery of a policy's fleet serves a while: a timer tick's maintenance watch,
compliance scan and report, non-periodic check and the run it starts share it, and so do the
advisories of a burst (Inspector sends one finding per instance, dozens at once)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from patchpilot.inventory import Instance
from patchpilot.policy import Policy
from patchpilot.ports import Discovers

DISCOVERY_TTL = timedelta(seconds=60)  # how long one discovery of the fleet serves


class CachedDiscovery:
    """The policy's fleet (`fleet()`, built on first use), discovered at most once per
    DISCOVERY_TTL of the runtime clock in this (warm) container. A changed policy, or a clock
    before the discovery, discovers again."""

    def __init__(self, fleet: Callable[[], Discovers], ttl: timedelta | None = None) -> None:
        self.fleet = fleet
        self.ttl = ttl  # None: DISCOVERY_TTL
        self._discovery: tuple[Policy, datetime, list[Instance]] | None = None

    def __call__(self, policy: Policy, now: datetime) -> list[Instance]:
        cached, ttl = self._discovery, DISCOVERY_TTL if self.ttl is None else self.ttl
        if cached is None or cached[0] != policy or not timedelta(0) <= now - cached[1] < ttl:
            cached = self._discovery = (policy, now, self.fleet().discover(policy).instances)
        return cached[2]


def managed(policy: Policy, instances: list[Instance]) -> list[Instance]:
    """The instances the policy covers: in a ring, or kept out of one by the policy (exposed)."""
    from patchpilot.planning import NO_RING, assign

    members, excluded = assign(policy, instances)
    return [i for group in members.values() for i in group] + [e.instance for e in excluded if e.reason != NO_RING]
