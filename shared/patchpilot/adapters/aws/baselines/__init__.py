"""Patch Manager baselines and patch groups kept in step with the policy (`patchpilot aws sync`).

The shape of a sync (cosmicpython's `sync.py`): gather what is wanted and what is there, let a
pure function say what differs, then do it.

- `desired_baselines(policy)`, pure: one baseline per operating system named
  `patchpilot-<policy>-<os>`, what it approves taken from `policy.patches` and
  `policy.aws.baselines`, registered for one patch group per ring (`<policy>-<ring>`).
- `desired_tags(...)`, pure: the patch-group tag each instance should carry, from its ring.
- `read_actual(ssm, ...)`: DescribePatchBaselines, GetPatchBaseline, DescribePatchGroups (and
  EC2 DescribeTags for the instances to tag).
- `diff(desired, actual)`, pure: the changes, in the order they must be made.
- `apply(ssm, changes, ec2=...)`, or `apply_each` which yields each change once made:
  CreatePatchBaseline (with a ClientToken), UpdatePatchBaseline,
  Deregister/RegisterPatchBaselineForPatchGroup, EC2 CreateTags.

How our classification names map to each system's filter values is in `OPERATING_SYSTEMS` and
in docs/aws-baselines.md; keep the two together.

The package is cut along those steps, like `adapters/azure/update_manager/`: `vocabulary` (each
system's filter values), `desired` (baselines, patch groups, tags), `reconcile` (actual, diff,
apply); this module re-exports their public names.
"""

from __future__ import annotations

from .desired import (
    FIELD_LABELS,
    NAME_PREFIX,
    PATCH_GROUP_TAG_KEYS,
    BaselineFields,
    BaselineSpec,
    Desired,
    Filters,
    Rule,
    TagPlan,
    Target,
    baseline_name,
    desired_baselines,
    desired_tags,
    filters_of,
    owned_by,
    patch_group,
    policy_problems,
    show,
)
from .reconcile import (
    DESCRIBE_TAGS_BATCH,
    TAG_BATCH,
    Actual,
    ActualBaseline,
    Blocked,
    Change,
    CreateBaseline,
    DeregisterPatchGroup,
    FieldChange,
    RegisterPatchGroup,
    Registration,
    TagInstances,
    UpdateBaseline,
    apply,
    apply_each,
    change_document,
    diff,
    leftovers,
    read_actual,
    read_tags,
)
from .vocabulary import (
    APT_PRIORITIES,
    MAX_LISTED_PATCHES,
    MAX_PATCH_ID,
    OPERATING_SYSTEMS,
    Family,
    SsmOs,
    is_windows_update,
    override_baselines,
)

__all__ = [
    "APT_PRIORITIES",
    "DESCRIBE_TAGS_BATCH",
    "FIELD_LABELS",
    "MAX_LISTED_PATCHES",
    "MAX_PATCH_ID",
    "NAME_PREFIX",
    "OPERATING_SYSTEMS",
    "PATCH_GROUP_TAG_KEYS",
    "TAG_BATCH",
    "Actual",
    "ActualBaseline",
    "BaselineFields",
    "BaselineSpec",
    "Blocked",
    "Change",
    "CreateBaseline",
    "DeregisterPatchGroup",
    "Desired",
    "Family",
    "FieldChange",
    "Filters",
    "RegisterPatchGroup",
    "Registration",
    "Rule",
    "SsmOs",
    "TagInstances",
    "TagPlan",
    "Target",
    "UpdateBaseline",
    "apply",
    "apply_each",
    "baseline_name",
    "change_document",
    "desired_baselines",
    "desired_tags",
    "diff",
    "filters_of",
    "is_windows_update",
    "leftovers",
    "override_baselines",
    "owned_by",
    "patch_group",
    "policy_problems",
    "read_actual",
    "read_tags",
    "show",
]
