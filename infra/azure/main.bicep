// PatchPilot on Azure: two Function Apps from one package (Flex Consumption, Linux, Python 3.11),
// their storage (steps queue, run table, policy and report blobs), Key Vault, Application
// Insights with alerts to on-call, and the Update Manager pre/post maintenance events.
//
// Trust boundary: the worker app (timer, steps queue, Event Grid) runs as the identity holding the
// fleet role, which can run commands as root on every managed machine; the HTTP app (approve,
// run_status, slack_interaction: reachable from the internet) runs as an identity that can only
// read and write the run table, send to the steps queue and read its four secrets (approval keys,
// Slack's signing secret and bot token). The policy is read-only to both apps.
// Deploy: docs/azure-deploy.md; threat model: docs/security.md.
// Checked offline by `make check-templates` (pycep syntax, module parameters, checkov) and by
// tests/security/test_azure_template.py; skipped checkov policies carry their reason.

targetScope = 'resourceGroup'

@description('Azure region of the apps and their resources.')
param location string = resourceGroup().location

@description('Prefix of every resource name (lower-case letters and digits).')
@minLength(3)
@maxLength(11)
param namePrefix string = 'patchpilot'

@description('Required: the resource groups of this subscription holding the fleet (and the maintenance configurations). The fleet role is assigned on each of them and nowhere else; a wider scope (the subscription, a management group) is a separate, explicit assignment (docs/azure-deploy.md).')
@minLength(1)
param fleetResourceGroups array

@description('Resource ids of Update Manager maintenance configurations whose pre/post maintenance events go to the app.')
param maintenanceConfigurationIds array = []

@description('Create the Event Grid subscriptions to the pre_maintenance, post_maintenance and advisory functions. Event Grid checks that the functions exist: publish the code first, then deploy again with true.')
param subscribeMaintenanceEvents bool = false

@description('Wake-ups: an Event Grid system topic on this subscription sends the end of writes and actions on its VMs and snapshots to the wake_up function, so that a wave moves on within seconds of a step\'s end (docs/azure-deploy.md). A subscription has at most one system topic: false when it has one already. Subscribed with subscribeMaintenanceEvents (the function must exist first).')
param wakeEvents bool = true

@description('Signing key of approval links (for example `openssl rand -base64 48`). Required on the first deployment (the HTTP app is given read access to this secret only once it exists); empty afterwards leaves the secret as it is.')
@secure()
param approvalSigningKey string = ''

@description('The signing key being replaced (rotation): links signed with it stay valid while it is kept. Empty: the previous-key secret gets the current key (nothing extra accepted).')
@secure()
param previousApprovalSigningKey string = ''

@description('Approvals from Slack buttons: the HTTP app reads the Slack signing secret. The secret must exist: pass slackSigningSecret on the deployment that enables it.')
param slackApprovals bool = false

@description('The Slack app\'s signing secret (Basic Information). Empty: the secret is left as it is.')
@secure()
param slackSigningSecret string = ''

@description('Slack user groups (S…) in a ring\'s approvers: the HTTP app reads a Slack bot token (scope usergroups:read) to check who is in them. The secret must exist: pass slackBotToken on the deployment that enables it. False: a ring\'s groups admit nobody.')
param slackGroupApprovers bool = false

@description('A Slack bot token (xoxb-…) with the scope usergroups:read. Empty: the secret is left as it is.')
@secure()
param slackBotToken string = ''

@description('Base URL of approval links (the HTTP app\'s `approvalUrl` output with `?code=<approve function key>`). Empty: approval notices carry no links. Set it here: a deployment replaces every app setting.')
@secure()
param approvalLinkUrl string = ''

@description('Object id of the principal that uploads the policy (a person, a group or the CI pipeline\'s service principal): Storage Blob Data Contributor on the policy container. Empty: no one; assign it yourself.')
param deployerPrincipalId string = ''

@description('Required: e-mail address of on-call, the action of every alert.')
param onCallEmail string

