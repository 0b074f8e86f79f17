"""Defender for Cloud's vulnerability findings on machines, read from Resource Graph's
`securityresources` (advisories/azure_sources.py turns the rows into deliveries).

One query per tick whatever the fleet size (a batch per 300 subscriptions, 1,000 rows a page):
the open findings (Unhealthy) of machines (`ServerVulnerability`, `ServerVulnerabilityTvm`) at
or above the policy's minimum severity, on the subscriptions of the fleet; the rows are matched
to the fleet's machines afterwards, not by quoting every machine id into the query. Resource
Graph returns only the rows the identity may read: the fleet role holds
`Microsoft.Security/assessments/read` and `Microsoft.Security/assessments/subAssessments/read`
(infra/azure/modules/fleet-access.bicep). A refused read (401, 403) raises
`SourceNotReadError`, said as "not read: ...", never as "nothing found".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from azure.core.exceptions import HttpResponseError

from patchpilot.advisories.azure_sources import (
    MACHINE_FINDING_TYPES,
    UNHEALTHY,
    SourceNotReadError,
    defender_severities,
)
from patchpilot.policy.model import AdvisorySeverity

from .access import AzureAccess, describe_error
from .graph import kql_list, kql_string, query

SUB_ASSESSMENT_TYPE = "microsoft.security/assessments/subassessments"
REFUSED = (401, 403)


def findings_query(min_severity: AdvisorySeverity) -> str:
    """The open machine vulnerability findings at or above `min_severity` (Defender's labels)."""
    return "\n".join(
        [
            "securityresources",
            f"| where type =~ {kql_string(SUB_ASSESSMENT_TYPE)}",
            f"| where tostring(properties.additionalData.assessedResourceType) in~ {kql_list(MACHINE_FINDING_TYPES)}",
            f"| where tostring(properties.status.code) =~ {kql_string(UNHEALTHY)}",
            f"| where tostring(properties.status.severity) in~ {kql_list(defender_severities(min_severity))}",
            "| project id, properties",
        ]
    )


class AzureDefenderFindings:
    """The Defender source of the Azure advisory reader (`app.azure_advisories.DefenderSource`)."""

    def __init__(self, access: AzureAccess) -> None:
        self.access = access

    def findings(self, subscriptions: Sequence[str], min_severity: AdvisorySeverity) -> list[dict[str, Any]]:
        """The rows of `findings_query` over `subscriptions` (sorted, once each)."""
        wanted = sorted({s.lower() for s in subscriptions})
        if not wanted:
            return []  # no machine: nothing to read, and an empty list would mean every subscription
        try:
            return query(self.access.graph(), findings_query(min_severity), wanted)
        except HttpResponseError as error:  # a 401 is its subclass ClientAuthenticationError
            if error.status_code in REFUSED:
                what = "Defender for Cloud findings (securityresources)"
                raise SourceNotReadError(f"{what}: {describe_error(error)}") from None
            raise
