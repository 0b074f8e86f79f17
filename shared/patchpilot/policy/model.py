"""The policy file: which instances, when, in which rings and waves, with which patches."""

import re
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, time, timedelta
from itertools import islice
from operator import attrgetter
from typing import Annotated, Any, Literal, get_args
from zoneinfo import ZoneInfo

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr

from patchpilot.engine.topics import Topic
from patchpilot.errors import Problem, did_you_mean
from patchpilot.inventory import Cloud, Instance, OsFamily
from patchpilot.policy.fields import (
    Budget,
    Duration,
    FailureQuota,
    HealthUrl,
    OneOrMore,
    Quota,
    TagValues,
    TimeOfDay,
    TimeZoneName,
    fail,
    format_duration,
    new_list,
    resolve_timezone,
)
from patchpilot.policy.freeze import ExternalFreezes, Freezes, Moment, period_problem
from patchpilot.policy.schedule import (
    MAX_OFFSET_DAYS,
    AwsCron,
    Cron,
    Monthly,
    MonthlyRule,
    Window,
    known_aws_cron,
    shortest_gap,
    window_starts,
)

Classification = Literal[
    "Critical",
    "Security",
    "UpdateRollup",
    "FeaturePack",
    "ServicePack",
    "Definition",
    "Tools",
    "Updates",
    "Other",
]


DEFAULT_CLASSIFICATIONS: tuple[Classification, ...] = ("Critical", "Security")


class _Section(BaseModel):
    # A section's own validator is built when the section is first validated or built on its own
    # (`defer_build`); validating a `Policy` (or a run, which holds one) never needs it. Each built
    # validator costs a Lambda cold start about a millisecond (bench/bench_cold_start.py).
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True, defer_build=True)


class Selector(_Section):
    """Every criterion given must hold; a tag's value may be a list (any of) or "*" (present)."""

    tags: dict[str, TagValues] = Field(default_factory=dict)
    ids: OneOrMore[str] = Field(default_factory=new_list)
    clouds: OneOrMore[Cloud] = Field(default_factory=new_list)
    regions: OneOrMore[str] = Field(default_factory=new_list)
    os: OneOrMore[OsFamily] = Field(default_factory=new_list)

    def is_empty(self) -> bool:
        return not (self.tags or self.ids or self.clouds or self.regions or self.os)

    def matches(self, instance: Instance) -> bool:
        # Plain loops: the planner asks for every machine of the fleet and every ring.
        tags = instance.tags
        for key, values in self.tags.items():
            value = tags.get(key)
            if value is None or ("*" not in values and value not in values):
                return False
        return (
            (not self.ids or instance.id in self.ids)
            and (not self.clouds or instance.cloud in self.clouds)
            and (not self.regions or instance.region in self.regions)
            and (not self.os or instance.os in self.os)
        )

    def matcher(self) -> Callable[[Instance], bool]:
        """`matches` as one function made for the criteria given (sets for the lists), for a question
        asked of every machine of a fleet (the planner's rings, `planning.planner.assign`): about
        half the time per machine, the same answers (tests/test_selector_matcher.py)."""
        tags = tuple((key, None if "*" in values else frozenset(values)) for key, values in self.tags.items())
        given = (("id", self.ids), ("cloud", self.clouds), ("region", self.regions), ("os", self.os))
        fields = tuple((name, frozenset(wanted)) for name, wanted in given if wanted)
        if len(tags) == 1 and not fields:  # the usual ring: one tag
            key, allowed = tags[0]
            if allowed is None:
                return lambda instance: key in instance.tags
            return lambda instance: instance.tags.get(key) in allowed
        if len(fields) == 1 and not tags:  # the usual exception: ids
            name, wanted = fields[0]
            read = attrgetter(name)
            return lambda instance: read(instance) in wanted

        def matches(instance: Instance) -> bool:
            own = instance.tags
            for key, allowed in tags:
                value = own.get(key)
                if value is None or (allowed is not None and value not in allowed):
                    return False
            return all(getattr(instance, name) in wanted for name, wanted in fields)

        return matches


SLACK_GROUP_ID = re.compile(r"S[A-Z0-9]{2,}")


def is_slack_group(approver: str) -> bool:
    """A Slack user group id (`S…`) among a ring's approvers: its members may approve from Slack."""
    return SLACK_GROUP_ID.fullmatch(approver) is not None


def _approver(value: str) -> str:
    if not (
        re.fullmatch(r"[UW][A-Z0-9]{2,}", value)
        or is_slack_group(value)
        or re.fullmatch(r"arn:aws[a-z-]*:(iam|sts)::[0-9]{12}:\S+", value)
        or re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value)
    ):
        raise fail(
            "approver",
            "expected a Slack user id (U…, W…), a Slack user group id (S…), an IAM ARN or an Entra principal name",
            value,
        )
    return value


ApproverId = Annotated[str, AfterValidator(_approver)]

CALENDAR_FILE = r"[A-Za-z0-9_][A-Za-z0-9._ -]*\.ics"


def _calendar_file(value: str) -> str:
    # The AWS stack grants reading (and the deployer alone writing) `*.ics` beside the policy.
    if not re.fullmatch(CALENDAR_FILE, value):
        raise fail(
            "calendar_file",
            "expected the name of an iCalendar file beside the policy, ending in .ics (e.g. freezes.ics)",
            value,
        )
    return value


