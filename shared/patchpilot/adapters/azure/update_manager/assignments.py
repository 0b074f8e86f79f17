"""Configuration assignments: dynamic scopes (a filter per ring and subscription) and static ones
(one machine's), their ids, and their rows from `maintenanceresources`."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from patchpilot.adapters.azure.graph import kql_list, query

from .machines import OS_TYPES, Machine, as_mapping

if TYPE_CHECKING:
    from azure.mgmt.maintenance.models import ConfigurationAssignment
    from azure.mgmt.resourcegraph import ResourceGraphClient


MAX_TAG_FILTERS = 50  # per dynamic scope


_ASSIGNMENT_ID = re.compile(
    r"^(?P<scope>/subscriptions/.+?)/providers/Microsoft\.Maintenance/configurationAssignments/(?P<name>[^/]+)$",
    re.IGNORECASE,
)


_SCOPE = re.compile(
    r"^/subscriptions/(?P<subscription>[^/]+)"
    r"(?:/resourceGroups/(?P<group>[^/]+)(?:/providers/(?P<namespace>[^/]+)/(?P<type>[^/]+)/(?P<resource>[^/]+))?)?$",
    re.IGNORECASE,
)


CONFIGURATION_ID_RE = re.compile(
    r"^/subscriptions/(?P<subscription>[^/]+)/resourceGroups/(?P<group>[^/]+)"
    r"/providers/Microsoft\.Maintenance/maintenanceConfigurations/(?P<name>[^/]+)$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ScopeFilter:
    """The filter of a dynamic scope. Values keep their case; `key` compares them as ARM does."""

    resource_types: tuple[str, ...] = ()
    resource_groups: tuple[str, ...] = ()
    os_types: tuple[str, ...] = ()
    locations: tuple[str, ...] = ()
    tags: tuple[tuple[str, tuple[str, ...]], ...] = ()
    tag_operator: str = ""  # All or Any; "" without tags

    @classmethod
    def of(
        cls,
        *,
        resource_types: Iterable[str] = (),
        resource_groups: Iterable[str] = (),
        os_types: Iterable[str] = (),
        locations: Iterable[str] = (),
        tags: Mapping[str, Iterable[str]] | None = None,
        tag_operator: str = "All",
    ) -> ScopeFilter:
        tag_pairs = tuple(sorted((k, unique_sorted(v)) for k, v in (tags or {}).items()))
        return cls(
            unique_sorted(resource_types),
            unique_sorted(resource_groups),
            unique_sorted(os_types),
            unique_sorted(locations),
            tag_pairs,
            tag_operator if tag_pairs else "",
        )

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> ScopeFilter:
        settings = as_mapping(data.get("tagSettings"))
        return cls.of(
            resource_types=data.get("resourceTypes") or (),
            resource_groups=data.get("resourceGroups") or (),
            os_types=data.get("osTypes") or (),
            locations=data.get("locations") or (),
            tags={str(k): [str(v) for v in vs or ()] for k, vs in as_mapping(settings.get("tags")).items()},
            tag_operator=str(settings.get("filterOperator") or "Any"),
        )

    def part(self, name: str) -> str:
        """One part of the filter, compared ignoring case and shown to people."""
        if name == "tagSettings":
            shown = " ".join(f"{k}={','.join(vs)}" for k, vs in self.tags)
            return f"{shown} ({self.tag_operator})" if shown else "none"
        values: tuple[str, ...] = getattr(self, FILTER_PARTS[name])
        return ", ".join(values) or "none"

    def matches(self, machine: Machine) -> bool:
        """Would this filter pick `machine` (within the scope it is assigned at)?"""
        tags = {k.lower(): v for k, v in machine.tags.items()}  # Azure tag names ignore case, values do not
        tag_hits = [key.lower() in tags and (not values or tags[key.lower()] in values) for key, values in self.tags]
        os = OS_TYPES[machine.os].lower() if machine.os else ""
        return (
            (not self.resource_types or machine.type.lower() in map(_lower, self.resource_types))
            and (not self.resource_groups or machine.resource_group.lower() in map(_lower, self.resource_groups))
            and (not self.os_types or os in map(_lower, self.os_types))
            and (not self.locations or machine.location.lower() in map(_lower, self.locations))
            and (not tag_hits or (all(tag_hits) if self.tag_operator == "All" else any(tag_hits)))
        )

    def model(self) -> Any:
        from azure.mgmt.maintenance.models import ConfigurationAssignmentFilterProperties, TagSettingsProperties

        return ConfigurationAssignmentFilterProperties(
            resource_types=list(self.resource_types),
            resource_groups=list(self.resource_groups) or None,
            os_types=list(self.os_types),
            locations=list(self.locations) or None,
            tag_settings=TagSettingsProperties(
                tags={k: list(vs) for k, vs in self.tags}, filter_operator=self.tag_operator
            )
            if self.tags
            else None,
        )


FILTER_PARTS = {
    "resourceTypes": "resource_types",
    "resourceGroups": "resource_groups",
    "osTypes": "os_types",
    "locations": "locations",
    "tagSettings": "tags",
}


def _lower(value: str) -> str:
    return value.lower()


def unique_sorted(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(dict.fromkeys(str(v) for v in values), key=str.lower))


@dataclass(frozen=True)
class Scope:
    """Where an assignment is made: a subscription, a resource group (dynamic scopes) or a resource."""

    subscription: str
    resource_group: str | None = None
    namespace: str | None = None
    type: str | None = None
    resource: str | None = None

    @property
    def kind(self) -> Literal["subscription", "resource_group", "resource"]:
        if self.resource is not None:
            return "resource"
        return "resource_group" if self.resource_group is not None else "subscription"


@dataclass(frozen=True)
class Assignment:
    """A configuration assignment: a dynamic scope (with `filter`) or one machine's (static)."""

    id: str
    configuration_id: str
    filter: ScopeFilter | None = None
    location: str | None = None
    ring: str = ""  # the ring it is for (desired assignments)

    @property
    def name(self) -> str:
        return self.id.rsplit("/", 1)[-1]

    @property
    def scope(self) -> Scope | None:
        """None for an id this module does not handle (a nested resource's assignment)."""
        found = _ASSIGNMENT_ID.match(self.id)
        where = _SCOPE.match(found["scope"]) if found else None
        if where is None:
            return None
        return Scope(where["subscription"], where["group"], where["namespace"], where["type"], where["resource"])

    @property
    def kind(self) -> Literal["dynamic", "static"]:
        scope = self.scope
        return "static" if scope is not None and scope.kind == "resource" else "dynamic"

    @property
    def machine_id(self) -> str:
        """The assigned resource's id (static assignments)."""
        found = _ASSIGNMENT_ID.match(self.id)
        return found["scope"] if found else ""

    def model(self) -> ConfigurationAssignment:
        from azure.mgmt.maintenance.models import ConfigurationAssignment

        if self.filter is not None:
            return ConfigurationAssignment(
                maintenance_configuration_id=self.configuration_id, filter=self.filter.model()
            )
        return ConfigurationAssignment(
            location=self.location, maintenance_configuration_id=self.configuration_id, resource_id=self.machine_id
        )


