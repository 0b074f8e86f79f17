"""The application layer: what the runtimes do with their ports, the same on every cloud.

- `azure_advisories`: Azure's own advisories (Defender for Cloud, Update Manager's assessment) on the timer
"""
