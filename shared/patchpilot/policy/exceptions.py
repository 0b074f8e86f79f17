"""Which of a policy's exceptions (docs/governance.md "Exceptions") are in force at a time, and
what they leave out: whole machines, or patches on machines. Pure: `now` is always given; an
expired exception matches nothing."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from datetime import datetime, timedelta

from patchpilot.inventory import Instance
from patchpilot.policy.model import Policy, PolicyException

EXPIRING_SOON = timedelta(days=14)  # the weekly digest lists exceptions that end within it


def in_force(policy: Policy, exception: PolicyException, now: datetime) -> bool:
    """In force until the end of its `expires` day in the policy's time zone."""
    return now < exception.ends_at(policy.zone_for(None))


def machine_exception(policy: Policy, instance: Instance, now: datetime) -> PolicyException | None:
    """The first machine exception (no `patches`) in force at `now` that selects the instance."""
    return next(
        (e for e in policy.exceptions if e.select.matches(instance) and machine_exception_in_force(policy, e, now)),
        None,
    )


def machine_exception_in_force(policy: Policy, exception: PolicyException, now: datetime) -> bool:
    """A machine exception (no `patches`) in force at `now`: the planner finds these once per fleet."""
    return not exception.patches and in_force(policy, exception, now)


def patch_exceptions(policy: Policy, instance: Instance, now: datetime) -> list[PolicyException]:
    """The patch exceptions in force at `now` that select the instance."""
    return [e for e in policy.exceptions if e.patches and e.select.matches(instance) and in_force(policy, e, now)]


def excepted_patches(policy: Policy, instance: Instance, now: datetime) -> list[str]:
    """The ids and masks the instance's installs leave out at `now` (`InstallTarget.exclude`)."""
    return list(dict.fromkeys(p for e in patch_exceptions(policy, instance, now) for p in e.patches))


def names_patch(masks: Iterable[str], patch_id: str) -> bool:
    """An id or mask names the patch, without case; a Linux package also by its name without its
    version (`openssl` names `openssl-3.0.13-1.el9`), as `patches.exclude` does."""
    ids = {patch_id.casefold(), patch_id.casefold().rsplit("-", 2)[0]}
    return any(fnmatch.fnmatchcase(i, mask.casefold()) for mask in masks for i in ids)


def patch_exception(policy: Policy, instance: Instance, patch_id: str, now: datetime) -> PolicyException | None:
    """The first patch exception in force at `now` that covers this patch on this instance."""
    return next((e for e in patch_exceptions(policy, instance, now) if names_patch(e.patches, patch_id)), None)


def expired_between(policy: Policy, start: datetime, end: datetime) -> list[PolicyException]:
    """The exceptions that stopped being in force in (start, end]: named in the heads-up of the
    first run after they ended."""
    zone = policy.zone_for(None)
    return [e for e in policy.exceptions if start < e.ends_at(zone) <= end]


def expiring_within(policy: Policy, now: datetime, within: timedelta = EXPIRING_SOON) -> list[PolicyException]:
    """The exceptions in force at `now` whose last day is at most `within` after today (in the
    policy's time zone), soonest first."""
    zone = policy.zone_for(None)
    last_day = (now.astimezone(zone) + within).date()
    soon = [e for e in policy.exceptions if now < e.ends_at(zone) and e.expires <= last_day]
    return sorted(soon, key=lambda e: e.expires)


def describe(exception: PolicyException) -> str:
    """One line for notices: what it excepts, why, whose, until when."""
    what = f"patches {', '.join(exception.patches)}" if exception.patches else "machines"
    return f"{what} of {_selector_text(exception)}: {exception.reason} ({exception.owner}, until {exception.expires})"


def _selector_text(exception: PolicyException) -> str:
    select = exception.select
    parts = [f"ids {', '.join(select.ids)}"] if select.ids else []
    parts += [f"tag {key}={'|'.join(values)}" for key, values in select.tags.items()]
    parts += [f"clouds {', '.join(select.clouds)}"] if select.clouds else []
    parts += [f"regions {', '.join(select.regions)}"] if select.regions else []
    parts += [f"os {', '.join(select.os)}"] if select.os else []
    return "; ".join(parts)
