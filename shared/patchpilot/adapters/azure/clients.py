"""The Azure management clients, built once per subscription on one credential.

`DefaultAzureCredential` (the Function App's managed identity in Azure, the developer's login
elsewhere) unless one is given; tests pass a fake credential and a transport that answers in
process. Throttling (429 with Retry-After) and transient errors are retried by azure-core's own
retry policy: its settings (`retry_total`, `retry_backoff_factor`, ...) pass through `options`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.mgmt.compute import ComputeManagementClient
    from azure.mgmt.hybridcompute import HybridComputeManagementClient
    from azure.mgmt.maintenance import MaintenanceManagementClient
    from azure.mgmt.network import NetworkManagementClient
    from azure.mgmt.resourcegraph import ResourceGraphClient


class AzureClients:
    def __init__(self, credential: TokenCredential | None = None, **options: Any) -> None:
        """`options` go to every client: `transport`, `polling_interval`, retry settings."""
        self._credential = credential
        self.options = options
        self._cache: dict[tuple[str, str | None], Any] = {}

    @property
    def credential(self) -> TokenCredential:
        if self._credential is None:
            from azure.identity import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
        return self._credential

    def _client(self, kind: str, subscription: str | None, build: Any) -> Any:
        key = (kind, subscription)
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def compute(self, subscription: str) -> ComputeManagementClient:
        from azure.mgmt.compute import ComputeManagementClient

        client: ComputeManagementClient = self._client(
            "compute", subscription, lambda: ComputeManagementClient(self.credential, subscription, **self.options)
        )
        return client

    def hybrid(self, subscription: str) -> HybridComputeManagementClient:
        from azure.mgmt.hybridcompute import HybridComputeManagementClient

        client: HybridComputeManagementClient = self._client(
            "hybrid", subscription, lambda: HybridComputeManagementClient(self.credential, subscription, **self.options)
        )
        return client

    def maintenance(self, subscription: str) -> MaintenanceManagementClient:
        from azure.mgmt.maintenance import MaintenanceManagementClient

        client: MaintenanceManagementClient = self._client(
            "maintenance",
            subscription,
            lambda: MaintenanceManagementClient(self.credential, subscription, **self.options),
        )
        return client

    def network(self, subscription: str) -> NetworkManagementClient:
        """NICs, load balancers and Application Gateways (traffic pools: adapters/azure/traffic.py)."""
        from azure.mgmt.network import NetworkManagementClient

        client: NetworkManagementClient = self._client(
            "network", subscription, lambda: NetworkManagementClient(self.credential, subscription, **self.options)
        )
        return client

    def graph(self) -> ResourceGraphClient:
        from azure.mgmt.resourcegraph import ResourceGraphClient

        client: ResourceGraphClient = self._client(
            "graph", None, lambda: ResourceGraphClient(self.credential, **self.options)
        )
        return client
