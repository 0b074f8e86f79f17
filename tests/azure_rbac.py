"""The Azure RBAC actions of ARM requests, and the custom fleet role's actions: the end-to-end
tests check every request a test made against the role of infra/azure."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def arm_action(method: str, path: str) -> str:
    """The Azure RBAC action ARM checks for a request (lower case): `{namespace}/{types}/read`,
    `/write` or `/delete` on a resource or a listing, `{namespace}/{types}/{name}/action` for a
    POST on an action; a Resource Graph query reads."""
    path = path.lower()
    if method == "POST" and path == "/providers/microsoft.resourcegraph/resources":
        return "microsoft.resourcegraph/resources/read"
    namespace, *rest = path.rsplit("/providers/", 1)[1].split("/")
    if method == "POST":
        assert len(rest) % 2 == 1, path
        return "/".join([namespace, *rest[0:-1:2], rest[-1], "action"])
    verb = {"GET": "read", "PUT": "write", "PATCH": "write", "DELETE": "delete"}[method]
    return "/".join([namespace, *rest[0::2], verb])


def fleet_role_actions() -> set[str]:
    """The actions of the custom fleet role, as infra/azure/modules/fleet-access.bicep lists them."""
    text = (ROOT / "infra" / "azure" / "modules" / "fleet-access.bicep").read_text()
    listing = text[text.index("var fleetActions = [") : text.index("\n]\n", text.index("var fleetActions = ["))]
    return {action.lower() for action in re.findall(r"^\s*'([^']+)'", listing, flags=re.MULTILINE)}
