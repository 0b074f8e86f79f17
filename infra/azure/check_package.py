"""Packaging check of the Function App: build the package as a remote build does and index it.

1. The files `func azure functionapp publish` would upload: the repository's files (tracked or
   not ignored by git) minus `.funcignore`.
2. What the platform's remote build runs in the package's root:
   `pip install -r requirements.txt --target .python_packages/lib/site-packages`.
3. A clean interpreter (no site-packages, no environment: no app setting at all) that sees only
   the package imports `function_app` and indexes it as the worker does; the functions found must
   be the expected ones. Prints the package's size and the cold import time.
4. The same with `PATCHPILOT_FUNCTIONS=http` and `=worker`, as the two Function Apps of
   infra/azure/main.bicep set it: the HTTP app indexes the HTTP functions only.

Exit status 1 when a step fails. Needs the package index (as the remote build does).
"""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HTTP_FUNCTIONS = ["approve", "run_status", "slack_interaction"]
EXPECTED = [
    "advisory",
    "approve",
    "post_maintenance",
    "pre_maintenance",
    "run_status",
    "slack_interaction",
    "step_worker",
    "timer",
    "wake_up",
]
SITE = Path(".python_packages") / "lib" / "site-packages"
BY_SETTING = {
    "http": HTTP_FUNCTIONS,
    "worker": [name for name in EXPECTED if name not in HTTP_FUNCTIONS],
}
INDEX = "import function_app; print(sorted(f.get_function_name() for f in function_app.app.get_functions()))"


def ignore_patterns() -> list[str]:
    lines = (ROOT / ".funcignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def ignored(relative: str, patterns: list[str]) -> bool:
    """`.funcignore` (gitignore syntax, as far as the file uses it): a name pattern matches any
    component of the path; a pattern ending in / only folders."""
    parts = relative.split("/")
    for pattern in patterns:
        folder_only = pattern.endswith("/")
        name = pattern.rstrip("/")
        components = parts[:-1] if folder_only else parts
        if any(fnmatch.fnmatch(part, name) for part in components):
            return True
    return False


def package_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    patterns = ignore_patterns()
    return sorted(path for path in listed if (ROOT / path).is_file() and not ignored(path, patterns))


def clean_python(app: Path, code: str, settings: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = getattr(sys, "_base_executable", sys.executable)
    prelude = f"import sys; sys.path[:0] = [{str(app)!r}, {str(app / SITE)!r}]; "
    return subprocess.run(
        [base, "-I", "-S", "-c", prelude + code],
        cwd=app,
        env={"PATH": "/usr/bin:/bin", **(settings or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def main() -> int:
    files = package_files()
    with tempfile.TemporaryDirectory() as tmp:
        app = Path(tmp) / "app"
        for relative in files:
            target = app / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / relative, target)
        source = sum((app / f).stat().st_size for f in files)
        print(f"package: {len(files)} files, {source / 2**10:.0f} KiB before the build")
        build = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "-r", "requirements.txt", "--target", str(SITE)],
            cwd=app,
            capture_output=True,
            text=True,
        )
        if build.returncode != 0:
            print("  FAIL pip install -r requirements.txt:", build.stdout, build.stderr, sep="\n")
            return 1
        size = sum(f.stat().st_size for f in (app / SITE).rglob("*") if f.is_file())
        print(f"  remote-build equivalent: {size / 2**20:.1f} MiB in {SITE}")
        started = time.perf_counter()
        check = clean_python(app, INDEX)
        seconds = time.perf_counter() - started
        if check.returncode != 0:
            print(f"  FAIL import function_app: {check.stderr.strip().splitlines()[-1] if check.stderr else '?'}")
            return 1
        found = check.stdout.strip().splitlines()[-1]
        if found != repr(EXPECTED):
            print(f"  FAIL indexed {found}, expected {EXPECTED}")
            return 1
        print(f"  ok   indexed {found} in a clean interpreter with no settings ({seconds * 1000:.0f} ms with start-up)")
        for value, expected in BY_SETTING.items():
            check = clean_python(app, INDEX, {"PATCHPILOT_FUNCTIONS": value})
            found = check.stdout.strip().splitlines()[-1] if check.returncode == 0 else check.stderr.strip()[-300:]
            if found != repr(expected):
                print(f"  FAIL with PATCHPILOT_FUNCTIONS={value}: indexed {found}, expected {expected}")
                return 1
            print(f"  ok   with PATCHPILOT_FUNCTIONS={value}: indexed {found}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
