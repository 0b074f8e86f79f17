"""The fleet as PatchPilot sees it: instances with their placement and tags.

Locally an inventory is a JSON file; the cloud adapters discover the same `Instance` records.
"""

import functools
from operator import attrgetter
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError, from_json

from patchpilot.errors import InputError, Problem, quote
from patchpilot.inputs import one_or_more, parse_json, problems_from, read_text

Cloud = Literal["aws", "azure"]
OsFamily = Literal["linux", "windows"]


Verdict = Literal["ok", "fail"]

MAX_POOLS_PER_INSTANCE = 100  # ELBv2 target groups, Azure backend pools: a machine serves from a few
# The load-balancer pools a machine serves from (docs/planner.md, "Traffic pools"): any string ids,
# e.g. a target group ARN or a backend pool resource id; one id alone is a list of that one.
PoolIds = Annotated[
    tuple[Annotated[str, Field(min_length=1, max_length=1024)], ...],
    Field(max_length=MAX_POOLS_PER_INSTANCE),  # before the validator: the schema says maxItems
    BeforeValidator(one_or_more),
]


class MaintenanceHint(BaseModel):
    """Maintenance the simulated cloud has scheduled on the machine (adapters/local/simulated_maintenance.py):
    `in_hours` from the hour of each read, or `at`."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)  # built with Instance's own

    kind: Annotated[str, Field(min_length=1)] = "system-reboot"
    in_hours: Annotated[float, Field(ge=-24 * 30, le=24 * 365)] | None = None
    at: AwareDatetime | None = None
    duration_minutes: Annotated[int, Field(ge=1, le=7 * 24 * 60)] = 120
    description: str = ""
    downtime: bool = True
    warning: str = ""

    @model_validator(mode="after")
    def _one_time(self) -> "MaintenanceHint":
        if (self.in_hours is None) == (self.at is None):
            raise PydanticCustomError("pp_when", "give exactly one of in_hours or at")
        return self


class Simulation(BaseModel):
    """Fault hints for the simulated fleet of the local runtime; cloud adapters ignore them."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)  # built with Instance's own

    install: Verdict = "ok"
    health: Verdict = "ok"  # the health check after patching
    snapshot: Verdict = "ok"
    rollback: Verdict = "ok"
    agent: Literal["online", "offline"] = "online"
    install_minutes: Annotated[int, Field(ge=1, le=24 * 60)] | None = None
    maintenance: tuple[MaintenanceHint, ...] = ()  # the cloud's own scheduled maintenance
    # The patches its assessment reports missing (KB ids, package names); absent: a deterministic
    # share of the simulated fleet's catalogue (docs/compliance.md).
    missing: tuple[str, ...] | None = None
    # Traffic pools and host hooks (docs/operations.md, "Simulated faults"; docs/traffic.md):
    drain: Literal["ok", "timeout"] = "ok"  # timeout: its pools never report it drained
    pool_health: Verdict = "ok"  # fail: its pools keep reporting it unhealthy after it rejoins
    before_install_hook: Verdict = "ok"  # fail: the hook exits 1 ("hook: service did not stop")
    after_install_hook: Verdict = "ok"  # fail: the hook exits 1 ("hook: service did not start")


@dataclass(frozen=True, slots=True, config=ConfigDict(extra="forbid", coerce_numbers_to_str=True))
class Instance:
    """One machine. A slotted dataclass: fleets of 100,000 must stay light."""

    id: Annotated[str, Field(min_length=1)]
    cloud: Cloud
    region: Annotated[str, Field(min_length=1)]
    os: OsFamily
    name: str = ""
    zone: str | None = None
    availability_set: str | None = None
    update_domain: Annotated[int, Field(ge=0)] | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    account: str | None = None  # AWS account id or Azure subscription id, where the fleet spans several
    traffic_pools: PoolIds = ()
    # The AWS Auto Scaling group (its name) or Azure scale set (its lower-cased resource id) the
    # machine belongs to (docs/planner.md, "Scaling groups"): any string id.
    scaling_group: Annotated[str, Field(min_length=1, max_length=1600)] | None = None
    # "uniform": an instance of an Azure Uniform scale set (its `scaling_group`), which PatchPilot
    # cannot patch in place: the planner always excludes it (docs/policy.md, "Inventory files").
    scale_set_mode: Literal["uniform"] | None = None
    # Takes its security patches without a reboot (docs/governance.md, "Hotpatch and stopped
    # machines"): Azure hotpatch (patchSettings.enableHotpatching), Kernel Live Patching on Amazon
    # Linux (the instance's PatchPilot:LivePatch tag). Discovery sets it; an inventory may.
    hotpatch: bool = False
    # Found stopped (AWS stopped, Azure stopped but allocated) or deallocated (Azure); None: running
    # or not known. Discovery sets it; an inventory may (the simulated fleet then starts it stopped).
    # With `stopped_machines: start` a run starts it for its wave and returns it to this state.
    power: Literal["stopped", "deallocated"] | None = None
    simulation: Simulation | None = None

    @model_validator(mode="after")
    def _placement_is_possible(self) -> "Instance":
        if self.zone is not None and self.availability_set is not None:
            raise PydanticCustomError(
                "pp_placement",
                "a machine is either in a zone or in an availability set, not both "
                "(zone {zone}, availability_set {aset})",
                {"zone": self.zone, "aset": self.availability_set},
            )
        if self.scale_set_mode is not None and self.scaling_group is None:
            raise PydanticCustomError(
                "pp_scale_set",
                "scale_set_mode {mode} needs the scale set's id in scaling_group",
                {"mode": self.scale_set_mode},
            )
        return self

    @property
    def short_name(self) -> str:
        """The name, or the last part of a long id such as an ARM resource id."""
        return self.name or self.id.rsplit("/", 1)[-1]

    @property
    def label(self) -> str:
        return f"{self.id} ({self.name})" if self.name and self.name != self.id else self.id


