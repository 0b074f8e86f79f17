"""Maintenance windows: Azure-style monthly rules and SSM-style cron, in any time zone.

Occurrences come from python-dateutil (`rrule`) and croniter; this module only translates the
two notations into their terms and turns local wall-clock times into instants, DST included.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from typing import Annotated, NamedTuple
from zoneinfo import ZoneInfo

from patchpilot.errors import nearest, quote
from patchpilot.policy.fields import Scalar, fail

_WEEKDAYS = {  # 0 = Monday, as datetime and dateutil count
    name: number
    for number, names in enumerate(
        (
            ("monday", "mon"),
            ("tuesday", "tue"),
            ("wednesday", "wed"),
            ("thursday", "thu"),
            ("friday", "fri"),
            ("saturday", "sat"),
            ("sunday", "sun"),
        )
    )
    for name in names
}
_ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "last": -1}
_MONTHLY_RE = re.compile(
    r"^\s*(?:1?\s*months?\s+)?(?P<ordinal>\w+)\s+(?P<weekday>\w+)"
    r"(?:\s+offset\s*(?P<offset>[+-]?\d+))?\s*$",
    re.IGNORECASE,
)
MAX_OFFSET_DAYS = 6  # Azure's recurEvery allows -6..6; SSM's ScheduleOffset 1..6
# How far `shortest_gap` looks: a year (DST changes included), at most this many windows.
GAP_HORIZON = timedelta(days=366)
GAP_WINDOWS = 400


class MonthlyRule(NamedTuple):
    """`Second Tuesday Offset+3`: a weekday of the month, shifted by whole days."""

    text: str
    ordinal: int  # 1..4, or -1 for the last
    weekday: int  # 0 = Monday
    offset_days: int

    def days(self, start: date) -> Iterator[date]:
        """Window days from the month of `start` on (offset already applied)."""
        from dateutil.rrule import MONTHLY, rrule, weekday  # imported when used: the worker never is

        first = datetime(start.year, start.month, 1)
        for anchor in rrule(MONTHLY, byweekday=weekday(self.weekday, self.ordinal), dtstart=first):
            yield anchor.date() + timedelta(days=self.offset_days)


def parse_monthly(value: object) -> MonthlyRule:
    if isinstance(value, MonthlyRule):
        return value
    expected = 'expected "<First|Second|Third|Fourth|Last> <Weekday> [Offset±N]"'
    m = _MONTHLY_RE.match(value) if isinstance(value, str) else None
    if not m or not isinstance(value, str):
        raise fail("monthly", expected, value)
    ordinal = _ORDINALS.get(m["ordinal"].lower())
    weekday = _WEEKDAYS.get(m["weekday"].lower())
    if ordinal is None or weekday is None:
        raise fail("monthly", expected, value, _corrected(value, m))
    offset = int(m["offset"] or 0)
    if abs(offset) > MAX_OFFSET_DAYS:
        raise fail("monthly", f"expected an offset from -{MAX_OFFSET_DAYS} to {MAX_OFFSET_DAYS}", value)
    return MonthlyRule(value.strip(), ordinal, weekday, offset)


def _corrected(value: str, m: re.Match[str]) -> str:
    """` (did you mean "Second Tuesday Offset+3"?)`: `value` with its unknown ordinal or weekday
    replaced by the nearest known one, or "" when a word is not close to any."""
    names = {"ordinal": list(_ORDINALS), "weekday": [n for n in _WEEKDAYS if len(n) > 3]}  # not "mon"
    fixed = value
    for group in ("weekday", "ordinal"):  # from the right: the ordinal's span stays valid
        if m[group].lower() in (_ORDINALS if group == "ordinal" else _WEEKDAYS):
            continue
        choice = nearest(m[group], names[group])
        if choice is None:
            return ""
        fixed = fixed[: m.start(group)] + choice.capitalize() + fixed[m.end(group) :]
    return f" (did you mean {quote(fixed.strip())}?)"


class AwsCron(NamedTuple):
    """`cron(0 2 ? * TUE#2 *)`: the six-field cron of EventBridge and SSM maintenance windows."""

    text: str
    croniter_expression: str  # seconds-first, seven fields, unix day-of-week numbers

    def wall_times(self, start: datetime) -> Iterator[datetime]:
        """Naive local times after naive `start`."""
        from croniter import croniter

        it = croniter(self.croniter_expression, start, day_or=False, second_at_beginning=True)
        while True:
            yield it.get_next(datetime)


_CRON_RE = re.compile(r"^\s*cron\((?P<body>[^)]*)\)\s*$", re.IGNORECASE)


def parse_aws_cron(value: object) -> AwsCron:
    if isinstance(value, AwsCron):
        return value
    expected = 'expected an AWS cron expression such as "cron(0 2 ? * TUE#2 *)"'
    m = _CRON_RE.match(value) if isinstance(value, str) else None
    fields = m["body"].split() if m else []
    if len(fields) != 6:
        raise fail("cron", f"{expected} (six fields: minute hour day-of-month month day-of-week year)", value)
    dom, dow = fields[2], fields[4]
    if (dom == "?") == (dow == "?"):
        raise fail("cron", "expected exactly one of day-of-month and day-of-week to be ?", value)
    expression = _croniter_expression(fields)
    from croniter import croniter

    try:
        croniter(expression, datetime(2000, 1, 1), day_or=False, second_at_beginning=True)
    except (ValueError, KeyError) as exc:
        raise fail("cron", f"{expected} ({exc})", value) from None
    assert isinstance(value, str)
    return AwsCron(value.strip(), expression)


def known_aws_cron(text: str) -> AwsCron:
    """An AWS cron expression known to be valid (a default in the code), translated without
    loading croniter: the Lambda handlers import the policy models and never need it."""
    body = _CRON_RE.match(text)
    assert body is not None, text
    return AwsCron(text, _croniter_expression(body["body"].split()))


def _croniter_expression(fields: list[str]) -> str:
    minute, hour, dom, month, dow, year = fields
    return " ".join(["0", minute, hour, dom, month, _unix_weekdays(dow), year])


def _unix_weekdays(field: str) -> str:
    """AWS numbers days 1=SUN..7=SAT and writes the last Friday `6L`; unix cron uses 0..6 and `L5`."""

    def shift(number: str) -> str:
        return str(int(number) - 1) if number.isdigit() else number

    parts = []
    for part in field.split(","):
        base, slash, step = part.partition("/")
        if base.endswith("L") and base[:-1].isdigit():
            base = "L" + shift(base[:-1])
        elif "#" in base:
            day, nth = base.split("#", 1)
            base = f"{shift(day)}#{nth}"
        else:
            base = "-".join(shift(n) for n in base.split("-"))
        parts.append(base + slash + step)
    return ",".join(parts)


def _text(rule: MonthlyRule | AwsCron) -> str:
    return rule.text


Monthly = Annotated[
    MonthlyRule,
    Scalar(
        parse_monthly,
        _text,
        {"type": "string", "description": 'e.g. "Second Tuesday Offset+3" (Azure recurEvery style, offset -6..6)'},
    ),
]
Cron = Annotated[
    AwsCron,
    Scalar(
        parse_aws_cron,
        _text,
        {"type": "string", "description": 'e.g. "cron(0 2 ? * TUE#2 *)" (EventBridge/SSM six-field cron)'},
    ),
]


class Window(NamedTuple):
    start: datetime
    end: datetime

    def contains(self, instant: datetime) -> bool:
        return self.start <= instant < self.end


def localize(wall: datetime, tz: ZoneInfo) -> datetime:
    """A local wall-clock time as an instant. A time skipped by a DST jump moves forward by the
    jump (02:30 on a spring-forward night becomes 03:30); a repeated one takes its first pass."""
    return wall.replace(tzinfo=tz, fold=0).astimezone(UTC).astimezone(tz)


def window_starts(
    rule: MonthlyRule | AwsCron,
    at: time | None,
    offset_days: int,
    tz: ZoneInfo,
    after: datetime,
) -> Iterator[datetime]:
    """Window starts at or after `after`, in order, as aware datetimes in `tz`."""
    local_after = after.astimezone(tz).replace(tzinfo=None)
    # Start a little early: a negative offset or a DST shift can pull an occurrence back.
    begin = local_after - timedelta(days=abs(offset_days) + 2)
    if isinstance(rule, MonthlyRule):
        assert at is not None
        walls: Iterator[datetime] = (datetime.combine(d, at) for d in rule.days(begin.date()))
    else:
        walls = (w + timedelta(days=offset_days) for w in rule.wall_times(begin - timedelta(days=offset_days)))
    last: datetime | None = None
    for wall in walls:
        start = localize(wall, tz)
        if start >= after and start != last:
            last = start
            yield start


def shortest_gap(starts: Iterator[datetime], after: datetime) -> timedelta | None:
    """The shortest time between two consecutive window starts over the year after `after` (at
    most GAP_WINDOWS of them); None with fewer than two (a cron whose years run out)."""
    seen: list[datetime] = []
    try:
        for start in starts:
            if start >= after + GAP_HORIZON or len(seen) >= GAP_WINDOWS:
                break
            seen.append(start)
    except ValueError:  # croniter: no more dates (the cron's years have passed)
        pass
    return min((b - a for a, b in pairwise(seen)), default=None)