CalendarFile = Annotated[
    str, Field(max_length=255, json_schema_extra={"pattern": f"^{CALENDAR_FILE}$"}), AfterValidator(_calendar_file)
]


class HostHook(_Section):
    """A script run on each machine through Systems Manager Run Command / Azure Run Command, as
    root, within `timeout` (docs/traffic.md): `before_install` after the machine has left its
    pools (a failure skips its install), `after_install` after the reboot, before the health
    checks (a failure is a failed health check: rollback). The script comes from the policy and is
    stored with the run; no message carries one the run did not issue."""

    linux: str | None = Field(default=None, min_length=1, max_length=16_000)
    windows: str | None = Field(default=None, min_length=1, max_length=16_000)
    timeout: Duration = timedelta(minutes=10)

    def script_for(self, os: OsFamily) -> str | None:
        return self.windows if os == "windows" else self.linux


class WaveHook(_Section):
    """An HTTPS endpoint called before or after each wave with a signed JSON body naming the run,
    the wave and its machines (docs/traffic.md); it must answer 2xx within `timeout`. Any other
    answer halts the run with the endpoint's answer as the reason."""

    url: Annotated[str, Field(pattern=r"^https://[^/\s]+(/\S*)?$", max_length=2048)]
    secret: str = Field(min_length=1)  # the NAME of the secret holding the HMAC-SHA256 key, never the key
    timeout: Duration = timedelta(minutes=5)


class Hooks(_Section):
    """Host hooks (Run Command / SSM) and wave hooks (HTTPS), policy-wide or per ring: a ring's
    `hooks` replaces the policy's hook by hook."""

    before_install: HostHook | None = None
    after_install: HostHook | None = None
    before_wave: WaveHook | None = None
    after_wave: WaveHook | None = None

    def over(self, base: "Hooks") -> "Hooks":
        """These hooks, each falling back to `base`'s where unset."""
        return Hooks(
            before_install=self.before_install or base.before_install,
            after_install=self.after_install or base.after_install,
            before_wave=self.before_wave or base.before_wave,
            after_wave=self.after_wave or base.after_wave,
        )


class Traffic(_Section):
    """Load-balancer drain around the install (docs/traffic.md): before its install a machine
    leaves each of its traffic pools and PatchPilot waits until the pool reports it drained (at
    most `drain_timeout`; unset: the target group's deregistration delay on AWS, the probe's
    interval × threshold on Azure); after its health checks it rejoins them and, with
    `pool_health`, the pool's own health check must pass within `pool_health_timeout` before the
    machine counts as patched."""

    drain: bool = False
    drain_timeout: Duration | None = None
    pool_health: bool = False
    pool_health_timeout: Duration = timedelta(minutes=5)


class Ring(_Section):
    name: str = Field(min_length=1, max_length=64)
    select: Selector
    soak: Duration = timedelta(0)
    approval: Literal["auto", "required"] = "auto"
    # Who may approve (patchpilot.approvals): Slack user ids (U…, W…) and user groups (S…, members
    # read from Slack); for approval endpoints that sign people in, IAM ARNs (AWS) or Entra
    # principal names (Azure). Empty: anyone with the link.
    approvers: OneOrMore[ApproverId] = Field(default_factory=new_list)
    hooks: Hooks | None = None  # replaces the policy's hooks, hook by hook (docs/traffic.md)


class Schedule(_Section):
    monthly: Monthly | None = None
    cron: Cron | None = None
    offset_days: int = Field(default=0, ge=-MAX_OFFSET_DAYS, le=MAX_OFFSET_DAYS)
    at: TimeOfDay | None = None
    timezone: TimeZoneName = "UTC"
    duration: Duration

    @property
    def zone(self) -> ZoneInfo:
        return resolve_timezone(self.timezone)

    @property
    def rule(self) -> MonthlyRule | AwsCron:
        rule = self.monthly or self.cron
        assert rule is not None, "checked when the policy was loaded"
        return rule

    def windows(self, after: datetime, count: int) -> list[Window]:
        """The next `count` windows starting at or after `after` (an aware datetime)."""
        at: time | None = self.at
        starts = window_starts(self.rule, at, self.offset_days, self.zone, after)
        # Elapsed time: aware arithmetic within one zone is wall-clock and would stretch or
        # shrink a window by the DST jump, so add the duration in UTC.
        return [Window(s, (s.astimezone(UTC) + self.duration).astimezone(self.zone)) for s in islice(starts, count)]

    def problems(self) -> list[Problem]:
        here = ("schedule",)
        found = []
        if (self.monthly is None) == (self.cron is None):
            found.append(Problem(here, "give exactly one of monthly or cron"))
        if self.monthly is not None and self.at is None:
            found.append(Problem((*here, "at"), 'required with monthly (a time such as "02:00")'))
        if self.cron is not None and self.at is not None:
            found.append(Problem((*here, "at"), "not used with cron: the cron expression sets the time"))
        if self.monthly is not None and self.offset_days:
            found.append(Problem((*here, "offset_days"), "use Offset±N inside monthly instead"))
        if self.duration <= timedelta(0):
            found.append(Problem((*here, "duration"), "expected a window longer than 0"))
        elif not found and (gap := self.shortest_gap()) is not None and self.duration > gap:
            found.append(
                Problem(
                    (*here, "duration"),
                    f"the window ({format_duration(self.duration)}) is longer than the time from one window's "
                    f"start to the next ({format_duration(gap)}, the shortest in the coming year): windows "
                    "would overlap; shorten the duration",
                )
            )
        return found

    def shortest_gap(self, after: datetime | None = None) -> timedelta | None:
        """The shortest time from one window's start to the next over the year after `after`
        (default: now), DST changes included; None with fewer than two windows."""
        after = after or datetime.now(UTC)
        return shortest_gap(window_starts(self.rule, self.at, self.offset_days, self.zone, after), after)