@description('Optional webhook of the alerts (an incident tool\'s endpoint), common alert schema. Empty: e-mail only.')
@secure()
param onCallWebhookUrl string = ''

@description('Replication of the storage accounts (run state, queue, policy).')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param storageSku string = 'Standard_ZRS'

@description('Upper bound of Flex Consumption instances of the worker: it bounds the calls in flight to Azure Resource Manager too.')
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
  httpIdentity: '${namePrefix}-http-id-${suffix}'
  deliveryIdentity: '${namePrefix}-eg-id-${suffix}'
  storage: take('${namePrefix}st${suffix}', 24)
  httpStorage: take('${namePrefix}http${suffix}', 24)
  workspace: '${namePrefix}-log-${suffix}'
  insights: '${namePrefix}-appi-${suffix}'
  keyVault: take('${namePrefix}-kv-${suffix}', 24)
  plan: '${namePrefix}-plan-${suffix}'
  httpPlan: '${namePrefix}-http-plan-${suffix}'
  app: '${namePrefix}-func-${suffix}'
  httpApp: '${namePrefix}-http-${suffix}'
  actionGroup: '${namePrefix}-oncall-${suffix}'
}
// Names the code reads from the app settings (shared/patchpilot/bootstrap/azure.py).
var stepsQueue = 'patchpilot-steps'
var poisonQueue = '${stepsQueue}-poison'
var runTable = 'patchpilotruns'
var configContainer = 'patchpilot-config'
var reportsContainer = 'patchpilot-reports'
var packageContainer = 'app-package'
var deadLetterContainer = 'deadletter'
// The Functions host's own blobs (keys, locks, timer schedule): the worker's host may write only these.
var hostContainers = [
  packageContainer
  'azure-webjobs-hosts'
  'azure-webjobs-secrets'
]
var approvalSecretName = 'patchpilot-approval-signing-key'
var previousApprovalSecretName = 'patchpilot-approval-signing-key-previous'
var slackSecretName = 'patchpilot-slack-signing-secret'
var slackBotTokenSecretName = 'patchpilot-slack-bot-token'

// Built-in roles, by id (https://learn.microsoft.com/azure/role-based-access-control/built-in-roles).
var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b' // a host's own blobs and its package
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  storageBlobDataReader: '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageQueueDataMessageSender: 'c6a89b2d-59bc-44d0-9896-0f6e12d7b80a'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb' // Application Insights without keys
}

// ------------------------------------------------------------------ identities

// The worker: holds the fleet role.
resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: names.identity
  location: location
  tags: tags
}

// The HTTP app: the run table, the steps queue, its secrets; no fleet role.
resource httpIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: names.httpIdentity
  location: location
  tags: tags
}

// Event Grid's dead-lettering: writes to the dead-letter container, nothing else.
resource deliveryIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: names.deliveryIdentity
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

    // Events Event Grid could not deliver (the advisory topic, the maintenance system topics).
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
      name: poisonQueue
    }
  }

  resource tableService 'tableServices' = {
    name: 'default'

    resource runs 'tables' = {
      name: runTable
    }
  }
}

// The worker host's package and its own blobs, created here so that its roles can be scoped to them.
resource hostBlobContainers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [
  for name in hostContainers: {
    parent: storage::blobService
    name: name
    properties: {
      publicAccess: 'None'
    }
  }
]

// The HTTP app's host storage (its keys, its package): apart, so that the HTTP identity can never
// read the worker's host keys (which would let it invoke the worker's functions).
resource httpStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: Same as the main account: Flex Consumption without a VNet; Entra ID only (shared keys are off).
  // checkov:skip=CKV_AZURE_59: Same as CKV_AZURE_35.
  // checkov:skip=CKV_AZURE_43: The name is computed (namePrefix + 'http' + uniqueString, cut to 24), which checkov cannot evaluate.
  // checkov:skip=CKV_AZURE_206: Holds only the HTTP host's keys and package, both re-created by a deployment.
  name: names.httpStorage
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
    allowSharedKeyAccess: false
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

    resource package 'containers' = {
      name: packageContainer
      properties: {
        publicAccess: 'None'
      }
    }
  }
}

