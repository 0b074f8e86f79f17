// PatchPilot on Azure: the Function App (Flex Consumption, Linux, Python 3.11), its storage
// (steps queue, run table, policy blob), Key Vault, Application Insights, one user-assigned
// identity and its least-privilege access to the fleet, and the Update Manager pre/post
// maintenance events. Deploy: docs/azure-deploy.md. Checked offline by `make check-templates`
// (pycep syntax, module parameters, checkov); skipped checkov policies carry their reason.

targetScope = 'resourceGroup'

@description('Azure region of the app and its resources.')
param location string = resourceGroup().location

@description('Prefix of every resource name (lower-case letters and digits).')
@minLength(3)
@maxLength(11)
param namePrefix string = 'patchpilot'

@description('Resource groups of this subscription holding the fleet (and the maintenance configurations): the fleet role is assigned on each. Empty: on the whole subscription, which dynamic-scope maintenance assignments need.')
param fleetResourceGroups array = []

@description('Resource ids of Update Manager maintenance configurations whose pre/post maintenance events go to the app.')
param maintenanceConfigurationIds array = []

@description('Create the Event Grid subscriptions to the pre_maintenance and post_maintenance functions. Event Grid checks that the functions exist: publish the code first, then deploy again with true.')
param subscribeMaintenanceEvents bool = false

@description('Signing key of approval links (for example `openssl rand -base64 48`). Empty: the secret is left as it is.')
@secure()
param approvalSigningKey string = ''

@description('Replication of the storage account (run state, queue, policy).')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param storageSku string = 'Standard_ZRS'

@description('Upper bound of Flex Consumption instances: it bounds the calls in flight to Azure Resource Manager too.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 20

@description('Memory of each instance, in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Days logs are kept in the Log Analytics workspace.')
@minValue(30)
@maxValue(730)
param logRetentionDays int = 90

@description('Tags of every resource.')
param tags object = {}

var suffix = uniqueString(resourceGroup().id, namePrefix)
var names = {
  identity: '${namePrefix}-id-${suffix}'
  storage: take('${namePrefix}st${suffix}', 24)
  workspace: '${namePrefix}-log-${suffix}'
  insights: '${namePrefix}-appi-${suffix}'
  keyVault: take('${namePrefix}-kv-${suffix}', 24)
  plan: '${namePrefix}-plan-${suffix}'
  app: '${namePrefix}-func-${suffix}'
}
// Names the code reads from the app settings (shared/patchpilot/adapters/azure/runtime.py).
var stepsQueue = 'patchpilot-steps'
var runTable = 'patchpilotruns'
var configContainer = 'patchpilot-config'
var reportsContainer = 'patchpilot-reports'
var packageContainer = 'app-package'
var deadLetterContainer = 'maintenance-dead-letters'
var approvalSecretName = 'patchpilot-approval-signing-key'

// Built-in roles, by id (https://learn.microsoft.com/azure/role-based-access-control/built-in-roles).
var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b' // the host's own blobs, the package, the policy
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb' // Application Insights without keys
}

// ------------------------------------------------------------------ identity

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: names.identity
  location: location
  tags: tags
}

