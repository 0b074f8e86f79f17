"""The clouds' fleets, built one way for every caller: the AWS and Azure runtimes (Lambda,
Functions) and the commands that read the clouds directly (`patchpilot compliance --cloud`,
`patchpilot maintenance --cloud`). Each builder imports its cloud's SDK when called: a runtime
that never touches the fleet never pays for it.

The region the AWS fleet reads when the policy names none (`aws.regions`) is the region the caller
runs in: the Lambda's own (`AWS_REGION`), or the one the CLI's AWS configuration names
(`AWS_REGION`, `AWS_DEFAULT_REGION`, the profile). The CLI used to fall back to us-east-1 when none
was configured, reading a region nobody chose and reporting its machines as the policy's; it now
says what to set, as `patchpilot aws sync` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from patchpilot.policy import Policy
from patchpilot.ports import Clock, CloudFleet

if TYPE_CHECKING:
    from patchpilot.adapters.aws.fleet import Ec2SsmFleet
    from patchpilot.adapters.aws.sessions import ClientFactory
    from patchpilot.adapters.aws.wake_events import WakeScope
    from patchpilot.adapters.azure.clients import AzureClients
    from patchpilot.adapters.azure.fleet import AzureFleet


class NoRegionError(ValueError):
    """The policy names no AWS region and none is configured where PatchPilot runs."""


def aws_default_region(policy: Policy, configured: str | None) -> str:
    """The AWS fleet's default region: the region the caller runs in (`configured`), else the
    policy's first (it reads only the policy's regions then); NoRegionError, saying what to set,
    when neither names one."""
    if configured:
        return configured
    if policy.aws is not None and policy.aws.regions:
        return policy.aws.regions[0]
    raise NoRegionError(
        f"policy {policy.name} names no aws.regions and no AWS region is configured here: "
        "set aws.regions in the policy, or AWS_REGION (or AWS_DEFAULT_REGION, or the profile's region)"
    )


def aws_fleet(
    clients: ClientFactory,
    clock: Clock,
    region: str,
    *,
    override_bucket: str | None = None,
    wake: WakeScope | None = None,
) -> Ec2SsmFleet:
    """EC2 + Systems Manager through `clients`; `region` is read when the policy names none, and
    holds the override bucket (the Lambda's own region). `wake`: the deployment's waker tells the
    worker when steps end, so the steps of the machines it hears from are polled less often
    (`Ec2SsmFleet`)."""
    from patchpilot.adapters.aws.fleet import Ec2SsmFleet

    return Ec2SsmFleet(clients, clock, override_bucket=override_bucket, default_region=region, wake=wake)


def azure_fleet(
    clients: AzureClients, clock: Clock, policy: Policy | None = None, *, woken_subscription: str | None = None
) -> AzureFleet:
    """Azure Compute + Resource Graph through `clients`. With the policy, Arc servers are patched
    without a snapshot when it says so (`azure.patch_without_rollback`); the runtime's fleet is
    built without one, and each TakeSnapshots carries the policy's choice. `woken_subscription`:
    the deployment's wake-ups hear that subscription's ARM events, so the steps they end are polled
    less often on its VMs (`AzureFleet`)."""
    from patchpilot.adapters.azure.fleet import AzureFleet

    settings = policy.azure if policy is not None else None
    lenient = bool(settings and settings.arc and settings.patch_without_rollback)
    return AzureFleet(clients, clock, patch_without_rollback=lenient, woken_subscription=woken_subscription)


def configured_aws_region() -> str | None:
    """The region the local AWS configuration names (environment, profile); None without one,
    or without boto3 (the aws extra)."""
    try:
        import boto3
    except ImportError:
        return None
    region: str | None = boto3.Session().region_name
    return region


def aws_sessions(policy: Policy) -> ClientFactory:
    """The CLI's AWS clients: the local credentials, assuming each account's role the policy names
    (`aws.accounts`, the member role of `aws.organization`). ImportError without the aws extra."""
    from patchpilot.adapters.aws.accounts import member_role
    from patchpilot.adapters.aws.sessions import AwsSessions

    settings = policy.aws
    return AwsSessions(role_of=lambda account: member_role(settings, account))


def azure_clients() -> AzureClients:
    """The CLI's Azure clients (DefaultAzureCredential). ImportError without the azure extra."""
    import azure.mgmt.maintenance  # noqa: F401  (the whole extra is there, not only azure-core)

    from patchpilot.adapters.azure.clients import AzureClients

    return AzureClients()


def cloud_fleets(policy: Policy, clock: Clock) -> list[CloudFleet]:
    """One fleet per cloud section of the policy, AWS first (the CLI's credentials: the policy's
    account roles on AWS, DefaultAzureCredential on Azure); a ClickException when the extra that a
    cloud needs is not installed, when no AWS region is known, or when the policy names no cloud."""
    import click  # the command line's: the runtimes build their fleets here without it

    fleets: list[CloudFleet] = []
    try:
        if policy.aws is not None:
            region = aws_default_region(policy, configured_aws_region())
            fleets.append(aws_fleet(aws_sessions(policy), clock, region))
        if policy.azure is not None:
            fleets.append(azure_fleet(azure_clients(), clock, policy))
    except ImportError as exc:
        raise click.ClickException(f"{exc}: install PatchPilot with the aws and azure extras") from None
    except NoRegionError as exc:
        raise click.ClickException(str(exc)) from None
    if not fleets:
        raise click.ClickException(f"policy {policy.name} has neither an aws nor an azure section: no cloud to read")
    return fleets
