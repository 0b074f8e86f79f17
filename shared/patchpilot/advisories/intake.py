"""Advisories as the runtimes receive them (EventBridge on AWS, Event Grid on Azure, a file given
to `patchpilot advisory` locally):
each delivery is answered (start, merge, report, ignore), the emergency run it decides on is
started, and the answer goes to the log and to on-call (the policy's routes, topic `advisory`).

Every step repeats safely: the run id comes from the CVE and the merge window, so a delivery
that comes twice starts nothing new, and the answer's notice id comes from the delivery. Instances
the merged run does not cover are recorded in it (`FollowUpRequested`, once per instance set): its
follow-up run patches them once it has ended."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

from patchpilot.advisories.decide import (
    decide_advisory,
    emergency_policy,
    follow_up_request,
    open_run_of,
)
from patchpilot.advisories.models import Advisory, AdvisoryAnswer, Delivery, OpenRun
from patchpilot.engine.messages import FollowUpRequested, Notify
from patchpilot.engine.run import Run
from patchpilot.inventory import Instance
from patchpilot.policy import Policy
from patchpilot.ports import RunStore, UnknownRunError
from patchpilot.triggers import freeze_gate

log = logging.getLogger("patchpilot.advisories")


class Start(Protocol):
    """`Service.start`: `frozen_by` names the freeze the run starts in (its first ring waits);
    `window_end` is where a freeze that begins later ends it (no wave after its start)."""

    def __call__(
        self,
        run_id: str,
        policy: Policy,
        instances: list[Instance],
        /,
        *,
        window_end: datetime | None = None,
        frozen_by: str | None = None,
    ) -> Run: ...


FollowUp = Callable[[FollowUpRequested], object]  # Service.request_follow_up


def answer_deliveries(
    deliveries: Sequence[Delivery],
    policy: Policy,
    fleet: Callable[[], Sequence[Instance]],
    store: RunStore | None,
    start: Start | None,
    tell: Callable[[Notify], None],
    now: datetime,
    follow_up: FollowUp | None,
) -> list[AdvisoryAnswer]:
    """Answer every delivery (`parse_payload`: as it arrived, InputError naming the field when it
    is malformed), all at `now` (one delivery arrives at one time), and tell each answer
    (`tell`). `fleet` is read once, and only when an advisory needs it. Without a `store` there is
    no open run to merge into, and without `start` and `follow_up` nothing is started or
    requested: the answers only (`patchpilot advisory` without a state directory)."""
    instances: list[Instance] | None = None
    open_runs = _open_runs(store, policy) if store is not None else []
    answers = []
    for delivery in deliveries:
        if isinstance(delivery, Advisory) and instances is None:
            instances = list(fleet())
        answer = decide_advisory(policy, delivery, instances or [], now, open_runs)
        if answer.action == "start" and isinstance(delivery, Advisory) and start is not None:
            wanted = set(answer.instances) | {i for i, _ in answer.exposed}
            chosen = [i for i in instances or [] if i.id in wanted]
            # Inside a freeze the first ring waits for a person; a freeze that begins later ends the run there.
            gate = freeze_gate(policy, policy.freezes(), now, None, emergency=True)
            emergency = emergency_policy(policy, delivery)
            run = start(answer.run_id, emergency, chosen, window_end=gate.window_end, frozen_by=gate.frozen_by)
            open_runs.append(OpenRun(run.run_id, delivery.cve, run.status, frozenset(answer.instances)))
        if answer.follow_up and follow_up is not None:
            follow_up(follow_up_request(answer, instances or [], now))
            open_runs[:] = [noted(r, answer) for r in open_runs]
        log.info("advisory %s: %s", answer.key, answer.text)
        tell(_notice(answer))
        answers.append(answer)
    return answers


def noted(run: OpenRun, answer: AdvisoryAnswer) -> OpenRun:
    """`run` once the answer's follow-up is recorded in it: a later delivery of the batch sees it."""
    if run.run_id != answer.run_id:
        return run
    return dataclasses.replace(run, followed_up=run.followed_up | set(answer.not_covered))


def _open_runs(store: RunStore, policy: Policy) -> list[OpenRun]:
    found = []
    for run_id in store.run_ids():
        if not run_id.startswith(f"{policy.name}-"):
            continue
        try:
            run = open_run_of(policy, store.load(run_id))
        except UnknownRunError:  # listed a moment before it was written (eventually consistent)
            continue
        if run is not None:
            found.append(run)
    return found


def _notice(answer: AdvisoryAnswer) -> Notify:
    return Notify(
        id=f"advisory:{answer.source}:{answer.key}",
        run_id=answer.run_id or f"advisory-{answer.key}",
        topic="advisory",
        text=answer.text,
        severity=answer.severity,
    )
