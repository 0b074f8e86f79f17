"""Change freezes: when no scheduled window starts, and emergency runs wait for a person.

Two sources, both in the policy's time zone: the policy's `freeze:` periods (dates or local
date-times, optionally yearly) and the events of an iCalendar file (`freeze_calendar:`, read
with `icalendar`; RRULE, RDATE and EXDATE expanded by `recurring-ical-events`). This module is
pure: it answers "is this instant frozen, and by which freeze" and "which freeze starts first
inside [start, end)", from data already read. Reading the calendar file is the loaders' part
(`patchpilot.policy.load_policy`, the clouds' policy sources).

Local wall-clock times become instants as the schedule's do (`schedule.localize`): a time a DST
jump skips moves forward by the jump, a repeated one takes its first pass. A date `from` starts
at that day's 00:00, a date `to` includes that whole day (the freeze ends at the next day's
00:00); a date-time `to` is the freeze's end (exclusive).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple, Protocol
from zoneinfo import ZoneInfo

from patchpilot.errors import InputError
from patchpilot.policy.fields import Scalar, fail
from patchpilot.policy.schedule import localize

if TYPE_CHECKING:
    from icalendar import Calendar

YEAR = timedelta(days=365)


def parse_moment(value: object) -> date | datetime:
    """A freeze bound: a date (`2026-12-20`) or a date-time (`2026-12-20T18:00`, local when it has
    no offset), as YAML gives them or as text."""
    if isinstance(value, (date, datetime)):
        return value
    expected = 'expected a date such as "2026-12-20" or a date-time such as "2026-12-20T18:00"'
    if not isinstance(value, str):
        raise fail("freeze_time", expected, value)
    text = value.strip()
    try:
        return date.fromisoformat(text) if len(text) == 10 else datetime.fromisoformat(text)
    except ValueError:
        raise fail("freeze_time", expected, value) from None


Moment = Annotated[
    date | datetime,
    Scalar(
        parse_moment,
        lambda m: m.isoformat(),
        {
            "type": "string",
            "description": 'a date ("2026-12-20") or a date-time ("2026-12-20T18:00"), in the policy\'s time zone',
        },
    ),
]


class Period(Protocol):
    """A policy `freeze:` entry (`policy.model.FreezePeriod`)."""

    @property
    def name(self) -> str: ...
    @property
    def from_(self) -> date | datetime: ...
    @property
    def to(self) -> date | datetime: ...
    @property
    def yearly(self) -> bool: ...


class Freeze(NamedTuple):
    """One occurrence of a freeze: [start, end), aware; `source` says where it comes from."""

    name: str
    start: datetime
    end: datetime
    source: str = "policy"  # "policy", or the calendar's file name

    def contains(self, instant: datetime) -> bool:
        return self.start <= instant < self.end

    def describe(self, zone: ZoneInfo) -> str:
        """`year-end (2026-12-19T00:00+09:00 to 2027-01-18T00:00+09:00)`."""
        start, end = (m.astimezone(zone).isoformat(timespec="minutes") for m in (self.start, self.end))
        return f"{self.name} ({start} to {end})"


def _wall(moment: date | datetime, *, end: bool) -> datetime:
    """A bound as a local wall-clock time (naive), or an aware one when it has its offset."""
    if isinstance(moment, datetime):
        return moment
    return datetime.combine(moment + timedelta(days=1) if end else moment, time())


def _instant(wall: datetime, zone: ZoneInfo) -> datetime:
    return wall.astimezone(zone) if wall.tzinfo is not None else localize(wall, zone)


def _shift_years(wall: datetime, years: int) -> datetime:
    """The same wall-clock time `years` later; 29 February becomes the 28th in a common year."""
    from dateutil.relativedelta import relativedelta

    return wall + relativedelta(years=years)


def period_problem(period: Period) -> str | None:
    """What is wrong with a `freeze:` entry's bounds, or None."""
    start, end = _wall(period.from_, end=False), _wall(period.to, end=True)
    if (start.tzinfo is None) != (end.tzinfo is None):
        return "give both from and to with an offset, or neither (then both are in the policy's time zone)"
    if end <= start:
        return "expected `to` after `from` (a date `to` includes that whole day)"
    if period.yearly and end - start >= YEAR:
        return "a yearly freeze must last less than a year"
    return None


def period_occurrences(period: Period, zone: ZoneInfo, start: datetime, end: datetime) -> Iterator[Freeze]:
    """The occurrences of a `freeze:` entry that overlap [start, end), in order."""
    first, last = _wall(period.from_, end=False), _wall(period.to, end=True)
    years = range(0, 1)
    if period.yearly:  # every year from the one given on
        base = first.year
        years = range(max(0, start.year - base - 1), max(0, end.year - base + 1))
    for k in years:
        occurrence = Freeze(period.name, _instant(_shift_years(first, k), zone), _instant(_shift_years(last, k), zone))
        if occurrence.start < end and occurrence.end > start:
            yield occurrence