@functools.cache
def _instances() -> TypeAdapter[list[Instance]]:
    """Built on first use: the Lambda and Functions handlers never read inventory files."""
    return TypeAdapter(list[Instance])


def parse_inventory(data: Any, source: str) -> list[Instance]:
    """Validate an inventory document, naming each bad entry by its index and id."""
    if not isinstance(data, dict) or "instances" not in data:
        raise InputError.single(source, 'expected an object with an "instances" list')
    unknown = sorted(set(data) - {"instances"})
    entries = data["instances"]
    problems = [Problem((key,), "unknown field (allowed: instances)") for key in unknown]
    if not isinstance(entries, list):
        raise InputError(source, [*problems, Problem(("instances",), f"expected a list, got {quote(entries)}")])
    try:
        instances = _instances().validate_python(entries)
    except ValidationError as exc:
        for problem in problems_from(exc, Instance, prefix=("instances",)):
            problems.append(_named(problem, entries))
        instances = []
    if not problems and len({i.id for i in instances}) == len(instances):
        return instances  # valid, ids unique: no need to look for the entries to name
    seen: dict[object, int] = {}
    for index, entry in enumerate(entries):
        entry_id = entry.get("id") if isinstance(entry, dict) else None
        if isinstance(entry_id, int) and not isinstance(entry_id, bool):
            entry_id = str(entry_id)  # validated as a string: 5 and "5" are the same id
        if not isinstance(entry_id, str):
            continue  # missing or of the wrong type: already reported, and may be unhashable
        if entry_id in seen:
            first = seen[entry_id]
            problems.append(
                Problem(("instances", index, "id"), f"duplicate id {quote(entry_id)} (also instances[{first}])")
            )
        seen.setdefault(entry_id, index)
    if problems:
        raise InputError(source, problems)
    return instances


def _named(problem: Problem, entries: list[Any]) -> Problem:
    """Put the entry's id beside its index: `instances[3] (id "i-0abc").zone: ...`."""
    index = problem.path[1] if len(problem.path) > 1 else None
    if not isinstance(index, int) or not isinstance(entries[index], dict):
        return problem
    entry_id = entries[index].get("id")
    if not isinstance(entry_id, str) or not entry_id:
        return problem
    return Problem(problem.path, f"{problem.message} (entry {quote(entry_id)})")


def load_inventory(path: str) -> list[Instance]:
    # pydantic's JSON parser, from the file's bytes: faster than `json`, no copy of the file as a
    # `str`, and the strings that repeat (keys, regions, tags) become one object each, which keeps a
    # fleet of 100,000 light (bench/bench_cli_plan.py).
    try:
        raw = Path(path).read_bytes()
        data = from_json(raw, cache_strings="all")
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON: named as the text is read
        data = parse_json(read_text(path), path)  # as `json` names the problem (or reads what it reads)
        return parse_inventory(data, path)
    instances = _valid_instances(data)
    if instances is None:  # something to report: the entries read again, named by parse_inventory
        return parse_inventory(from_json(raw, cache_strings="all"), path)
    return instances


SLICE = 4096  # entries validated at a time by `_valid_instances`
_ID = attrgetter("id")


def _valid_instances(data: Any) -> list[Instance] | None:
    """The instances of a valid inventory document (`parse_inventory` accepts it), None otherwise.
    The entries are validated a slice at a time and each slice let go once validated (taken off the
    document, which this consumes), so that its memory holds the next slice's instances: a fleet of
    100,000 takes a quarter less memory, and less time goes to the pages a process touches first."""
    if not isinstance(data, dict) or set(data) != {"instances"} or not isinstance(data["instances"], list):
        return None
    entries: list[Any] = data.pop("instances")
    entries.reverse()  # taken from the end, where a slice comes off the list without moving the rest
    adapter, instances = _instances(), []
    try:
        while entries:
            part = entries[-SLICE:]
            del entries[-SLICE:]
            part.reverse()
            instances += adapter.validate_python(part)
    except ValidationError:
        return None
    return instances if len(set(map(_ID, instances))) == len(instances) else None
