"""Azure Resource Graph's query language, as much of it as the fakes need.

`run_kql(text, rows)` evaluates the subset of KQL that PatchPilot's adapters write (where,
extend, project, order by; in/in~/==/=~/>=...; and, or; tolower, tostring, todatetime, split,
coalesce, isnotempty, ...) over a table's rows. Anything else fails: a query the fake does not
understand fails the test instead of passing. The fakes (fake_azure_compute, fake_azure_assessment,
fake_azure_maintenance) build each table's rows and answer with this.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fake_arm import ArmError

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")|(?P<num>\d+(?:\.\d+)?)|"
    r"(?P<op>!in~|in~|!in\b|==|!=|=~|!~|>=|<=|[|()\[\],.=<>])|(?P<name>[A-Za-z_][A-Za-z0-9_]*))"
)
_COMPARE = {"==", "!=", "=~", "!~", ">=", "<=", ">", "<", "in", "in~", "!in", "!in~", "has", "contains", "startswith"}


def _tokens(text: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise ArmError(400, "BadRequest", f"KQL the fake cannot read at {text[position : position + 30]!r}")
        kind = match.lastgroup or ""
        value = match[kind]
        if kind == "str":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        found.append((kind, value))
        position = match.end()
    return found


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.at = 0

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.at] if self.at < len(self.tokens) else ("end", "")

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if value is not None and token[1] != value:
            raise ArmError(400, "BadRequest", f"KQL: expected {value!r}, got {token[1]!r}")
        self.at += 1
        return token

    def expression(self) -> Callable[[dict[str, Any]], Any]:
        left = self.conjunction()
        while self.peek() == ("name", "or"):
            self.take()
            left = _joined(left, self.conjunction(), any)
        return left

    def conjunction(self) -> Callable[[dict[str, Any]], Any]:
        left = self.comparison()
        while self.peek() == ("name", "and"):
            self.take()
            left = _joined(left, self.comparison(), all)
        return left

    def comparison(self) -> Callable[[dict[str, Any]], Any]:
        left = self.postfix()
        operator = self.peek()[1]
        if operator not in _COMPARE:
            return left
        self.take()
        if operator in ("in", "in~", "!in", "!in~"):
            self.take("(")
            values = [self.expression()]
            while self.peek()[1] == ",":
                self.take()
                values.append(self.expression())
            self.take(")")
            return lambda row: _member(operator, left(row), [v(row) for v in values])
        right = self.postfix()
        return lambda row: _compare(operator, left(row), right(row))

    def postfix(self) -> Callable[[dict[str, Any]], Any]:
        value = self.primary()
        while self.peek()[1] in (".", "["):
            if self.take()[1] == ".":
                value = _indexed(value, _constant(self.take()[1]))
            else:
                value = _indexed(value, self.expression())
                self.take("]")
        return value

    def primary(self) -> Callable[[dict[str, Any]], Any]:
        kind, value = self.take()
        if kind == "str":
            return lambda row: value
        if kind == "num":
            number = float(value) if "." in value else int(value)
            return lambda row: number
        if value == "(":
            inner = self.expression()
            self.take(")")
            return inner
        if kind == "name" and value in ("true", "false"):
            return lambda row: value == "true"
        if kind == "name" and self.peek()[1] == "(":
            self.take("(")
            args = []
            while self.peek()[1] != ")":
                args.append(self.expression())
                if self.peek()[1] == ",":
                    self.take()
            self.take(")")
            function = _FUNCTIONS.get(value)
            if function is None:
                raise ArmError(400, "BadRequest", f"KQL function {value}() is not modelled by the fake")
            return lambda row: function(*[a(row) for a in args])
        if kind == "name":
            return lambda row: row.get(value)
        raise ArmError(400, "BadRequest", f"KQL: unexpected {value!r}")


Row = dict[str, Any]
Getter = Callable[[Row], Any]


def _joined(left: Getter, right: Getter, how: Callable[[list[bool]], bool]) -> Getter:
    return lambda row: how([bool(left(row)), bool(right(row))])


def _indexed(value: Getter, key: Getter) -> Getter:
    return lambda row: _index(value(row), key(row))


def _constant(value: Any) -> Getter:
    return lambda row: value


def _column(name: str) -> Getter:
    return lambda row: row.get(name)


def _index(value: Any, key: Any) -> Any:
    if isinstance(value, dict):
        return value.get(key)
    if isinstance(value, list) and isinstance(key, int):
        return value[key] if -len(value) <= key < len(value) else None
    return None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "tolower": lambda v: _text(v).lower(),
    "toupper": lambda v: _text(v).upper(),
    "tostring": _text,
    "todatetime": _time,
    "isnotempty": lambda v: v is not None and v != "",
    "isempty": lambda v: v is None or v == "",
    "coalesce": lambda *vs: next((v for v in vs if v is not None and v != ""), None),
    "split": lambda v, d: _text(v).split(d),
    "array_length": lambda v: len(v) if isinstance(v, list) else None,
    "not": lambda v: not v,
}


def _member(operator: str, value: Any, values: list[Any]) -> bool:
    if operator.endswith("~"):
        found = _text(value).lower() in {_text(v).lower() for v in values}
    else:
        found = bool(value in values) or _text(value) in [v for v in values if isinstance(v, str)]
    return found != operator.startswith("!")


def _compare(operator: str, left: Any, right: Any) -> bool:
    if operator in ("==", "!="):
        return bool(left == right) == (operator == "==")
    if operator in ("=~", "!~"):
        return (_text(left).lower() == _text(right).lower()) == (operator == "=~")
    if operator == "has" or operator == "contains":
        return _text(right).lower() in _text(left).lower()
    if operator == "startswith":
        return _text(left).lower().startswith(_text(right).lower())
    if left is None or right is None:
        return False
    return bool({">=": left >= right, "<=": left <= right, ">": left > right, "<": left < right}[operator])


def run_kql(text: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Evaluate `table | where ... | extend ... | project ... | order by ...` over `rows`."""
    tokens = _tokens(text)
    stages: list[list[tuple[str, str]]] = [[]]
    for token in tokens:
        if token == ("op", "|"):
            stages.append([])
        else:
            stages[-1].append(token)
    for stage in stages[1:]:
        parser = _Parser(stage)
        verb = parser.take()[1]
        if verb == "where":
            condition = parser.expression()
            rows = [r for r in rows if condition(r)]
        elif verb in ("extend", "project"):
            columns: list[tuple[str, Callable[[dict[str, Any]], Any]]] = []
            while parser.peek()[0] != "end":
                name = parser.take()[1]
                if parser.peek()[1] == "=":
                    parser.take()
                    columns.append((name, parser.expression()))
                else:
                    columns.append((name, _column(name)))
                if parser.peek()[1] == ",":
                    parser.take()
            if verb == "extend":
                rows = [{**r, **{n: f(r) for n, f in columns}} for r in rows]
            else:
                rows = [{n: f(r) for n, f in columns} for r in rows]
        elif verb == "order":
            parser.take("by")
            name = parser.take()[1]
            descending = parser.peek()[1] == "desc"
            rows = sorted(rows, key=lambda r: _text(r.get(name)), reverse=descending)
            continue
        else:
            raise ArmError(400, "BadRequest", f"KQL operator {verb!r} is not modelled by the fake")
        if parser.peek()[0] != "end":
            raise ArmError(400, "BadRequest", f"KQL: unexpected {parser.peek()[1]!r} after {verb}")
    return rows


__all__ = ["run_kql"]
