"""The fakes' Azure vocabulary (tests/azure_vocabulary.py) against the published API: the enums of
azure-mgmt-compute, generated from the REST specification."""

from __future__ import annotations

from collections.abc import Iterable

from azure.mgmt.compute.models import (
    VMGuestPatchClassificationLinux,
    VMGuestPatchClassificationWindows,
    VMGuestPatchRebootSetting,
)
from azure.mgmt.maintenance.models import RebootOptions
from azure_vocabulary import LINUX_CLASSIFICATIONS, REBOOT_SETTINGS, WINDOWS_CLASSIFICATIONS


def lowered(values: Iterable[object]) -> set[str]:
    return {str(getattr(v, "value", v)).lower() for v in values}


def test_the_classifications_the_fakes_accept_are_the_compute_apis_enums() -> None:
    assert lowered(WINDOWS_CLASSIFICATIONS) == lowered(VMGuestPatchClassificationWindows)
    assert lowered(LINUX_CLASSIFICATIONS) == lowered(VMGuestPatchClassificationLinux)
    assert "UpdateRollup" in WINDOWS_CLASSIFICATIONS  # the SDK's UpdateRollUp, as the service's examples write it


def test_the_reboot_settings_are_the_compute_and_maintenance_apis_enums() -> None:
    assert set(REBOOT_SETTINGS) == {s.value for s in VMGuestPatchRebootSetting} == {o.value for o in RebootOptions}
