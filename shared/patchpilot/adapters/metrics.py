"""The `Metrics` port: CloudWatch (embedded metric format) on AWS, structured log lines elsewhere."""

from __future__ import annotations

import logging

log = logging.getLogger("patchpilot.metrics")


class LogMetrics:
    """Each count as a log line `metric NAME VALUE` with `metric` and `value` fields: Application
    Insights keeps it in `traces` (an alert queries it), the local runtime in its log."""

    def count(self, name: str, value: int = 1) -> None:
        log.warning("metric %s %d", name, value, extra={"metric": name, "value": value})


class EmfMetrics:
    """Counts in the namespace `PatchPilot` of the handlers' powertools Metrics: every instance
    shares one metric set, which the handler's `log_metrics` flushes as embedded metric format."""

    def count(self, name: str, value: int = 1) -> None:
        from aws_lambda_powertools import Metrics
        from aws_lambda_powertools.metrics import MetricUnit

        Metrics(namespace="PatchPilot", service="patchpilot").add_metric(name=name, unit=MetricUnit.Count, value=value)
