"""Value types of the policy file: quotas, durations, time zones, times of day."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from datetime import time, timedelta
from typing import Annotated, Any, NamedTuple, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from patchpilot.errors import did_you_mean, quote
from patchpilot.inputs import one_or_more


def fail(kind: str, message: str, value: object, hint: str = "") -> PydanticCustomError:
    """A validation error whose text reads `<message>, got <value><hint>` (hint: `did_you_mean`)."""
    return PydanticCustomError(
        f"pp_{kind}", "{expected}, got {got}{hint}", {"expected": message, "got": quote(value), "hint": hint}
    )


class Scalar:
    """A value read by `parse` (which raises `fail`), written by `format` (None: as pydantic writes
    it, a string as it is) and described by `json_schema`: the policy's string-written values, a
    run's awaited command. What `PlainValidator`, `PlainSerializer` and `WithJsonSchema` together
    say, in one annotation: `PlainValidator` builds the schema of the type it stands on twice over,
    to write values by it, and the serializer then replaces it (some 40 µs a field, at every cold
    start of a function: bench/bench_cold_start.py)."""

    def __init__(
        self, parse: Callable[[Any], Any], format: Callable[[Any], str] | None, json_schema: dict[str, Any]
    ) -> None:
        self.parse, self.format, self.json_schema = parse, format, json_schema

    def __get_pydantic_core_schema__(self, source: object, handler: GetCoreSchemaHandler) -> CoreSchema:
        written = None if self.format is None else core_schema.plain_serializer_function_ser_schema(self.format)
        return core_schema.no_info_plain_validator_function(self.parse, serialization=written)

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return dict(self.json_schema)


def new_list() -> list[Any]:
    """`Field(default_factory=new_list)` is `default_factory=list` made cheaper to build: pydantic
    inspects the factory's signature, which for the builtin `list` means parsing its text
    signature (about 3 ms for the first field of a cold start, 0.1 ms for each further one)."""
    return []


class Quota(NamedTuple):
    """A whole number, or a percentage of some total."""

    amount: float
    percent: bool

    def ceil_of(self, total: int) -> int:
        """As a count out of `total`, percentages rounded up (Google OS Config's rule)."""
        if not self.percent:
            return int(self.amount)
        exact = self.amount * total / 100
        # The tolerance absorbs float noise (10% of 30 is 3, not 4) but must not round a
        # positive share down to 0: that would be a budget of nothing (and a ZeroDivisionError).
        return max(math.ceil(exact - 1e-9), 1 if exact > 0 else 0)

    def floor_of(self, total: int) -> int:
        """As a count out of `total`, percentages rounded down but never below 1 (a pool budget:
        25% of 6 members is 1, not 2)."""
        if not self.percent:
            return max(int(self.amount), 1)
        return max(math.floor(self.amount * total / 100 + 1e-9), 1)

    def exceeded_by(self, count: int, total: int) -> bool:
        """True when `count` out of `total` is more than this quota (equal is still within)."""
        limit = self.amount * total / 100 if self.percent else self.amount
        return count > limit + 1e-9

    def __str__(self) -> str:
        if self.percent:
            return f"{self.amount:g}%"
        return str(int(self.amount))


_QUOTA_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def _quota_parser(minimum: int) -> Any:
    expected = "expected a whole number or a percentage"

    def parse(value: object) -> Quota:
        if isinstance(value, Quota):
            return value
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if value < minimum:
                raise fail("quota", f"{expected} of at least {minimum}", value)
            return Quota(value, percent=False)
        if isinstance(value, str) and (m := _QUOTA_RE.match(value)):
            pct = float(m.group(1))
            if not (minimum == 0 or pct > 0) or pct > 100:
                low = "0" if minimum == 0 else "more than 0"
                raise fail("quota", f"expected a percentage from {low} to 100", value)
            return Quota(pct, percent=True)
        raise fail("quota", expected, value)

    return parse


_QUOTA_SCHEMA = {
    "anyOf": [
        {"type": "integer", "minimum": 0},
        {"type": "string", "pattern": r"^\d+(\.\d+)?%$|^\d+$"},  # a count may be written as a string too
    ]
}
Budget = Annotated[Quota, Scalar(_quota_parser(1), str, _QUOTA_SCHEMA)]
FailureQuota = Annotated[Quota, Scalar(_quota_parser(0), str, _QUOTA_SCHEMA)]

_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(value: object) -> timedelta:
    """`4h`, `90m`, `1h30m`, `2d`, `0`: the shapes operators write."""
    if isinstance(value, timedelta):
        return value
    text = str(value).strip().replace(" ", "") if isinstance(value, (str, int)) else ""
    if text == "0":
        return timedelta(0)
    m = _DURATION_RE.match(text)
    if not text or not m or not any(m.groups()):
        raise fail("duration", 'expected a duration such as "4h", "90m" or "1h30m"', value)
    seconds = sum(int(n) * _UNITS[u] for n, u in zip(m.groups(), "dhms", strict=True) if n)
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds == 0:
        return "0"
    out = ""
    for unit, size in _UNITS.items():
        count, seconds = divmod(seconds, size)
        if count:
            out += f"{count}{unit}"
    return out


Duration = Annotated[
    timedelta,
    Scalar(parse_duration, format_duration, {"type": "string", "pattern": r"^(\d+d)?(\d+h)?(\d+m)?(\d+s)?$|^0$"}),
]


def resolve_timezone(name: str) -> ZoneInfo:
    """An IANA name (`Asia/Tokyo`) or a Windows name (`Tokyo Standard Time`)."""
    iana = name if "/" in name else windows_zones().get(name, name)  # no Windows name holds a "/"
    try:
        return ZoneInfo(iana)
    except (ZoneInfoNotFoundError, ValueError):
        raise fail(
            "timezone",
            'expected an IANA time zone ("Asia/Tokyo") or a Windows one ("Tokyo Standard Time")',
            name,
            did_you_mean(name, {*available_timezones(), *windows_zones()}),
        ) from None


@functools.cache
def windows_zones() -> dict[str, str]:
    """Windows time zone names to IANA ones (tzlocal's table), loaded with the first name that
    could be one: an `Area/City` name never is."""
    from tzlocal.windows_tz import win_tz

    return win_tz


def _check_timezone(value: object) -> str:
    if not isinstance(value, str):
        raise fail("timezone", "expected a time zone name", value)
    resolve_timezone(value)
    return value


TimeZoneName = Annotated[str, Scalar(_check_timezone, None, {"type": "string"})]

_TIME_RE = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def _parse_time(value: object) -> time:
    if isinstance(value, time):
        return value
    m = _TIME_RE.match(value.strip()) if isinstance(value, str) else None
    if not m:
        raise fail("time", 'expected a 24-hour time such as "02:00"', value)
    return time(int(m.group(1)), int(m.group(2)))


TimeOfDay = Annotated[
    time,
    Scalar(_parse_time, lambda t: t.strftime("%H:%M"), {"type": "string", "pattern": r"^([01]?\d|2[0-3]):[0-5]\d$"}),
]


def _names(value: object) -> object:
    """A tag value may be one string (or number) or a list of them."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return [str(value)]
    return value


class Listed:
    """A list field that takes a single value too (`read` makes the list of it), described as any of
    the item or the list (or by `json_schema`). What `BeforeValidator` and a JSON schema would say,
    in one annotation: `BeforeValidator` inspects `read`'s signature at each field that uses it."""

    def __init__(self, read: Callable[[Any], Any], json_schema: dict[str, Any] | None = None) -> None:
        self.read, self.json_schema = read, json_schema

    def __get_pydantic_core_schema__(self, source: object, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_before_validator_function(self.read, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        if self.json_schema is not None:
            return dict(self.json_schema)
        listed = handler(schema)
        items = handler.resolve_ref_schema(listed).get("items")
        return {"anyOf": [items, listed]} if isinstance(items, dict) else listed


T = TypeVar("T")
# A list field that takes a single value too, as `tags` values do: `os: linux` is `os: [linux]`.
OneOrMore = Annotated[list[T], Listed(one_or_more)]

TagValues = Annotated[
    list[str], Listed(_names, {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]})
]

HEALTH_URL_SCHEMES = ("http", "https")
HEALTH_URL_PLACEHOLDER = re.compile(r"\{(name|id|private_ip)\}")  # what a health-check URL may hold
_ANY_PLACEHOLDER = re.compile(r"\{[^{}]*\}")


def _check_health_url(value: object) -> str:
    """An http or https URL with a host, whose only `{...}` are the known placeholders."""
    expected = 'expected an http or https URL such as "https://{name}.internal/healthz"'
    if not isinstance(value, str):
        raise fail("health_url", expected, value)
    try:
        parts = urlsplit(value)
    except ValueError:
        raise fail("health_url", expected, value) from None
    if parts.scheme.lower() not in HEALTH_URL_SCHEMES or not parts.netloc:
        raise fail("health_url", expected, value)
    if unknown := _ANY_PLACEHOLDER.findall(HEALTH_URL_PLACEHOLDER.sub("", value)):
        allowed = "{name}, {id}, {private_ip}"
        raise fail("health_url", f"unknown placeholder {unknown[0]} (allowed: {allowed})", value)
    return value


HealthUrl = Annotated[
    str, Scalar(_check_health_url, None, {"type": "string", "pattern": r"^[Hh][Tt][Tt][Pp][Ss]?://[^/]"})
]
