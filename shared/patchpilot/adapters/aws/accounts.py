"""The accounts the AWS fleet is in, and the role PatchPilot assumes in each.

`fleet_accounts` is the one list every reader of the fleet walks (discovery, the maintenance
watch): the policy's hand-kept `aws.accounts`, then the member accounts of its
`aws.organization` units, listed from AWS Organizations on each call (ListAccountsForParent,
recursing child units with ListOrganizationalUnitsForParent, paginated, ACTIVE accounts only), so
an account joining or leaving an OU is in or out of the next run. Without either, the current
account (None).

`member_role` is the role assumed in an account: its own `aws.accounts[].role`, else (with an
organization) `arn:aws:iam::<account>:role/<role_name>`, the role the member-role StackSet
deploys (infra/aws/member-role.yaml); an account listed without a role, and any account without
an organization, use the ambient credentials.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from patchpilot.policy.model import AwsOrganization, AwsSettings
from patchpilot.ports import DiscoveryReadRefusedError

from .access import describe_error
from .sessions import ClientFactory

ORGANIZATIONS_PAGE = 20  # ListAccountsForParent and ListOrganizationalUnitsForParent: at most 20 a page
ACTIVE = "ACTIVE"


def fleet_accounts(client: ClientFactory, settings: AwsSettings | None, region: str) -> list[str | None]:
    """The accounts to read, in order: `aws.accounts`, then the organization's members not
    listed there (sorted); `[None]` (the current account) without either. A refused
    Organizations read raises `DiscoveryReadRefusedError` naming the permission."""
    if settings is None or (not settings.accounts and settings.organization is None):
        return [None]
    listed = [a.id for a in settings.accounts]
    members = organization_accounts(client, settings.organization, region) if settings.organization else []
    return list(dict.fromkeys([*listed, *members]))


def organization_accounts(client: ClientFactory, organization: AwsOrganization, region: str) -> list[str]:
    """The ids of the ACTIVE accounts under the organization's units and their child units,
    sorted (suspended, pending-closure and closed accounts are left out)."""
    organizations: Any = client("organizations", None, region)
    found: set[str] = set()
    pending = list(organization.ou)
    seen: set[str] = set()
    while pending:
        parent = pending.pop(0)
        if parent in seen:
            continue
        seen.add(parent)
        for account in _pages(organizations, "list_accounts_for_parent", parent, "Accounts"):
            # `State` replaces the deprecated `Status`; older answers carry only `Status`.
            if (account.get("State") or account.get("Status")) == ACTIVE and account.get("Id"):
                found.add(str(account["Id"]))
        units = _pages(organizations, "list_organizational_units_for_parent", parent, "OrganizationalUnits")
        pending.extend(str(unit["Id"]) for unit in units if unit.get("Id"))
    return sorted(found)


def _pages(organizations: Any, operation: str, parent: str, key: str) -> list[dict[str, Any]]:
    action = "".join(part.title() for part in operation.split("_"))
    try:
        pages = organizations.get_paginator(operation).paginate(
            ParentId=parent, PaginationConfig={"PageSize": ORGANIZATIONS_PAGE}
        )
        return [item for page in pages for item in page.get(key, [])]
    except ClientError as exc:
        said = describe_error(exc)
        missing = f"organizations:{action}"
        raise DiscoveryReadRefusedError(
            f"organization unit {parent}",
            missing,
            f"{action} failed ({said})",
            f"the accounts of aws.organization are not readable: {action} on {parent} failed ({said}) "
            f"(needs {missing})",
        ) from exc


def member_role(settings: AwsSettings | None, account: str) -> str | None:
    """The role ARN assumed in `account` (None: the ambient credentials)."""
    if settings is None:
        return None
    for listed in settings.accounts:
        if listed.id == account:
            return listed.role
    if settings.organization is not None:
        return f"arn:aws:iam::{account}:role/{settings.organization.role_name}"
    return None
