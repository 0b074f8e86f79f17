"""A policy schedule as a maintenance configuration's recurrence: `recurEvery` (`Month Second
Tuesday Offset2`, weekly days) and the Windows time-zone name Azure wants."""

from __future__ import annotations

from datetime import time

from patchpilot.errors import Problem, quote
from patchpilot.policy.model import Schedule
from patchpilot.policy.schedule import AwsCron, MonthlyRule

_ORDINALS = {1: "First", 2: "Second", 3: "Third", 4: "Fourth", -1: "Last"}


_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


_CRON_DAYS = {"SUN": 6, "MON": 0, "TUE": 1, "WED": 2, "THU": 3, "FRI": 4, "SAT": 5}  # name -> Monday=0


def windows_time_zone(name: str) -> str | None:
    """The Windows name of a time zone given by its IANA or Windows name (tzlocal's CLDR table)."""
    from tzlocal.windows_tz import tz_win, win_tz

    if name in win_tz:
        return name
    found: str | None = tz_win.get(name)
    return found


def recur_every(schedule: Schedule, problems: list[Problem]) -> tuple[str | None, time | None]:
    """Update Manager's recurEvery and the start time of day, or a problem at schedule.cron."""
    rule = schedule.rule
    if isinstance(rule, MonthlyRule):
        return _monthly(rule.ordinal, rule.weekday, rule.offset_days), schedule.at
    return _from_cron(rule, schedule.offset_days, problems)


def _monthly(ordinal: int, weekday: int, offset: int) -> str:
    text = f"Month {_ORDINALS[ordinal]} {_WEEKDAYS[weekday]}"
    return f"{text} Offset{offset}" if offset else text  # "Offset-2", "Offset3": never a plus sign


def _from_cron(cron: AwsCron, offset: int, problems: list[Problem]) -> tuple[str | None, time | None]:
    here = ("schedule", "cron")
    minute, hour, dom, month, dow, year = cron.text[cron.text.index("(") + 1 : cron.text.rindex(")")].split()

    def refuse(why: str) -> tuple[None, None]:
        problems.append(
            Problem(
                here,
                f"Update Manager cannot express {quote(cron.text)}: {why}. It takes one start time and a daily, "
                'weekly ("SAT,SUN") or monthly ("TUE#2", "FRIL", "1,15") rule; or use schedule.monthly',
            )
        )
        return None, None

    if not (minute.isdigit() and hour.isdigit()):
        return refuse("minute and hour must be single numbers")
    if month != "*" or year != "*":
        return refuse("every month and every year only")
    at = time(int(hour), int(minute))
    if dom in ("*", "?") and dow in ("*", "?"):
        return "Day", at
    if dow == "?":
        if offset:
            return refuse("offset_days with days of the month")
        days = dom.split(",")
        if not all(d.isdigit() and 1 <= int(d) <= 31 for d in days):
            return refuse(f"days of the month {quote(dom)} must be numbers 1-31")
        return "Month " + ",".join(f"day{int(d)}" for d in days), at
    if "#" in dow:
        day, _, nth = dow.partition("#")
        weekday = _cron_weekday(day)
        if weekday is None or not nth.isdigit() or not 1 <= int(nth) <= 4:
            return refuse(f"{quote(dow)}: a weekday and its week 1-4")
        return _monthly(int(nth), weekday, offset), at
    if dow.upper().endswith("L"):
        weekday = _cron_weekday(dow[:-1])
        if weekday is None:
            return refuse(f"{quote(dow)}: the last of which weekday?")
        return _monthly(-1, weekday, offset), at
    weekdays = _cron_weekdays(dow)
    if weekdays is None:
        return refuse(f"days of the week {quote(dow)}")
    shifted = sorted({(d + offset) % 7 for d in weekdays})
    return "Week " + ",".join(_WEEKDAYS[d] for d in shifted), at


def _cron_weekday(token: str) -> int | None:
    """AWS numbers days 1=SUN..7=SAT or names them SUN..SAT; Monday=0 here."""
    token = token.upper()
    if token.isdigit() and 1 <= int(token) <= 7:
        return (int(token) + 5) % 7
    return _CRON_DAYS.get(token)


def _cron_weekdays(field: str) -> list[int] | None:
    days: list[int] = []
    for part in field.split(","):
        low, dash, high = part.partition("-")
        first, last = _cron_weekday(low), _cron_weekday(high) if dash else None
        if first is None or (dash and last is None):
            return None
        if last is None:
            days.append(first)
            continue
        span = (last - first) % 7
        days.extend((first + k) % 7 for k in range(span + 1))
    return days
