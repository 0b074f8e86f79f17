"""Azure's own advisories on the timer (docs/advisories.md "Azure sources"): Defender for Cloud's
vulnerability findings and, opted in, the critical updates Update Manager's assessment finds,
answered as Inspector findings are on AWS (`answer_deliveries`: start, merge, ignore with why).

- One read per source and tick whatever the fleet size, and one discovery (`fleet`, read once).
- Each delivery is answered once: its key (the source's ids and update times,
  advisories/azure_sources.py) is claimed (`Claims`) before it is answered and kept
  `ANSWERED_FOR` once it is; the same findings read at the next tick are not answered again. A
  tick that fails between the claim and the answer gives the claim up, and the next tick answers.
  Were a claim lost, the answer would still start nothing new: the run id comes from the CVE and
  the merge window (`emergency_run_id`), and starting a run id twice starts nothing.
- A source that cannot be read is said ("not read: ..."): in the result, the log, and a warning
  notice on the `advisory` topic once a day per source; never "nothing found".
- `act=False` (the CLI without `--start`): every delivery the sources hold now with the answer it
  would get, nothing claimed, started or told.

Only policies with an `emergency` section read anything (`emergency.sources`, default
`[defender]`; `assessment` is opt-in).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from patchpilot.advisories.azure_sources import SourceNotReadError, assessment_deliveries, defender_deliveries
from patchpilot.advisories.intake import FollowUp, Start, answer_deliveries
from patchpilot.advisories.models import AdvisoryAnswer, Delivery, HealthNotice
from patchpilot.engine.messages import Notify
from patchpilot.inventory import Instance
from patchpilot.policy import Policy
from patchpilot.policy.model import AdvisorySeverity, AdvisorySource
from patchpilot.ports import Claims, Clock, PatchAssessor, RunStore

log = logging.getLogger("patchpilot.advisories")
CLAIM_HOLD = timedelta(minutes=10)  # while a tick answers: longer than one tick's work, shorter than the timer
ANSWERED_FOR = timedelta(days=30)  # an answered key is remembered this long (findings change key on rescans)
CLAIM_PREFIX = "azure-advisory"


class DefenderSource(Protocol):
    """Defender for Cloud's open machine findings (adapters/azure/defender.py)."""

    def findings(self, subscriptions: Sequence[str], min_severity: AdvisorySeverity) -> list[dict[str, Any]]:
        """The sub-assessment rows at or above `min_severity` on these subscriptions, read in
        bulk; SourceNotReadError when the source refuses the read."""


@dataclass(frozen=True)
class AzureAdvisoriesRead:
    """What one read did: the answers (or, in a dry run, the answers each would get), the
    sources not read with why, and how many deliveries were answered at an earlier tick."""

    answers: list[AdvisoryAnswer] = field(default_factory=list)
    not_read: list[tuple[AdvisorySource, str]] = field(default_factory=list)
    answered_before: int = 0

    def lines(self) -> list[str]:
        """For the log and the CLI."""
        found = [a.text for a in self.answers]
        found += [f"not read: {source}: {why}" for source, why in self.not_read]
        if self.answered_before:
            found.append(f"{self.answered_before} already answered at an earlier read")
        return found

    def document(self) -> dict[str, Any]:
        """What `patchpilot advisories --cloud azure --json` prints."""
        return {
            "answers": [a.document() for a in self.answers],
            "not_read": [{"source": s, "reason": r} for s, r in self.not_read],
            "answered_before": self.answered_before,
        }


def read_azure_advisories(
    policy: Policy,
    *,
    defender: DefenderSource,
    assessor: PatchAssessor,
    fleet: Callable[[], Sequence[Instance]],
    store: RunStore,
    claims: Claims,
    clock: Clock,
    start: Start,
    tell: Callable[[Notify], None],
    follow_up: FollowUp,
    act: bool = True,
) -> AzureAdvisoriesRead:
    """Read the policy's Azure sources and answer what they hold (the module's docstring).
    `start` and `follow_up` are `Service.start` and `Service.request_follow_up`, `tell` the
    routed notifier's send for the policy's notifications."""
    emergency = policy.emergency
    if emergency is None:
        return AzureAdvisoriesRead()
    now = clock.now()
    instances = list(fleet())
    deliveries: list[Delivery] = []
    not_read: list[tuple[AdvisorySource, str]] = []
    for source in emergency.sources:
        try:
            if source == "defender":
                subscriptions = sorted({s for i in instances if (s := _subscription(i))})
                rows = defender.findings(subscriptions, emergency.min_severity)
                deliveries += defender_deliveries(rows, instances)
            else:
                deliveries += assessment_deliveries(
                    assessor.patch_states(instances), instances, now, emergency.assessment_window
                )
        except SourceNotReadError as error:
            not_read.append((source, str(error)))
        except Exception as error:  # a source down: said, and the other source is still answered
            not_read.append((source, f"{type(error).__name__}: {error}"))
    for source, why in not_read:
        log.warning("policy %s: not read: %s: %s", policy.name, source, why)
        if act:
            tell(_not_read_notice(policy, source, why, now))
    if not act:
        answers = answer_deliveries(deliveries, policy, lambda: instances, store, None, _silent, now, None)
        return AzureAdvisoriesRead(answers, not_read)
    fresh = [d for d in deliveries if claims.claim(_claim_key(policy, d), now + CLAIM_HOLD)]
    try:
        answers = answer_deliveries(fresh, policy, lambda: instances, store, start, tell, now, follow_up)
    except BaseException:
        for delivery in fresh:  # given up: the next tick answers them
            claims.renew(_claim_key(policy, delivery), now)
        raise
    for delivery in fresh:
        claims.renew(_claim_key(policy, delivery), now + ANSWERED_FOR)
    return AzureAdvisoriesRead(answers, not_read, len(deliveries) - len(fresh))


def _claim_key(policy: Policy, delivery: Delivery) -> str:
    """`azure-advisory:<policy>:<source>:<key>`: one answer per policy and delivery."""
    source = "aws-health" if isinstance(delivery, HealthNotice) else delivery.source
    return f"{CLAIM_PREFIX}:{policy.name}:{source}:{delivery.key}"


def _not_read_notice(policy: Policy, source: AdvisorySource, why: str, now: datetime) -> Notify:
    day = now.astimezone(UTC).strftime("%Y%m%d")
    return Notify(
        id=f"advisory:not-read:{policy.name}:{source}:{day}",  # once a day per channel (the routed claims)
        run_id=f"advisory-not-read-{source}",
        topic="advisory",
        text=f"Azure advisories of policy {policy.name}: not read: {source}: {why}. Emergency runs from this "
        "source do not start until it can be read: check the fleet role (docs/security.md).",
        severity="warning",
    )


def _subscription(instance: Instance) -> str:
    """The instance's subscription: its account, else the one its ARM id names."""
    parts = instance.id.split("/")
    return instance.account or (parts[2] if len(parts) > 2 and parts[1].lower() == "subscriptions" else "")


def _silent(notice: Notify) -> None:
    """A dry run tells nobody."""
