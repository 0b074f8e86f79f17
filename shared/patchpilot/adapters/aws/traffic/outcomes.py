"""What one execution of a traffic command learnt about each machine, and the `Progress` it
makes of it: the outcomes, or "in progress" with what is awaited."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime, timedelta

from botocore.exceptions import ClientError

from patchpilot.engine.messages import Outcome
from patchpilot.inventory import Instance
from patchpilot.ports import InProgress, Progress
from patchpilot.wording import plural

from ..access import describe_error, error_code

POLL = timedelta(seconds=30)
DENIED = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"})


@dataclasses.dataclass
class State:
    """What one execution learnt about one machine."""

    items: list[str] = dataclasses.field(default_factory=list)
    pools: list[str] = dataclasses.field(default_factory=list)  # the target groups its outcome names
    notes: list[str] = dataclasses.field(default_factory=list)  # its scaling group, for the outcome
    waiting: list[str] = dataclasses.field(default_factory=list)
    draining_in: list[str] = dataclasses.field(default_factory=list)  # target group ARNs still draining it
    retry_by: datetime | None = None  # the default deadline of its drain
    failed: str | None = None

    def fail(self, why: str) -> None:
        self.failed = self.failed or why


def refusal(service: str, action: str, where: str, exc: ClientError) -> str:
    """A refused call, in one line naming the action and, when IAM refused it, the permission."""
    text = f"{action} failed on {where} ({describe_error(exc)})"
    return f"{text}: needs {service}:{action}" if error_code(exc) in DENIED else text


def fail_all(instances: Sequence[Instance], states: dict[str, State], why: str) -> None:
    for instance in instances:
        states[instance.id].fail(why)


def progress(targets: Sequence[Instance], states: dict[str, State], now: datetime, verb: str) -> Progress:
    waiting = [i for i in targets if states[i.id].waiting and states[i.id].failed is None]
    if waiting:
        due = [d for i in waiting if (d := states[i.id].retry_by) is not None and d > now]
        reasons = "; ".join(w for i in waiting for w in states[i.id].waiting)
        note = f"{len(targets) - len(waiting)}/{len(targets)} done; waiting: {reasons}"
        finished = _outcomes([i for i in targets if i not in waiting], states, now, verb)
        return InProgress(min([now + POLL, *due]), note[:300], tuple(finished))
    return _outcomes(targets, states, now, verb)


def _outcomes(targets: Sequence[Instance], states: dict[str, State], now: datetime, verb: str) -> list[Outcome]:
    outcomes = []
    for instance in targets:
        state = states[instance.id]
        if state.failed is not None:
            outcomes.append(Outcome(id=instance.id, ok=False, detail=state.failed, items=state.items, at=now))
            continue
        said = [f"{verb} {plural(len(state.pools), 'target group')}: {', '.join(state.pools)}"] if state.pools else []
        detail = "; ".join([*said, *state.notes]) or "no traffic pools"
        outcomes.append(Outcome(id=instance.id, ok=True, detail=detail, items=state.items, at=now))
    return outcomes
