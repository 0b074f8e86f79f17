"""The Lambda artifact's bytecode is what a cold start runs: SAM zips every file with no date and
Lambda extracts them into read-only /var/task, so bytecode checked against its source's timestamp
is thrown away there and every module compiled again at every cold start (infra/aws/check_package.py
`as_extracted` reproduces those conditions for itself and bench/bench_cold_start.py)."""

from __future__ import annotations

import compileall
import importlib.util
import os
import py_compile
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def check_package() -> ModuleType:
    """infra/aws/check_package.py, loaded by its path (infra/azure has a module of the same name)."""
    sys.path.insert(0, str(ROOT / "infra" / "aws"))  # its cfn_template
    spec = importlib.util.spec_from_file_location("aws_check_package", ROOT / "infra" / "aws" / "check_package.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _imported_from(artifact: Path) -> str:
    """What `m.WHERE` is when a cold start imports m from `artifact` (no bytecode written)."""
    probe = f"import sys; sys.path.insert(0, {str(artifact)!r}); import m; print(m.WHERE)"
    return subprocess.run(
        [sys.executable, "-I", "-S", "-B", "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()


def _artifact_compiled(tmp_path: Path, mode: py_compile.PycInvalidationMode) -> Path:
    """An artifact of one module compiled in `mode`, whose source then changes to text of the same
    size and date: which of the two a cold start runs shows whether it used the bytecode."""
    artifact = tmp_path / mode.name
    artifact.mkdir()
    source = artifact / "m.py"
    source.write_text("WHERE = 'bytecode'\n")
    assert compileall.compile_dir(artifact, quiet=1, invalidation_mode=mode)
    dated = source.stat()
    source.write_text("WHERE = 'compiled'\n")
    os.utime(source, ns=(dated.st_atime_ns, dated.st_mtime_ns))
    return artifact


def test_bytecode_checked_by_timestamp_is_thrown_away_once_lambda_has_extracted_it(
    check_package: ModuleType, tmp_path: Path
) -> None:
    artifact = _artifact_compiled(tmp_path, py_compile.PycInvalidationMode.TIMESTAMP)
    assert _imported_from(artifact) == "bytecode"  # where it was built
    assert check_package.uncompiled_modules(artifact, sys.implementation.cache_tag) == ["m.py"]
    check_package.as_extracted(artifact)
    assert _imported_from(artifact) == "compiled"  # compiled again, at every cold start


def test_bytecode_compiled_as_the_makefile_compiles_it_is_what_a_cold_start_runs(
    check_package: ModuleType, tmp_path: Path
) -> None:
    artifact = _artifact_compiled(tmp_path, py_compile.PycInvalidationMode.UNCHECKED_HASH)
    assert check_package.uncompiled_modules(artifact, sys.implementation.cache_tag) == []
    check_package.as_extracted(artifact)
    assert _imported_from(artifact) == "bytecode"


def test_the_lambda_build_compiles_the_whole_artifact_unchecked_by_the_runtime_s_python() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "--invalidation-mode unchecked-hash" in makefile and "--no-compile" in makefile
    assert "sys.version_info[:2] != (3, 11)" in makefile  # the runtime's CPython, or the build stops
    assert "SOURCE_DATE_EPOCH=" in makefile  # the project's wheel dated as nothing: the same bytes every build
