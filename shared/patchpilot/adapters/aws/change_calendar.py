"""SSM Change Calendars as freezes (`aws.change_calendars`, docs/governance.md): a calendar whose
`GetCalendarState` is CLOSED at an instant freezes it, until its `NextTransitionTime`.

The AWS policy source attaches one `SsmChangeCalendars` to the policy it loads
(`Policy.with_change_calendars`), so every reader of `policy.freezes()` (the timer, the heads-up,
emergency runs) sees them with the policy's own freezes. One `GetCalendarState` per calendar per
question (a policy names a few): the calendar that closes is the one the notice names. A calendar
that cannot be read raises: a freeze that cannot be checked does not let a window start.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from patchpilot.policy.freeze import Freeze

if TYPE_CHECKING:
    from mypy_boto3_ssm import SSMClient

SOURCE = "SSM Change Calendar"
FOREVER = datetime(9999, 1, 1, tzinfo=UTC)  # a CLOSED calendar without a next transition


class ChangeCalendarError(RuntimeError):
    """A change calendar that could not be read: its name and the service's answer."""


class SsmChangeCalendars:
    """The policy's SSM Change Calendars (names or ARNs, in the client's region), as
    `policy.freeze.ExternalFreezes`."""

    def __init__(self, ssm: SSMClient, names: Sequence[str]) -> None:
        self.ssm = ssm
        self.names = tuple(names)

    def _state(self, name: str, at: datetime) -> tuple[str, datetime | None]:
        from botocore.exceptions import ClientError

        try:
            answer = self.ssm.get_calendar_state(CalendarNames=[name], AtTime=_iso(at))
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            raise ChangeCalendarError(f"change calendar {name}: GetCalendarState failed ({code})") from None
        following = answer.get("NextTransitionTime")
        return answer["State"], datetime.fromisoformat(following) if following else None

    def at(self, instant: datetime) -> Freeze | None:
        """The first calendar CLOSED at `instant`, frozen from then until it opens."""
        for name in self.names:
            state, opens = self._state(name, instant)
            if state == "CLOSED":
                return Freeze(name, instant, opens or FOREVER, SOURCE)
        return None

    def first_starting(self, start: datetime, end: datetime) -> Freeze | None:
        """The first calendar that closes inside [start, end) (one open at `start`)."""
        found = []
        for name in self.names:
            state, closes = self._state(name, start)
            if state == "OPEN" and closes is not None and start <= closes < end:
                _, opens = self._state(name, closes)
                found.append(Freeze(name, closes, opens if opens and opens > closes else FOREVER, SOURCE))
        return min(found, key=lambda f: (f.start, f.name), default=None)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
