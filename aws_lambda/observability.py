"""The powertools Logger, Tracer and Metrics every handler shares (cheap to create; no I/O)."""

from aws_lambda_powertools import Logger, Metrics, Tracer

SERVICE = "patchpilot"

logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(namespace="PatchPilot", service=SERVICE)
