"""What exists (`read_actual`), the difference to what the policy wants (`diff`, pure, in the
order the changes must be made) and making it (`apply_each`), plus the changes' report shape."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, assert_never

from patchpilot.adapters.azure.install_body import (
    LINUX_CLASSIFICATIONS,
    WINDOWS_CLASSIFICATIONS,
)
from patchpilot.policy.model import AzureSettings

from .assignments import (
    CONFIGURATION_ID_RE,
    FILTER_PARTS,
    Assignment,
    ScopeFilter,
    parse_assignment,
    read_assignments,
    unique_sorted,
)
from .desired import FIELD_LABELS, TAG_POLICY, TAG_RING, ConfigurationFields, ConfigurationSpec, Desired, show
from .machines import as_mapping

if TYPE_CHECKING:
    from patchpilot.adapters.azure.clients import AzureClients


_NO_EXPIRATION = ("", "9999-12-31 23:59", "9999-12-31 23:59:59")


@dataclass(frozen=True)
class ActualConfiguration:
    id: str
    name: str
    location: str
    tags: Mapping[str, str]
    fields: ConfigurationFields

    @property
    def owner(self) -> str | None:
        """The policy whose configuration this is, by its tag."""
        return self.tags.get(TAG_POLICY)


@dataclass(frozen=True)
class Actual:
    configurations: Mapping[str, ActualConfiguration]  # lower-case name -> every one in the resource group
    assignments: tuple[Assignment, ...]  # of PatchPilot's configurations, or at PatchPilot's names


def parse_configuration(wire: Mapping[str, Any]) -> ActualConfiguration:
    """A maintenance configuration as ARM returns it."""
    properties = as_mapping(wire.get("properties"))
    window = as_mapping(properties.get("maintenanceWindow"))
    install = as_mapping(properties.get("installPatches"))
    windows = as_mapping(install.get("windowsParameters"))
    linux = as_mapping(install.get("linuxParameters"))
    start = str(window.get("startDateTime") or "")
    expiration = str(window.get("expirationDateTime") or "")
    tags = {str(k): str(v) for k, v in as_mapping(wire.get("tags")).items()}
    fields = ConfigurationFields(
        start_time=start[11:16] if len(start) >= 16 else start,
        duration=str(window.get("duration") or ""),
        time_zone=str(window.get("timeZone") or ""),
        recur_every=str(window.get("recurEvery") or ""),
        reboot_setting=str(install.get("rebootSetting") or ""),
        windows_classifications=_ordered(windows.get("classificationsToInclude"), WINDOWS_CLASSIFICATIONS),
        kb_numbers_to_include=unique_sorted(windows.get("kbNumbersToInclude") or ()),
        kb_numbers_to_exclude=unique_sorted(windows.get("kbNumbersToExclude") or ()),
        linux_classifications=_ordered(linux.get("classificationsToInclude"), LINUX_CLASSIFICATIONS),
        package_name_masks_to_include=unique_sorted(linux.get("packageNameMasksToInclude") or ()),
        package_name_masks_to_exclude=unique_sorted(linux.get("packageNameMasksToExclude") or ()),
        maintenance_scope=str(properties.get("maintenanceScope") or ""),
        visibility=str(properties.get("visibility") or ""),
        in_guest_patch_mode=str(as_mapping(properties.get("extensionProperties")).get("InGuestPatchMode") or ""),
        expiration="" if expiration in _NO_EXPIRATION else expiration,
        tags=tuple((k, tags[k]) for k in (TAG_POLICY, TAG_RING) if k in tags),
    )
    return ActualConfiguration(
        str(wire.get("id", "")), str(wire.get("name", "")), str(wire.get("location", "")), tags, fields
    )


def _ordered(values: object, order: Sequence[str]) -> tuple[str, ...]:
    given = [str(v) for v in values] if isinstance(values, list) else []
    return tuple([c for c in order if c in given] + sorted(v for v in given if v not in order))


def read_actual(clients: AzureClients, want: Desired, settings: AzureSettings) -> Actual:
    """The resource group's configurations (one list), the dynamic scopes at PatchPilot's names
    (one GET per name and subscription), and every other assignment of PatchPilot's configurations
    (Resource Graph, which may lag a write by a minute)."""
    from azure.core.exceptions import ResourceNotFoundError

    assert settings.maintenance is not None
    home = clients.maintenance(settings.subscriptions[0])
    configurations = {}
    for item in home.maintenance_configurations_for_resource_group.list(settings.maintenance.resource_group):
        found = parse_configuration(item.serialize(keep_readonly=True))
        configurations[found.name.lower()] = found
    owned = [c for c in configurations.values() if c.owner == want.policy]
    names = list(dict.fromkeys([s.name for s in want.configurations] + [c.name for c in owned]))
    assignments: dict[str, Assignment] = {}
    for subscription in settings.subscriptions:
        operations = clients.maintenance(subscription).configuration_assignments_for_subscriptions
        for name in names:
            try:
                got = operations.get(name)
            except ResourceNotFoundError:
                continue
            assignment = parse_assignment(got.serialize(keep_readonly=True))
            assignments[assignment.id.lower()] = assignment
    ids = [s.id for s in want.configurations] + [c.id for c in owned]
    if ids:
        for assignment in read_assignments(clients.graph(), settings.subscriptions, ids):
            assignments.setdefault(assignment.id.lower(), assignment)
    return Actual(configurations, tuple(sorted(assignments.values(), key=lambda a: a.id.lower())))


@dataclass(frozen=True)
class FieldChange:
    field: str  # its wire name
    old: str
    new: str


@dataclass(frozen=True)
class CreateConfiguration:
    spec: ConfigurationSpec


@dataclass(frozen=True)
class UpdateConfiguration:
    spec: ConfigurationSpec
    actual: ActualConfiguration
    fields: tuple[FieldChange, ...]


@dataclass(frozen=True)
class DeleteConfiguration:
    actual: ActualConfiguration
    reason: str


@dataclass(frozen=True)
class CreateAssignment:
    assignment: Assignment


@dataclass(frozen=True)
class UpdateAssignment:
    assignment: Assignment
    fields: tuple[FieldChange, ...]


@dataclass(frozen=True)
class DeleteAssignment:
    assignment: Assignment
    reason: str


@dataclass(frozen=True)
class Blocked:
    """A difference PatchPilot will not resolve on its own; `apply` leaves it."""

    subject: str
    reason: str


Change = (
    CreateConfiguration
    | UpdateConfiguration
    | DeleteConfiguration
    | CreateAssignment
    | UpdateAssignment
    | DeleteAssignment
    | Blocked
)


_ORDER = {
    CreateConfiguration: 0,
    UpdateConfiguration: 1,
    CreateAssignment: 2,
    UpdateAssignment: 3,
    DeleteAssignment: 4,  # before the configurations they point to
    DeleteConfiguration: 5,
    Blocked: 6,
}


def diff(want: Desired, have: Actual) -> list[Change]:
    """What must change for `have` to be `want`, in the order `apply_each` makes it. Only
    configurations tagged as this policy's are changed or deleted, and only assignments of them."""
    changes: list[Change] = []
    blocked_rings: set[str] = set()  # their configuration is someone else's: nothing is assigned to it
    for spec in want.configurations:
        current = have.configurations.get(spec.name.lower())
        if current is None:
            changes.append(CreateConfiguration(spec))
        elif current.owner != want.policy:
            owner = f"policy {current.owner}'s" if current.owner else f"not PatchPilot's (no {TAG_POLICY} tag)"
            changes.append(
                Blocked(
                    f"maintenance configuration {spec.name}",
                    f"exists and is {owner}: rename the ring or azure.maintenance.name_prefix, or delete it",
                )
            )
            blocked_rings.add(spec.ring)
        elif current.location.replace(" ", "").lower() != spec.location.replace(" ", "").lower():
            changes.append(
                Blocked(
                    f"maintenance configuration {spec.name}",
                    f"is in {current.location}, not {spec.location}, and cannot move: delete it, or set "
                    f"azure.maintenance.location to {current.location}",
                )
            )
            blocked_rings.add(spec.ring)
        else:
            fields = _field_changes(current.fields, spec.fields)
            if fields:
                changes.append(UpdateConfiguration(spec, current, fields))
    wanted_names = {s.name.lower() for s in want.configurations}
    leaving = {
        c.id.lower(): c
        for c in have.configurations.values()
        if c.owner == want.policy and c.name.lower() not in wanted_names
    }
    ours = {s.id.lower() for s in want.configurations if s.ring not in blocked_rings} | set(leaving)

    current_assignments = {a.id.lower(): a for a in have.assignments}
    wanted_assignments = {a.id.lower(): a for a in want.assignments if a.ring not in blocked_rings}
    for key, assignment in wanted_assignments.items():
        current_a = current_assignments.get(key)
        if current_a is None:
            changes.append(CreateAssignment(assignment))
        elif current_a.configuration_id.lower() not in ours:
            changes.append(
                Blocked(
                    f"configuration assignment {assignment.id}",
                    f"exists for another maintenance configuration ({current_a.configuration_id}): delete it, or "
                    "rename the ring or azure.maintenance.name_prefix",
                )
            )
        else:
            fields = _assignment_changes(current_a, assignment)
            if fields:
                changes.append(UpdateAssignment(assignment, fields))
    for key, current_a in current_assignments.items():
        if key in wanted_assignments or current_a.configuration_id.lower() not in ours:
            continue
        if current_a.scope is None:
            changes.append(
                Blocked(
                    f"configuration assignment {current_a.id}", "a nested resource's assignment: remove it yourself"
                )
            )
            continue
        changes.append(DeleteAssignment(current_a, _why_unassigned(want, current_a, leaving)))
    for configuration in leaving.values():
        ring = configuration.tags.get(TAG_RING, "?")
        changes.append(DeleteConfiguration(configuration, f"the policy has no Azure ring {ring} any more"))
    return sorted(changes, key=lambda c: _ORDER[type(c)])