// The worker: its host's blobs (container by container), the policy read-only, the reports
// written, the queue (trigger, poison queue, sends) and the table.
resource workerHostBlobs 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for (name, index) in hostContainers: {
    name: guid(storage.id, name, identity.id, roles.storageBlobDataOwner)
    scope: hostBlobContainers[index]
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
      principalId: identity.properties.principalId
      principalType: 'ServicePrincipal'
    }
  }
]

resource workerPolicyReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, configContainer, identity.id, roles.storageBlobDataReader)
  scope: storage::blobService::config
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataReader)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource workerReportsWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, reportsContainer, identity.id, roles.storageBlobDataContributor)
  scope: storage::blobService::reports
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource workerQueuesAndTable 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in [roles.storageQueueDataContributor, roles.storageTableDataContributor]: {
    name: guid(storage.id, identity.id, role)
    scope: storage
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
      principalId: identity.properties.principalId
      principalType: 'ServicePrincipal'
    }
  }
]

// The HTTP app: its own host account; in the main account the run table (runs, approvals, claims
// of Slack requests) and sending to the steps queue. No blob of the main account, no other queue.
resource httpHostBlobs 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(httpStorage.id, httpIdentity.id, roles.storageBlobDataOwner)
  scope: httpStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: httpIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource httpRunTable 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, runTable, httpIdentity.id, roles.storageTableDataContributor)
  scope: storage::tableService::runs
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
    principalId: httpIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource httpStepsSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, stepsQueue, httpIdentity.id, roles.storageQueueDataMessageSender)
  scope: storage::queueService::steps
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataMessageSender)
    principalId: httpIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Event Grid dead-letters undeliverable events with its own identity.
resource deliveryDeadLetters 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, deadLetterContainer, deliveryIdentity.id, roles.storageBlobDataContributor)
  scope: storage::blobService::deadLetters
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: deliveryIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Whoever changes the policy: write on its container only (the apps only read it).
resource deployerPolicyWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(deployerPrincipalId)) {
  name: guid(storage.id, configContainer, deployerPrincipalId, roles.storageBlobDataContributor)
  scope: storage::blobService::config
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: deployerPrincipalId
  }
}

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

// Names are computed from the identities' ids (known when the deployment starts), not their principal ids.
resource insightsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(insights.id, identity.id, roles.monitoringMetricsPublisher)
  scope: insights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource httpInsightsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(insights.id, httpIdentity.id, roles.monitoringMetricsPublisher)
  scope: insights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: httpIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Queue writes (the poison-queue alert) and blob writes (the dead-letter alert; an audit of
// policy changes) go to the workspace.
resource queueDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
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

resource blobDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'patchpilot-blob-logs'
  scope: storage::blobService
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

// Every alert goes to on-call.
var onCallWebhooks = empty(onCallWebhookUrl) ? [] : [
  {
    name: 'on-call-webhook'
    serviceUri: onCallWebhookUrl
    useCommonAlertSchema: true
  }
]

resource onCall 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: names.actionGroup
  location: 'Global'
  tags: tags
  properties: {
    groupShortName: 'patchpilot'
    enabled: true
    emailReceivers: [
      {
        name: 'on-call'
        emailAddress: onCallEmail
        useCommonAlertSchema: true
      }
    ]
    webhookReceivers: onCallWebhooks
  }
}