class FreezePeriod(_Section):
    """A change freeze (docs/governance.md): no scheduled window starts inside it, one it cuts short
    ends at its start, and an emergency run inside it waits for approval (`emergency.freeze`).
    Dates or local date-times in the policy's time zone (the schedule's); a date `to` includes that
    whole day. `yearly` repeats it every year from the one given (Dec 20 to Jan 3 crosses the year
    end: give `from: 2026-12-20, to: 2027-01-03`)."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    name: str = Field(min_length=1, max_length=100)
    from_: Moment = Field(alias="from")
    to: Moment
    yearly: bool = False


class Rollout(_Section):
    mode: Literal["zone_by_zone", "concurrent_zones"] = "zone_by_zone"
    disruption_budget: Budget = Quota(10, percent=True)
    canary: int = Field(default=1, ge=0)
    max_failures: FailureQuota = Quota(0, percent=False)
    # No new wave starts within this much of the window's end (SSM's maintenance-window cutoff).
    # Unset: a wave starts only if its expected duration (the run's longest wave so far, else the
    # estimate of its steps, planning/estimate.py) fits in what is left; `0`: until the very end.
    cutoff: Duration | None = None
    # A gate (`approval: required`) still waiting this long pages the approval_needed channels
    # again, every `approval_reminder`, at most MAX_APPROVAL_REMINDERS times (engine/decide.py);
    # `0`: no reminder. On the clouds only: a local run waits with no process running.
    approval_reminder: Duration = timedelta(hours=4)
    # Traffic pools (the inventory's `traffic_pools`, docs/planner.md): no wave takes more than this
    # share of any pool's members (a percentage rounded down, at least 1) out of service. Unset: no
    # pool constraint. A pool of one member is patched with a plan warning, or with `refuse` its
    # machine is excluded with that reason.
    pool_budget: Budget | None = None
    single_member_pools: Literal["warn", "refuse"] = "warn"


class Exclusions(_Section):
    """Any one matching tag excludes an instance (these are the frozen ones); so does its id."""

    tags: dict[str, TagValues] = Field(default_factory=dict)
    ids: OneOrMore[str] = Field(default_factory=new_list)

    def reason(self, instance: Instance) -> str | None:
        if instance.id in self.ids:
            return "excluded by id in the policy"
        for key, values in self.tags.items():
            value = instance.tags.get(key)
            if value is not None and ("*" in values or value in values):
                return f"frozen: tag {key}={value}"
        return None

    def reasoner(self) -> Callable[[Instance], str | None]:
        """`reason` as one function (a set for the ids), for a question asked of every machine of a
        fleet (`planning.planner.assign`); the same answers (tests/test_selector_matcher.py)."""
        ids = frozenset(self.ids)
        tags = tuple(self.tags.items())

        def reason(instance: Instance) -> str | None:
            if instance.id in ids:
                return "excluded by id in the policy"
            own = instance.tags
            for key, values in tags:
                value = own.get(key)
                if value is not None and ("*" in values or value in values):
                    return f"frozen: tag {key}={value}"
            return None

        return reason


class PolicyException(_Section):
    """An accepted risk (docs/governance.md "Exceptions"): the machines `select` matches are left
    out of runs (a machine exception), or, with `patches`, only those patches are left out of their
    installs (a patch exception), until the end of `expires` in the policy's time zone. Expired,
    it matches nothing: the machine is patched again and reported as what it really is."""

    select: Selector
    patches: OneOrMore[str] = Field(default_factory=new_list)  # ids or masks, as patches.exclude
    reason: str = Field(min_length=1, max_length=500)
    owner: str = Field(min_length=1, max_length=200)  # who accepted the risk: a person or a team
    expires: date  # the last day it is in force; at most a year ahead when the policy is loaded

    def ends_at(self, zone: ZoneInfo) -> datetime:
        """The first moment it is no longer in force: midnight after `expires`, in `zone`."""
        return datetime.combine(self.expires + timedelta(days=1), time(0), tzinfo=zone)

    def label(self) -> str:
        """`excepted: <reason> (<owner>, until <date>)`: how plans and reports show it."""
        return f"excepted: {self.reason} ({self.owner}, until {self.expires.isoformat()})"


def a_year_after(day: date) -> date:
    """The same day a year later (29 February: the 28th): the latest an exception may expire."""
    try:
        return day.replace(year=day.year + 1)
    except ValueError:
        return day.replace(year=day.year + 1, day=28)


class PatchSelection(_Section):
    classifications: OneOrMore[Classification] = Field(default_factory=lambda: list(DEFAULT_CLASSIFICATIONS))
    include: OneOrMore[str] = Field(default_factory=new_list)
    exclude: OneOrMore[str] = Field(default_factory=new_list)


class HealthScript(_Section):
    """A command run on the instance (Systems Manager Run Command, Azure Run Command): exit 0 is healthy."""

    linux: str | None = None
    windows: str | None = None


class HealthChecks(_Section):
    """Checks beyond the cloud's own status checks, all of which must pass after patching."""

    script: HealthScript | None = None
    alarms: OneOrMore[str] = Field(default_factory=new_list)  # CloudWatch alarms that must be OK (AWS)
    # http or https URLs that must answer 2xx; {name}, {id}, {private_ip} filled in (DNS labels or IP addresses)
    http: OneOrMore[HealthUrl] = Field(default_factory=new_list)
    timeout: Duration = timedelta(minutes=5)

    def script_for(self, os: OsFamily) -> str | None:
        """The script a machine of `os` runs, if any."""
        if self.script is None:
            return None
        return self.script.windows if os == "windows" else self.script.linux


