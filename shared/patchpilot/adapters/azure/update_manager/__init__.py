"""Azure Update Manager in step with the policy: `patchpilot azure audit` and `patchpilot azure sync`.

Audit (patch orchestration): every machine in the policy's Azure scope is read in bulk from
Resource Graph with its patch settings (`read_machines`), with the configuration assignments
(schedules) from `maintenanceresources` (`read_assignments`). `audit(...)`, pure, says which
machines a schedule cannot patch and which patch themselves behind PatchPilot's back, following
Microsoft's scenario table (docs/azure-update-manager.md). `fix_patch_settings` sets Customer
Managed Schedules: patchMode AutomaticByPlatform + bypassPlatformSafetyChecksOnUserSchedule.

Sync (maintenance configurations), shaped like `adapters/aws/baselines/`:
- `desired(policy, now, machines)`, pure: one maintenance configuration per Azure ring, named
  `<name_prefix>-<policy>-<ring>` and tagged as PatchPilot's, from `schedule`, `patches` and
  `reboot`; assigned by a dynamic scope per ring and subscription, or statically per machine.
- `read_actual(clients, desired, settings)`: the configurations of the resource group, the
  dynamic scopes by their names, the other assignments of PatchPilot's configurations from
  Resource Graph.
- `diff(desired, actual)`, pure: the changes in the order they must be made.
- `apply_each(clients, changes)`: PUT and DELETE through the real SDK clients.

The package is cut along those steps: `machines`, `assignments`, `audit`, `desired` (with
`recurrence`), `reconcile` (actual, diff, apply); this module re-exports their public names.
"""

from __future__ import annotations

from .assignments import (
    CONFIGURATION_ID_RE,
    FILTER_PARTS,
    MAX_TAG_FILTERS,
    Assignment,
    Scope,
    ScopeFilter,
    assignment_id,
    assignments_query,
    configuration_id,
    parse_assignment,
    read_assignments,
    unique_sorted,
)
from .audit import (
    Finding,
    FindingKind,
    MachineAudit,
    audit,
)
from .desired import (
    FIELD_LABELS,
    MAX_RESOURCE_GROUP_FILTERS,
    MAX_STATIC_PER_SCHEDULE,
    MAX_WINDOW,
    MIN_WINDOW,
    TAG_POLICY,
    TAG_RING,
    ConfigurationFields,
    ConfigurationSpec,
    Desired,
    PatchPilotSchedule,
    azure_rings,
    configuration_name,
    desired,
    patchpilot_schedules,
    policy_problems,
    scope_filter,
    show,
)
from .machines import (
    ARC_TYPE,
    CUSTOMER_MANAGED_MODE,
    OS_TYPES,
    VM_TYPE,
    Machine,
    PatchSettings,
    as_mapping,
    fix_patch_settings,
    machines_query,
    parse_machine,
    read_machines,
)
from .reconcile import (
    Actual,
    ActualConfiguration,
    Blocked,
    Change,
    CreateAssignment,
    CreateConfiguration,
    DeleteAssignment,
    DeleteConfiguration,
    FieldChange,
    UpdateAssignment,
    UpdateConfiguration,
    apply_each,
    change_document,
    diff,
    parse_configuration,
    read_actual,
)
from .recurrence import (
    recur_every,
    windows_time_zone,
)

__all__ = [
    "ARC_TYPE",
    "CONFIGURATION_ID_RE",
    "CUSTOMER_MANAGED_MODE",
    "FIELD_LABELS",
    "FILTER_PARTS",
    "MAX_RESOURCE_GROUP_FILTERS",
    "MAX_STATIC_PER_SCHEDULE",
    "MAX_TAG_FILTERS",
    "MAX_WINDOW",
    "MIN_WINDOW",
    "OS_TYPES",
    "TAG_POLICY",
    "TAG_RING",
    "VM_TYPE",
    "Actual",
    "ActualConfiguration",
    "Assignment",
    "Blocked",
    "Change",
    "ConfigurationFields",
    "ConfigurationSpec",
    "CreateAssignment",
    "CreateConfiguration",
    "DeleteAssignment",
    "DeleteConfiguration",
    "Desired",
    "FieldChange",
    "Finding",
    "FindingKind",
    "Machine",
    "MachineAudit",
    "PatchPilotSchedule",
    "PatchSettings",
    "Scope",
    "ScopeFilter",
    "UpdateAssignment",
    "UpdateConfiguration",
    "apply_each",
    "as_mapping",
    "assignment_id",
    "assignments_query",
    "audit",
    "azure_rings",
    "change_document",
    "configuration_id",
    "configuration_name",
    "desired",
    "diff",
    "fix_patch_settings",
    "machines_query",
    "parse_assignment",
    "parse_configuration",
    "parse_machine",
    "patchpilot_schedules",
    "policy_problems",
    "read_actual",
    "read_assignments",
    "read_machines",
    "recur_every",
    "scope_filter",
    "show",
    "unique_sorted",
    "windows_time_zone",
]