// Storage queue metrics are per account (no queue dimension), so a message landing in the poison
// queue is found in the queue's resource logs: a PutMessage on `<queue>-poison`. The host moves a
// message there after five failed deliveries; the code moves an unreadable one at once.
resource poisonAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-poison-queue-${suffix}'
  location: location
  tags: tags
  properties: {
    displayName: 'PatchPilot: a step landed in the poison queue'
    description: 'A message of ${stepsQueue} failed five deliveries (or was unreadable) and waits in ${poisonQueue}: its run is stuck. docs/azure-deploy.md, "Nothing stuck".'
    severity: 1
    enabled: true
    scopes: [
      workspace.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    criteria: {
      allOf: [
        {
          query: 'StorageQueueLogs | where OperationName == "PutMessage" and Uri contains "/${poisonQueue}/messages"'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: false
    actions: {
      actionGroups: [
        onCall.id
      ]
    }
  }
}

// Blob metrics have no container dimension either: a blob written into the dead-letter container.
resource deadLetterAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-dead-letters-${suffix}'
  location: location
  tags: tags
  properties: {
    displayName: 'PatchPilot: Event Grid dead-lettered an event'
    description: 'An advisory or maintenance event could not be delivered to the worker app and was written to the ${deadLetterContainer} container of ${names.storage}.'
    severity: 1
    enabled: true
    scopes: [
      workspace.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    criteria: {
      allOf: [
        {
          query: 'StorageBlobLogs | where OperationName in ("PutBlob", "PutBlockList", "AppendBlock") and Uri contains "/${deadLetterContainer}/"'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: false
    actions: {
      actionGroups: [
        onCall.id
      ]
    }
  }
}

// Failed invocations of either app (Functions records each invocation as a request).
resource failuresAlert 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: '${namePrefix}-function-failures-${suffix}'
  location: 'global'
  tags: tags
  properties: {
    description: 'A PatchPilot function invocation failed (Application Insights ${names.insights}: failures).'
    severity: 2
    enabled: true
    scopes: [
      insights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'failed-invocations'
          metricNamespace: 'microsoft.insights/components'
          metricName: 'requests/failed'
          operator: 'GreaterThan'
          threshold: 0
          timeAggregation: 'Count'
        }
      ]
    }
    autoMitigate: true
    actions: [
      {
        actionGroupId: onCall.id
      }
    ]
  }
}

// ------------------------------------------------------------------ secrets

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109: The apps reach the vault over its public endpoint (no VNet); every read needs Entra ID and the Key Vault Secrets User role.
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
  // checkov:skip=CKV_AZURE_41: The signing key has no fixed expiry: rotate it by deploying a new value with the old one as previousApprovalSigningKey (links live 24 hours).
  // checkov:skip=CKV_AZURE_114: contentType is set below; checkov does not read the properties of a conditional resource.
  parent: vault
  name: approvalSecretName
  properties: {
    value: approvalSigningKey
    contentType: 'text/plain'
  }
}

// Written with the current key: during a rotation, the key being replaced.
resource previousApprovalSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(approvalSigningKey)) {
  // checkov:skip=CKV_AZURE_41: Same as the approval key: replaced at each rotation.
  // checkov:skip=CKV_AZURE_114: contentType is set below; checkov does not read the properties of a conditional resource.
  parent: vault
  name: previousApprovalSecretName
  properties: {
    value: empty(previousApprovalSigningKey) ? approvalSigningKey : previousApprovalSigningKey
    contentType: 'text/plain'
  }
}

resource slackSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(slackSigningSecret)) {
  // checkov:skip=CKV_AZURE_41: Slack's signing secret has no expiry of its own: rotate it in the Slack app, then here.
  // checkov:skip=CKV_AZURE_114: contentType is set below; checkov does not read the properties of a conditional resource.
  parent: vault
  name: slackSecretName
  properties: {
    value: slackSigningSecret
    contentType: 'text/plain'
  }
}

resource slackBotTokenSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(slackBotToken)) {
  // checkov:skip=CKV_AZURE_41: A Slack bot token has no expiry of its own: rotate it in the Slack app, then here.
  // checkov:skip=CKV_AZURE_114: contentType is set below; checkov does not read the properties of a conditional resource.
  parent: vault
  name: slackBotTokenSecretName
  properties: {
    value: slackBotToken
    contentType: 'text/plain'
  }
}

