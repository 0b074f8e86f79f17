"""How `patchpilot plan` and `patchpilot validate` end: once the output is written, the process
ends without freeing the plan (`cli.ends_the_process`), with the exit status, the output and the
`atexit` functions of any other exit; where the process is not the command's own, the command
returns as any other."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from patchpilot.cli import main

ROOT = Path(__file__).resolve().parents[1]
POLICY = "examples/policy.yaml"
FLEET = "examples/fleet.json"
# Runs the command in a process of its own. The plan (or `validate`'s inventory) says "plan freed"
# ("inventory freed") on stderr when it is freed; an `atexit` function says "at exit" on stdout
# after the command's output.
PROBE = """
import atexit, sys, weakref
sys.argv = ["patchpilot", *{args!r}]
import patchpilot.cli as cli
from patchpilot.cli import main

def noted(function, what):
    def call(*args, **kwargs):
        result = function(*args, **kwargs)
        kept.append(weakref.ref(result, lambda _: print(what, "freed", file=sys.stderr)))
        return result
    return call

class Fleet(list):  # a list that can be weakly referenced
    pass

kept = []
if {standalone!r}:
    cli.plan = noted(cli.plan, "plan")
    if sys.argv[1] == "validate":  # `plan` takes the inventory's list apart into its own
        cli.load_inventory = noted(lambda path, load=cli.load_inventory: Fleet(load(path)), "inventory")
    atexit.register(lambda: print("at exit"))
    main()
else:
    cli.plan = noted(cli.plan, "plan")
    print("returned", main({args!r}, standalone_mode=False))
"""
COMMANDS = [
    ["plan", "--policy", POLICY, "--inventory", FLEET],
    ["plan", "--json", "--policy", POLICY, "--inventory", FLEET],
    ["validate", "--policy", POLICY, "--inventory", FLEET],
    ["validate", "--json", "--policy", POLICY, "--inventory", FLEET],
]


def probe(args: list[str], standalone: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROBE.format(args=args, standalone=standalone)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_the_command_ends_its_process_without_freeing_what_it_built(args: list[str]) -> None:
    ended = probe(args)
    assert ended.returncode == 0, ended.stderr
    assert "freed" not in ended.stderr
    # the same output as the command run in-process, then the atexit function's line
    same = CliRunner().invoke(main, args)
    assert same.exit_code == 0, same.output
    assert ended.stdout == same.stdout + "at exit\n"
    assert ended.stderr == same.stderr


def test_the_command_returns_where_click_is_not_standalone() -> None:
    returned = probe(["plan", "--policy", POLICY, "--inventory", FLEET], standalone=False)
    assert returned.returncode == 0, returned.stderr
    assert returned.stdout.endswith("returned None\n")
    assert "plan freed" in returned.stderr  # as the command returned


def test_invalid_input_still_exits_2_with_every_problem(tmp_path: Path) -> None:
    inventory = tmp_path / "fleet.json"
    inventory.write_text('{"instances": [{"id": "i-1", "cloud": "gcp", "region": "r", "os": "linux"}]}')
    failed = probe(["plan", "--policy", POLICY, "--inventory", str(inventory)])
    assert failed.returncode == 2
    assert failed.stderr.startswith(f"{inventory}: instances[0].cloud: expected 'aws' or 'azure', got \"gcp\"")
    assert failed.stderr.endswith("1 problem found.\n")
    assert failed.stdout == "at exit\n"
