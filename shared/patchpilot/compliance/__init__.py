"""Patch compliance across both clouds: which machine lacks which patch (docs/compliance.md)."""