// The secrets as scopes of the HTTP identity's roles (they must exist: created above now or by an
// earlier deployment).
resource approvalSecretScope 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: vault
  name: approvalSecretName
}

resource previousApprovalSecretScope 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: vault
  name: previousApprovalSecretName
}

resource slackSecretScope 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: vault
  name: slackSecretName
}

resource slackBotTokenSecretScope 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: vault
  name: slackBotTokenSecretName
}

// The worker reads every secret (webhook URLs, the approval key it signs links with).
resource workerSecrets 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, identity.id, roles.keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// The HTTP app reads its four secrets (approval keys, Slack signing secret and bot token), each on
// its own scope: never a webhook URL.
resource httpApprovalSecret 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, approvalSecretName, httpIdentity.id, roles.keyVaultSecretsUser)
  scope: approvalSecretScope
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: httpIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [
    approvalSecret
  ]
}

resource httpPreviousApprovalSecret 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, previousApprovalSecretName, httpIdentity.id, roles.keyVaultSecretsUser)
  scope: previousApprovalSecretScope
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: httpIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [
    previousApprovalSecret
  ]
}

resource httpSlackSecret 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (slackApprovals) {
  name: guid(vault.id, slackSecretName, httpIdentity.id, roles.keyVaultSecretsUser)
  scope: slackSecretScope
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: httpIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [
    slackSecret
  ]
}

resource httpSlackBotTokenSecret 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (slackGroupApprovers) {
  name: guid(vault.id, slackBotTokenSecretName, httpIdentity.id, roles.keyVaultSecretsUser)
  scope: slackBotTokenSecretScope
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: httpIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [
    slackBotTokenSecret
  ]
}

// ------------------------------------------------------------------ the Function Apps

// A Flex Consumption plan hosts one app: one plan each.
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

resource httpPlan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: Same as the worker's plan: an approval click retried by the operator costs nothing.
  name: names.httpPlan
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

// Settings both apps read (shared/patchpilot/bootstrap/azure.py).
var commonSettings = [
  {
    name: 'AzureWebJobsStorage__credential'
    value: 'managedidentity'
  }
  {
    name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
    value: insights.properties.ConnectionString
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
  {
    // no pydantic plugin discovery (every package's metadata read at the first model): PatchPilot uses none
    name: 'PYDANTIC_DISABLE_PLUGINS'
    value: '__all__'
  }
]

// The worker: timer, steps queue, Event Grid. Runs as the identity holding the fleet role.
resource app 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: The worker hosts no HTTP function (PATCHPILOT_FUNCTIONS=worker); Event Grid reaches its functions through the platform's system key.
  // checkov:skip=CKV_AZURE_17: No HTTP function here; Event Grid deliveries authenticate with the system key.
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales from zero on the timer, the queue and Event Grid; an always-ready instance would cost all month for nothing the queue does not already retry.
  // checkov:skip=CKV_AZURE_213: App Service health checks probe an HTTP path of always-on instances; a Flex Consumption app with queue and timer triggers has none (failures alert through Application Insights).
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
      appSettings: concat(commonSettings, [
        {
          name: 'PATCHPILOT_FUNCTIONS'
          value: 'worker'
        }
        // The host's storage and the code's (queue, table, policy and report blobs): identity-based.
        {
          name: 'AzureWebJobsStorage__accountName'
          value: storage.name
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
          name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
          value: 'ClientId=${identity.properties.clientId};Authorization=AAD'
        }
        {
          name: 'PATCHPILOT_APPROVAL_URL' // signed links in approval notices point at the HTTP app
          value: approvalLinkUrl
        }
        // Wake-ups reach the worker (wakeSubscription exists): the fleet polls the steps whose end
        // this subscription's events say less often, on its VMs (docs/azure-deploy.md, Wake-ups).
        {
          name: 'PATCHPILOT_WAKE_SUBSCRIPTION'
          value: (wakeEvents && subscribeMaintenanceEvents) ? subscription().subscriptionId : ''
        }
      ])
    }
  }
  dependsOn: [
    workerHostBlobs
    workerPolicyReader
    workerReportsWriter
    workerQueuesAndTable
    workerSecrets
    insightsPublisher
  ]
}

