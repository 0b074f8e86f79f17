"""The real fleets a policy names, for the commands that read the clouds directly
(`patchpilot compliance --cloud`, `patchpilot maintenance --cloud`): EC2 + Systems Manager when
the policy has an `aws` section, Azure Compute + Resource Graph when it has an `azure` one."""

from __future__ import annotations

from typing import Protocol

import click

from patchpilot.inventory import Cloud
from patchpilot.policy import Policy
from patchpilot.ports import Clock, DiscoveryResult, MaintenanceSource, PatchAssessor


class CloudFleet(PatchAssessor, MaintenanceSource, Protocol):
    @property
    def cloud(self) -> Cloud: ...

    def discover(self, policy: Policy) -> DiscoveryResult: ...


def cloud_fleets(policy: Policy, clock: Clock) -> list[CloudFleet]:
    """One fleet per cloud section of the policy, AWS first; a ClickException when the extra
    that a cloud needs is not installed, or when the policy names no cloud."""
    fleets: list[CloudFleet] = []
    try:
        if policy.aws is not None:
            from patchpilot.adapters.aws.fleet import Ec2SsmFleet
            from patchpilot.adapters.aws.sessions import AwsSessions

            roles = {a.id: a.role for a in policy.aws.accounts}
            region = policy.aws.regions[0] if policy.aws.regions else _default_aws_region()
            fleets.append(Ec2SsmFleet(AwsSessions(roles), clock, default_region=region))
        if policy.azure is not None:
            from patchpilot.adapters.azure.fleet import fleet_for_policy

            fleets.append(fleet_for_policy(policy, clock))
    except ImportError as exc:
        raise click.ClickException(f"{exc}: install PatchPilot with the aws and azure extras") from None
    if not fleets:
        raise click.ClickException(f"policy {policy.name} has neither an aws nor an azure section: no cloud to read")
    return fleets


def _default_aws_region() -> str:
    import boto3

    return boto3.Session().region_name or "us-east-1"
