"""The import graph of `shared/patchpilot` keeps its shape (issue 14, docs/architecture.md).

Walks every module with `ast` (module-level and function-level imports, relative ones resolved,
`TYPE_CHECKING` ones included) and fails on an import cycle, on a cross-module import of a
`_private` name, and on an import against the layers:

    core  <-  application  <-  adapters  <-  entrypoints

The core imports only the core and no cloud or chat SDK; the application imports the core; adapters
may import the core and the application; entrypoints import anything. Today's violations are in
`KNOWN`, each with a comment on why; the test also fails when a listed one is gone, so the list only
shrinks.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "shared" / "patchpilot"

CORE, APPLICATION, ADAPTER, ENTRYPOINT = "core", "application", "adapter", "entrypoint"
RANK = {CORE: 0, APPLICATION: 1, ADAPTER: 2, ENTRYPOINT: 3}

# The layer of each module, by the longest matching prefix (a module or a package).
LAYERS: dict[str, str] = {
    # core: models, pure decisions, renderings, the ports themselves
    "patchpilot": CORE,
    "errors": CORE,
    "batching": CORE,
    "wording": CORE,
    "verdict": CORE,
    "hotpatch": CORE,
    "inputs": CORE,
    "inventory": CORE,
    "redact": CORE,
    "ports": CORE,
    "triggers": CORE,  # when a scheduled run starts: a pure function of the time
    "wakeups": CORE,  # which runs a cloud event wakes: a pure function of the event and the runs
    "approvals": CORE,  # signed approval links: no I/O
    "policy": CORE,
    "planning": CORE,
    "engine": CORE,
    "reports": CORE,
    "compliance": CORE,  # model, the view (report.py, pure), its renderings
    "maintenance": CORE,  # model and the watch view, digest and alerts (pure)
    "advisories": CORE,  # models, names, parsing, decide
    # application: sequences effects through ports it is given
    "service": APPLICATION,
    "advisories.intake": APPLICATION,
    "app": APPLICATION,  # the timer, compliance, the watch, approvals, Update Manager events (patchpilot/app)
    # adapters: I/O (clouds, SQLite, chat)
    "adapters": ADAPTER,
    "notify": ADAPTER,
    "chat_approvals": ADAPTER,  # Slack interactions through slack_sdk
    # entrypoints: the command line and the composition roots around it
    "cli": ENTRYPOINT,
    "cli_common": ENTRYPOINT,
    "cli_steps": ENTRYPOINT,
    "cli_tables": ENTRYPOINT,
    "loading": ENTRYPOINT,  # pauses the garbage collector while the command or a handler loads
    "cli_advisory": ENTRYPOINT,
    "cli_aws": ENTRYPOINT,
    "cli_azure": ENTRYPOINT,
    "cli_compliance": ENTRYPOINT,
    "cli_maintenance": ENTRYPOINT,
    "local_runtime": ENTRYPOINT,
    "bootstrap": ENTRYPOINT,  # one composition per runtime (aws.py: Lambda, azure.py: Functions), what they share
    "tools": ENTRYPOINT,  # doc_examples drives the CLI
}

# Third-party packages that do I/O: only adapters and entrypoints import them.
SDKS = ("boto3", "botocore", "azure", "slack_sdk", "requests", "sqlite3")
SDK_PREFIXES = ("mypy_boto3_",)  # boto3's type stubs, one package per service

# Adapter modules stay under about 600 lines (issue 14); these are over it, each with its reason.
ADAPTER_MAX_LINES = 650
LONG_ADAPTERS: set[str] = set()  # none today

# Today's violations, each with the reason it is still here. A fixed one must leave this list.
KNOWN: set[str] = set()  # none today


def module_name(path: Path) -> str:
    """The module's name without the leading `patchpilot.` (the package itself is `patchpilot`)."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) or "patchpilot"


def full_name(module: str) -> str:
    return module if module == "patchpilot" else f"patchpilot.{module}"


def short_name(module: str) -> str:
    return module.removeprefix("patchpilot.")


MODULES: dict[str, Path] = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str:
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        layer = LAYERS.get(".".join(parts[:end]))
        if layer is not None:
            return layer
    raise AssertionError(f"{module} has no layer: add it to LAYERS in tests/test_architecture.py")


def imports(module: str) -> Iterator[tuple[str, str | None]]:
    path = MODULES[module]
    return imports_in(path.read_text(encoding="utf-8"), module, is_package=path.name == "__init__.py")


def imports_in(source: str, module: str, *, is_package: bool) -> Iterator[tuple[str, str | None]]:
    """(imported module, imported name or None) for each import in `source`, at any depth.

    Our own modules are named without `patchpilot.`, any other with its full name.
    """
    for target, name in _resolved(source, full_name(module), is_package=is_package):
        if target == "patchpilot" or target.startswith("patchpilot."):
            target = short_name(target)
            if name is not None and f"{target}.{name}" in MODULES:
                target, name = f"{target}.{name}", None
        yield target, name


