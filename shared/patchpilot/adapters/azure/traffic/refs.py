"""The references a NIC's IP configurations hold to backend pools, as LeavePools items
(`"<ip configuration id>|<backend pool id>"`) and as the NIC's record of what PatchPilot took out
or put back (tag PatchPilotPools; the traffic package's docstring)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from ..access import digest, items, mark, parse_time, tags_of, text

TAG_POOLS = "PatchPilotPools"
POOL_KEYS = ("loadBalancerBackendAddressPools", "applicationGatewayBackendAddressPools")


@dataclasses.dataclass(frozen=True)
class PoolRef:
    """One IP configuration's reference to one backend pool (ids compare without case)."""

    config_id: str
    pool: str

    @property
    def key(self) -> tuple[str, str]:
        return self.config_id.lower(), self.pool.lower()

    @property
    def item(self) -> str:
        return f"{self.config_id}|{self.pool}"

    @property
    def nic(self) -> str:
        return nic_of_config(self.config_id)


def nic_of_config(config_id: str) -> str:
    """`.../networkInterfaces/{nic}/ipConfigurations/{name}` -> the NIC's id."""
    lower = config_id.lower()
    cut = lower.rfind("/ipconfigurations/")
    return config_id[:cut] if cut >= 0 else config_id


def parse_item(item: str) -> PoolRef | None:
    """A LeavePools item (`<ip configuration id>|<backend pool id>`); None when it is not one."""
    config_id, sep, pool = item.partition("|")
    if not sep or "/ipconfigurations/" not in config_id.lower() or "/backendaddresspools/" not in pool.lower():
        return None
    return PoolRef(config_id, pool.lower())


def pool_digest(pool: str) -> str:
    return digest(pool.lower())[:8]


@dataclasses.dataclass(frozen=True)
class NicRecord:
    """What a NIC's PatchPilotPools tag says: which command took which references out, when, and
    how long they take to drain (`wait`, seconds); or (`wait` None, written "back") which command
    put them back in, and when."""

    command_id: str
    at: datetime
    wait: int | None
    refs: list[PoolRef]

    @property
    def back(self) -> bool:
        return self.wait is None

    def by(self, command_id: str) -> bool:
        """Whether this command wrote the record (a long command id is recorded as its digest)."""
        return self.command_id == mark(command_id, self.at).split("|", 1)[0]

    def value(self, nic: Any) -> str:
        names = {text(c, "id").lower(): text(c, "name") for c in items(nic, "properties", "ipConfigurations")}
        entries = [
            f"{names.get(r.config_id.lower()) or r.config_id.rsplit('/', 1)[-1]}:{pool_digest(r.pool)}"
            for r in self.refs
        ]
        return mark(self.command_id, self.at, "back" if self.wait is None else str(self.wait), *entries)

    @classmethod
    def read(cls, nic: Any, pools: Iterable[str]) -> NicRecord | None:
        """The NIC's record, its entries resolved against `pools` (the target's, lower-cased: an
        entry whose pool is not one of them is left out); None without a readable one."""
        value = tags_of(nic).get(TAG_POOLS, "")
        parts = value.split("|")
        moment = parse_time(parts[1]) if len(parts) >= 3 else None
        if moment is None or not (parts[2].isdigit() or parts[2] == "back"):
            return None
        by_digest = {pool_digest(p): p.lower() for p in pools}
        configs = {text(c, "name"): text(c, "id") for c in items(nic, "properties", "ipConfigurations")}
        refs = []
        for entry in parts[3:]:
            name, _, short = entry.rpartition(":")
            if short in by_digest and configs.get(name):
                refs.append(PoolRef(configs[name], by_digest[short]))
        return cls(parts[0], moment, int(parts[2]) if parts[2].isdigit() else None, refs)


def refs_of(nic: Any, pools: set[str]) -> list[PoolRef]:
    """The NIC's references to any of `pools`."""
    found = []
    for config in items(nic, "properties", "ipConfigurations"):
        for key in POOL_KEYS:
            for ref in items(config, "properties", key):
                if text(ref, "id").lower() in pools:
                    found.append(PoolRef(text(config, "id"), text(ref, "id").lower()))
    return found


def without(nic: Any, refs: Sequence[PoolRef]) -> dict[str, Any]:
    """The NIC's PUT body (its writable properties as read) without these references."""
    body: dict[str, Any] = nic.as_dict(exclude_readonly=True)
    gone = {(r.config_id.lower(), r.pool.lower()) for r in refs}
    for config in items(body, "properties", "ipConfigurations"):
        properties = config.get("properties") or {}
        for key in POOL_KEYS:
            if key in properties:
                properties[key] = [
                    p for p in properties[key] or [] if (text(config, "id").lower(), text(p, "id").lower()) not in gone
                ]
    return body
