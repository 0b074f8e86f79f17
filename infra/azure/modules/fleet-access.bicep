// The fleet role: a custom role with only the Azure Resource Manager actions PatchPilot calls,
// assigned to the worker's identity on the fleet's resource groups, which are required: there is
// no default scope and never a subscription-wide assignment from here (a wider scope is the
// deployer's explicit, separate decision: docs/azure-deploy.md).
// Deployed by main.bicep for its own subscription; for a fleet in another subscription, deploy
// it there too: az deployment sub create -l <region> -f infra/azure/modules/fleet-access.bicep
//   -p principalId=<identityPrincipalId output> roleName='PatchPilot fleet operator (<app rg>)'
//      resourceGroups='["rg-web-prod"]'
//
// Azure RBAC has no tag conditions on compute actions (ABAC conditions cover storage data
// actions only): the scope of the assignment is the boundary.

targetScope = 'subscription'

@description('Object id of the identity the role is given to.')
param principalId string

@description('Name of the custom role; unique in the tenant.')
param roleName string

@description('Required: the resource groups of this subscription to assign the role on (and only those).')
@minLength(1)
param resourceGroups array

// Every Azure Resource Manager action PatchPilot's code calls, and why. Keep in step with the
// adapters (shared/patchpilot/adapters/azure/): tests/test_azure_runtime.py checks every call of
// a whole run against this list. Long operations are started without polling them, so no
// operation-status read is needed; the two the traffic pools wait for (a load-balancing rule's
// health, an Application Gateway's backend health) are followed on the URLs Azure returns for them.
var fleetActions = [
  // discovery, probe and health (Resource Graph returns only what the identity may read)
  'Microsoft.ResourceGraph/resources/read'
  'Microsoft.Compute/virtualMachines/read'
  'Microsoft.Compute/virtualMachines/instanceView/read'
  'Microsoft.Compute/virtualMachines/extensions/read' // health: which VMs have the Application Health extension (Resource Graph leaves out, silently, the rows the identity may not read)
  'Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read' // Uniform scale set instances, listed as excluded (discovery)
  'Microsoft.Network/networkInterfaces/read' // the private address of an HTTP health check; traffic pools (discovery)
  'Microsoft.Compute/virtualMachines/runCommands/read' // the health script, a managed Run Command
  'Microsoft.Compute/virtualMachines/runCommands/write'
  // patching
  'Microsoft.Compute/virtualMachines/installPatches/action'
  'Microsoft.Compute/virtualMachines/write' // marks (tags), the OS disk swap, Update Manager patch settings
  // snapshots and rollback (disk from snapshot, deallocate, swap, start)
  'Microsoft.Compute/snapshots/read'
  'Microsoft.Compute/snapshots/write'
  'Microsoft.Compute/disks/read'
  'Microsoft.Compute/disks/write'
  'Microsoft.Compute/virtualMachines/deallocate/action'
  'Microsoft.Compute/virtualMachines/start/action' // also stopped_machines: start (start, then deallocate or power off)
  'Microsoft.Compute/virtualMachines/powerOff/action' // stopped_machines: start, a VM found stopped (not deallocated)
  // Arc-enabled servers (policy azure.arc)
  'Microsoft.HybridCompute/machines/read'
  'Microsoft.HybridCompute/machines/write' // marks (tags)
  'Microsoft.HybridCompute/machines/installPatches/action'
  'Microsoft.HybridCompute/machines/runCommands/read'
  'Microsoft.HybridCompute/machines/runCommands/write'
  // compliance: on-demand assessment (the results are read from Resource Graph)
  'Microsoft.Compute/virtualMachines/assessPatches/action'
  'Microsoft.HybridCompute/machines/assessPatches/action'
  // maintenance watch: Resource Graph lists only the rows the identity may read, so these reads
  // are needed for its maintenanceresources (Maintenance RP updates) and servicehealthresources
  'Microsoft.Maintenance/updates/read'
  'Microsoft.ResourceHealth/events/read'
  'Microsoft.ResourceHealth/events/impactedResources/read'
  // emergency runs from Defender for Cloud's vulnerability findings (docs/advisories.md "Azure
  // sources"): Resource Graph lists only the securityresources rows the identity may read
  'Microsoft.Security/assessments/read'
  'Microsoft.Security/assessments/subAssessments/read'
  // Update Manager schedules (`patchpilot azure sync`) and cancelling a maintenance run
  'Microsoft.Maintenance/maintenanceConfigurations/read'
  'Microsoft.Maintenance/maintenanceConfigurations/write'
  'Microsoft.Maintenance/maintenanceConfigurations/delete'
  'Microsoft.Maintenance/configurationAssignments/read'
  'Microsoft.Maintenance/configurationAssignments/write'
  'Microsoft.Maintenance/configurationAssignments/delete'
  'Microsoft.Maintenance/applyUpdates/read' // a cancel reads the maintenance run's status first
  'Microsoft.Maintenance/applyUpdates/write'
  // traffic pools (docs/traffic.md): a NIC update out of and back into the backend pools, their
  // probes read for the drain, their health read with traffic.pool_health; a NIC update is checked
  // against what it references: the pools it joins, its subnet, NSG, public IP and ASGs (kept as read)
  'Microsoft.Network/networkInterfaces/write'
  'Microsoft.Network/loadBalancers/read'
  'Microsoft.Network/loadBalancers/backendAddressPools/join/action'
  'Microsoft.Network/loadBalancers/loadBalancingRules/health/action'
  'Microsoft.Network/applicationGateways/read'
  'Microsoft.Network/applicationGateways/backendAddressPools/join/action'
  'Microsoft.Network/applicationGateways/backendhealth/action'
  'Microsoft.Network/virtualNetworks/subnets/join/action'
  'Microsoft.Network/networkSecurityGroups/join/action'
  'Microsoft.Network/publicIPAddresses/join/action'
  'Microsoft.Network/applicationSecurityGroups/joinIpConfiguration/action'
]

resource role 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(subscription().id, roleName)
  properties: {
    roleName: roleName
    description: 'Snapshot, assess, patch, health-check and roll back virtual machines; watch platform maintenance; PatchPilot (infra/azure).'
    type: 'CustomRole'
    permissions: [
      {
        actions: fleetActions
        notActions: []
      }
    ]
    assignableScopes: [
      subscription().id
    ]
  }
}

module groupAssignments 'fleet-assignment.bicep' = [
  for group in resourceGroups: {
    name: 'patchpilot-fleet-${uniqueString(group)}'
    scope: resourceGroup(group)
    params: {
      principalId: principalId
      roleDefinitionId: role.id
    }
  }
]

output roleDefinitionId string = role.id