// The HTTP app: approve, run_status, slack_interaction. No fleet role, no webhook secret, no
// blob of the main account: a flaw in request handling reaches the run table and the queue only.
resource httpApp 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: The approval endpoint must be reachable from operators' browsers (function key plus signed token); put Front Door or a VNet in front to close it.
  // checkov:skip=CKV_AZURE_17: Approval links are opened in ordinary browsers, which hold no client certificate; the function key and the signed, expiring token authenticate them.
  // checkov:skip=CKV_AZURE_212: Approvals are rare; a cold start of a few seconds is fine and an always-ready instance would cost all month.
  // checkov:skip=CKV_AZURE_213: App Service health checks need always-on instances; failures alert through Application Insights.
  name: names.httpApp
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${httpIdentity.id}': {}
    }
  }
  properties: {
    serverFarmId: httpPlan.id
    httpsOnly: true
    clientCertEnabled: false
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${httpStorage.properties.primaryEndpoints.blob}${packageContainer}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: httpIdentity.id
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: 40
        instanceMemoryMB: 512
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
      appSettings: concat(commonSettings, [
        {
          name: 'PATCHPILOT_FUNCTIONS'
          value: 'http'
        }
        // The host keeps its keys in its own account; the code reaches the run table and the
        // steps queue of the main account (PATCHPILOT_STORAGE_ACCOUNT).
        {
          name: 'AzureWebJobsStorage__accountName'
          value: httpStorage.name
        }
        {
          name: 'AzureWebJobsStorage__clientId'
          value: httpIdentity.properties.clientId
        }
        {
          name: 'PATCHPILOT_STORAGE_ACCOUNT'
          value: storage.name
        }
        {
          name: 'AZURE_CLIENT_ID'
          value: httpIdentity.properties.clientId
        }
        {
          name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
          value: 'ClientId=${httpIdentity.properties.clientId};Authorization=AAD'
        }
        {
          name: 'PATCHPILOT_APPROVAL_PREVIOUS_SECRET'
          value: previousApprovalSecretName
        }
        {
          name: 'PATCHPILOT_SLACK_SIGNING_SECRET'
          value: slackApprovals ? slackSecretName : ''
        }
        {
          name: 'PATCHPILOT_SLACK_BOT_TOKEN_SECRET'
          value: slackGroupApprovers ? slackBotTokenSecretName : ''
        }
      ])
    }
  }
  dependsOn: [
    httpHostBlobs
    httpRunTable
    httpStepsSender
    httpApprovalSecret
    httpPreviousApprovalSecret
    httpSlackSecret
    httpSlackBotTokenSecret
    httpInsightsPublisher
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

resource httpFtpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: httpApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource httpScmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: httpApp
  name: 'scm'
  properties: {
    allow: false
  }
}

// ------------------------------------------------------------------ the fleet

// The fleet role on the listed resource groups only, for the worker's identity only.
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
      identityId: deliveryIdentity.id
      deadLetterStorageId: storage.id
      deadLetterContainer: deadLetterContainer
      subscribe: subscribeMaintenanceEvents
      tags: tags
    }
    dependsOn: [
      deliveryDeadLetters
    ]
  }
]

// Security advisories: a custom topic that security tooling publishes `PatchPilot.Advisory`
// events to (docs/advisories.md), delivered to the worker's `advisory` function. Entra ID only
// (local auth off): publishers need EventGrid Data Sender on this topic, given by the deployer to
// named principals (docs/security-deployer-azure.md). Subscribed with the maintenance events
// (the function must exist first).
resource advisoryTopic 'Microsoft.EventGrid/topics@2022-06-15' = {
  // checkov:skip=CKV_AZURE_193: Publishers (security tooling) reach the topic over its public endpoint with Entra ID (local auth is off); no VNet is deployed.
  name: '${namePrefix}-advisories-${suffix}'
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${deliveryIdentity.id}': {}
    }
  }
  properties: {
    inputSchema: 'EventGridSchema'
    disableLocalAuth: true
    publicNetworkAccess: 'Enabled'
  }
}

