"""What a cloud's patch assessment says of one machine, in one shape for AWS, Azure and the
simulated fleet. The adapters fill it (`ports.PatchAssessor`); the report (`compliance.report`)
reads it. Nothing here does I/O or reads a clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

# One scale for both clouds: AWS's MSRC/vendor severities and Azure's MSRC severities map onto it
# (Linux "Important" and "Moderate" too); anything else is "Unspecified".
PatchSeverity = Literal["Critical", "Important", "Moderate", "Low", "Unspecified"]
PATCH_SEVERITIES: tuple[PatchSeverity, ...] = ("Critical", "Important", "Moderate", "Low", "Unspecified")
# missing: available, not installed; failed: the last install of it failed;
# pending_reboot: installed, waiting for a reboot to take effect.
PatchGap = Literal["missing", "failed", "pending_reboot"]


@dataclass(frozen=True, slots=True)
class MissingPatch:
    """A patch a machine lacks, as its cloud names it."""

    id: str  # KB5034441 on Windows, the package name on Linux
    title: str = ""
    classification: str = ""  # as the cloud reports it: Security, Critical, Bugfix, Updates, Other…
    severity: PatchSeverity = "Unspecified"
    released_at: datetime | None = None  # when the vendor published it: its age in the report
    version: str = ""  # the version that would be installed (Linux), where known
    gap: PatchGap = "missing"


@dataclass(frozen=True, slots=True)
class PatchState:
    """The latest assessment of one machine. `error` says why there is none (agent offline, never
    scanned, not found): such a machine is "unknown" in the report, never dropped or compliant."""

    instance_id: str
    assessed_at: datetime | None = None  # when the scan or assessment the figures come from ended
    missing: tuple[MissingPatch, ...] = ()
    reboot_pending: bool = False
    last_install_at: datetime | None = None  # the last install operation that succeeded
    error: str = ""
    notes: tuple[str, ...] = field(default=())  # e.g. "3 more missing patches not listed by the cloud"


@dataclass(frozen=True, slots=True)
class AssessmentStarted:
    """What `PatchAssessor.start_assessment` did: how many machines a scan was started on (or was
    already running on, for this token), and the ones it could not start, each with why."""

    started: int
    refused: tuple[tuple[str, str], ...] = ()  # (instance id, reason)
    operations: tuple[str, ...] = ()  # SSM command ids, Azure operation ids: for the log