def _field_changes(old: ConfigurationFields, new: ConfigurationFields) -> tuple[FieldChange, ...]:
    out = []
    for name, label in FIELD_LABELS.items():
        before, after = getattr(old, name), getattr(new, name)
        if before != after:
            out.append(FieldChange(label, show(before), show(after)))
    return tuple(out)


def _assignment_changes(old: Assignment, new: Assignment) -> tuple[FieldChange, ...]:
    out = []
    if old.configuration_id.lower() != new.configuration_id.lower():
        out.append(FieldChange("maintenanceConfigurationId", old.configuration_id, new.configuration_id))
    if new.filter is not None:
        before = old.filter or ScopeFilter()
        for part in FILTER_PARTS:
            if before.part(part).lower() != new.filter.part(part).lower():
                out.append(FieldChange(f"filter.{part}", before.part(part), new.filter.part(part)))
    return tuple(out)


def _why_unassigned(want: Desired, assignment: Assignment, leaving: Mapping[str, ActualConfiguration]) -> str:
    if assignment.configuration_id.lower() in leaving:
        return "its maintenance configuration is deleted"
    if assignment.kind != want.mode:
        return f"a {assignment.kind} assignment, but azure.maintenance.assignment is {want.mode}"
    if assignment.kind == "dynamic":
        return "not a subscription of azure.subscriptions, or not a scope PatchPilot writes"
    return "the policy no longer puts this machine in the ring"


