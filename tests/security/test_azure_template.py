"""The Azure deployment's trust boundary, read from the Bicep itself (infra/azure): no Bicep compiler
runs here, so the templates are read as text, resource by resource (a declaration and its
balanced body), and the role assignments are compared with what each identity may hold.

The worker identity holds the fleet role (root on every managed machine); the internet-facing
HTTP functions run in a second Function App whose identity must never reach it. Also: the policy
is read-only to both apps, Event Grid retries and dead-letters, alerts reach on-call, and
`function_app.py` registers in each app only the functions it hosts.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AZURE = ROOT / "infra" / "azure"
sys.path.insert(0, str(ROOT))  # the app's root: function_app.py, azure_functions/

WORKER = "identity.properties.principalId"
HTTP = "httpIdentity.properties.principalId"
HTTP_FUNCTIONS = {"approve", "run_status", "slack_interaction"}
WORKER_FUNCTIONS = {"timer", "step_worker", "pre_maintenance", "post_maintenance", "advisory", "wake_up"}
BLOB_WRITERS = {"storageBlobDataOwner", "storageBlobDataContributor"}
LOG_ALERT, METRIC_ALERT = "Microsoft.Insights/scheduledQueryRules", "Microsoft.Insights/metricAlerts"


def code(name: str) -> str:
    """A template without its comments (`//` after a blank or at a line's start: not `https://`)."""
    text = (AZURE / name).read_text(encoding="utf-8")
    return re.sub(r"(^|[ \t])//.*$", "", text, flags=re.MULTILINE)


@dataclass(frozen=True)
class Resource:
    symbol: str
    type: str
    condition: str  # the `if (...)` of a conditional resource, "" otherwise
    body: str

    def value(self, key: str) -> str | None:
        found = re.search(rf"^\s*{re.escape(key)}: (.+)$", self.body, flags=re.MULTILINE)
        return found.group(1).strip() if found else None


def _balanced(text: str, start: int) -> int:
    """The end of the bracketed body that opens at or after `start`."""
    opened = min(i for i in (text.find("{", start), text.find("[", start)) if i >= 0)
    depth = 0
    for index in range(opened, len(text)):
        if text[index] in "{[":
            depth += 1
        elif text[index] in "}]":
            depth -= 1
            if depth == 0:
                return index + 1
    raise AssertionError(f"unbalanced body after offset {start}")


def resources(name: str) -> dict[str, Resource]:
    """The top-level resources of a template, by symbolic name."""
    text = code(name)
    found = {}
    header = re.compile(r"^resource (\w+) '([^'@]+)@[^']+'(?: existing)? = (?:if \((.*?)\) )?", re.MULTILINE)
    for match in header.finditer(text):
        body = text[match.start() : _balanced(text, match.end())]
        found[match.group(1)] = Resource(match.group(1), match.group(2), match.group(3) or "", body)
    return found


def module(name: str, symbol: str) -> str:
    text = code(name)
    start = re.search(rf"^module {symbol} ", text, flags=re.MULTILINE)
    assert start, f"{name} has no module {symbol}"
    return text[start.start() : _balanced(text, start.end())]


@dataclass(frozen=True)
class Grant:
    principal: str
    role: str
    scope: str  # a symbolic name; "resourceGroup()" when the assignment has no scope
    condition: str


def grants(name: str = "main.bicep") -> list[Grant]:
    """Every role assignment of a template, one per role it gives (loops over roles unrolled)."""
    found = []
    for resource in resources(name).values():
        if resource.type != "Microsoft.Authorization/roleAssignments":
            continue
        principal, scope = resource.value("principalId"), resource.value("scope") or "resourceGroup()"
        definition = resource.value("roleDefinitionId") or ""
        assert principal, f"{resource.symbol}: no principalId"
        names = re.findall(r"roles\.(\w+)", definition)
        if not names and definition.endswith(", role)"):  # for role in [roles.a, roles.b]
            listed = re.search(r"for role in \[([^\]]*)\]", resource.body)
            assert listed, f"{resource.symbol}: a role from a loop this test cannot read"
            names = re.findall(r"roles\.(\w+)", listed.group(1))
        assert names, f"{resource.symbol}: no built-in role named in {definition!r}"
        found += [Grant(principal, role, scope, resource.condition) for role in names]
    return found


def variable(name: str, template: str = "main.bicep") -> str:
    found = re.search(rf"^var {name} = (.+)$", code(template), flags=re.MULTILINE)
    assert found, f"{template} has no var {name}"
    return found.group(1).strip()


def app_setting(resource: Resource, setting: str) -> str | None:
    found = re.search(rf"name: '{setting}'[^}}]*?value: ([^\n]+)", resource.body)
    return found.group(1).strip() if found else None


# ------------------------------------------------------------------ the fleet role's scope


def test_fleet_role_scope_is_required() -> None:
    """A deployment that forgets the fleet's resource groups must fail, not fall back to the whole
    subscription: the parameter has no default, at least one entry, and the module that assigns
    the role makes no subscription-scope assignment at all."""
    main = code("main.bicep")
    assert re.search(r"@minLength\(1\)\s*\nparam fleetResourceGroups array\s*\n", main)
    access = code("modules/fleet-access.bicep")
    assert re.search(r"@minLength\(1\)\s*\nparam resourceGroups array\s*\n", access)
    assert "targetScope = 'subscription'" in access
    assert not [r for r in resources("modules/fleet-access.bicep").values() if "roleAssignments" in r.type], (
        "a role assignment in the subscription-scope module covers the whole subscription"
    )
    assignments = module("modules/fleet-access.bicep", "groupAssignments")
    assert "for group in resourceGroups" in assignments and "scope: resourceGroup(group)" in assignments
    assert "resourceGroups: fleetResourceGroups" in module("main.bicep", "fleetAccess")


# ------------------------------------------------------------------ the HTTP app


def test_http_functions_do_not_hold_the_fleet_role() -> None:
    """The internet-facing functions run in their own app, as their own identity, which holds
    exactly: the run table, sending to the steps queue, its four secrets, its own host storage
    and telemetry. Never the fleet role, the worker's identity, the vault or a blob of the data."""
    found = resources("main.bicep")
    http_app, worker_app = found["httpApp"], found["app"]
    assert "'${httpIdentity.id}': {}" in http_app.body and "'${identity.id}'" not in http_app.body
    assert "'${identity.id}': {}" in worker_app.body and "httpIdentity" not in worker_app.body
    assert app_setting(http_app, "PATCHPILOT_FUNCTIONS") == "'http'"
    assert app_setting(worker_app, "PATCHPILOT_FUNCTIONS") == "'worker'"
    assert app_setting(http_app, "AZURE_CLIENT_ID") == "httpIdentity.properties.clientId"
    fleet = module("main.bicep", "fleetAccess")
    assert f"principalId: {WORKER}" in fleet and "httpIdentity" not in fleet
    held = {(g.role, g.scope) for g in grants() if g.principal == HTTP}
    assert held == {
        ("storageBlobDataOwner", "httpStorage"),
        ("storageTableDataContributor", "storage::tableService::runs"),
        ("storageQueueDataMessageSender", "storage::queueService::steps"),
        ("keyVaultSecretsUser", "approvalSecretScope"),
        ("keyVaultSecretsUser", "previousApprovalSecretScope"),
        ("keyVaultSecretsUser", "slackSecretScope"),
        ("keyVaultSecretsUser", "slackBotTokenSecretScope"),
        ("monitoringMetricsPublisher", "insights"),
    }


def test_http_identity_reads_no_webhook_secret() -> None:
    """Its Key Vault role is on four named secrets (the approval keys, Slack's signing secret and
    bot token), never on the vault, where the webhook URLs are."""
    found = resources("main.bicep")
    for scope, secret in [
        ("approvalSecretScope", "approvalSecretName"),
        ("previousApprovalSecretScope", "previousApprovalSecretName"),
        ("slackSecretScope", "slackSecretName"),
        ("slackBotTokenSecretScope", "slackBotTokenSecretName"),
    ]:
        assert found[scope].type == "Microsoft.KeyVault/vaults/secrets"
        assert found[scope].value("name") == secret and found[scope].value("parent") == "vault"
    assert not [g for g in grants() if g.principal == HTTP and g.scope == "vault"]


def test_slack_bot_token_is_read_by_the_http_app_only_when_slack_groups_approve() -> None:
    """The Slack bot token (members of the rings' Slack user groups) is optional: the HTTP
    identity's role on it, and the setting naming it, exist only with `slackGroupApprovers`; its
    value is a secure parameter written to Key Vault, never an app setting."""
    found = resources("main.bicep")
    (grant,) = [g for g in grants() if g.principal == HTTP and g.scope == "slackBotTokenSecretScope"]
    assert grant.role == "keyVaultSecretsUser" and grant.condition == "slackGroupApprovers"
    assert variable("slackBotTokenSecretName") == "'patchpilot-slack-bot-token'"
    assert app_setting(found["httpApp"], "PATCHPILOT_SLACK_BOT_TOKEN_SECRET") == (
        "slackGroupApprovers ? slackBotTokenSecretName : ''"
    )
    assert re.search(r"@secure\(\)\s*\nparam slackBotToken string = ''", code("main.bicep"))
    assert found["slackBotTokenSecret"].value("value") == "slackBotToken"
    assert "slackBotToken" not in found["httpApp"].body.replace("slackBotTokenSecretName", "")
    assert "slackBotToken" not in found["app"].body.replace("slackBotTokenSecretName", "")

    from patchpilot.bootstrap.azure import AzureEnvironment  # what the app reads it as

    assert AzureEnvironment.model_fields["slack_bot_token_secret"].alias == "PATCHPILOT_SLACK_BOT_TOKEN_SECRET"


def test_http_app_cannot_read_the_worker_host_keys() -> None:
    """The worker's host keeps its function and master keys in its storage account: an identity
    that could read them could invoke the worker's functions through the admin API. The HTTP
    app's host has an account of its own, and its code reaches the data account by name."""
    found = resources("main.bicep")
    http_app = found["httpApp"]
    assert app_setting(http_app, "AzureWebJobsStorage__accountName") == "httpStorage.name"
    assert app_setting(http_app, "PATCHPILOT_STORAGE_ACCOUNT") == "storage.name"
    assert "httpStorage.properties.primaryEndpoints.blob" in http_app.body
    assert not [g for g in grants() if g.principal == HTTP and (g.scope == "storage" or "blob" in g.scope.lower())]

    from patchpilot.bootstrap.azure import AzureEnvironment

    env = AzureEnvironment.from_environ(
        {
            "AzureWebJobsStorage__accountName": "pphttp1",
            "PATCHPILOT_STORAGE_ACCOUNT": "ppdata1",
            "PATCHPILOT_TABLE": "patchpilotruns",
            "PATCHPILOT_QUEUE": "patchpilot-steps",
            "PATCHPILOT_POLICY": "blob://patchpilot-config/policy.yaml",
        }
    )
    endpoints = env.endpoints()
    assert endpoints is not None
    assert (endpoints.table, endpoints.queue) == (
        "https://ppdata1.table.core.windows.net",
        "https://ppdata1.queue.core.windows.net",
    )


def test_http_app_registers_only_the_http_functions() -> None:
    import function_app

    def names(setting: str) -> set[str]:
        return {str(f.get_function_name()) for f in function_app.build_app(setting).get_functions()}

    assert names("http") == HTTP_FUNCTIONS
    assert names("worker") == WORKER_FUNCTIONS
    assert names("") == HTTP_FUNCTIONS | WORKER_FUNCTIONS  # unset: local runs, tests


def test_an_unknown_functions_setting_is_refused_by_name() -> None:
    """A typo must not silently host everything (the fleet identity behind the HTTP routes)."""
    import function_app

    with pytest.raises(ValueError, match=r"PATCHPILOT_FUNCTIONS='htpp'"):
        function_app.build_app("htpp")


# ------------------------------------------------------------------ the policy blob


def test_policy_blob_is_read_only_to_the_apps() -> None:
    """Neither app may write the policy (a policy decides what runs as root where): no blob-writing
    role on the account or the resource group, Blob Data Reader on the policy container, and
    writes only to the worker host's own containers and the reports. The deployer writes it."""
    app_grants = [g for g in grants() if g.principal in (WORKER, HTTP)]
    writers = {(g.principal, g.scope) for g in app_grants if g.role in BLOB_WRITERS}
    assert writers == {
        (WORKER, "hostBlobContainers[index]"),
        (WORKER, "storage::blobService::reports"),
        (HTTP, "httpStorage"),
    }
    host = code("main.bicep").split("var hostContainers = [", 1)[1].split("]", 1)[0]
    assert "configContainer" not in host and "patchpilot-config" not in host
    assert {(g.principal, g.role) for g in app_grants if g.scope == "storage::blobService::config"} == {
        (WORKER, "storageBlobDataReader")
    }
    deployer = [g for g in grants() if g.scope == "storage::blobService::config" and g.role in BLOB_WRITERS]
    assert [(g.principal, g.role) for g in deployer] == [("deployerPrincipalId", "storageBlobDataContributor")]
    assert variable("configContainer") == "'patchpilot-config'"


# ------------------------------------------------------------------ Event Grid


def _subscriptions() -> list[tuple[str, Resource]]:
    return [
        (name, r)
        for name in ("main.bicep", "modules/maintenance-events.bicep")
        for r in resources(name).values()
        if r.type.endswith("/eventSubscriptions")
    ]


def test_event_grid_subscriptions_retry_and_dead_letter() -> None:
    """An advisory or maintenance event the app cannot take is retried for a bounded time, then
    kept in the dead-letter container (written with an identity that can write nothing else),
    not dropped."""
    subscriptions = _subscriptions()
    assert {r.symbol for _, r in subscriptions} == {"advisorySubscription", "subscriptions", "wakeSubscription"}
    for where, subscription in subscriptions:
        what = f"{where}: {subscription.symbol}"
        assert subscription.value("maxDeliveryAttempts"), what
        assert subscription.value("eventTimeToLiveInMinutes"), what
        assert "deadLetterWithResourceIdentity: {" in subscription.body, what
        assert subscription.value("endpointType") and "'StorageBlob'" in subscription.body, what
        assert subscription.value("blobContainerName") in ("deadLetterContainer",), what
    assert variable("deadLetterContainer") == "'deadletter'"
    assert "identityId: deliveryIdentity.id" in module("main.bicep", "maintenanceEvents")
    delivery = {(g.role, g.scope) for g in grants() if g.principal == "deliveryIdentity.properties.principalId"}
    assert delivery == {("storageBlobDataContributor", "storage::blobService::deadLetters")}
    topic = resources("main.bicep")["advisoryTopic"]
    assert topic.value("disableLocalAuth") == "true"  # Entra ID only: publishers are named principals


# ------------------------------------------------------------------ alerts


def test_poison_queue_alerts_have_an_action() -> None:
    """A stuck step (a message in the poison queue) reaches on-call by default: the alert exists
    and calls the action group the template creates, whose e-mail receiver is required."""
    found = resources("main.bicep")
    poison = [r for r in found.values() if r.type == LOG_ALERT and "poisonQueue" in r.body]
    assert len(poison) == 1 and "StorageQueueLogs" in poison[0].body
    assert not poison[0].condition and poison[0].value("enabled") == "true"
    assert "onCall.id" in poison[0].body
    assert variable("poisonQueue") == "'${stepsQueue}-poison'"
    assert re.search(r"^param onCallEmail string\s*$", code("main.bicep"), flags=re.MULTILINE)
    group = found["onCall"]
    assert group.type == "Microsoft.Insights/actionGroups" and not group.condition
    assert group.value("emailAddress") == "onCallEmail" and group.value("enabled") == "true"
    # the host and the code write the poison queue through these logs: they must be collected
    assert "'StorageWrite'" in found["queueDiagnostics"].body


def test_dead_letters_and_function_failures_alert_on_call() -> None:
    found = resources("main.bicep")
    alerts = [r for r in found.values() if r.type in (LOG_ALERT, METRIC_ALERT)]
    dead = [r for r in alerts if "deadLetterContainer" in r.body and "StorageBlobLogs" in r.body]
    failures = [r for r in alerts if "'requests/failed'" in r.body and r.value("scopes") is not None]
    assert len(dead) == 1 and len(failures) == 1
    assert "'StorageWrite'" in found["blobDiagnostics"].body
    for alert in alerts:
        assert not alert.condition and "onCall.id" in alert.body, alert.symbol


def test_wake_ups_take_only_the_end_of_vm_and_snapshot_operations_to_the_wake_up_function() -> None:
    """The subscription's system topic passes what the reader reads (adapters/azure/wake_events.py):
    the four ended-operation event types, on VMs and snapshots, to the worker app's `wake_up`."""
    from patchpilot.adapters.azure import wake_events

    found = resources("main.bicep")
    topic, subscription = found["wakeTopic"], found["wakeSubscription"]
    assert topic.value("topicType") == "'Microsoft.Resources.Subscriptions'"
    assert topic.value("source") == "subscription().id"
    assert "'${app.id}/functions/wake_up'" in subscription.body
    for event_type in wake_events.WAKING_EVENT_TYPES:
        assert f"'{event_type}'" in subscription.body
    for path in (wake_events.VM_PATH, wake_events.SNAPSHOT_PATH):
        assert f"'{path}'" in subscription.body


def test_the_worker_polls_less_often_only_once_the_wake_ups_reach_it() -> None:
    """The fleet lengthens its fallback polls (adapters/azure/fleet WOKEN_POLLS) only on the
    subscription whose events reach `wake_up`: the setting names it exactly when the system topic
    and its Event Grid subscription both exist, on the worker only (the HTTP app runs no step)."""
    found = resources("main.bicep")
    assert found["wakeTopic"].condition == "wakeEvents"
    assert found["wakeSubscription"].condition == "wakeEvents && subscribeMaintenanceEvents"
    assert app_setting(found["app"], "PATCHPILOT_WAKE_SUBSCRIPTION") == (
        "(wakeEvents && subscribeMaintenanceEvents) ? subscription().subscriptionId : ''"
    )
    assert app_setting(found["httpApp"], "PATCHPILOT_WAKE_SUBSCRIPTION") is None
    common = code("main.bicep").split("var commonSettings = [", 1)[1].split("\n]", 1)[0]
    assert "PATCHPILOT_TABLE" in common and "PATCHPILOT_WAKE_SUBSCRIPTION" not in common
    # both apps load no pydantic plugin, as the Lambda functions (test_aws_template.py)
    assert "name: 'PYDANTIC_DISABLE_PLUGINS'\n    value: '__all__'" in common

    from patchpilot.bootstrap.azure import AzureEnvironment  # what the app reads it as

    assert AzureEnvironment.model_fields["wake_subscription"].alias == "PATCHPILOT_WAKE_SUBSCRIPTION"