def parse_calendar(data: bytes | str, source: str) -> Calendar:
    """An iCalendar file's content; InputError naming `source` when it is not one, or when an
    event has no start."""
    from icalendar import Calendar

    try:
        calendar = Calendar.from_ical(data)
    except ValueError as error:
        raise InputError.single(source, f"not an iCalendar file: {error}") from None
    if not isinstance(calendar, Calendar):
        raise InputError.single(source, "not an iCalendar file: expected one VCALENDAR")
    for event in calendar.walk("VEVENT"):
        if event.get("DTSTART") is None:
            raise InputError.single(source, f"event {_event_name(event)!r} has no DTSTART")
    year = datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)
    try:  # a recurrence the library cannot expand fails here, not at the first timer tick
        _calendar_events(calendar, source, ZoneInfo("UTC"), *year)
    except Exception as error:
        raise InputError.single(source, f"its events cannot be expanded: {error}") from None
    return calendar


def _event_name(event: Any) -> str:
    return str(event.get("SUMMARY") or event.get("UID") or "unnamed event")


def _calendar_events(calendar: Calendar, source: str, zone: ZoneInfo, start: datetime, end: datetime) -> list[Freeze]:
    """The calendar's event occurrences that overlap [start, end): all-day events in `zone`, floating
    times as local times of `zone`."""
    import recurring_ical_events

    found = []
    margin = timedelta(days=2)  # the library reads all-day and floating events in its own way: filtered below
    for event in recurring_ical_events.of(calendar).between(start - margin, end + margin):
        begin = event.start
        finish = event.end if event.get("DTEND") is not None or event.get("DURATION") is not None else None
        if isinstance(begin, datetime):
            first = _instant(begin, zone)
            last = _instant(finish, zone) if isinstance(finish, datetime) else first
        else:  # an all-day event: whole days, its DTEND excluded (RFC 5545), one day without one
            first = _instant(_wall(begin, end=False), zone)
            stop = finish if isinstance(finish, date) and finish > begin else begin + timedelta(days=1)
            last = _instant(_wall(stop, end=False), zone)
        occurrence = Freeze(_event_name(event), first, last, source)
        if occurrence.end > occurrence.start and occurrence.start < end and occurrence.end > start:
            found.append(occurrence)
    return found


class ExternalFreezes(Protocol):
    """Freezes a service keeps (SSM Change Calendars: `adapters/aws/change_calendar.py`): asked
    about an instant or a range, never listed."""

    def at(self, instant: datetime) -> Freeze | None: ...
    def first_starting(self, start: datetime, end: datetime) -> Freeze | None: ...


class UncheckedCalendar(NamedTuple):
    """A `freeze_calendar` that could not be read where a run starts (a run's stored policy, with no
    policy file at hand): a freeze at every instant, named for what it is, so that a freeze that
    cannot be checked never lets a run start unattended (a scheduled one does not start, an
    emergency one waits for approval). As `ExternalFreezes`."""

    name: str

    def at(self, instant: datetime) -> Freeze | None:
        return Freeze(
            f"{self.name} (could not be read here: check it)", instant, instant + timedelta(days=1), self.name
        )

    def first_starting(self, start: datetime, end: datetime) -> Freeze | None:
        return None


@dataclass(frozen=True)
class Freezes:
    """Every freeze of a policy: its periods and its calendar's events, in `zone`, and the freezes
    of an external service (`external`, asked only by `at` and `first_starting`)."""

    zone: ZoneInfo
    periods: Sequence[Period] = ()
    calendar: Calendar | None = None
    calendar_name: str = ""
    external: ExternalFreezes | None = None

    def __bool__(self) -> bool:
        return bool(self.periods) or self.calendar is not None or self.external is not None

    def between(self, start: datetime, end: datetime) -> list[Freeze]:
        """The freezes that overlap [start, end), by start (then end, then name)."""
        found = [f for p in self.periods for f in period_occurrences(p, self.zone, start, end)]
        if self.calendar is not None:
            found += _calendar_events(self.calendar, self.calendar_name, self.zone, start, end)
        return sorted(found, key=lambda f: (f.start, f.end, f.name))

    def at(self, instant: datetime) -> Freeze | None:
        """The freeze `instant` falls in (the one that started first), or None."""
        near = self.between(instant, instant + timedelta(microseconds=1))
        found = next((f for f in near if f.contains(instant)), None)
        return found if found is not None or self.external is None else self.external.at(instant)

    def first_starting(self, start: datetime, end: datetime) -> Freeze | None:
        """The first freeze that starts inside [start, end), or None."""
        found = [f for f in self.between(start, end) if start <= f.start < end][:1]
        if self.external is not None and (other := self.external.first_starting(start, end)) is not None:
            found.append(other)
        return min(found, key=lambda f: f.start, default=None)
