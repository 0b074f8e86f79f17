"""PatchPilot: snapshot, patch in availability-safe waves, health-check, roll back."""

__version__ = "0.1.0"