def apply_each(clients: AzureClients, changes: Sequence[Change]) -> Iterator[Change]:
    """Make the changes in order, yielding each once it is made. A failing call raises (azure-core's
    HttpResponseError) after the changes before it are made; a later sync picks up from there,
    since every write is a PUT or DELETE by a deterministic name."""
    for change in sorted(changes, key=lambda c: _ORDER[type(c)]):
        match change:
            case CreateConfiguration(spec):
                clients.maintenance(spec.subscription).maintenance_configurations.create_or_update(
                    spec.resource_group, spec.name, spec.model()
                )
            case UpdateConfiguration(spec, actual, _):
                clients.maintenance(spec.subscription).maintenance_configurations.create_or_update(
                    spec.resource_group, spec.name, spec.model(actual.tags)
                )
            case CreateAssignment(assignment) | UpdateAssignment(assignment, _):
                _put_assignment(clients, assignment)
            case DeleteAssignment(assignment, _):
                _delete_assignment(clients, assignment)
            case DeleteConfiguration(actual, _):
                where = CONFIGURATION_ID_RE.match(actual.id)
                if where is None:
                    raise ValueError(f"not a maintenance configuration id: {actual.id}")
                clients.maintenance(where["subscription"]).maintenance_configurations.delete(
                    where["group"], where["name"]
                )
            case Blocked():
                continue
            case _:
                assert_never(change)
        yield change


