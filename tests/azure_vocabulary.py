"""The values Azure's patch APIs accept, once for every fake that checks a request against them
(installPatches in fake_azure_compute, maintenance configurations in fake_azure_maintenance).

Written out here, not imported from patchpilot: a fake that took its vocabulary from the code under
test would agree with that code's mistakes. `test_azure_vocabulary` holds these to the
azure-mgmt-compute SDK's enums (VMGuestPatchClassificationWindows/Linux, VMGuestPatchRebootSetting),
which come from the REST specification. The SDK spells one Windows value `UpdateRollUp`; the
service's examples, the Maintenance documentation and PatchPilot write `UpdateRollup`, which is
what the fakes accept (ARM matching enum values without regard to case is assumed, not verified).
"""

from __future__ import annotations

WINDOWS_CLASSIFICATIONS = frozenset(
    {"Critical", "Security", "UpdateRollup", "FeaturePack", "ServicePack", "Definition", "Tools", "Updates"}
)
LINUX_CLASSIFICATIONS = frozenset({"Critical", "Security", "Other"})
REBOOT_SETTINGS = ("IfRequired", "Never", "Always")
