"""AWS Lambda handlers: thin shims over `patchpilot.adapters.aws.runtime` (see template.yaml)."""