# The patterns' classes are ASCII: pydantic-core's regex engine reads `\d` and `\w` as Unicode, so
# `\d{12}` took "١٢٣٤٥٦٧٨٩٠١٢" for an account id (and compiled in three times as long).
class AwsAccount(_Section):
    id: str = Field(pattern=r"^[0-9]{12}$")
    # assumed in that account
    role: str | None = Field(default=None, pattern=r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$")


class AwsOrganization(_Section):
    """The member accounts of AWS Organizations units, listed on each run (docs/governance.md):
    every ACTIVE account under the `ou` ids (child units included), reached through the role
    `role_name` that the member-role StackSet deploys in each (infra/aws/member-role.yaml)."""

    # organizational unit ids (ou-...), or the root (r-...) for the whole organisation
    ou: OneOrMore[Annotated[str, Field(pattern=r"^(ou-[0-9a-z]{4,32}-[a-z0-9]{8,32}|r-[0-9a-z]{4,32})$")]] = Field(
        min_length=1
    )
    # assumed in each member: IAM's role name characters (letters and digits are ASCII for IAM)
    role_name: str = Field(default="PatchPilotMember", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_+=,.@-]+$")


BaselineOs = Literal[
    "WINDOWS",
    "AMAZON_LINUX_2",
    "AMAZON_LINUX_2023",
    "REDHAT_ENTERPRISE_LINUX",
    "CENTOS",
    "ORACLE_LINUX",
    "ROCKY_LINUX",
    "ALMA_LINUX",
    "SUSE",
    "UBUNTU",
    "DEBIAN",
]  # Systems Manager OperatingSystem values that `patchpilot aws sync` writes baselines for
ComplianceLevel = Literal["CRITICAL", "HIGH", "MEDIUM", "LOW", "INFORMATIONAL", "UNSPECIFIED"]


class AwsBaselines(_Section):
    """The Patch Manager baselines `patchpilot aws sync` keeps in step with the policy: one per
    operating system, registered for one patch group per ring (docs/aws-baselines.md).

    What they approve comes from `patches` (classifications, include, exclude); the rules that
    tie fields together (a classification that applies to none of the operating systems, a
    severity an operating system does not have) are checked by the sync, which names them."""

    operating_systems: OneOrMore[BaselineOs] = Field(min_length=1)
    approve_after_days: int = Field(default=7, ge=0, le=360)  # not used on Ubuntu and Debian
    # Empty: every severity. A list applies to every operating system; a mapping (operating system
    # to list) gives each its own. The values are each system's own: see docs/aws-baselines.md.
    severities: OneOrMore[str] | dict[str, OneOrMore[str]] = Field(default_factory=new_list)
    compliance_level: ComplianceLevel = "UNSPECIFIED"


class AwsSettings(_Section):
    """Where the AWS fleet is and how to reach it. Without accounts or an organization, the current
    account is used."""

    regions: OneOrMore[str] = Field(default_factory=new_list)
    accounts: list[AwsAccount] = Field(default_factory=new_list)
    # the member accounts of OUs, listed on each run, besides `accounts` (which keep their own role)
    organization: AwsOrganization | None = None
    restore_data_volumes: bool = False  # rollback restores data volumes too, not only the root volume
    patch_group_tag: str = "PatchGroup"
    baselines: AwsBaselines | None = None  # Patch Manager baselines and patch groups: `patchpilot aws sync`
    # SSM Change Calendars (names or ARNs, in the deployment's region): CLOSED is a freeze (docs/governance.md)
    change_calendars: OneOrMore[str] = Field(default_factory=new_list)


class AzureMaintenance(_Section):
    """Azure Update Manager schedules that `patchpilot azure sync` keeps in step with the policy:
    one maintenance configuration per ring, from `schedule`, `patches` and `reboot`, assigned by a
    dynamic scope over the ring's tags (docs/azure-update-manager.md)."""

    resource_group: str = Field(min_length=1, max_length=90)  # where the maintenance configurations live
    location: str = Field(min_length=1)
    name_prefix: str = Field(default="patchpilot", min_length=1, max_length=40)
    assignment: Literal["dynamic", "static"] = "dynamic"


class AzureSettings(_Section):
    """Where the Azure fleet is. Empty lists mean every subscription the identity can read, every
    resource group, every location."""

    subscriptions: OneOrMore[str] = Field(default_factory=new_list)
    # management group names (ids): discovery reads every subscription under them, instead of `subscriptions`
    management_groups: OneOrMore[Annotated[str, Field(min_length=1, max_length=90)]] = Field(default_factory=new_list)
    resource_groups: OneOrMore[str] = Field(default_factory=new_list)
    locations: OneOrMore[str] = Field(default_factory=new_list)
    arc: bool = False  # Arc-enabled servers too (Microsoft.HybridCompute/machines)
    # Arc servers have no managed disks to snapshot: patch them without a rollback path only when
    # this is true; otherwise the plan skips them with that reason.
    patch_without_rollback: bool = False
    restore_data_disks: bool = False  # rollback restores data disks too, not only the OS disk
    maintenance: AzureMaintenance | None = None


NotificationTopic = Topic  # the engine's notice topics; routes also take "*"
SLACK_MENTION = r"^(@here|@channel|<!here>|<!channel>|<!subteam\^[A-Z0-9]+(\|[^>]*)?>|<@[UW][A-Z0-9]+>)$"


class TeamsMention(_Section):
    """Who a Teams card mentions: an Adaptive Card mention entity (<at>name</at>)."""

    name: str = Field(min_length=1, max_length=100)  # the display name shown, e.g. "Patch on-call"
    id: str = Field(min_length=1)  # the user's UPN or e-mail, or an Entra object id


class NotificationChannel(_Section):
    name: str = Field(min_length=1, max_length=64)
    kind: Literal["slack", "teams"]
    webhook: str = Field(min_length=1)  # the NAME of the secret holding the webhook URL, never the URL
    # The on-call group failures and halts mention: Slack "<!subteam^ID>", "<!here>" or "@here";
    # Teams {name, id}.
    mention: str | TeamsMention | None = None


class NotificationRoute(_Section):
    topics: Literal["*"] | OneOrMore[NotificationTopic] = "*"
    channels: OneOrMore[str] = Field(min_length=1)


class Notifications(_Section):
    """Slack and Teams: where each notice goes (every route that names its topic) and whom
    failures and halts mention."""

    channels: list[NotificationChannel] = Field(min_length=1)
    routes: list[NotificationRoute] = Field(min_length=1)
    heads_up: Duration = timedelta(hours=24)  # the "run scheduled" notice, this long before a window

    def problems(self) -> list[Problem]:
        found: list[Problem] = []
        names: set[str] = set()
        for index, channel in enumerate(self.channels):
            where = ("notifications", "channels", index)
            if channel.name in names:
                found.append(Problem((*where, "name"), f'duplicate channel name "{channel.name}"'))
            names.add(channel.name)
            if channel.webhook.lower().startswith(("http:", "https:")):
                found.append(Problem((*where, "webhook"), "expected the name of a secret, not the webhook URL"))
            mention = channel.mention
            if channel.kind == "slack" and isinstance(mention, TeamsMention):
                found.append(Problem((*where, "mention"), 'a Slack mention is text: "<!subteam^ID>" or "<!here>"'))
            elif channel.kind == "slack" and isinstance(mention, str) and not re.match(SLACK_MENTION, mention):
                found.append(
                    Problem((*where, "mention"), f'expected "<!subteam^ID>", "<!here>" or "<@USER>", not "{mention}"')
                )
            elif channel.kind == "teams" and isinstance(mention, str):
                found.append(Problem((*where, "mention"), "a Teams mention is {name: display name, id: UPN or e-mail}"))
        for index, route in enumerate(self.routes):
            for position, name in enumerate(route.channels):
                if name not in names:
                    path = ("notifications", "routes", index, "channels", position)
                    found.append(Problem(path, f'no channel named "{name}" in notifications.channels'))
        return found


def is_arc_server(instance: Instance) -> bool:
    """An Azure Arc-enabled server (not an Azure VM): it has no managed disks to snapshot."""
    return instance.cloud == "azure" and "/providers/microsoft.hybridcompute/machines/" in instance.id.lower()


AdvisorySeverity = Literal["LOW", "MEDIUM", "HIGH", "CRITICAL"]
ADVISORY_SEVERITIES: tuple[AdvisorySeverity, ...] = ("LOW", "MEDIUM", "HIGH", "CRITICAL")  # ascending
AdvisorySource = Literal["defender", "assessment"]  # Azure: Defender for Cloud findings, Update Manager's assessment


def _defender_only() -> list[AdvisorySource]:
    return ["defender"]


class Emergency(_Section):
    """Emergency runs started by security advisories (docs/advisories.md): only the advisory's
    fixes, still snapshotted, staging first and rolled back on failure."""

    min_severity: AdvisorySeverity = "HIGH"  # advisories below it are answered "ignored"
    rings: OneOrMore[str] = Field(default_factory=new_list)  # names of the policy's rings, in its order; empty: all
    soak: Duration = timedelta(minutes=30)  # replaces each ring's soak
    approval: Literal["auto", "required"] = "auto"  # required: every ring after the first waits for approval
    # Inside a freeze (`freeze`, `freeze_calendar`): `approve` makes the first ring wait for approval
    # too, the freeze named in the request; `pass` lets the run through unattended.
    freeze: Literal["approve", "pass"] = "approve"
    merge_window: Duration = timedelta(hours=6)  # findings about one CVE within it become one run
    # What the Azure timer reads (docs/advisories.md "Azure sources"): Defender for Cloud's
    # vulnerability findings by default; Update Manager's assessment only when named.
    sources: OneOrMore[AdvisorySource] = Field(default_factory=_defender_only)
    assessment_window: Duration = timedelta(days=7)  # a critical update released within it starts a run

    def problems(self, ring_names: Iterable[str]) -> list[Problem]:
        here, known = ("emergency",), list(ring_names)
        found = [
            Problem((*here, "rings", index), f'no ring named "{name}" (rings: {", ".join(known)})')
            for index, name in enumerate(self.rings)
            if name not in known
        ]
        if len(set(self.rings)) != len(self.rings):
            found.append(Problem((*here, "rings"), "a ring is named twice"))
        if self.merge_window <= timedelta(0):
            found.append(Problem((*here, "merge_window"), "expected a window longer than 0"))
        if len(set(self.sources)) != len(self.sources):
            found.append(Problem((*here, "sources"), "a source is named twice"))
        if self.assessment_window <= timedelta(0):
            found.append(Problem((*here, "assessment_window"), "expected a window longer than 0"))
        return found


PolicyKind = Literal["scheduled", "non_periodic", "emergency", "frozen"]
POLICY_KINDS: dict[PolicyKind, str] = {
    "scheduled": "patched in every window of its schedule",
    "non_periodic": "a window with nothing pending is skipped, and says so",
    "emergency": "patched only by emergency runs from advisories; the schedule starts nothing",
    "frozen": "never patched: every machine is shown as exposed",
}
DAILY_AT_FIVE = known_aws_cron("cron(0 5 * * ? *)")
MONDAYS_AT_EIGHT = known_aws_cron("cron(0 8 ? * MON *)")


class ComplianceSettings(_Section):
    """The compliance scan the timer runs (docs/compliance.md): a scan at each `scan` time (in
    `timezone`, else the schedule's, else UTC), and the report `report_after` it."""

    scan: Cron = DAILY_AT_FIVE
    timezone: TimeZoneName | None = None
    report_after: Duration = timedelta(hours=1)  # time for the scans to finish before the report is built
    # Patch SLAs (docs/governance.md "Patch SLAs"): how long after its release a missing patch may
    # stay missing, by severity (Critical, Important, Moderate, Low, Unspecified), else by
    # classification (Critical, Security, ...); and how close to its deadline it is "due soon".
    sla: dict[str, Duration] = Field(default_factory=dict)
    due_soon: Duration = timedelta(days=7)

    def sla_problems(self) -> list[Problem]:
        from patchpilot.compliance.model import PATCH_SEVERITIES  # not at import: handlers never need it

        known = [*PATCH_SEVERITIES, *get_args(Classification)]
        found = []
        for key, value in self.sla.items():
            where = ("compliance", "sla", key)
            if key not in known:
                found.append(
                    Problem(
                        where,
                        f"expected a severity ({', '.join(PATCH_SEVERITIES)}) or a classification "
                        f'({", ".join(get_args(Classification))}), got "{key}"{did_you_mean(key, known)}',
                    )
                )
            elif value <= timedelta(0):
                found.append(Problem(where, "expected a time longer than 0"))
        if self.due_soon < timedelta(0):
            found.append(Problem(("compliance", "due_soon"), "expected a duration of 0 or more"))
        return found

    def sla_for(self, severity: str, classification: str) -> timedelta | None:
        """The SLA of a patch: its severity's (a known one), else its classification's
        (`classification` as the policy names it: `compliance.report` maps the clouds' names), else
        the `Unspecified` entry's, else None (no deadline)."""
        for key in (severity if severity != "Unspecified" else "", classification, "Unspecified"):
            if key in self.sla:
                return self.sla[key]
        return None


class MaintenanceWatchSettings(_Section):
    """The maintenance watch (docs/maintenance-watch.md): a digest at each `digest` time, and an
    alert for anything due before the next patch window (or within `horizon` without a schedule)."""

    digest: Cron = MONDAYS_AT_EIGHT
    timezone: TimeZoneName | None = None
    horizon: Duration = timedelta(days=14)  # how far ahead the digest looks
    rds: bool = True  # AWS: RDS pending maintenance in the policy's accounts and regions
    health: bool = True  # AWS: Health scheduled changes (the Health API needs a Business support plan)


class Policy(_Section):
    # Its own validator too is built when a policy is first read on its own (`parse_policy`; the
    # timer's handler builds it at import, as it reads one at every tick); a run, which holds one,
    # builds the policy's schema into its own, and a worker or approval never needs the policy's.

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    kind: PolicyKind = "scheduled"
    schedule: Schedule | None = None
    rings: list[Ring] = Field(min_length=1)
    # The sections' defaults are made without validation (`model_construct`, what validating no
    # input makes: defaults are not validated, and no section has a validator of its own), so that
    # importing the policy builds no section's validator: a run builds them into its own.
    rollout: Rollout = Rollout.model_construct()
    region_pairs: list[tuple[str, str]] = Field(default_factory=new_list)
    exclude: Exclusions = Exclusions.model_construct()
    exceptions: list[PolicyException] = Field(default_factory=new_list)  # accepted risks: docs/governance.md
    # Machines in an AWS Auto Scaling group or an Azure scale set (the inventory's `scaling_group`):
    # `skip` lists them as excluded, "member of scaling group X: patch its image" (docs/planner.md);
    # `standby`: an AWS group's member enters Standby (desired capacity decremented) for its install
    # and exits after its health checks; an Azure Flexible scale set is patched like VMs, the set
    # counting as a traffic pool (docs/traffic.md).
    scaling_groups: Literal["skip", "standby"] = "skip"
    # Machines found stopped or deallocated (docs/governance.md, "Hotpatch and stopped machines"):
    # `skip` leaves them as they are (discovery reports them unreachable); `start` starts each for
    # its wave, patches it, and returns it to the state it was found in.
    stopped_machines: Literal["skip", "start"] = "skip"
    patches: PatchSelection = PatchSelection.model_construct()
    reboot: Literal["if_required", "always", "never"] = "if_required"
    health: HealthChecks = HealthChecks.model_construct()
    traffic: Traffic = Traffic.model_construct()  # load-balancer drain and re-add: docs/traffic.md
    # host and wave hooks, policy-wide (a ring's own replace them): docs/traffic.md
    hooks: Hooks = Hooks.model_construct()
    aws: AwsSettings | None = None
    azure: AzureSettings | None = None
    emergency: Emergency | None = None  # runs started by advisories: docs/advisories.md
    notifications: Notifications | None = None  # Slack and Teams: docs/notifications.md
    compliance: ComplianceSettings | None = None  # the timer's compliance scans: docs/compliance.md
    maintenance_watch: MaintenanceWatchSettings | None = None  # docs/maintenance-watch.md
    # Change freezes (docs/governance.md): periods, and an iCalendar file whose events are freezes,
    # read from beside the policy (its folder, bucket prefix or container) by the policy loaders.
    freeze: list[FreezePeriod] = Field(default_factory=new_list)
    freeze_calendar: CalendarFile | None = None
    _calendar: Any = PrivateAttr(default=None)  # the parsed freeze_calendar (icalendar.Calendar), from the loader
    _external: ExternalFreezes | None = PrivateAttr(default=None)  # aws.change_calendars, from the AWS loader

    def with_freeze_calendar(self, calendar: Any) -> "Policy":
        """This policy with its `freeze_calendar` read (`freeze.parse_calendar`): what the loaders return."""
        copy = self.model_copy()
        copy._calendar = calendar
        return copy

    def with_change_calendars(self, calendars: ExternalFreezes) -> "Policy":
        """This policy with its `aws.change_calendars` to ask (`adapters/aws/change_calendar.py`)."""
        copy = self.model_copy()
        copy._external = calendars
        return copy

    def freezes(self) -> Freezes:
        """Every freeze of the policy, in its time zone. Raises when the policy names a calendar its
        loader did not read (a policy parsed from text alone: `parse_policy`)."""
        if self.freeze_calendar is not None and self._calendar is None:
            raise RuntimeError(
                f"policy {self.name}: freeze_calendar {self.freeze_calendar} was not read; load the policy "
                "with load_policy or a cloud policy source, which read it from beside the policy"
            )
        return Freezes(
            self.zone_for(None), tuple(self.freeze), self._calendar, self.freeze_calendar or "", self._external
        )

    def restores_data_volumes(self, clouds: Iterable[Cloud]) -> bool:
        """Whether a rollback of machines on these clouds restores their data volumes too."""
        wanted = set(clouds)
        aws = "aws" in wanted and self.aws is not None and self.aws.restore_data_volumes
        azure = "azure" in wanted and self.azure is not None and self.azure.restore_data_disks
        return aws or azure

    @property
    def reads_pools(self) -> bool:
        """Whether discovery reads the machines' traffic pools: for the pool budget, or to drain them."""
        return self.rollout.pool_budget is not None or self.traffic.drain

    def hooks_for(self, ring: str) -> Hooks:
        """The hooks of ring `ring`: its own, each falling back to the policy's."""
        own = next((r.hooks for r in self.rings if r.name == ring), None)
        return own.over(self.hooks) if own is not None else self.hooks

    def unprotected_reason(self, instance: Instance) -> str | None:
        """Why an instance cannot be patched safely under this policy (no snapshot to roll back to)."""
        if is_arc_server(instance) and not (self.azure and self.azure.patch_without_rollback):
            return "Arc-enabled server: no snapshot, so no rollback (set azure.patch_without_rollback to patch it)"
        return None

    def problems(self) -> list[Problem]:
        """Rules that span several fields; the field shapes are already valid here."""
        found = self.schedule.problems() if self.schedule else []
        cutoff = self.rollout.cutoff
        if self.schedule is not None and cutoff is not None and cutoff >= self.schedule.duration > timedelta(0):
            found.append(
                Problem(
                    ("rollout", "cutoff"),
                    f"a cutoff of {format_duration(cutoff)} in a {format_duration(self.schedule.duration)} window "
                    "lets no wave start: expected a cutoff shorter than schedule.duration",
                )
            )
        seen: set[str] = set()
        for index, ring in enumerate(self.rings):
            if ring.name in seen:
                found.append(Problem(("rings", index, "name"), f'duplicate ring name "{ring.name}"'))
            seen.add(ring.name)
            if ring.select.is_empty():
                found.append(
                    Problem(("rings", index, "select"), "expected at least one of tags, ids, clouds, regions, os")
                )
            if ring.approval == "required" and self.azure is not None and self.azure.maintenance is not None:
                found.append(
                    Problem(
                        ("rings", index, "approval"),
                        "cannot take effect with azure.maintenance: Update Manager starts each ring at its "
                        "own scheduled time and cannot wait for an approval; use approval: auto, "
                        "or drop azure.maintenance to let PatchPilot run the rings",
                    )
                )
        for index, (a, b) in enumerate(self.region_pairs):
            if a.strip().lower() == b.strip().lower():
                found.append(Problem(("region_pairs", index), f'a region cannot pair with itself ("{a}")'))
        if self.emergency is not None:
            found.extend(self.emergency.problems(seen))
        overlap = set(self.patches.include) & set(self.patches.exclude)
        if overlap:
            found.append(
                Problem(("patches", "include"), f"also listed in patches.exclude: {', '.join(sorted(overlap))}")
            )
        if self.notifications is not None:
            found.extend(self.notifications.problems())
        found.extend(self._traffic_problems())
        for index, period in enumerate(self.freeze):
            if (problem := period_problem(period)) is not None:
                found.append(Problem(("freeze", index), problem))
        if (self.freeze or self.freeze_calendar) and self.azure is not None and self.azure.maintenance is not None:
            found.append(
                Problem(
                    ("freeze",) if self.freeze else ("freeze_calendar",),
                    "cannot take effect with azure.maintenance: Update Manager starts each ring at its own "
                    "scheduled time, whatever the freeze; drop azure.maintenance to let PatchPilot run the rings",
                )
            )
        found.extend(self._governance_problems())
        if self.azure is not None and self.azure.subscriptions and self.azure.management_groups:
            found.append(
                Problem(
                    ("azure", "management_groups"),
                    "give either azure.subscriptions or azure.management_groups, not both: Resource Graph "
                    "reads one scope (put the subscriptions under a management group, or list them all)",
                )
            )
        if self.azure is not None and self.azure.management_groups and self.azure.maintenance is not None:
            found.append(
                Problem(
                    ("azure", "maintenance"),
                    "not available with azure.management_groups: Update Manager's configurations and dynamic "
                    "scopes live in azure.subscriptions",
                )
            )
        if self.kind == "non_periodic" and self.schedule is None:
            found.append(Problem(("kind",), "a non_periodic policy needs a schedule (whose windows it skips)"))
        if self.kind == "emergency" and self.emergency is None:
            found.append(Problem(("kind",), "an emergency policy needs an emergency section"))
        return found

    def _governance_problems(self) -> list[Problem]:
        """Exceptions that select nothing, and SLA keys that are neither a severity nor a
        classification. (How far ahead `expires` may be depends on now: `exception_problems`.)"""
        found: list[Problem] = []
        for index, exception in enumerate(self.exceptions):
            if exception.select.is_empty():
                found.append(
                    Problem(("exceptions", index, "select"), "expected at least one of tags, ids, clouds, regions, os")
                )
        if self.compliance is not None:
            found.extend(self.compliance.sla_problems())
        return found

    def exception_problems(self, now: datetime) -> list[Problem]:
        """Each exception that expires more than a year after `now` (the caller's clock): an
        accepted risk is reviewed at least once a year."""
        zone = self.zone_for(None)
        today = now.astimezone(zone).date()
        latest = a_year_after(today)
        return [
            Problem(
                ("exceptions", index, "expires"),
                f"exception {index} ({exception.reason}) expires {exception.expires.isoformat()}, more than a "
                f"year ahead: expected {latest.isoformat()} at the latest; renew it when it ends",
            )
            for index, exception in enumerate(self.exceptions)
            if exception.expires > latest
        ]

    def _traffic_problems(self) -> list[Problem]:
        found: list[Problem] = []
        if self.traffic.pool_health and not self.traffic.drain:
            found.append(
                Problem(
                    ("traffic", "pool_health"),
                    "needs traffic.drain: true (a machine that never left its pools does not rejoin them)",
                )
            )
        scheduled_by_azure = self.azure is not None and self.azure.maintenance is not None
        hooked: list[tuple[tuple[str | int, ...], Hooks]] = [(("hooks",), self.hooks)]
        hooked += [(("rings", i, "hooks"), r.hooks) for i, r in enumerate(self.rings) if r.hooks is not None]
        for where, hooks in hooked:
            for phase in ("before_install", "after_install"):
                hook = getattr(hooks, phase)
                if hook is not None and hook.linux is None and hook.windows is None:
                    found.append(Problem((*where, phase), "expected a linux or a windows script (or both)"))
            if scheduled_by_azure and any(getattr(hooks, p) is not None for p in Hooks.model_fields):
                found.append(
                    Problem(
                        where,
                        "cannot take effect with azure.maintenance: Update Manager installs at its own time, "
                        "PatchPilot cannot run hooks around it; drop azure.maintenance to let PatchPilot run the rings",
                    )
                )
        if scheduled_by_azure and self.traffic.drain:
            found.append(
                Problem(
                    ("traffic", "drain"),
                    "cannot take effect with azure.maintenance: Update Manager installs at its own time, "
                    "PatchPilot cannot drain around it",
                )
            )
        return found

    def zone_for(self, timezone: str | None) -> ZoneInfo:
        """A section's time zone: its own, else the schedule's, else UTC."""
        return resolve_timezone(timezone or (self.schedule.timezone if self.schedule else "UTC"))
