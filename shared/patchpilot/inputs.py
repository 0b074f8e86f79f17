"""Reading user files: YAML without YAML 1.1 surprises, and pydantic errors turned into Problems."""

from __future__ import annotations

import functools
import json
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path as FilePath
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from patchpilot.errors import InputError, Path, Problem, did_you_mean, quote

if TYPE_CHECKING:
    import yaml

Position = tuple[int, int]
MAX_ALIAS_NODES = 10_000  # nodes that aliases may add to a YAML document, all aliases together


@functools.cache
def _loader() -> type[yaml.SafeLoader]:
    """Safe YAML with YAML 1.2 scalars: `10:30` stays a string, `no` stays a string. Built on
    first use: the step worker, which never reads YAML, does not import PyYAML.

    Aliases are bounded: PyYAML shares an aliased node, but everything after it (the walk for
    positions, pydantic, a JSON dump) sees the document expanded, and a "billion laughs" of
    300 bytes expands to 10^9 nodes. Each alias counts the nodes it stands for; past
    `MAX_ALIAS_NODES` in all, or on an alias inside the node it names (a recursive document),
    composing stops with a ComposerError at that alias."""
    import yaml

    class Loader(yaml.SafeLoader):
        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self.aliased_nodes = 0
            self.open_anchors: set[str] = set()
            self.sizes: dict[int, int] = {}  # id(node) -> nodes it stands for, expanded

        def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
            event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
            anchor = getattr(event, "anchor", None)
            if isinstance(event, yaml.AliasEvent) and anchor in self.anchors:
                if anchor in self.open_anchors:
                    raise _refused(f"alias *{anchor} is inside the node it names (recursive)", event)
                self.aliased_nodes += _expanded_size(self.anchors[anchor], self.sizes)
                if self.aliased_nodes > MAX_ALIAS_NODES:
                    raise _refused(f"aliases expand to more than {MAX_ALIAS_NODES:,} nodes (at *{anchor})", event)
                return super().compose_node(parent, index)
            if anchor is None or isinstance(event, yaml.AliasEvent):
                return super().compose_node(parent, index)
            self.open_anchors.add(anchor)
            try:
                return super().compose_node(parent, index)
            finally:
                self.open_anchors.discard(anchor)

    bool_tag, int_tag, float_tag = (f"tag:yaml.org,2002:{t}" for t in ("bool", "int", "float"))
    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in (bool_tag, int_tag, float_tag)]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver(bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    Loader.add_implicit_resolver(int_tag, re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
    Loader.add_implicit_resolver(
        float_tag,
        re.compile(r"^[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$"),
        list("-+.0123456789"),
    )
    return Loader


def one_or_more(value: object) -> object:
    """A single value where a list is expected is a list of that one (`os: linux`)."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return [value]
    return value


def _refused(problem: str, event: Any) -> yaml.composer.ComposerError:
    """A composer error at `event`: parse_yaml reports it with its line and column."""
    import yaml

    return yaml.composer.ComposerError(None, None, problem, event.start_mark)


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many nodes `node` is with every alias in it expanded (a finished, acyclic node)."""
    import yaml

    if (known := sizes.get(id(node))) is not None:
        return known
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(item, sizes) for item in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(key, sizes) + _expanded_size(value, sizes) for key, value in node.value)
    sizes[id(node)] = size
    return size


class Document:
    """A parsed YAML or JSON document and where each of its values sits in the file."""

    def __init__(self, source: str, data: Any, positions: dict[Path, Position]) -> None:
        self.source = source
        self.data = data
        self.positions = positions

    def locate(self, path: Path) -> Position | None:
        """The position of `path`, or of its nearest parent that exists in the file."""
        for end in range(len(path), -1, -1):
            if (pos := self.positions.get(path[:end])) is not None:
                return pos
        return None


def read_text(path: str) -> str:
    try:
        return FilePath(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError.single(path, "file not found") from None
    except IsADirectoryError:
        raise InputError.single(path, "is a directory, expected a file") from None
    except UnicodeDecodeError as exc:
        raise InputError.single(path, f"not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise InputError.single(path, f"cannot read: {exc.strerror}") from None


def parse_yaml(text: str, source: str) -> Document:
    import yaml

    loader = _loader()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise InputError.single(source, "the file is empty")
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
        problem = Problem((), f"not valid YAML: {exc.problem}", line, col)
        raise InputError(source, [problem]) from None
    except yaml.YAMLError as exc:
        raise InputError.single(source, f"not valid YAML: {exc}") from None
    except RecursionError:
        raise InputError.single(source, "not valid YAML: nested too deeply") from None
    finally:
        loader.dispose()
    positions: dict[Path, Position] = {}
    duplicates: list[Problem] = []
    _walk(node, (), positions, duplicates)
    if duplicates:
        raise InputError(source, duplicates)
    return Document(source, data, positions)


def _walk(node: yaml.Node, path: Path, out: dict[Path, Position], dups: list[Problem]) -> None:
    import yaml

    out.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        seen: set[object] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
            if key in seen:
                dups.append(Problem((*path, key), "duplicate key", line, col))
            seen.add(key)
            out[(*path, key)] = (line, col)
            _walk(value_node, (*path, key), out, dups)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*path, index), out, dups)


def parse_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        problem = Problem((), f"not valid JSON: {exc.msg}", exc.lineno, exc.colno)
        raise InputError(source, [problem]) from None
    except RecursionError:
        raise InputError.single(source, "not valid JSON: nested too deeply") from None


def problems_from(
    exc: ValidationError,
    model: type[Any],
    locate: Callable[[Path], Position | None] = lambda _: None,
    prefix: Path = (),
) -> list[Problem]:
    """Turn pydantic's errors into Problems that read like the docs."""
    problems = []
    branches: set[Path] = set()  # where a member of a union failed
    for error in exc.errors(include_url=False):
        loc = _without_union_tags(model, error["loc"])
        path: Path = (*prefix, *loc)
        if len(loc) < len(error["loc"]):
            branches.add(path)
        pos = locate(path)
        line, col = pos if pos else (None, None)
        problems.append(Problem(path, _message(error, model, loc), line, col))
    # Of a union's failed members, the ones that got furthest into the value say the most
    # (`topics[0]: expected 'run_halted', ...` rather than `topics: expected '*'`).
    shallow = {b for b in branches if any(len(o) > len(b) and o[: len(b)] == b for o in branches)}
    return [p for p in problems if p.path not in shallow]


def _without_union_tags(model: type[Any], loc: Path) -> Path:
    """`loc` without the names pydantic gives the members of a union field (`topics.literal['*']`,
    `topics.function-before[...]`): the part after a union field that is not a field of its model."""
    kept: list[str | int] = []
    current: Any = model
    union = False
    for part in loc:
        fields = getattr(current, "__pydantic_fields__", None) or {}
        if union and isinstance(part, str) and part not in fields:
            union = False
            continue
        kept.append(part)
        if isinstance(part, str) and part in fields:
            annotation = fields[part].annotation
            union = isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
            current = _model_in(annotation)
        else:
            union = False
    return tuple(kept)


def _message(error: ErrorDetails, model: type[Any], loc: Path) -> str:
    kind, value = error["type"], error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return "required"
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        import difflib  # imported when used: only for errors

        allowed = _fields_at(model, loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.7)
        if hint:
            return f"unknown field (did you mean {hint[0]}?)"
        return f"unknown field (allowed: {', '.join(allowed)})" if allowed else "unknown field"
    if kind == "literal_error":
        return f"expected {ctx.get('expected')}, got {quote(value)}{did_you_mean(value, _choices_at(model, loc))}"
    if kind.startswith("pp_"):  # our own messages already say what was expected and got
        return error["msg"]
    message = error["msg"]
    message = message[0].lower() + message[1:]
    if kind in ("model_type", "dict_type", "dataclass_type", "model_attributes_type"):
        message = "expected a mapping"
    elif kind == "list_type":
        message = "expected a list"
    return f"{message}, got {quote(value)}"


def _fields_at(model: type[Any], loc: Path) -> list[str]:
    """The field names of the model found by following `loc` from `model`."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "__pydantic_fields__", None)
        if fields is None or part not in fields:
            return []
        current = _model_in(fields[part].annotation)
    fields = getattr(current, "__pydantic_fields__", None)
    return list(fields) if fields else []


def _choices_at(model: type[Any], loc: Path) -> list[str]:
    """The values of the Literal that the field at `loc` holds (`os: list[OsFamily]` -> linux,
    windows), following models from `model`; list indexes, mapping keys and pydantic's union
    tags in `loc` are stepped over."""
    current: Any = model
    annotation: Any = None
    for part in loc:
        fields = getattr(current, "__pydantic_fields__", None)
        if isinstance(part, int) or fields is None or part not in fields:
            continue
        annotation = fields[part].annotation
        current = _model_in(annotation)
    return _literal_values(annotation)


def _literal_values(annotation: Any) -> list[str]:
    if typing.get_origin(annotation) is typing.Literal:
        return [str(arg) for arg in typing.get_args(annotation)]
    return [value for arg in typing.get_args(annotation) for value in _literal_values(arg)]


def _model_in(annotation: Any) -> Any:
    """The model or pydantic dataclass inside `X | None`, `list[X]` and friends, or None."""
    if isinstance(annotation, type) and hasattr(annotation, "__pydantic_fields__"):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is None and not isinstance(annotation, types.UnionType):
        return None
    for arg in typing.get_args(annotation):
        if (found := _model_in(arg)) is not None:
            return found
    return None
