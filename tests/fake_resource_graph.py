"""Azure Resource Graph's query language, as much of it as the fakes need.

`run_kql(text, rows)` evaluates the subset of KQL that PatchPilot's adapters write (where,
extend, project, order by; in/in~/==/=~/>=...; and, or; tolower, tostring, todatetime, split,
substring, indexof, coalesce, isnotempty, ...) over a table's rows. Anything else fails: a query
the fake does not understand fails the test instead of passing. The fakes (fake_azure_compute, fake_azure_assessment,
fake_azure_maintenance) build each table's rows and answer with this.

tests/fixtures/resource-graph/queries.json records every query the adapters send with the fakes'
answer to it; tests/test_resource_graph_queries.py fails when a query changes or the answer does.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

Row = dict[str, Any]
Getter = Callable[[Row], Any]


class UnsupportedKql(Exception):
    """A query, or a part of one, that the fake does not model. Raised through the SDK client
    (never answered as an HTTP error, which adapter code may handle as the service's refusal), so
    the test fails where the query is sent, naming the part and the query."""


Token = tuple[str, str]  # kind (str, num, op, name, end), value

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")|(?P<num>\d+(?:\.\d+)?)|"
    r"(?P<op>!in~|in~|!in\b|==|!=|=~|!~|>=|<=|[|()\[\],.=<>])|(?P<name>[A-Za-z_][A-Za-z0-9_]*))"
)
_COMPARE = {"==", "!=", "=~", "!~", ">=", "<=", ">", "<", "in", "in~", "!in", "!in~", "has", "contains", "startswith"}


def _stages(text: str) -> list[tuple[str, list[Token]]]:
    """The query's stages (split at `|` outside strings), each with its own text and tokens."""
    stages: list[tuple[int, list[Token]]] = [(0, [])]
    ends: list[int] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise UnsupportedKql(f"KQL the fake cannot read at {text[position:].lstrip()[:30]!r} in: {text}")
        kind = match.lastgroup or ""
        value = match[kind]
        if kind == "str":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        if (kind, value) == ("op", "|"):
            ends.append(match.start())
            stages.append((match.end(), []))
        else:
            stages[-1][1].append((kind, value))
        position = match.end()
    ends.append(len(text))
    return [(text[begin:stop].strip(), tokens) for (begin, tokens), stop in zip(stages, ends, strict=True)]


class _Parser:
    def __init__(self, tokens: list[Token], stage: str) -> None:
        self.tokens = tokens
        self.stage = stage
        self.at = 0

    def refuse(self, what: str) -> UnsupportedKql:
        return UnsupportedKql(f"KQL: {what}, in the stage `{self.stage}`")

    def peek(self) -> Token:
        return self.tokens[self.at] if self.at < len(self.tokens) else ("end", "")

    def take(self, value: str | None = None) -> Token:
        token = self.peek()
        if value is not None and token[1] != value:
            raise self.refuse(f"expected {value!r}, got {token[1] or 'the end'!r}")
        self.at += 1
        return token

    def name(self, what: str) -> str:
        kind, value = self.take()
        if kind != "name":
            raise self.refuse(f"expected {what}, got {value or 'the end'!r}")
        return value

    def done(self) -> bool:
        return self.peek()[0] == "end"

    def expression(self) -> Getter:
        left = self.conjunction()
        while self.peek() == ("name", "or"):
            self.take()
            left = _joined(left, self.conjunction(), any)
        return left

    def conjunction(self) -> Getter:
        left = self.comparison()
        while self.peek() == ("name", "and"):
            self.take()
            left = _joined(left, self.comparison(), all)
        return left

    def comparison(self) -> Getter:
        left = self.postfix()
        kind, operator = self.peek()
        if kind not in ("op", "name") or operator not in _COMPARE:
            return left
        self.take()
        if operator in ("in", "in~", "!in", "!in~"):
            self.take("(")
            values = [self.expression()]
            while self.peek() == ("op", ","):
                self.take()
                values.append(self.expression())
            self.take(")")
            return lambda row: _member(operator, left(row), [v(row) for v in values])
        right = self.postfix()
        return lambda row: _compare(operator, left(row), right(row))

    def postfix(self) -> Getter:
        value = self.primary()
        while self.peek() in (("op", "."), ("op", "[")):
            if self.take()[1] == ".":
                value = _indexed(value, _constant(self.name("a property name after '.'")))
            else:
                value = _indexed(value, self.expression())
                self.take("]")
        return value

    def primary(self) -> Getter:
        kind, value = self.take()
        if kind == "str":
            return lambda row: value
        if kind == "num":
            number = float(value) if "." in value else int(value)
            return lambda row: number
        if (kind, value) == ("op", "("):
            inner = self.expression()
            self.take(")")
            return inner
        if kind == "name" and value in ("true", "false"):
            return lambda row: value == "true"
        if kind == "name" and self.peek() == ("op", "("):
            self.take("(")
            args = []
            while self.peek() != ("op", ")"):
                args.append(self.expression())
                if self.peek() == ("op", ","):
                    self.take()
                elif self.peek() != ("op", ")"):
                    raise self.refuse(f"expected ',' or ')' in {value}(), got {self.peek()[1] or 'the end'!r}")
            self.take(")")
            function = _FUNCTIONS.get(value)
            if function is None:
                raise self.refuse(f"function {value}() is not modelled by the fake")
            try:
                inspect.signature(function).bind(*args)
            except TypeError:
                raise self.refuse(f"{value}() with {len(args)} arguments is not modelled by the fake") from None
            return lambda row: function(*[a(row) for a in args])
        if kind == "name":
            return lambda row: row.get(value)
        raise self.refuse(f"unexpected {value or 'end'!r}")


def _joined(left: Getter, right: Getter, how: Callable[[list[bool]], bool]) -> Getter:
    return lambda row: how([bool(left(row)), bool(right(row))])


def _indexed(value: Getter, key: Getter) -> Getter:
    return lambda row: _index(value(row), key(row))


def _constant(value: Any) -> Getter:
    return lambda row: value


def _column(name: str) -> Getter:
    return lambda row: row.get(name)


def _sort_key(name: str) -> Callable[[Row], str]:
    return lambda row: _text(row.get(name))


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


def _substring(value: Any, start: Any, length: Any = None) -> str:
    """KQL's substring(source, startingIndex[, length]); a negative start is taken as 0, a
    negative length (indexof's -1) is taken as 0 characters."""
    text, begin = _text(value), max(int(start or 0), 0)
    return text[begin:] if length is None else text[begin : begin + max(int(length), 0)]


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
    "indexof": lambda v, lookup: _text(v).find(_text(lookup)),  # -1 when not found, as KQL's
    "substring": _substring,
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


def run_kql(text: str, rows: list[Row]) -> list[Row]:
    """Evaluate `table | where ... | extend ... | project ... | order by ...` over `rows` (the
    table's; the fake chose them by the first word). Anything else raises `UnsupportedKql`."""
    (table, first), *stages = _stages(text)
    if len(first) != 1 or first[0][0] != "name":
        raise UnsupportedKql(f"KQL: a query starts with one table name, not `{table}`, in: {text}")
    for stage, tokens in stages:
        parser = _Parser(tokens, stage)
        verb = parser.name("an operator")
        if verb == "where":
            condition = parser.expression()
            rows = [r for r in rows if condition(r)]
        elif verb in ("extend", "project"):
            columns: list[tuple[str, Getter]] = []
            while not parser.done():
                name = parser.name("a column name")
                if parser.peek() == ("op", "="):
                    parser.take()
                    columns.append((name, parser.expression()))
                else:
                    columns.append((name, _column(name)))
                if not parser.done():
                    parser.take(",")
            if verb == "extend":
                rows = [{**r, **{n: f(r) for n, f in columns}} for r in rows]
            else:
                rows = [{n: f(r) for n, f in columns} for r in rows]
        elif verb == "order":
            parser.take("by")
            keys: list[tuple[str, bool]] = []
            while True:
                name = parser.name("a column to order by")
                direction = "desc"  # KQL's default
                if parser.peek() in (("name", "asc"), ("name", "desc")):
                    direction = parser.take()[1]
                keys.append((name, direction == "desc"))
                if parser.done():
                    break
                parser.take(",")
            for name, descending in reversed(keys):  # stable sorts, the last key first
                rows = sorted(rows, key=_sort_key(name), reverse=descending)
        else:
            raise parser.refuse(f"operator {verb!r} is not modelled by the fake")
        if not parser.done():
            raise parser.refuse(f"unexpected {parser.peek()[1]!r} after {verb}")
    return rows


__all__ = ["UnsupportedKql", "run_kql"]
