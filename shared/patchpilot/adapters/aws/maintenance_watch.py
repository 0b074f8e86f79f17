"""Maintenance AWS has scheduled on the fleet and on the policy's databases: the maintenance watch.

`Ec2SsmFleet.upcoming_maintenance` delegates here. Three sources, each read per (account,
region) and each failing on its own: a source that cannot be read in one place (AccessDenied,
throttling that outlasted botocore's retries, no support plan) becomes a `WatchResult.unavailable`
entry naming the source and the place, and everything else is still read.

- EC2 scheduled events: one DescribeInstanceStatus per (account, region) of the fleet, filtered on
  the five event codes with IncludeAllInstances, so only instances with an event are returned
  (a fleet without events costs one call per region, not one per 100 instances). Events whose
  Description starts with "[Completed]" or "[Canceled]" are over (EC2's documented convention).
  Reboots, stops and retirements mean downtime; system-maintenance (power, network) does not.
- RDS pending maintenance (`maintenance_watch.rds`): DescribePendingMaintenanceActions per
  (account, region) of the policy and the fleet; only when an action is pending,
  DescribeDBInstances (and DescribeDBClusters, for Aurora) to tell single-AZ databases, whose
  maintenance means downtime. A db-upgrade means downtime even when Multi-AZ (both copies are
  upgraded together).
- AWS Health scheduled changes (`maintenance_watch.health`): DescribeEvents (category
  scheduledChange, status upcoming or open) per account on the global endpoint (us-east-1),
  then DescribeAffectedEntities, ≤ 10 events a call, mapped onto the fleet's instances and, with
  `rds`, the databases of the policy's accounts and regions. The Health API needs a Business,
  Enterprise On-Ramp or Enterprise support plan: without one (SubscriptionRequiredException) the
  source is reported unavailable, never taken for "nothing scheduled".

Without a `maintenance_watch` section the section's defaults apply: RDS and Health are read.
Item ids are stable across reads: `<source>:<event id or action>:<resource>`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from patchpilot.batching import chunks
from patchpilot.inventory import Instance
from patchpilot.maintenance.model import MaintenanceItem, WatchResult
from patchpilot.policy.model import MaintenanceWatchSettings, Policy
from patchpilot.ports import DiscoveryReadRefusedError

from .access import AwsAccess, Placement, by_placement, error_code, failure, where
from .accounts import fleet_accounts

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_health import HealthClient
    from mypy_boto3_health.type_defs import AffectedEntityTypeDef, EventFilterTypeDef, EventTypeDef
    from mypy_boto3_rds import RDSClient
    from mypy_boto3_rds.type_defs import PendingMaintenanceActionTypeDef


EVENT_CODES = ["instance-reboot", "system-reboot", "system-maintenance", "instance-retirement", "instance-stop"]
DOWNTIME_CODES = frozenset({"instance-reboot", "system-reboot", "instance-retirement", "instance-stop"})
FINISHED_PREFIXES = ("[Completed]", "[Canceled]", "[Cancelled]")
HEALTH_REGION = "us-east-1"  # the Health API's global endpoint
HEALTH_EVENTS_PER_CALL = 10  # DescribeAffectedEntities eventArns
HEALTH_REGIONS_PER_FILTER = 10  # DescribeEvents filter regions
HEALTH_DOWNTIME_WORDS = ("REBOOT", "RETIREMENT", "STOP", "REPLACE")
SINGLE_AZ = "single-AZ database: this maintenance means downtime"
NO_SUPPORT_PLAN = (
    "the AWS Health API needs a Business, Enterprise On-Ramp or Enterprise support plan "
    "(SubscriptionRequiredException): Health scheduled changes are not read"
)


@dataclass
class _Watch:
    items: list[MaintenanceItem] = field(default_factory=list)
    unavailable: list[tuple[str, str]] = field(default_factory=list)

    def failed(self, what: str, placement: Placement, exc: Exception) -> None:
        self.unavailable.append((f"{what} in {where(placement)}", failure(exc)))


def upcoming_maintenance(
    access: AwsAccess, policy: Policy, instances: Sequence[Instance], now: datetime
) -> WatchResult:
    settings = policy.maintenance_watch or MaintenanceWatchSettings()
    fleet_instances = {i.id: i for i in instances if i.cloud == "aws"}
    placed = by_placement(fleet_instances.values(), lambda i: i)
    watch = _Watch()
    for placement, group in placed.items():
        try:
            _ec2_events(access.ec2(placement), placement, {i.id: i for i in group}, now, watch)
        except (ClientError, BotoCoreError) as exc:
            watch.failed("EC2 scheduled events", placement, exc)
    placements = _policy_placements(access, policy, placed, watch)
    if settings.rds:
        for placement in placements:
            try:
                _rds_actions(_rds(access, placement), placement, watch)
            except (ClientError, BotoCoreError) as exc:
                watch.failed("RDS pending maintenance", placement, exc)
    if settings.health:
        regions = sorted({region for _, region in placements})
        for account in dict.fromkeys(account for account, _ in placements):
            placement = (account, HEALTH_REGION)
            try:
                _health_changes(_health(access, account), placement, regions, fleet_instances, settings.rds, now, watch)
            except (ClientError, BotoCoreError) as exc:
                if isinstance(exc, ClientError) and error_code(exc) == "SubscriptionRequiredException":
                    watch.unavailable.append((f"AWS Health in {account or 'the current account'}", NO_SUPPORT_PLAN))
                else:
                    watch.failed("AWS Health", placement, exc)
    unique = {item.id: item for item in watch.items}
    return WatchResult(items=tuple(unique.values()), unavailable=tuple(watch.unavailable))


def _policy_placements(
    access: AwsAccess, policy: Policy, placed: dict[Placement, list[Instance]], watch: _Watch
) -> list[Placement]:
    """The policy's accounts (`fleet_accounts`: its organization's members too) × regions (the
    current account, the default region without them), and the fleet's own placements. When the
    organization's accounts cannot be listed, that is said and its listed accounts are read."""
    settings = policy.aws
    regions = list(settings.regions) if settings and settings.regions else [access.default_region]
    try:
        accounts = fleet_accounts(access.client_factory, settings, access.default_region)
    except DiscoveryReadRefusedError as exc:
        watch.unavailable.append(("the accounts of aws.organization", str(exc)))
        accounts = [a.id for a in settings.accounts] if settings and settings.accounts else []
    placements = [(account, region) for account in accounts for region in regions]
    if accounts == [None]:  # the current account, which the fleet's instances name by id: read each place once
        placements = [p for p in placements if not any(region == p[1] for _, region in placed)]
    placements += [p for p in placed if p not in placements]
    return placements


