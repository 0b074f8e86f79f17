"""Azure adapters: Compute and Resource Graph for the fleet, Update Manager, Table Storage,
Storage Queues and Key Vault."""