// An advisory is worth acting on for a day; undelivered, it is dead-lettered and on-call alerted.
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
    deadLetterWithResourceIdentity: {
      identity: {
        type: 'UserAssigned'
        userAssignedIdentity: deliveryIdentity.id
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: storage.id
          blobContainerName: deadLetterContainer
        }
      }
    }
  }
  dependsOn: [
    deliveryDeadLetters
  ]
}

// Wake-ups (docs/architecture.md, "Wake-ups"): Azure Resource Manager's events of this subscription,
// only the end of writes and actions on VMs (installs, Run Commands, starts, deallocations) and
// snapshots, delivered to the worker's `wake_up` function; it wakes the runs awaiting them. A
// wake-up is worth a few minutes: a short time to live; undelivered, dead-lettered like the others.
resource wakeTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = if (wakeEvents) {
  name: '${namePrefix}-wake-ups-${suffix}'
  location: 'global'
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${deliveryIdentity.id}': {}
    }
  }
  properties: {
    source: subscription().id
    topicType: 'Microsoft.Resources.Subscriptions'
  }
}

resource wakeSubscription 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = if (wakeEvents && subscribeMaintenanceEvents) {
  parent: wakeTopic
  name: 'patchpilot-wake-ups'
  properties: {
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: '${app.id}/functions/wake_up'
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    filter: {
      includedEventTypes: [
        'Microsoft.Resources.ResourceActionSuccess'
        'Microsoft.Resources.ResourceActionFailure'
        'Microsoft.Resources.ResourceWriteSuccess'
        'Microsoft.Resources.ResourceWriteFailure'
      ]
      advancedFilters: [
        {
          operatorType: 'StringContains'
          key: 'subject'
          values: [
            '/providers/Microsoft.Compute/virtualMachines/'
            '/providers/Microsoft.Compute/snapshots/'
          ]
        }
      ]
    }
    eventDeliverySchema: 'EventGridSchema'
    retryPolicy: {
      maxDeliveryAttempts: 5
      eventTimeToLiveInMinutes: 15
    }
    deadLetterWithResourceIdentity: {
      identity: {
        type: 'UserAssigned'
        userAssignedIdentity: deliveryIdentity.id
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: storage.id
          blobContainerName: deadLetterContainer
        }
      }
    }
  }
  dependsOn: [
    deliveryDeadLetters
  ]
}

// ------------------------------------------------------------------ outputs

output functionAppName string = app.name
output functionAppUrl string = 'https://${app.properties.defaultHostName}'
output httpFunctionAppName string = httpApp.name
output httpFunctionAppUrl string = 'https://${httpApp.properties.defaultHostName}'
output approvalUrl string = 'https://${httpApp.properties.defaultHostName}/api/approve'
output slackInteractionsUrl string = 'https://${httpApp.properties.defaultHostName}/api/slack/interactions'
output advisoryTopicEndpoint string = advisoryTopic.properties.endpoint
output advisoryTopicId string = advisoryTopic.id
output storageAccountName string = storage.name
output policyContainer string = configContainer
output deadLetterContainer string = deadLetterContainer
output stepsQueue string = stepsQueue
output runTable string = runTable
output keyVaultName string = vault.name
output keyVaultUrl string = vault.properties.vaultUri
output identityPrincipalId string = identity.properties.principalId
output identityClientId string = identity.properties.clientId
output httpIdentityPrincipalId string = httpIdentity.properties.principalId
output fleetRoleDefinitionId string = fleetAccess.outputs.roleDefinitionId
output applicationInsightsName string = insights.name
output actionGroupId string = onCall.id
