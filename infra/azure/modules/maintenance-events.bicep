// Update Manager pre/post maintenance events of one maintenance configuration, delivered by
// Event Grid to the app's pre_maintenance and post_maintenance functions. Deployed by
// main.bicep into the configuration's resource group (a system topic lives beside its source).

targetScope = 'resourceGroup'

param maintenanceConfigurationName string
param functionAppId string
@description('User-assigned identity the topic dead-letters with (Storage Blob Data Contributor on the dead-letter container only; not the worker\'s identity).')
param identityId string
param deadLetterStorageId string
param deadLetterContainer string
@description('False until the functions exist: Event Grid validates the endpoint when subscribing.')
param subscribe bool
param tags object = {}

resource configuration 'Microsoft.Maintenance/maintenanceConfigurations@2023-04-01' existing = {
  name: maintenanceConfigurationName
}

resource topic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: 'patchpilot-${maintenanceConfigurationName}'
  location: configuration.location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    source: configuration.id
    topicType: 'Microsoft.Maintenance.MaintenanceConfigurations'
  }
}

// Pre-events come 30-40 minutes before the window and are worthless once it starts: a short
// time to live. Delivery is at least once: the functions are idempotent. An event not delivered
// within its time to live is dead-lettered (main.bicep alerts on-call when one is).
var deliveries = [
  {
    name: 'patchpilot-pre-maintenance'
    function: 'pre_maintenance'
    eventType: 'Microsoft.Maintenance.PreMaintenanceEvent'
    timeToLiveMinutes: 30
  }
  {
    name: 'patchpilot-post-maintenance'
    function: 'post_maintenance'
    eventType: 'Microsoft.Maintenance.PostMaintenanceEvent'
    timeToLiveMinutes: 1440
  }
]

resource subscriptions 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = [
  for delivery in deliveries: if (subscribe) {
    parent: topic
    name: delivery.name
    properties: {
      destination: {
        endpointType: 'AzureFunction'
        properties: {
          resourceId: '${functionAppId}/functions/${delivery.function}'
          maxEventsPerBatch: 1
          preferredBatchSizeInKilobytes: 64
        }
      }
      filter: {
        includedEventTypes: [
          delivery.eventType
        ]
      }
      eventDeliverySchema: 'EventGridSchema'
      retryPolicy: {
        maxDeliveryAttempts: 30
        eventTimeToLiveInMinutes: delivery.timeToLiveMinutes
      }
      deadLetterWithResourceIdentity: {
        identity: {
          type: 'UserAssigned'
          userAssignedIdentity: identityId
        }
        deadLetterDestination: {
          endpointType: 'StorageBlob'
          properties: {
            resourceId: deadLetterStorageId
            blobContainerName: deadLetterContainer
          }
        }
      }
    }
  }
]

output systemTopicName string = topic.name