# ---------------------------------------------------------------- EC2 scheduled events


def _ec2_events(
    ec2: EC2Client, placement: Placement, instances: dict[str, Instance], now: datetime, watch: _Watch
) -> None:
    pages = ec2.get_paginator("describe_instance_status").paginate(
        Filters=[{"Name": "event.code", "Values": EVENT_CODES}],
        IncludeAllInstances=True,
        PaginationConfig={"PageSize": 1000},
    )
    for page in pages:
        for status in page.get("InstanceStatuses", []):
            instance = instances.get(status.get("InstanceId", ""))
            if instance is None:
                continue  # not the fleet's
            for event in status.get("Events", []):
                description = event.get("Description", "")
                ends = event.get("NotAfter")
                if description.startswith(FINISHED_PREFIXES) or (ends is not None and ends < now):
                    continue
                code = event.get("Code", "")
                starts = event.get("NotBefore")
                event_id = event.get("InstanceEventId") or f"{code}@{starts.isoformat() if starts else ''}"
                watch.items.append(
                    MaintenanceItem(
                        id=f"ec2:{event_id}:{instance.id}",
                        source="ec2",
                        cloud="aws",
                        resource_id=instance.id,
                        resource_name=instance.short_name,
                        kind=code,
                        description=description,
                        starts_at=starts,
                        ends_at=ends,
                        deadline=event.get("NotBeforeDeadline"),
                        downtime=code in DOWNTIME_CODES,
                        instance_id=instance.id,
                        region=placement[1],
                        account=instance.account or placement[0],
                    )
                )


# ---------------------------------------------------------------- RDS pending maintenance


def _rds(access: AwsAccess, placement: Placement) -> RDSClient:
    client: RDSClient = access.client("rds", placement)
    return client


def _rds_actions(rds: RDSClient, placement: Placement, watch: _Watch) -> None:
    pending: list[tuple[str, PendingMaintenanceActionTypeDef]] = []
    for page in rds.get_paginator("describe_pending_maintenance_actions").paginate(PaginationConfig={"PageSize": 100}):
        for resource in page.get("PendingMaintenanceActions", []):
            arn = resource.get("ResourceIdentifier", "")
            pending.extend((arn, action) for action in resource.get("PendingMaintenanceActionDetails", []))
    if not pending:
        return  # nothing pending: the databases need not be read
    multi_az = _multi_az(rds, need_clusters=any(":cluster:" in arn for arn, _ in pending))
    for arn, action in pending:
        kind = action.get("Action", "")
        single_az = multi_az.get(arn) is False
        deadlines = [d for d in (action.get("ForcedApplyDate"), action.get("AutoAppliedAfterDate")) if d is not None]
        parts = arn.split(":")
        watch.items.append(
            MaintenanceItem(
                id=f"rds:{kind}:{arn}",
                source="rds",
                cloud="aws",
                resource_id=arn,
                resource_name=parts[-1] if parts else arn,
                kind=kind,
                description=action.get("Description", ""),
                starts_at=action.get("CurrentApplyDate"),
                deadline=min(deadlines) if deadlines else None,
                downtime=single_az or kind == "db-upgrade",
                warning=SINGLE_AZ if single_az else "",
                region=parts[3] if len(parts) > 4 else placement[1],
                account=(parts[4] if len(parts) > 4 else None) or placement[0],
            )
        )