def _resolved(source: str, module: str, *, is_package: bool) -> Iterator[tuple[str, str | None]]:
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                yield target, alias.name


def graph() -> dict[str, set[str]]:
    return {
        module: {target for target, _ in imports(module) if target in MODULES and target != module}
        for module in MODULES
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def is_sdk(target: str) -> bool:
    return target.split(".", 1)[0] in SDKS or target.startswith(SDK_PREFIXES)


def cloud_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "adapters" and parts[1] in ("aws", "azure") else None


def violations() -> set[str]:
    edges = graph()
    found = {"cycle: " + " <-> ".join(component) for component in cycles(edges)}
    for module in MODULES:
        layer = layer_of(module)
        for target, name in imports(module):
            if target in MODULES:
                own_package = target.rsplit(".", 1)[0] == module.rsplit(".", 1)[0]
                if target.rsplit(".", 1)[-1].startswith("_") and not target.endswith("__init__") and not own_package:
                    found.add(f"private module: {module} imports {target}")
                if name is not None and name.startswith("_") and not name.startswith("__"):
                    found.add(f"private name: {module} imports {target}.{name}")
                target_layer = layer_of(target)
                if RANK[target_layer] > RANK[layer]:
                    found.add(f"layer: {module} ({layer}) imports {target} ({target_layer})")
                if cloud_of(module) and cloud_of(target) and cloud_of(module) != cloud_of(target):
                    found.add(f"cross-cloud: {module} imports {target}")
            elif RANK[layer] <= RANK[APPLICATION] and is_sdk(target):
                found.add(f"sdk: {module} ({layer}) imports {target}")
    return found


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


def test_no_new_import_violations() -> None:
    new = sorted(violations() - KNOWN)
    assert not new, "against issue 14's rules (fix, or list in KNOWN with a reason):\n" + "\n".join(new)


def test_known_violations_still_exist() -> None:
    gone = sorted(KNOWN - violations())
    assert not gone, "fixed, so remove from KNOWN in tests/test_architecture.py:\n" + "\n".join(gone)


def test_no_adapter_module_grows_past_about_600_lines() -> None:
    long = {
        module: lines
        for module, path in MODULES.items()
        if layer_of(module) == ADAPTER
        and (lines := len(path.read_text(encoding="utf-8").splitlines())) > ADAPTER_MAX_LINES
    }
    assert set(long) <= LONG_ADAPTERS, f"cut these along the steps they serve: {long}"
    assert set(long) >= LONG_ADAPTERS, f"no longer long, so remove from LONG_ADAPTERS: {LONG_ADAPTERS - set(long)}"


@pytest.mark.parametrize(
    ("edges", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"a"}, "c": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d"}}, [["a", "b", "c"], ["d", "e"]]),
    ],
)
def test_cycles_finds_each_strongly_connected_group(edges: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert cycles(edges) == expected


def test_relative_and_function_level_imports_are_seen() -> None:
    source = (
        "from .fleet import _chunks\n"
        "from .. import health\n"
        "def build():\n"
        "    from patchpilot.service import Service\n"
        "    import boto3\n"
    )
    found = set(imports_in(source, "adapters.aws.compliance", is_package=False))
    assert found == {
        ("adapters.aws.fleet", "_chunks"),
        ("adapters.health", None),
        ("service", "Service"),
        ("boto3", None),
    }


# What `notify/` must be given rather than read: the clock and the process environment.
AMBIENT = {"datetime.now", "datetime.utcnow", "datetime.today", "date.today", "time.time", "os.environ", "os.getenv"}


def ambient_reads(source: str) -> list[str]:
    """Each read of the wall clock or the environment in `source` (`datetime.now(UTC)`,
    `os.environ[...]`, `from os import environ`), as `line: name`."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            name = f"{node.value.id}.{node.attr}"
        elif isinstance(node, ast.ImportFrom) and node.module in ("os", "datetime", "time"):
            names = [f"{node.module}.{a.name}" for a in node.names]
            name = next((n for n in names if n in AMBIENT or n.split(".")[1] in ("environ", "getenv")), "")
        else:
            continue
        if name in AMBIENT:
            found.append((node.lineno, name))
    return [f"{line}: {name}" for line, name in sorted(found)]


def test_notify_takes_its_clock_and_configuration_as_arguments() -> None:
    reads = {
        f"{path.relative_to(PACKAGE)}:{read}"
        for path in sorted((PACKAGE / "notify").glob("*.py"))
        for read in ambient_reads(path.read_text(encoding="utf-8"))
    }
    assert not reads, f"notify/ reads the clock or the environment: pass it in instead: {sorted(reads)}"


def test_ambient_reads_are_found() -> None:
    source = "import os\nfrom os import environ\nx = os.environ.get('A')\ny = datetime.now(UTC)\nz = now.date()\n"
    assert ambient_reads(source) == ["2: os.environ", "3: os.environ", "4: datetime.now"]
