"""What an advisory delivery says, once taken out of its envelope, and the answer PatchPilot gives.

Three kinds of delivery: an `Advisory` (a fix to install for a vulnerability: an Amazon Inspector
finding or a PatchPilot advisory), a `HealthNotice` (an AWS Health scheduled change or security
notification: reported to on-call, never a run) and an `Unactionable` event (well formed, but
nothing to act on by its nature: a closed finding, a finding without a fix, another detail-type).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from patchpilot.engine.run import TERMINAL_STATES
from patchpilot.policy.model import AdvisorySeverity

# defender, assessment: Azure's own, read on the timer (advisories/azure_sources.py)
Source = Literal["inspector", "aws-health", "patchpilot", "defender", "assessment"]
Action = Literal["start", "merge", "report", "ignore"]


@dataclass(frozen=True)
class Advisory:
    """A vulnerability and the fixes that close it."""

    source: Source
    key: str  # what identifies this delivery (a finding and its update, an advisory id)
    cve: str  # the CVE, or the vendor's vulnerability id where there is none
    severity: AdvisorySeverity
    fixes: tuple[str, ...]  # Windows update ids (KB5048661) and Linux package names (openssl)
    instances: tuple[str, ...] = ()  # the instances named as affected; empty: not named
    fleet_wide: bool = True  # True: every instance of the fixes' OS may be affected, not only those named
    title: str = ""
    at: datetime | None = None  # when the source emitted it (the envelope's time), if it says


@dataclass(frozen=True)
class HealthNotice:
    """An AWS Health event: scheduled maintenance or a security notification."""

    key: str
    type_code: str  # AWS_EC2_INSTANCE_REBOOT_MAINTENANCE_SCHEDULED
    category: str  # scheduledChange, accountNotification, issue, investigation
    status: str  # open, upcoming, closed
    service: str
    region: str
    start: str = ""  # as AWS writes it (RFC 1123, "Sat, 15 Feb 2025 02:00:00 GMT")
    end: str = ""
    affected: tuple[str, ...] = ()  # affected entities (instance ids for EC2)
    description: str = ""


@dataclass(frozen=True)
class Unactionable:
    """A well-formed event that asks for nothing, and why."""

    source: str
    key: str
    reason: str


Delivery = Advisory | HealthNotice | Unactionable


@dataclass(frozen=True)
class OpenRun:
    """An emergency run already started for a policy: what a new advisory may merge into."""

    run_id: str
    cve: str
    status: str  # running, waiting_approval, succeeded, succeeded_with_failures, nothing_patched, halted, incomplete
    instances: frozenset[str]  # the instances the run patches
    followed_up: frozenset[str] = frozenset()  # the instances its follow-up runs patch (requested)
    promoted: bool = True  # False: its first ring promoted nothing yet (a halt now is a halt in staging)
    follow_up_running: bool = False  # one of its follow-ups is under way: the next waits for it

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATES

    @property
    def may_follow_up(self) -> bool:
        """As `Run.may_follow_up`, or will be once it ends: False once it halted, patched nothing or
        ended unpromoted."""
        return not self.finished or (self.status not in ("halted", "nothing_patched") and self.promoted)


@dataclass(frozen=True)
class AdvisoryAnswer:
    """The answer every delivery gets, in the logs and on the on-call channel:

    - start: emergency run `run_id` patches `instances`;
    - merge: run `run_id` (started earlier for the same CVE) already covers `instances`; the
      engine cannot add instances to a run, so `not_covered` names the ones it leaves out, and
      `follow_up` the run that patches them once `run_id` has ended (empty when none may: the
      run halted, so they stay NOT COVERED);
    - report: an AWS Health notice for on-call, no run;
    - ignore: nothing done, `text` says why.

    `exposed` names the instances the advisory concerns that are never patched (frozen, excluded,
    outside the emergency rings), loudly."""

    action: Action
    source: str
    key: str
    text: str
    cve: str = ""
    run_id: str = ""
    instances: tuple[str, ...] = ()
    not_covered: tuple[str, ...] = ()
    follow_up: str = ""  # the follow-up run that patches `not_covered`
    exposed: tuple[tuple[str, str], ...] = ()  # (instance id, why it is not patched)
    unknown: tuple[str, ...] = ()  # named instances that are not in the inventory

    @property
    def severity(self) -> Literal["info", "warning", "error"]:
        if self.exposed or (self.not_covered and not self.follow_up):
            return "error"
        return "warning" if self.action in ("start", "report") or self.follow_up else "info"

    def document(self) -> dict[str, Any]:
        """What `patchpilot advisory --json` prints."""
        return {
            "action": self.action,
            "text": self.text,
            "source": self.source,
            "key": self.key,
            "cve": self.cve or None,
            "run_id": self.run_id or None,
            "instances": list(self.instances),
            "not_covered": list(self.not_covered),
            "follow_up": self.follow_up or None,
            "exposed": [{"id": i, "reason": r} for i, r in self.exposed],
            "unknown": list(self.unknown),
            "severity": self.severity,
        }
