"""Generated documents stay in step with the code (`make docs` regenerates them), and the
example policies stay valid."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

import pytest
from click.testing import CliRunner

from patchpilot.cli import main, messages_schema, policy_schema
from patchpilot.engine.diagram import document
from patchpilot.policy import load_policy, parse_policy
from patchpilot.policy import model as policy_model
from patchpilot.tools import doc_examples

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_policy_schema_in_docs_is_current() -> None:
    assert json.loads((DOCS / "policy.schema.json").read_text()) == policy_schema()


def test_message_schema_in_docs_is_current() -> None:
    assert json.loads((DOCS / "messages.schema.json").read_text()) == messages_schema()


def _defaults(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every subschema that states a default, with where it is."""
    if isinstance(node, dict):
        if "default" in node:
            yield path, node
        for key, value in node.items():
            yield from _defaults(value, f"{path}/{key}")
    elif isinstance(node, list):
        for n, value in enumerate(node):
            yield from _defaults(value, f"{path}/{n}")


@pytest.mark.parametrize("make", [policy_schema, messages_schema], ids=["policy", "messages"])
def test_every_default_a_schema_states_is_valid_by_that_schema(make: Callable[[], dict[str, Any]]) -> None:
    """An editor fills a default in as it reads it: a default the field's own schema refuses (a
    duration as `PT1H` where `1h` is expected, a budget as `{"amount": 10}`) is a wrong answer."""
    from jsonschema import Draft202012Validator

    document = make()
    refused = []
    for path, node in _defaults(document):
        own = {key: value for key, value in node.items() if key != "default"}
        validator = Draft202012Validator({**own, "$defs": document.get("$defs", {})})
        refused += [f"{path}: {node['default']!r}: {e.message}" for e in validator.iter_errors(node["default"])]
    assert refused == []


def test_a_policy_that_writes_out_every_default_is_the_default_policy() -> None:
    """Each default of the policy schema reads back as the model's own default."""
    document = policy_schema()
    stated = {k: v["default"] for k, v in document["properties"].items() if "default" in v}
    required = {"name": "p", "rings": [{"name": "all", "select": {"tags": {"Environment": "production"}}}]}
    written = parse_policy(json.dumps({**required, **stated}))
    assert written == parse_policy(json.dumps(required))
    for name, section in document["$defs"].items():
        cls = getattr(policy_model, name, None)
        if cls is None or not all("default" in p for p in section.get("properties", {}).values()):
            continue  # a section with a required field of its own is never defaulted whole
        stated = {k: v["default"] for k, v in section.get("properties", {}).items()}
        assert cls.model_validate(stated) == cls(), name


def test_state_diagram_in_docs_is_current() -> None:
    assert (DOCS / "state-machine.md").read_text() == document()


def test_state_diagram_names_every_transition() -> None:
    text = document()
    for needle in ("probing --> snapshotting: AgentsProbed", "soaking --> awaiting_approval: TimerFired"):
        assert needle in text


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_policy_is_valid(example: Path) -> None:
    policy = load_policy(str(example))
    assert policy.rings


# --- the examples are the real outputs (patchpilot.tools.doc_examples; `make docs` rewrites them) ---

EXAMPLE_BLOCKS = [e for path in doc_examples.doc_files(ROOT) for e in doc_examples.find_examples(path)]


@pytest.mark.parametrize("example", EXAMPLE_BLOCKS, ids=lambda e: e.where)
def test_every_example_in_the_docs_is_the_real_output(example: doc_examples.Example) -> None:
    real = doc_examples.real_text(example, ROOT)
    assert real == example.text, doc_examples.difference(example, real) + "`make docs` rewrites the examples"


def test_the_examples_cover_the_readme_and_the_runbook() -> None:
    where = {e.path.name for e in EXAMPLE_BLOCKS}
    assert {"README.md", "operations.md", "advisories.md"} <= where
    commands = [c.split()[1] for e in EXAMPLE_BLOCKS for c in (*e.setup, *e.commands)]
    assert {"run", "status", "validate", "plan", "advisory"} <= set(commands)


