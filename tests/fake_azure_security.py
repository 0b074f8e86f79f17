"""Microsoft Defender for Cloud as Resource Graph shows it: the `securityresources` table of the
fake ARM (tests/fake_arm.py), answered by the fake's KQL (tests/fake_resource_graph.py).

Rows are the recorded ones of tests/fixtures/defender/subassessments.json (the published shape;
fixtures/defender/sources.json names the source of each field), placed on the fake's machines:
`add("CVE-2026-21001", machine_id)` writes the fixture row of that CVE (the first of the fixture
with it) under the machine, as a sub-assessment of "Machines should have vulnerability findings
resolved". `deny()` answers every query 403 AuthorizationFailed, as Resource Graph does when the
identity may not read the table.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from fake_arm import ArmError, FakeArm
from fake_resource_graph import run_kql

FIXTURE = Path(__file__).parent / "fixtures" / "defender" / "subassessments.json"
ASSESSMENT = "1195afff-c881-495e-9bc5-1486211ae03f"  # "Machines should have vulnerability findings resolved"
SUB_ASSESSMENT_TYPE = "microsoft.security/assessments/subassessments"


def recorded_rows() -> list[dict[str, Any]]:
    """The fixture's rows as recorded: `machine` names the VM, `{machine}` stands for its id."""
    rows: list[dict[str, Any]] = json.loads(FIXTURE.read_text())["rows"]
    return rows


class FakeAzureSecurity:
    def __init__(self, arm: FakeArm) -> None:
        self.arm = arm
        self.rows: list[dict[str, Any]] = []
        self.queries: list[str] = []
        self.denied = False
        arm.table("securityresources", self._answer)

    def add(self, cve: str, machine_id: str, **changes: Any) -> dict[str, Any]:
        """The fixture row of `cve` on `machine_id`, its `properties` updated by `changes`
        (timeGenerated="...", status={...})."""
        recorded = next(r for r in recorded_rows() if r["properties"]["id"] == cve)
        properties = json.loads(json.dumps(recorded["properties"]).replace("{machine}", machine_id))
        properties.update(changes)
        name = f"{recorded['name'][:-12]}{len(self.rows) + 1:012d}"
        subscription = machine_id.split("/")[2]
        row = {
            "id": f"{machine_id}/providers/Microsoft.Security/assessments/{ASSESSMENT}/subAssessments/{name}",
            "name": name,
            "type": SUB_ASSESSMENT_TYPE,
            "tenantId": "00000000-0000-0000-0000-00000000aaaa",
            "resourceGroup": machine_id.split("/")[4].lower(),
            "subscriptionId": subscription,
            "properties": properties,
        }
        self.rows.append(row)
        return row

    def deny(self) -> None:
        self.denied = True

    def _answer(self, text: str, subscriptions: list[str] | None) -> list[dict[str, Any]]:
        self.queries.append(text)
        if self.denied:
            raise ArmError(
                403,
                "AuthorizationFailed",
                "The client does not have authorization to perform action 'Microsoft.Security/assessments/read'.",
            )
        found = copy.deepcopy(self.rows)
        if subscriptions:
            wanted = {s.lower() for s in subscriptions}
            found = [r for r in found if r["subscriptionId"].lower() in wanted]
        return run_kql(text, found)


__all__ = ["FakeAzureSecurity", "recorded_rows"]