def _multi_az(rds: RDSClient, *, need_clusters: bool) -> dict[str, bool]:
    """Whether each database (instance and cluster ARNs) survives the loss of one zone. An Aurora
    instance is as available as its cluster."""
    instances: list[tuple[str, bool, str | None]] = []
    for page in rds.get_paginator("describe_db_instances").paginate(PaginationConfig={"PageSize": 100}):
        for db in page.get("DBInstances", []):
            instances.append((db.get("DBInstanceArn", ""), bool(db.get("MultiAZ")), db.get("DBClusterIdentifier")))
    clusters: dict[str, tuple[str, bool]] = {}  # identifier -> (ARN, Multi-AZ)
    if need_clusters or any(cluster for _, _, cluster in instances):
        for cluster_page in rds.get_paginator("describe_db_clusters").paginate(PaginationConfig={"PageSize": 100}):
            for cluster in cluster_page.get("DBClusters", []):
                identifier = cluster.get("DBClusterIdentifier", "")
                clusters[identifier] = (cluster.get("DBClusterArn", ""), bool(cluster.get("MultiAZ")))
    result = {arn: multi for arn, multi in clusters.values()}
    for arn, multi, cluster_id in instances:
        parent = clusters.get(cluster_id) if cluster_id else None
        result[arn] = parent[1] if parent is not None else multi
    return result


# ---------------------------------------------------------------- AWS Health


def _health(access: AwsAccess, account: str | None) -> HealthClient:
    client: HealthClient = access.client("health", (account, HEALTH_REGION))
    return client


def _health_changes(
    health: HealthClient,
    placement: Placement,
    regions: list[str],
    instances: dict[str, Instance],
    databases: bool,
    now: datetime,
    watch: _Watch,
) -> None:
    events: dict[str, EventTypeDef] = {}
    wanted: EventFilterTypeDef = {"eventTypeCategories": ["scheduledChange"], "eventStatusCodes": ["upcoming", "open"]}
    if 0 < len(regions) <= HEALTH_REGIONS_PER_FILTER:
        wanted["regions"] = regions  # else every region: the entities are matched to the fleet anyway
    pages = health.get_paginator("describe_events").paginate(filter=wanted, PaginationConfig={"PageSize": 100})
    for page in pages:
        for event in page.get("events", []):
            ends = event.get("endTime")
            if "arn" in event and (ends is None or ends >= now):
                events[event["arn"]] = event
    for chunk in chunks(list(events), HEALTH_EVENTS_PER_CALL):
        entities = health.get_paginator("describe_affected_entities").paginate(
            filter={"eventArns": chunk}, PaginationConfig={"PageSize": 100}
        )
        for entity_page in entities:
            for entity in entity_page.get("entities", []):
                affected = events.get(entity.get("eventArn", ""))
                if affected is not None and entity.get("statusCode") != "RESOLVED":
                    item = _health_item(affected, entity, placement, instances, databases)
                    if item is not None:
                        watch.items.append(item)


def _health_item(
    event: EventTypeDef,
    entity: AffectedEntityTypeDef,
    placement: Placement,
    instances: dict[str, Instance],
    databases: bool,
) -> MaintenanceItem | None:
    """The fleet instance or database the entity names; None for any other resource."""
    value = entity.get("entityValue", "")
    instance = instances.get(value)
    service = event.get("service", "")
    if instance is None and not (databases and service == "RDS"):
        return None
    code = event.get("eventTypeCode", "")
    return MaintenanceItem(
        id=f"health:{event.get('arn', '')}:{value}",
        source="health",
        cloud="aws",
        resource_id=instance.id if instance is not None else value,
        resource_name=instance.short_name if instance is not None else value,
        kind=code,
        description=f"{service} {event.get('eventTypeCategory', 'scheduledChange')}: {code}",
        starts_at=event.get("startTime"),
        ends_at=event.get("endTime"),
        downtime=any(word in code for word in HEALTH_DOWNTIME_WORDS),
        instance_id=instance.id if instance is not None else None,
        region=event.get("region", ""),
        account=entity.get("awsAccountId") or (instance.account if instance else None) or placement[0],
    )