def _put_assignment(clients: AzureClients, assignment: Assignment) -> None:
    scope = assignment.scope
    if scope is None:
        raise ValueError(f"not an assignment id PatchPilot writes: {assignment.id}")
    client = clients.maintenance(scope.subscription)
    match scope.kind:
        case "subscription":
            client.configuration_assignments_for_subscriptions.create_or_update(assignment.name, assignment.model())
        case "resource_group":
            assert scope.resource_group is not None
            client.configuration_assignments_for_resource_group.create_or_update(
                scope.resource_group, assignment.name, assignment.model()
            )
        case "resource":
            assert scope.resource_group and scope.namespace and scope.type and scope.resource
            client.configuration_assignments.create_or_update(
                scope.resource_group, scope.namespace, scope.type, scope.resource, assignment.name, assignment.model()
            )


def _delete_assignment(clients: AzureClients, assignment: Assignment) -> None:
    scope = assignment.scope
    if scope is None:
        raise ValueError(f"not an assignment id PatchPilot removes: {assignment.id}")
    client = clients.maintenance(scope.subscription)
    match scope.kind:
        case "subscription":
            client.configuration_assignments_for_subscriptions.delete(assignment.name)
        case "resource_group":
            assert scope.resource_group is not None
            client.configuration_assignments_for_resource_group.delete(scope.resource_group, assignment.name)
        case "resource":
            assert scope.resource_group and scope.namespace and scope.type and scope.resource
            client.configuration_assignments.delete(
                scope.resource_group, scope.namespace, scope.type, scope.resource, assignment.name
            )


def change_document(change: Change) -> dict[str, object]:
    """A change as JSON for `patchpilot azure sync --json`."""
    match change:
        case CreateConfiguration(spec):
            return {
                "action": "create_configuration",
                "configuration": spec.name,
                "id": spec.id,
                "ring": spec.ring,
                "fields": {"startDateTime": spec.start_date_time}
                | {label: show(getattr(spec.fields, name)) for name, label in FIELD_LABELS.items()},
            }
        case UpdateConfiguration(spec, _, fields):
            return {
                "action": "update_configuration",
                "configuration": spec.name,
                "id": spec.id,
                "ring": spec.ring,
                "fields": {f.field: {"old": f.old, "new": f.new} for f in fields},
            }
        case DeleteConfiguration(actual, reason):
            return {"action": "delete_configuration", "configuration": actual.name, "id": actual.id, "reason": reason}
        case CreateAssignment(assignment):
            return {
                "action": "create_assignment",
                "kind": assignment.kind,
                "id": assignment.id,
                "ring": assignment.ring,
                "configuration_id": assignment.configuration_id,
                "filter": {p: assignment.filter.part(p) for p in FILTER_PARTS} if assignment.filter else None,
            }
        case UpdateAssignment(assignment, fields):
            return {
                "action": "update_assignment",
                "kind": assignment.kind,
                "id": assignment.id,
                "ring": assignment.ring,
                "fields": {f.field: {"old": f.old, "new": f.new} for f in fields},
            }
        case DeleteAssignment(assignment, reason):
            return {"action": "delete_assignment", "kind": assignment.kind, "id": assignment.id, "reason": reason}
        case Blocked(subject, reason):
            return {"action": "blocked", "subject": subject, "reason": reason}
        case _:
            assert_never(change)
