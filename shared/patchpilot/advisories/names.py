"""The names an advisory may ask PatchPilot to install, and nothing else: a Windows update
(`KB5048661`) or a package name in its distribution's syntax. Pure.

A fix from an advisory becomes a Patch Manager `ApprovedPatches` entry, an Azure
`packageNameMasksToInclude` mask and, on the machine, an argument of the package manager run as
root. So a glob (`*`, `?`, `[`) would select packages the advisory does not name (`*`: every
one), whitespace or a shell metacharacter would make one name several words or a command, and a
leading `-` an option. Advisories are refused for them, with the field named. (A policy's own
`patches.include`, written by an operator, may hold globs: this module does not judge it.)

Today a fix is a name without a version (a PatchPilot advisory's `fixes`, an Inspector finding's
`vulnerablePackages[].name`): what is installed is the version the distribution publishes.
"""

from __future__ import annotations

import json
import re
from typing import Literal

# The syntax a package name must have: Debian's (Debian, Ubuntu: Debian Policy 5.6.1), RPM's
# (Amazon Linux, RHEL and its rebuilds, SUSE), or either (`any`) when the advisory does not say
# which distribution it is about (a PatchPilot advisory names none).
NameSyntax = Literal["deb", "rpm", "any"]

_KB = re.compile(r"KB\d{6,8}", re.IGNORECASE)
_DEB = re.compile(r"[a-z0-9][a-z0-9+.-]+")
_RPM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_RPM_CHARACTERS = re.compile(r"[A-Za-z0-9._+-]")
_GLOB = "*?["
_RULES = {
    "deb": "Debian package names are lowercase letters, digits and + . -, two at least, the first a letter or a digit",
    "rpm": "RPM package names are letters, digits and . _ + -, the first a letter or a digit",
    "any": (
        "package names are letters, digits and . _ + -, the first a letter or a digit; "
        "Windows updates are KB and 6 to 8 digits"
    ),
}
_DEB_PLATFORMS = ("UBUNTU", "DEBIAN")


def is_kb(fix: str) -> bool:
    """A Windows update id (KB5048661); anything else names a Linux package."""
    return bool(_KB.fullmatch(fix))


def fix_problem(fix: str, syntax: NameSyntax = "any") -> str | None:
    """Why `fix` is not a name an advisory may ask to install, or None when it is one: a KB
    number, or a package name in `syntax`, which starts with a letter or a digit."""
    if is_kb(fix):
        return None
    head = f"{quoted(fix)} is not a package name"
    globs = sorted({c for c in fix if c in _GLOB})
    if globs:
        return f"{head}: a glob ({' '.join(globs)}) selects packages the advisory does not name"
    refused = dict.fromkeys("whitespace" if c.isspace() else quoted(c) for c in fix if not _RPM_CHARACTERS.fullmatch(c))
    if refused:
        verb = "is" if len(refused) == 1 else "are"
        return f"{head}: {', '.join(refused)} {verb} not allowed ({_RULES[syntax]})"
    if fix.startswith("-"):
        return f"{head}: it starts with -, which a package manager reads as an option"
    pattern = _DEB if syntax == "deb" else _RPM  # every Debian name is an RPM name too
    if not pattern.fullmatch(fix):
        return f"{head}: {_RULES[syntax]}"
    return None


def platform_syntax(platform: str) -> NameSyntax:
    """The package name syntax of an Inspector EC2 `platform` (UBUNTU_22_04, AMAZON_LINUX_2023,
    RHEL_9, ...): Debian's on Debian and Ubuntu, RPM's on the other Linux platforms; either on
    Windows or when it is not given."""
    name = platform.upper()
    if name.startswith(_DEB_PLATFORMS):
        return "deb"
    return "any" if not name or name.startswith("WINDOWS") else "rpm"


def quoted(text: str) -> str:
    """In double quotes, control characters escaped: a name from a payload cannot forge a log line."""
    return json.dumps(text, ensure_ascii=False)