def test_a_stale_example_is_told_with_a_diff_and_rewritten_by_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for entry in ("examples", "tests"):
        (tmp_path / entry).symlink_to(ROOT / entry)
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# x\n")
    page = tmp_path / "docs" / "page.md"
    stale = (
        "Text.\n\n<!-- example -->\n```console\n"
        "$ patchpilot validate --policy examples/policy.yaml\nexamples/policy.yaml: ok\n```\n\nMore text.\n"
    )
    page.write_text(stale)
    monkeypatch.chdir(tmp_path)
    assert doc_examples.main([]) == 1
    out = capsys.readouterr().out
    assert "-examples/policy.yaml: ok\n" in out
    assert "+examples/policy.yaml: ok (policy monthly-fleet; rings staging, production)\n" in out
    assert "1 example differs from the real output" in out
    assert doc_examples.main(["--write"]) == 0
    assert page.read_text() == stale.replace(
        "examples/policy.yaml: ok\n", "examples/policy.yaml: ok (policy monthly-fleet; rings staging, production)\n"
    )
    assert doc_examples.main([]) == 0


def test_a_marker_without_a_console_block_is_refused(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("Text.\n\n<!-- example -->\n```text\nanything\n```\n")
    with pytest.raises(ValueError, match=r"page.md:3: an example marker must be followed by a ```console block"):
        doc_examples.find_examples(page)


def test_an_example_shows_a_non_zero_exit_with_echo(tmp_path: Path) -> None:
    text = doc_examples.session(["patchpilot validate --policy no-such.yaml"], (), ROOT)
    assert text == (
        "$ patchpilot validate --policy no-such.yaml\n"
        "no-such.yaml: (top level): file not found\n1 problem found.\n$ echo $?\n2\n"
    )


def test_virtual_start_makes_run_ids_reproducible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from patchpilot.inventory import load_inventory
    from patchpilot.local_runtime import LocalRuntime

    policy = load_policy(str(ROOT / "examples" / "policy.yaml"))
    instances = load_inventory(str(ROOT / "examples" / "fleet.json"))
    monkeypatch.setenv("PATCHPILOT_VIRTUAL_START", "2026-12-01T00:00:00+00:00")
    first = LocalRuntime.open(tmp_path / "a").start(policy, instances)
    again = LocalRuntime.open(tmp_path / "b").start(policy, instances)
    assert first.run_id == again.run_id
    assert re.fullmatch(r"monthly-fleet-20261211-170000-[0-9a-f]{4}", first.run_id)
    # two runs started in the same second of one state directory still get two ids
    second = LocalRuntime.open(tmp_path / "a").start(policy, instances, at=first.created_at)
    assert second.run_id != first.run_id and second.run_id.startswith("monthly-fleet-20261211-170000-")


def test_a_bad_virtual_start_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from patchpilot.errors import InputError
    from patchpilot.local_runtime import virtual_start

    monkeypatch.delenv("PATCHPILOT_VIRTUAL_START", raising=False)
    assert virtual_start() is None  # the real now: a run id's last part is random
    monkeypatch.setenv("PATCHPILOT_VIRTUAL_START", "2026-12-01")
    with pytest.raises(InputError, match=r"PATCHPILOT_VIRTUAL_START: \(top level\): expected an ISO time with its"):
        virtual_start()


# --- run ids quoted in the docs have the real shape ------------------------------------------------

RUN_ID_SHAPES = {
    # the local runtime: the policy, the run's start in UTC, four hex digits (local_runtime.py)
    "local": re.compile(r"(?P<policy>[a-z0-9][a-z0-9-]*?)-(?P<at>\d{8}-\d{6})-[0-9a-f]{4}"),
    # a scheduled run on the clouds: the policy and its window's start, local time (triggers.scheduled_run_id)
    "cloud": re.compile(r"(?P<policy>[a-z0-9][a-z0-9-]*?)-(?P<at>\d{8}-\d{4})"),
    # an emergency run: the policy, the CVE, the merge window's start in UTC (advisories.decide)
    "emergency": re.compile(r"(?P<policy>[a-z0-9][a-z0-9-]*?)-emergency-CVE-\d{4}-\d{4,}-(?P<at>\d{8}-\d{4})"),
}
DATED_TOKEN = re.compile(r"[A-Za-z0-9_.-]*-20\d{6}\b[A-Za-z0-9_.-]*")


def quoted_run_ids() -> list[tuple[str, str]]:
    found = []
    for path in doc_examples.doc_files(ROOT):
        for token in DATED_TOKEN.findall(path.read_text(encoding="utf-8")):
            found.append((path.name, re.sub(r"\.(html|md|csv|json)$", "", token)))
    return found


def run_id_kind(run_id: str) -> tuple[str, re.Match[str]] | None:
    """Which of the code's shapes `run_id` has (a retry's and a follow-up's suffixes aside)."""
    base = re.sub(r"(-followup-[0-9a-f]{8})?(-retry-\d+)?$", "", run_id)
    for kind, shape in RUN_ID_SHAPES.items():
        if match := shape.fullmatch(base):
            return kind, match
    return None


def test_every_run_id_quoted_in_the_docs_has_the_real_shape() -> None:
    quoted = quoted_run_ids()
    assert len(quoted) > 5
    wrong = [(page, run_id) for page, run_id in quoted if run_id_kind(run_id) is None]
    assert not wrong, f"not the shape of a run id: {wrong}"


def test_run_ids_of_the_example_policies_start_at_one_of_their_windows() -> None:
    policies = {}
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        policy = load_policy(str(path))
        policies.setdefault(policy.name, policy)
    checked = 0
    for page, run_id in quoted_run_ids():
        kind, match = run_id_kind(run_id) or ("", None)
        policy = policies.get(match["policy"]) if match else None
        if match is None or policy is None or policy.schedule is None or kind == "emergency":
            continue
        if kind == "local":
            at = datetime.strptime(match["at"], "%Y%m%d-%H%M%S").replace(tzinfo=UTC)
        else:
            at = datetime.strptime(match["at"], "%Y%m%d-%H%M").replace(tzinfo=policy.schedule.zone)
        (window,) = policy.schedule.windows(at - timedelta(minutes=1), 1)
        assert window.start == at, f"{page}: {run_id} does not start at a window of {policy.name}"
        checked += 1
    assert checked >= 2


def test_the_run_id_shapes_are_the_code_s(tmp_path: Path) -> None:
    from patchpilot.advisories.decide import emergency_run_id, follow_up_run_id
    from patchpilot.engine.retry import next_retry_id
    from patchpilot.triggers import scheduled_run_id

    def kind(run_id: str) -> str:
        found = run_id_kind(run_id)
        assert found is not None, run_id
        return found[0]

    policy = load_policy(str(ROOT / "examples" / "policy.yaml"))
    assert policy.schedule is not None
    (window,) = policy.schedule.windows(datetime(2026, 12, 1, tzinfo=UTC), 1)
    assert kind(scheduled_run_id(policy, window)) == "cloud"
    emergency = emergency_run_id(policy, "CVE-2025-0001", datetime(2026, 12, 3, 9, 41, tzinfo=UTC))
    assert kind(emergency) == kind(follow_up_run_id(emergency, ["i-1", "i-2"])) == "emergency"
    assert kind(next_retry_id(next_retry_id(scheduled_run_id(policy, window), []), [])) == "cloud"
    fleet = str(ROOT / "examples" / "fleet.json")
    ran = CliRunner().invoke(
        main, ["run", "--policy", policy_path(), "--inventory", fleet, "--state-dir", str(tmp_path), "--json"]
    )
    assert kind(json.loads(ran.stdout)["run_id"]) == "local"


def policy_path() -> str:
    return str(ROOT / "examples" / "policy.yaml")


# --- exit codes: the prose agrees with docs/operations.md's table, and the table with the code ------

EXIT_CODE = re.compile(r"\bexit(?:s| status| code)?:?\s+[`*]*(\d+)\b", re.IGNORECASE)
MENTION = re.compile(r"`([^`\n]+)`|\bpatchpilot (\w[\w-]*)")


def exit_table() -> dict[str, set[int]]:
    """docs/operations.md's "Exit codes" table: each command and the codes it may exit with."""
    section = (DOCS / "operations.md").read_text(encoding="utf-8").split("## Exit codes", 1)[1]
    lines = section.splitlines()
    first = next(n for n, line in enumerate(lines) if line.startswith("| "))
    rows = [line for line in itertools.takewhile(lambda line: line.startswith("| "), lines[first:])]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    codes = [int(c) for c in header[1:]]
    table: dict[str, set[int]] = {}
    for row in rows[2:]:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        used = {code for code, cell in zip(codes, cells[1:], strict=True) if cell}
        for command in re.findall(r"`([^`]+)`", cells[0]):
            table[command.split()[0]] = table.get(command.split()[0], set()) | used
    return table


def test_the_exit_code_table_is_the_code_s() -> None:
    from patchpilot import cli, cli_aws, cli_azure, cli_common, cli_compliance, cli_maintenance

    def constants(*modules: object) -> set[int]:
        return {v for m in modules for k, v in vars(m).items() if k.startswith("EXIT_") and isinstance(v, int)}

    interrupted = {130}  # Ctrl-C, from `patchpilot run` (sys.exit(130))
    table = exit_table()
    expected = {
        "run": constants(cli, cli_common) | interrupted,
        "approve": constants(cli, cli_common) | interrupted,
        "status": constants(cli, cli_common),
        "advisory": constants(cli, cli_common),
        "compliance": constants(cli_compliance, cli_common),
        "maintenance": constants(cli_maintenance, cli_common),
        "aws": constants(cli_aws, cli_common),
        "azure": constants(cli_azure, cli_common),
        "validate": {0, cli_common.EXIT_INVALID_INPUT},
        "report": {0, cli_common.EXIT_INVALID_INPUT},
    }
    assert {command: table[command] for command in expected} == expected


def test_the_run_exit_codes_are_the_statuses_exits() -> None:
    """docs/operations.md's table of `patchpilot run`'s codes: each row's status exits with its code."""
    from types import SimpleNamespace

    from patchpilot.cli import status_exit
    from patchpilot.engine.run import Status

    text = (DOCS / "operations.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", text.split("## What happens in a run")[0], re.MULTILINE)
    statuses = set(get_args(Status))
    seen = set()
    for code, meaning in rows:
        said = meaning.split(": ", 1)[0]  # the statuses the row is about, not those it contrasts with
        named = [s for s in re.findall(r"`(\w+)`", said) if s in statuses]
        for status in named:
            assert status_exit(SimpleNamespace(status=status)) == int(code), f"{status} is not exit {code}"
            seen.add(status)
    assert seen == statuses - {"running"}


def exit_mentions() -> list[tuple[str, int, str]]:
    """Each "exit N" of the prose (fenced blocks and code spans aside): the page, N and the
    clause before it."""
    found = []
    for path in doc_files_with_prose():
        text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)
        spans = [m.span() for m in re.finditer(r"`[^`\n]*`", text)]
        for match in EXIT_CODE.finditer(text):
            if any(start < match.start() < end for start, end in spans):
                continue
            before = text[: match.start()]
            cut = max(before.rfind(". "), before.rfind("\n\n"), before.rfind(" | "))
            found.append((path.name, int(match[1]), before[cut + 1 :]))
    return found


def doc_files_with_prose() -> list[Path]:
    return doc_examples.doc_files(ROOT)


def test_every_exit_code_named_in_the_prose_is_the_table_s() -> None:
    from patchpilot.cli import status_exit
    from patchpilot.engine.run import Status

    table = exit_table()
    statuses = set(get_args(Status))
    every = set().union(*table.values())
    mentions = exit_mentions()
    assert len(mentions) > 15
    wrong = []
    for page, code, clause in mentions:
        named = [m[1] or m[2] for m in MENTION.finditer(clause)]
        relevant = [n for n in named if n in statuses or n.split()[0] in table]
        if not relevant:
            ok = code in every
        elif relevant[-1] in statuses:
            from types import SimpleNamespace

            ok = status_exit(SimpleNamespace(status=relevant[-1])) == code
        else:
            ok = code in table[relevant[-1].split()[0]]
        if not ok:
            wrong.append(f"{page}: exit {code} after {clause[-80:]!r}")
    assert not wrong, "\n".join(wrong)
