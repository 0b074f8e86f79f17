"""Maintenance the clouds have scheduled, in one shape for every source. The adapters fill it
(`ports.MaintenanceSource`); the watch (`maintenance.watch`) sorts, flags and announces it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from patchpilot.inventory import Cloud

Source = Literal["ec2", "rds", "health", "azure"]
SOURCE_NAMES: dict[Source, str] = {
    "ec2": "EC2 scheduled event",
    "rds": "RDS pending maintenance",
    "health": "AWS Health scheduled change",
    "azure": "Azure platform maintenance",
}


@dataclass(frozen=True, slots=True)
class MaintenanceItem:
    """One maintenance action on one resource. `id` is stable across reads (source, the cloud's
    event id, the resource), so an alert about it is sent once."""

    id: str
    source: Source
    cloud: Cloud
    resource_id: str  # instance id, ARM id, RDS ARN, or the Health event's entity
    resource_name: str
    kind: str  # the cloud's code: system-reboot, instance-retirement, db-upgrade, Redeploy…
    description: str
    starts_at: datetime | None = None  # NotBefore, CurrentApplyDate, startTime, impactStartTime
    ends_at: datetime | None = None  # NotAfter, endTime
    deadline: datetime | None = None  # NotBeforeDeadline, ForcedApplyDate, AutoAppliedAfterDate
    downtime: bool = False  # the resource is expected to go down (reboot, stop, retire, single-AZ database)
    warning: str = ""  # said loudly, e.g. "single-AZ database: this maintenance means downtime"
    instance_id: str | None = None  # the fleet instance it concerns, when it is one
    region: str = ""
    account: str | None = None

    @property
    def due_at(self) -> datetime | None:
        """When it happens at the latest we know of: the start, else the deadline."""
        return self.starts_at or self.deadline


@dataclass(frozen=True, slots=True)
class WatchResult:
    """Every item a source found, and the sources (or accounts, regions) it could not read, each
    with why: a source that cannot be read is reported, never taken for "nothing scheduled"."""

    items: tuple[MaintenanceItem, ...] = ()
    unavailable: tuple[tuple[str, str], ...] = ()  # (what, reason)
