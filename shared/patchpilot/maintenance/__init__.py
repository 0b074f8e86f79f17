"""Maintenance watch: what the cloud providers will do to the fleet on their side of the shared
responsibility line (docs/maintenance-watch.md)."""
