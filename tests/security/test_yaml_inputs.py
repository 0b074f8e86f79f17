"""YAML and JSON that cannot hurt the process reading them: every YAML input (policies, from a
file, S3 or a blob, and the cloud CLIs' policy reads) goes through `patchpilot.inputs.parse_yaml`,
whose loader bounds what aliases expand to and refuses recursive ones, as a validation error
that names the file and the alias; too-deep nesting in YAML or JSON (inventories, events) is a
validation error too, not a RecursionError."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from patchpilot.errors import InputError
from patchpilot.inputs import MAX_ALIAS_NODES, parse_json, parse_yaml
from patchpilot.policy import load_policy

# "Billion laughs": nine levels of nine aliases, 9^9 (387 million) strings once expanded.
ALIAS_BOMB = "a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n" + "".join(
    f"{name}: &{name} [{','.join(['*' + below] * 9)}]\n" for below, name in zip("abcdefgh", "bcdefghi", strict=True)
)


def test_yaml_alias_bomb_is_refused(tmp_path: Path) -> None:
    assert len(ALIAS_BOMB) < 350
    path = tmp_path / "policy.yaml"
    path.write_text(ALIAS_BOMB)

    tracemalloc.start()
    try:
        with pytest.raises(InputError) as refused:
            load_policy(str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    expected = "not valid YAML: aliases expand to more than 10,000 nodes (at *d)"
    assert str(refused.value) == f"{path}:5:8: (top level): {expected}"
    assert peak < 100 * 1024 * 1024  # in fact some kilobytes: composing stops at the alias


def test_recursive_yaml_alias_is_refused() -> None:
    with pytest.raises(InputError, match=r"^p.yaml:2:27: .*alias \*ring is inside the node it names \(recursive\)$"):
        parse_yaml("rings:\n  - &ring {name: a, next: *ring}\n", "p.yaml")


def test_deeply_nested_yaml_is_refused_not_a_crash() -> None:
    with pytest.raises(InputError, match=r"^deep.yaml: \(top level\): not valid YAML: nested too deeply$"):
        parse_yaml("[" * 5000 + "]" * 5000, "deep.yaml")


def test_deeply_nested_json_inventory_is_refused_not_a_crash() -> None:
    with pytest.raises(InputError, match=r"^inventory.json: \(top level\): not valid JSON: nested too deeply$"):
        parse_json("[" * 100_000 + "]" * 100_000, "inventory.json")


def test_aliases_within_the_bound_still_work() -> None:
    selector = "[" + ",".join(["x"] * 98) + "]"  # 99 nodes, 100 aliases of it: 9,900 nodes
    text = f"base: &s {selector}\n" + "".join(f"k{n}: *s\n" for n in range(MAX_ALIAS_NODES // 100))
    document = parse_yaml(text, "ok.yaml")
    assert document.data["k0"] == ["x"] * 98 and len(document.data) == 1 + MAX_ALIAS_NODES // 100
