"""Geo pairs: regions that must never be patched in the same wave.

Azure's cross-region replication pairs are built in (the table in Microsoft's "Azure
cross-region replication pairings for all geographies"); policies add their own, e.g. AWS
regions that back each other up. Pairs are undirected.
"""

from __future__ import annotations

from collections.abc import Iterable

AZURE_REGION_PAIRS: tuple[tuple[str, str], ...] = (
    ("australiacentral", "australiacentral2"),
    ("australiaeast", "australiasoutheast"),
    ("brazilsouth", "southcentralus"),
    ("brazilsoutheast", "brazilsouth"),
    ("canadacentral", "canadaeast"),
    ("centralindia", "southindia"),
    ("centralus", "eastus2"),
    ("chinaeast", "chinanorth"),
    ("chinaeast2", "chinanorth2"),
    ("chinaeast3", "chinanorth3"),
    ("eastasia", "southeastasia"),
    ("eastus", "westus"),
    ("francecentral", "francesouth"),
    ("germanywestcentral", "germanynorth"),
    ("japaneast", "japanwest"),
    ("jioindiawest", "jioindiacentral"),
    ("koreacentral", "koreasouth"),
    ("northcentralus", "southcentralus"),
    ("northeurope", "westeurope"),
    ("norwayeast", "norwaywest"),
    ("southafricanorth", "southafricawest"),
    ("swedencentral", "swedensouth"),
    ("switzerlandnorth", "switzerlandwest"),
    ("uaenorth", "uaecentral"),
    ("uksouth", "ukwest"),
    ("usgovarizona", "usgovtexas"),
    ("usgovvirginia", "usgovtexas"),
    ("westindia", "southindia"),
    ("westus2", "westcentralus"),
    ("westus3", "eastus"),
)


def region_key(name: str) -> str:
    """`East US` and `eastus` are one region."""
    return name.replace(" ", "").lower()


class RegionPairs:
    """Which regions are geo pairs of which; built-in Azure pairs plus the policy's."""

    def __init__(self, extra: Iterable[tuple[str, str]] = ()) -> None:
        self._partners: dict[str, set[str]] = {}
        for a, b in (*AZURE_REGION_PAIRS, *extra):
            ka, kb = region_key(a), region_key(b)
            self._partners.setdefault(ka, set()).add(kb)
            self._partners.setdefault(kb, set()).add(ka)

    def paired(self, a: str, b: str) -> bool:
        return region_key(b) in self._partners.get(region_key(a), ())