// ------------------------------------------------------------------ storage

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: Flex Consumption without a virtual network reaches its storage over the public endpoint; every access needs Entra ID (shared keys are off). Add a VNet and private endpoints to close it.
  // checkov:skip=CKV_AZURE_59: Same as CKV_AZURE_35: public network access stays on until the app is VNet-integrated.
  // checkov:skip=CKV_AZURE_43: The name is computed (namePrefix + 'st' + uniqueString, cut to 24): lower-case letters and digits, which checkov cannot evaluate.
  // checkov:skip=CKV_AZURE_206: Zone-redundant (ZRS) by default; storageSku takes GRS or GZRS for geo-redundancy. The state is short-lived (a run lasts hours) and the policy is kept in source control.
  name: names.storage
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: storageSku
  }
  properties: {
    accessTier: 'Hot'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false // identity-based connections only
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }

  resource blobService 'blobServices' = {
    name: 'default'
    properties: {
      deleteRetentionPolicy: {
        enabled: true
        days: 7
      }
      containerDeleteRetentionPolicy: {
        enabled: true
        days: 7
      }
    }

    resource package 'containers' = {
      name: packageContainer
      properties: {
        publicAccess: 'None'
      }
    }

    resource config 'containers' = {
      name: configContainer
      properties: {
        publicAccess: 'None'
      }
    }

    resource reports 'containers' = {
      name: reportsContainer
      properties: {
        publicAccess: 'None'
      }
    }

    resource deadLetters 'containers' = {
      name: deadLetterContainer
      properties: {
        publicAccess: 'None'
      }
    }
  }

  resource queueService 'queueServices' = {
    name: 'default'

    resource steps 'queues' = {
      name: stepsQueue
    }

    // The host moves a message here after host.json's maxDequeueCount failed deliveries.
    resource poison 'queues' = {
      name: '${stepsQueue}-poison'
    }
  }

  resource tableService 'tableServices' = {
    name: 'default'

    resource runs 'tables' = {
      name: runTable
    }
  }
}

resource storageRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in [roles.storageBlobDataOwner, roles.storageQueueDataContributor, roles.storageTableDataContributor]: {
    name: guid(storage.id, identity.id, role)
    scope: storage
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
      principalId: identity.properties.principalId
      principalType: 'ServicePrincipal'
    }
  }
]

// ------------------------------------------------------------------ monitoring

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: names.workspace
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: logRetentionDays
  }
}

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: names.insights
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    DisableLocalAuth: true // telemetry is sent with the identity (APPLICATIONINSIGHTS_AUTHENTICATION_STRING)
  }
}

resource insightsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(insights.id, identity.id, roles.monitoringMetricsPublisher)
  scope: insights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource storageDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'patchpilot-queue-logs'
  scope: storage::queueService
  properties: {
    workspaceId: workspace.id
    logs: [
      {
        category: 'StorageWrite'
        enabled: true
      }
      {
        category: 'StorageDelete'
        enabled: true
      }
    ]
  }
}

// ------------------------------------------------------------------ secrets

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109: The app reaches the vault over its public endpoint (no VNet); every read needs Entra ID and the Key Vault Secrets User role.
  // checkov:skip=CKV_AZURE_189: Same as CKV_AZURE_109.
  name: names.keyVault
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource approvalSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(approvalSigningKey)) {
  // checkov:skip=CKV_AZURE_41: The signing key has no fixed expiry: rotate it by deploying a new value (links live 24 hours).
  // checkov:skip=CKV_AZURE_114: contentType is set below; checkov does not read the properties of a conditional resource.
  parent: vault
  name: approvalSecretName
  properties: {
    value: approvalSigningKey
    contentType: 'text/plain'
  }
}

resource vaultReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, identity.id, roles.keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// ------------------------------------------------------------------ the Function App

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: Flex Consumption zone redundancy exists in a few regions only; the work is queued and retried, so an instance lost with its zone costs a delay, not a step.
  name: names.plan
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true // Linux
  }
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: The approval endpoint must be reachable from operators' browsers (function key plus signed token); put Front Door or a VNet in front to close it.
  // checkov:skip=CKV_AZURE_17: Approval links are opened in ordinary browsers, which hold no client certificate; the function key and the signed, expiring token authenticate them.
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales from zero on the timer, the queue and HTTP; an always-ready instance would cost all month for nothing the queue does not already retry.
  // checkov:skip=CKV_AZURE_213: App Service health checks probe an HTTP path of always-on instances; a Flex Consumption app with queue and timer triggers has none (failures surface as failed invocations in Application Insights).
  name: names.app
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${packageContainer}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identity.id
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [
        // The host's own storage and the code's (queue, table, policy blob): identity-based.
        {
          name: 'AzureWebJobsStorage__accountName'
          value: storage.name
        }
        {
          name: 'AzureWebJobsStorage__credential'
          value: 'managedidentity'
        }
        {
          name: 'AzureWebJobsStorage__clientId'
          value: identity.properties.clientId
        }
        {
          name: 'AZURE_CLIENT_ID' // DefaultAzureCredential picks the user-assigned identity
          value: identity.properties.clientId
        }
        {
          name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
          value: insights.properties.ConnectionString
        }
        {
          name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
          value: 'ClientId=${identity.properties.clientId};Authorization=AAD'
        }
        {
          name: 'PATCHPILOT_TABLE'
          value: runTable
        }
        {
          name: 'PATCHPILOT_QUEUE'
          value: stepsQueue
        }
        {
          name: 'PATCHPILOT_POLICY'
          value: 'blob://${configContainer}/policy.yaml'
        }
        {
          name: 'PATCHPILOT_REPORTS'
          value: reportsContainer
        }
        {
          name: 'PATCHPILOT_KEY_VAULT_URL'
          value: vault.properties.vaultUri
        }
        {
          name: 'PATCHPILOT_APPROVAL_SECRET'
          value: approvalSecretName
        }
      ]
    }
  }
  dependsOn: [
    storageRoles
    vaultReader
    insightsPublisher
  ]
}

