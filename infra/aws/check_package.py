"""Packaging check: build the Lambda artifact as `sam build` does and import every handler that
template.yaml names, in a clean interpreter that sees nothing but the artifact.

Also prints each handler module's cold import time against a bare `import boto3` plus
powertools: medians of interleaved runs (bench/bench_cold_start.py adds the first invocation).
Exit status 1 when a handler does not import.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import cfn_template  # beside this file

ROOT = Path(__file__).resolve().parents[2]
# What any powertools handler pays: boto3, and Logger, Metrics and Tracer created (Tracer loads the X-Ray SDK).
BASELINE = (
    "import boto3; from aws_lambda_powertools import Logger, Metrics, Tracer; "
    "Logger(service='b'); Metrics(namespace='b'); Tracer(service='b')"
)
# The same with the garbage collector paused while it loads, as aws_lambda/__init__.py pauses it
# for the handlers: the like-for-like reference for what our own code adds.
BASELINE_GC_PAUSED = f"import gc; gc.disable(); {BASELINE}; gc.freeze(); gc.enable()"


def handlers(template: Path) -> list[str]:
    document = cfn_template.load(template)
    found = []
    for resource in document["Resources"].values():
        if resource.get("Type") == "AWS::Serverless::Function":
            found.append(resource["Properties"]["Handler"])
    return sorted(set(found))


# What SAM's zip gives every file once Lambda has extracted it: no date of its own, so 1980-01-01
# (aws/aws-lambda-builders#924). A .pyc checked against its source's timestamp never matches then.
EXTRACTED_MTIME = 315532800
# Python's flags for bytecode checked against nothing (PEP 552: hash-based, source not checked).
UNCHECKED_HASH = 0b01


def as_extracted(artifact: Path) -> None:
    """Date every file of `artifact` as Lambda's extraction of a SAM zip dates it; imports then run
    with `-B`, as from read-only /var/task, which keeps no bytecode compiled at a cold start."""
    for path in artifact.rglob("*"):
        if path.is_file():
            os.utime(path, (EXTRACTED_MTIME, EXTRACTED_MTIME))


def uncompiled_modules(artifact: Path, tag: str = "cpython-311") -> list[str]:
    """Modules whose bytecode a cold start could not use: no .pyc for the runtime (CPython 3.11),
    or one that Python checks against its source's timestamp (the Makefile compiles `unchecked-hash`)."""
    found = []
    for source in artifact.rglob("*.py"):
        compiled = source.parent / "__pycache__" / f"{source.stem}.{tag}.pyc"
        if not compiled.is_file() or _pyc_flags(compiled) != UNCHECKED_HASH:
            found.append(str(source.relative_to(artifact)))
    return sorted(found)


def _pyc_flags(compiled: Path) -> int:
    """The flags word of a .pyc's header (after the magic number): read, not the whole file."""
    with compiled.open("rb") as header:
        return int.from_bytes(header.read(8)[4:], "little")


def clean_python(artifact: Path, code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a base interpreter with no site-packages, no user site, no environment and no
    bytecode written (/var/task is read-only)."""
    base = getattr(sys, "_base_executable", sys.executable)
    env = {"PATH": "/usr/bin:/bin", "AWS_REGION": "us-east-1", "PYTHONPATH": str(artifact)}
    return subprocess.run(
        [base, "-I", "-S", "-B", "-c", f"import sys; sys.path.insert(0, {str(artifact)!r}); {code}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def import_seconds(artifact: Path, statements: dict[str, str], rounds: int = 7) -> dict[str, float]:
    """Median seconds of each statement in a fresh interpreter. The statements take turns, in
    an order that rotates each round, so that a busy moment of the machine falls on all alike."""
    names = list(statements)
    taken: dict[str, list[float]] = {name: [] for name in names}
    for n in range(rounds + 1):  # the first round only warms the page cache
        for name in names[n % len(names) :] + names[: n % len(names)]:
            code = f"import time; t = time.perf_counter(); {statements[name]}; print(time.perf_counter() - t)"
            result = clean_python(artifact, code)
            if result.returncode != 0:
                raise RuntimeError(result.stderr.strip().splitlines()[-1] if result.stderr else "import failed")
            if n:
                taken[name].append(float(result.stdout.strip()))
    return {name: statistics.median(times) for name, times in taken.items()}


def build_artifact(artifact: Path) -> subprocess.CompletedProcess[str]:
    """`sam build`'s makefile target for the functions (they share one artifact)."""
    return subprocess.run(
        [
            "make",
            "--no-print-directory",
            "build-WorkerFunction",
            f"ARTIFACTS_DIR={artifact}",
            f"PYTHON={sys.executable}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ},
    )


def stale_modules(artifact: Path) -> list[str]:
    """Modules of the artifact's `patchpilot` that the source no longer has: a wheel built over a
    setuptools build folder left by an earlier build would carry them (the Makefile cleans it)."""
    source = ROOT / "shared" / "patchpilot"
    built = {p.relative_to(artifact / "patchpilot") for p in (artifact / "patchpilot").rglob("*.py")}
    return sorted(f"patchpilot/{p}" for p in built if not (source / p).is_file())


def main() -> int:
    names = handlers(ROOT / "template.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        artifact = Path(tmp) / "artifact"
        build = build_artifact(artifact)
        if build.returncode != 0:
            print(build.stdout, build.stderr, sep="\n")
            return 1
        size = sum(f.stat().st_size for f in artifact.rglob("*") if f.is_file())
        print(f"artifact: {size / 2**20:.1f} MiB unzipped, handlers: {', '.join(names)}")
        failed = 0
        if stale := stale_modules(artifact):
            failed += 1
            print(f"  FAIL the artifact holds modules the source does not: {', '.join(stale)}")
        if uncompiled := uncompiled_modules(artifact):
            failed += 1
            print(f"  FAIL {len(uncompiled)} modules without bytecode Lambda can use, e.g. {', '.join(uncompiled[:5])}")
        as_extracted(artifact)
        imports = {"baseline": BASELINE, "paused": BASELINE_GC_PAUSED}
        for name in names:
            module, _, function = name.rpartition(".")
            check = clean_python(artifact, f"import {module} as m; assert callable(m.{function})")
            if check.returncode != 0:
                failed += 1
                print(f"  FAIL {name}: {check.stderr.strip().splitlines()[-1] if check.stderr else '?'}")
                continue
            imports[name] = f"import {module}"
        seconds = import_seconds(artifact, imports)
        baseline, paused = seconds.pop("baseline"), seconds.pop("paused")
        print(
            f"  baseline (boto3 + powertools): {baseline * 1000:.0f} ms, with the collector paused"
            f" {paused * 1000:.0f} ms (medians of 7 interleaved runs)"
        )
        for name, took in seconds.items():
            print(
                f"  ok   {name}: cold import {took * 1000:.0f} ms ({took / baseline:.2f} x baseline,"
                f" {took / paused:.2f} x the paused one)"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
