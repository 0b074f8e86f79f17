"""The local stand-in for the clouds' maintenance sources (`ports.MaintenanceSource`): each
instance's `simulation.maintenance` hints become the items EC2 scheduled events or Azure platform
maintenance would report for it. `in_hours` counts from the hour of the read, so reads within one
hour report the same item at the same time; `at` is a fixed time. Deterministic, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from patchpilot.inventory import Instance, MaintenanceHint
from patchpilot.maintenance.model import MaintenanceItem, WatchResult
from patchpilot.policy import Policy


class SimulatedMaintenance:
    def upcoming_maintenance(self, policy: Policy, instances: Sequence[Instance], now: datetime) -> WatchResult:
        hour = now.replace(minute=0, second=0, microsecond=0)
        items = []
        for instance in instances:
            hints = instance.simulation.maintenance if instance.simulation else ()
            for index, hint in enumerate(hints):
                item = _item(instance, index, hint, hour)
                if item.ends_at is None or item.ends_at > now:
                    items.append(item)
        return WatchResult(items=tuple(items))


def _item(instance: Instance, index: int, hint: MaintenanceHint, hour: datetime) -> MaintenanceItem:
    starts = hint.at if hint.at is not None else hour + timedelta(hours=hint.in_hours or 0)
    return MaintenanceItem(
        id=f"sim:{instance.id}:{index}",
        source="ec2" if instance.cloud == "aws" else "azure",
        cloud=instance.cloud,
        resource_id=instance.id,
        resource_name=instance.short_name,
        kind=hint.kind,
        description=hint.description,
        starts_at=starts,
        ends_at=starts + timedelta(minutes=hint.duration_minutes),
        downtime=hint.downtime,
        warning=hint.warning,
        instance_id=instance.id,
        region=instance.region,
        account=instance.account,
    )