// Deployments use Entra ID tokens (az, Core Tools); no FTP or basic-auth publishing.
resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: app
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: app
  name: 'scm'
  properties: {
    allow: false
  }
}

// ------------------------------------------------------------------ the fleet

module fleetAccess 'modules/fleet-access.bicep' = {
  name: 'patchpilot-fleet-access'
  scope: subscription()
  params: {
    principalId: identity.properties.principalId
    roleName: 'PatchPilot fleet operator (${resourceGroup().name})'
    resourceGroups: fleetResourceGroups
  }
}

// One Event Grid system topic per maintenance configuration, in the configuration's own
// resource group and region (a system topic lives beside its source).
module maintenanceEvents 'modules/maintenance-events.bicep' = [
  for (configurationId, index) in maintenanceConfigurationIds: {
    name: 'patchpilot-maintenance-events-${index}'
    scope: resourceGroup(split(configurationId, '/')[2], split(configurationId, '/')[4])
    params: {
      maintenanceConfigurationName: last(split(configurationId, '/'))
      functionAppId: app.id
      identityId: identity.id
      deadLetterStorageId: storage.id
      deadLetterContainer: deadLetterContainer
      subscribe: subscribeMaintenanceEvents
      tags: tags
    }
  }
]

// Security advisories: a custom topic that security tooling publishes `PatchPilot.Advisory`
// events to (docs/advisories.md), delivered to the app's `advisory` function. Subscribed with
// the maintenance events (the function must exist first).
resource advisoryTopic 'Microsoft.EventGrid/topics@2022-06-15' = {
  // checkov:skip=CKV_AZURE_193: Publishers (security tooling) reach the topic over its public endpoint with Entra ID (local auth is off); no VNet is deployed.
  name: '${namePrefix}-advisories-${suffix}'
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    inputSchema: 'EventGridSchema'
    disableLocalAuth: true
    publicNetworkAccess: 'Enabled'
  }
}

resource advisorySubscription 'Microsoft.EventGrid/topics/eventSubscriptions@2022-06-15' = if (subscribeMaintenanceEvents) {
  parent: advisoryTopic
  name: 'patchpilot-advisories'
  properties: {
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: '${app.id}/functions/advisory'
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    filter: {
      includedEventTypes: [
        'PatchPilot.Advisory'
      ]
    }
    eventDeliverySchema: 'EventGridSchema'
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
  }
}

// ------------------------------------------------------------------ outputs

output functionAppName string = app.name
output functionAppUrl string = 'https://${app.properties.defaultHostName}'
output approvalUrl string = 'https://${app.properties.defaultHostName}/api/approve'
output advisoryTopicEndpoint string = advisoryTopic.properties.endpoint
output storageAccountName string = storage.name
output policyContainer string = configContainer
output stepsQueue string = stepsQueue
output runTable string = runTable
output keyVaultName string = vault.name
output keyVaultUrl string = vault.properties.vaultUri
output identityPrincipalId string = identity.properties.principalId
output identityClientId string = identity.properties.clientId
output fleetRoleDefinitionId string = fleetAccess.outputs.roleDefinitionId
output applicationInsightsName string = insights.name
