"""Offline checks of the Bicep templates, where no Bicep compiler can be installed.

1. Syntax: every .bicep file under infra/azure parses with pycep-parser (the grammar checkov
   uses); a parse error is reported with its file, line and column.
2. Module wiring, which `bicep build` would check: every local module file exists, every
   parameter passed is declared by the module, every parameter without a default is passed.
3. Policies: `checkov --framework bicep` on the directory. Checkov exits 0 when it cannot parse
   a file, so its JSON report is read: parsing errors, failed checks and skips without a reason
   all fail this check.

Run with the interpreter of the infrastructure venv (pycep and checkov live there):
    .venv-iac/bin/python infra/azure/check_bicep.py [DIRECTORY]   # default: infra/azure
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent  # or the directory given on the command line
SKIP = re.compile(r"checkov:skip=([A-Z0-9_]+)(:?)(.*)")


def parse(path: Path) -> dict[str, Any]:
    from pycep import BicepParser  # from the infrastructure venv

    parsed: dict[str, Any] = BicepParser().parse(text=path.read_text(encoding="utf-8"))
    return parsed


def _module_config(declaration: dict[str, Any]) -> dict[str, Any]:
    """The body of a module, under its loop and condition wrappers."""
    config: dict[str, Any] = declaration.get("config") or {}
    while "params" not in config and isinstance(config.get("config"), dict):
        config = config["config"]
    return config


def module_problems(path: Path, parsed: dict[str, Any], all_parsed: dict[Path, dict[str, Any]]) -> list[str]:
    problems = []
    for name, declaration in (parsed.get("modules") or {}).items():
        if declaration.get("type") != "local":
            continue  # registry modules cannot be resolved offline
        target = (path.parent / declaration["detail"]["path"]).resolve()
        where = f"{path.relative_to(ROOT)}: module {name}"
        if target not in all_parsed:
            problems.append(f"{where}: {declaration['detail']['path']} is not a .bicep file here")
            continue
        declared = all_parsed[target].get("parameters") or {}
        passed = set((_module_config(declaration).get("params") or {}).keys())
        for unknown in sorted(passed - set(declared)):
            problems.append(f"{where}: passes {unknown!r}, which {target.name} does not declare")
        required = {p for p, spec in declared.items() if spec.get("default") is None}  # `= null` is not used
        for missing in sorted(required - passed):
            problems.append(f"{where}: does not pass {missing!r}, which {target.name} requires")
    return problems


def skip_problems(path: Path) -> list[str]:
    problems = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        found = SKIP.search(line)
        if found and (not found.group(2) or not found.group(3).strip()):
            problems.append(f"{path.relative_to(ROOT)}:{number}: checkov skip {found.group(1)} without a reason")
    return problems


def checkov_problems() -> list[str]:
    checkov = Path(sys.executable).parent / "checkov"
    command = [str(checkov), "-d", str(ROOT), "--framework", "bicep", "--skip-download", "--compact", "-o", "json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    try:
        reports = json.loads(result.stdout)
    except ValueError:
        return [f"checkov printed no JSON report (exit {result.returncode}): {result.stderr.strip()[-2000:]}"]
    problems = []
    for report in reports if isinstance(reports, list) else [reports]:
        summary, results = report["summary"], report["results"]
        print(
            f"checkov {summary['checkov_version']}: {summary['passed']} passed, {summary['failed']} failed, "
            f"{summary['skipped']} skipped, {summary['parsing_errors']} parsing errors, "
            f"{summary['resource_count']} resources"
        )
        problems += [f"checkov could not parse {error}" for error in results.get("parsing_errors") or []]
        if summary["parsing_errors"] and not results.get("parsing_errors"):
            problems.append(f"checkov reports {summary['parsing_errors']} parsing errors")
        for check in results.get("failed_checks") or []:
            problems.append(
                f"{check['file_path'].lstrip('/')}:{check['file_line_range'][0]}: {check['check_id']} "
                f"{check['check_name']} ({check['resource']}): fix it or skip it with its reason"
            )
    return problems


def main() -> int:
    global ROOT
    if len(sys.argv) > 1:
        ROOT = Path(sys.argv[1]).resolve()
    files = sorted(ROOT.rglob("*.bicep"))
    problems: list[str] = []
    parsed: dict[Path, dict[str, Any]] = {}
    for path in files:
        try:
            parsed[path.resolve()] = parse(path)
        except Exception as error:  # pycep raises lark's UnexpectedInput family, among others
            problems.append(f"{path.relative_to(ROOT)}: does not parse: {str(error).strip().splitlines()[0]}")
    for path in files:
        if path.resolve() in parsed:
            problems += module_problems(path, parsed[path.resolve()], parsed)
        problems += skip_problems(path)
    print(f"pycep: {len(parsed)} of {len(files)} Bicep files parse")
    problems += checkov_problems()
    for problem in problems:
        print(f"  {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
