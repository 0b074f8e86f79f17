"""What a retry of a finished run patches: the pure part of `patchpilot retry RUN_ID`.

A retry is a follow-up run (`start_run(..., follow_up_of=run)`): every ring installs exactly
what the retried run promoted, pinned per OS, on only the machines it did not patch (rolled back,
left failed, skipped, or not started), once the operator has fixed the cause. Machines it
excluded (frozen ones too) are never retried, nor machines of an OS it promoted no set for (a
retry would skip them again: a new run patches them).

A run is retried once per machine: a machine a retry of the run took on is the retry's from then
on (`RetryChain`), so retrying the run again never patches twice what its retry patched; what is
still unpatched is retried from the latest retry of the chain.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

from patchpilot.engine.run import InstanceRecord, Run, count_states
from patchpilot.errors import InputError, Problem
from patchpilot.inventory import Instance
from patchpilot.policy import Policy
from patchpilot.policy.schedule import Window

RETRYABLE_STATES = frozenset({"rolled_back", "failed", "skipped", "not_started"})
_RETRY_SUFFIX = re.compile(r"-retry-\d+$")


class NotRetryableError(InputError):
    """A retry that cannot start: names the run (or its machine) and why (bad input, exit 2)."""

    @classmethod
    def of(cls, run: Run, message: str, path: tuple[str, ...] = ("status",)) -> NotRetryableError:
        return cls(f"run {run.run_id}", [Problem(path, message)])


def why_not_retryable(run: Run) -> str | None:
    """Why no machine of `run` can be retried, or None when the run itself may be."""
    if not run.finished:
        return f"is {run.status}: only a run that has ended can be retried"
    if run.cloud_scheduled is not None:
        return "accompanied an Update Manager run: Update Manager patches those machines on its own schedule"
    # A retry that patched nothing again keeps the set it was pinned to: it may be retried again.
    if run.promoted is None or (run.state == "nothing_patched" and run.follow_up_of is None):
        why = "halted before promotion" if run.state == "halted" else f"{run.state}: {run.reason}"
        return f"promoted no tested patch set ({why}), so there is nothing to retry with: start a new run instead"
    return None


def why_record_not_retryable(run: Run, record: InstanceRecord) -> str | None:
    """Why this machine of `run` is not retried, or None when it is."""
    if record.state == "excluded":
        return f"was excluded ({record.reason}): a retry never patches it"
    if record.state not in RETRYABLE_STATES:
        return f"is {record.state.replace('_', ' ')}: nothing to retry"
    promoted = run.promoted or {}
    os_name = record.instance.os
    if os_name not in promoted:
        return f"no {os_name} machine passed the first ring, so no {os_name} set was promoted: start a new run"
    if not promoted[os_name]:
        return f"the first ring installed no {os_name} patches: nothing to install"
    return None


class RetryChain(NamedTuple):
    """The retries of one run: `taken` maps each machine a retry of the run took on to that retry;
    `latest` maps each such retry to the end of its chain (the newest retry of the newest retry
    of it ..., or itself), where what is still unpatched of its machines is retried from."""

    taken: Mapping[str, str]
    latest: Mapping[str, str]

    def why_taken(self, instance_id: str) -> str | None:
        """Why this machine of the run is not retried from it again, or None when no retry took it."""
        retry = self.taken.get(instance_id)
        if retry is None:
            return None
        return f"was retried by {retry} already: retry {self.latest[retry]} instead, the latest retry of it"


def retry_chain(run_id: str, run_ids: Iterable[str], load: Callable[[str], Run]) -> RetryChain:
    """The retries of `run_id` in a store (its `run_ids` and `load`): only the `<run>-retry-<n>` ids
    are read."""
    base = _RETRY_SUFFIX.sub("", run_id)
    numbered = re.compile(rf"^{re.escape(base)}-retry-(\d+)$")
    found = sorted((int(m.group(1)), i) for i in run_ids if (m := numbered.match(i)) and i != run_id)
    retries = [load(i) for _, i in found]
    taken: dict[str, str] = {}
    latest: dict[str, str] = {}
    for retry in retries:
        if retry.follow_up_of != run_id:
            continue
        taken.update({r.id: retry.run_id for r in retry.records() if r.state != "excluded"})
        end = retry.run_id
        while children := [r.run_id for r in retries if r.follow_up_of == end]:
            end = children[-1]
        latest[retry.run_id] = end
    return RetryChain(taken, latest)


def retry_targets(
    run: Run,
    only: Sequence[str] = (),
    current: Mapping[str, Instance] | None = None,
    chain: RetryChain | None = None,
) -> tuple[list[Instance], list[tuple[InstanceRecord, str]]]:
    """The machines a retry of `run` patches (each as `current` has it now, when given: the
    inventory after the fix; else as the run recorded it), and those of the retryable states left
    out with why. With `only`, exactly those machines (by id), each of which must be retryable.
    `chain`: the run's retries so far, whose machines are theirs to retry (a run retried whole
    is refused, naming its latest retry). Raises `NotRetryableError` naming every problem."""
    if why := why_not_retryable(run):
        raise NotRetryableError.of(run, why)
    chain = chain or RetryChain({}, {})

    def why_not(record: InstanceRecord) -> str | None:
        return why_record_not_retryable(run, record) or (
            chain.why_taken(record.id) if record.state in RETRYABLE_STATES else None
        )

    records = {r.id: r for r in run.records()}
    problems: list[Problem] = []
    if only:
        for wanted in dict.fromkeys(only):
            record = records.get(wanted)
            if record is None:
                problems.append(Problem(("instances", wanted), "is not a machine of this run"))
            elif why := why_not(record):
                problems.append(Problem(("instances", wanted), why))
        chosen = [records[i] for i in dict.fromkeys(only) if i in records]
        left_out: list[tuple[InstanceRecord, str]] = []
    else:
        candidates = [r for r in records.values() if r.state in RETRYABLE_STATES]
        chosen = [r for r in candidates if why_not(r) is None]
        left_out = [(r, why) for r in candidates if (why := why_not(r))]
        if not chosen and any(chain.why_taken(r.id) for r in candidates):
            problems.append(
                Problem(
                    ("status",),
                    f"was retried already (by {', '.join(sorted(chain.latest))}): retry "
                    f"{' or '.join(sorted(set(chain.latest.values())))} instead, the latest retry, which holds "
                    f"what is still unpatched (a retry of {run.run_id} would patch again what its retries patched)",
                )
            )
        elif not chosen:
            detail = f"has no failed or skipped machine to retry ({count_states(run.records())})"
            if left_out:
                detail += "; " + "; ".join(f"{r.instance.short_name} {why}" for r, why in left_out[:3])
            problems.append(Problem(("status",), detail))
    if current is not None:
        missing = [r.id for r in chosen if r.id not in current]
        problems += [Problem(("instances", i), "is not in the inventory any more") for i in missing]
    if problems:
        raise NotRetryableError(f"run {run.run_id}", problems)
    instances = [current[r.id] if current is not None else r.instance for r in chosen]
    return instances, left_out


def retry_window(policy: Policy, now: datetime, needed: timedelta = timedelta(0)) -> Window | None:
    """The window a retry started at `now` runs in: the one open at `now` when at least `needed`
    of it is left (a wave is expected to take that long: the engine would start none in less),
    else the next one. None when the retry may run now, until `duration` later: a policy without
    a schedule, or an emergency one (it runs on demand)."""
    schedule = policy.schedule
    if schedule is None or policy.kind == "emergency":
        return None
    first, second = schedule.windows(now - schedule.duration, 2)  # the first ends at or after now
    return first if first.end > now and first.end - now >= needed else second


def next_retry_id(run_id: str, existing: Iterable[str]) -> str:
    """`<run>-retry-<n>`, the first n not taken; a retry of a retry counts on from the run it
    retried (`web-retry-1` -> `web-retry-2`)."""
    base = _RETRY_SUFFIX.sub("", run_id)
    taken = set(existing)
    n = 1
    while f"{base}-retry-{n}" in taken:
        n += 1
    return f"{base}-retry-{n}"