def assignment_id(scope: str, name: str) -> str:
    return f"{scope}/providers/Microsoft.Maintenance/configurationAssignments/{name}"


def parse_assignment(wire: Mapping[str, Any]) -> Assignment:
    """An assignment as ARM or Resource Graph shows it."""
    properties = as_mapping(wire.get("properties"))
    found = properties.get("filter")
    assignment = Assignment(
        id=str(wire.get("id", "")),
        configuration_id=str(properties.get("maintenanceConfigurationId") or ""),
        location=wire.get("location"),
    )
    if assignment.kind == "dynamic" and _well_formed_filter(found):
        return Assignment(
            assignment.id, assignment.configuration_id, ScopeFilter.from_wire(as_mapping(found)), assignment.location
        )
    return assignment  # a dynamic scope whose filter is absent or malformed: filter None, not known


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _well_formed_filter(found: object) -> bool:
    """A dynamic scope's filter as the Maintenance API writes it (ConfigurationAssignmentFilterProperties).
    Resource Graph's rows are not documented to carry it: read one that is absent or differently
    shaped as unknown (None), never as an empty filter, which would match every machine."""
    if not isinstance(found, Mapping):
        return False
    lists = [found.get(k) for k in ("resourceTypes", "resourceGroups", "osTypes", "locations")]
    if not all(v is None or _strings(v) for v in lists):
        return False
    settings = found.get("tagSettings")
    if settings is None:
        return True
    if not isinstance(settings, Mapping) or not isinstance(settings.get("filterOperator", "Any"), str | None):
        return False
    tags = settings.get("tags")
    return tags is None or (isinstance(tags, Mapping) and all(_strings(v) for v in tags.values()))


def assignments_query(configuration_ids: Iterable[str] = ()) -> str:
    """Resource Graph: configuration assignments, of the given configurations when any are given."""
    lines = ["maintenanceresources", "| where type =~ 'microsoft.maintenance/configurationassignments'"]
    ids = sorted({c.lower() for c in configuration_ids})
    if ids:
        lines.append(f"| where tolower(tostring(properties.maintenanceConfigurationId)) in {kql_list(ids)}")
    lines.append("| project id, name, location, properties")
    return "\n".join(lines)


def read_assignments(
    graph: ResourceGraphClient, subscriptions: Sequence[str], configuration_ids: Iterable[str] = ()
) -> list[Assignment]:
    return [parse_assignment(row) for row in query(graph, assignments_query(configuration_ids), subscriptions)]


def configuration_id(subscription: str, resource_group: str, name: str) -> str:
    return (
        f"/subscriptions/{subscription}/resourceGroups/{resource_group}"
        f"/providers/Microsoft.Maintenance/maintenanceConfigurations/{name}"
    )
