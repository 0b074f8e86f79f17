"""The locks (docs/building.md): uv.lock for the project, infra/iac/uv.lock for the
infrastructure linters, and the files `make lock` generates from the first: the Function App's
requirements.txt and the Lambda artifact's infra/aws/lambda-requirements.txt.

The first tests read the files with tomllib and `packaging` (no uv needed); the last ones run the
Makefile's `lock-check` with the uv the venv holds (`make setup` installs it: it is in the dev
extra) and are skipped where the `uv` package is missing.
"""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def lock_packages(path: Path) -> dict[str, dict[str, Any]]:
    document = tomllib.loads(path.read_text(encoding="utf-8"))
    return {canonicalize_name(package["name"]): package for package in document["package"]}


def locked_hashes(package: dict[str, Any]) -> set[str]:
    files = [*package.get("wheels", []), *([package["sdist"]] if "sdist" in package else [])]
    return {file["hash"] for file in files}


def requirement_lines(path: Path) -> list[str]:
    """The requirements of a requirements file, continuation lines joined, comments left out."""
    text = path.read_text(encoding="utf-8").replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def declared(extra: str | None = None) -> set[str]:
    """The names pyproject.toml declares: the base dependencies, and those of `extra`."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = [*project["dependencies"], *(project["optional-dependencies"][extra] if extra else [])]
    return {canonicalize_name(Requirement(name).name) for name in names}


def pins(path: Path) -> dict[str, tuple[str, set[str]]]:
    """name -> (version, hashes) of each `name==version [; marker] [--hash=...]` line."""
    found: dict[str, tuple[str, set[str]]] = {}
    for line in requirement_lines(path):
        if line == ".":
            continue
        requirement, *options = line.split(" --hash=")
        parsed = Requirement(requirement)
        (specifier,) = parsed.specifier
        assert specifier.operator == "==", f"{path.name}: {line!r} is not pinned"
        found[canonicalize_name(parsed.name)] = (specifier.version, {option.strip() for option in options})
    return found


def test_the_lock_records_every_dependency_of_pyproject_with_its_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = {
        (canonicalize_name(r.name), frozenset(r.extras), SpecifierSet(str(r.specifier)), extra)
        for extra, names in [(None, project["dependencies"]), *project["optional-dependencies"].items()]
        for r in map(Requirement, names)
    }
    root = lock_packages(ROOT / "uv.lock")["patchpilot"]
    recorded = {
        (
            canonicalize_name(entry["name"]),
            frozenset(entry.get("extras", [])),
            SpecifierSet(entry.get("specifier", "")),
            entry["marker"].split("'")[1] if "marker" in entry else None,
        )
        for entry in root["metadata"]["requires-dist"]
    }
    assert recorded == wanted, "uv.lock does not match pyproject.toml: run `make lock`"


def test_the_function_app_installs_this_project_and_the_locked_versions_of_the_azure_extra() -> None:
    lines = requirement_lines(ROOT / "requirements.txt")
    assert lines[0] == "."  # the project itself, built from shared/ by the remote build
    locked = lock_packages(ROOT / "uv.lock")
    pinned = pins(ROOT / "requirements.txt")
    assert declared("azure") <= set(pinned)
    assert {name: version for name, (version, _) in pinned.items()} == {
        name: locked[name]["version"] for name in pinned
    }
    assert not declared("aws") - declared() & set(pinned)  # boto3 and powertools stay out


def test_the_lambda_artifact_installs_the_locked_versions_by_their_hashes() -> None:
    locked = lock_packages(ROOT / "uv.lock")
    pinned = pins(ROOT / "infra" / "aws" / "lambda-requirements.txt")
    assert declared("aws") <= set(pinned)
    assert "." not in requirement_lines(ROOT / "infra" / "aws" / "lambda-requirements.txt")
    for name, (version, hashes) in pinned.items():
        assert version == locked[name]["version"], name
        assert hashes and hashes <= locked_hashes(locked[name]), name
    assert not declared("azure") - declared() & set(pinned)


def test_the_build_and_the_setup_install_from_the_lock() -> None:
    dry_run = subprocess.run(
        ["make", "-n", "--no-print-directory", "build-WorkerFunction", "setup", "ARTIFACTS_DIR=/x", "UV=uv"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--require-hashes -r infra/aws/lambda-requirements.txt" in dry_run
    assert "--no-deps" in dry_run  # the project's wheel adds no unlocked dependency


def uv_bin() -> str:
    uv = pytest.importorskip("uv", reason="the uv package (make setup installs it) runs `make lock-check`")
    return str(uv.find_uv_bin())


def copy_of_the_locks(tmp_path: Path) -> Path:
    for name in [
        "Makefile",
        "pyproject.toml",
        "uv.lock",
        "requirements.txt",
        "README.md",
        "infra/iac/pyproject.toml",
        "infra/iac/uv.lock",
        "infra/aws/lambda-requirements.txt",
    ]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp_path / name)
    return tmp_path


def lock_check(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-s", "lock-check", f"UV={uv_bin()}"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_lock_check_passes_on_the_committed_files(tmp_path: Path) -> None:
    result = lock_check(copy_of_the_locks(tmp_path))
    assert result.returncode == 0, result.stderr


def test_lock_check_names_a_pyproject_the_lock_does_not_match(tmp_path: Path) -> None:
    folder = copy_of_the_locks(tmp_path)
    pyproject = folder / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"pyyaml>=6.0",', '"pyyaml>=6.0.2",'))
    result = lock_check(folder)
    assert result.returncode != 0
    assert result.stderr.splitlines()[0] == (
        "make lock-check: uv.lock does not match pyproject.toml: run make lock and commit the result"
    )


def test_lock_check_names_an_export_edited_by_hand(tmp_path: Path) -> None:
    folder = copy_of_the_locks(tmp_path)
    requirements = folder / "requirements.txt"
    requirements.write_text(requirements.read_text().replace("\n.\n", "\n.[azure]\n"))
    result = lock_check(folder)
    assert result.returncode != 0
    assert result.stderr.splitlines()[0] == (
        "make lock-check: requirements.txt does not match uv.lock: run make lock and commit the result"
    )
