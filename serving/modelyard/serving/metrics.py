"""Prometheus metrics of the model server, labelled with the served model.

In the server the metric classes come from ``bentoml.metrics``, which share BentoML's
multiprocess registry, so ``GET /metrics`` shows them next to BentoML's own; tests pass
``prometheus_client`` classes bound to a private registry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modelyard.core import contracts as c
from modelyard.serving.model import ModelIdentity

MetricFactory = Callable[..., Any]

REQUEST_LABELS = ("endpoint", "status", "model_name", "model_version")
MODEL_LABELS = ("model_name", "model_version")
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.0, 10.0,
)  # fmt: skip


class ServerMetrics:
    def __init__(
        self, model: ModelIdentity, counter: MetricFactory, histogram: MetricFactory
    ) -> None:
        self._model = {"model_name": model.name, "model_version": model.version}
        self.requests = counter(
            name=c.REQUESTS_METRIC,
            documentation="Prediction requests answered, by endpoint and HTTP status.",
            labelnames=REQUEST_LABELS,
        )
        self.latency = histogram(
            name=c.REQUEST_DURATION_METRIC,
            documentation="Time from request received to response ready.",
            labelnames=REQUEST_LABELS,
            buckets=LATENCY_BUCKETS,
        )
        self.predicted_rows = counter(
            name="modelyard_predicted_rows_total",
            documentation="Input rows predicted.",
            labelnames=MODEL_LABELS,
        )
        self.batch_requests = histogram(
            name="modelyard_batch_requests",
            documentation="Requests combined into one model call by adaptive batching.",
            labelnames=MODEL_LABELS,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        )
        self.log_write_failures = counter(
            name="modelyard_prediction_log_write_failures_total",
            documentation="Prediction-log writes that failed (the rows are retried).",
            labelnames=MODEL_LABELS,
        )
        self.log_rows_dropped = counter(
            name="modelyard_prediction_log_rows_dropped_total",
            documentation="Prediction-log rows dropped because the sink kept failing.",
            labelnames=MODEL_LABELS,
        )

        self.model_loads = counter(
            name=c.MODEL_LOADS_METRIC,
            documentation="Model loads at start, by where the files came from: registry, "
            "cache (the registry was unreachable) or uri (runs:/, a path).",
            labelnames=(*MODEL_LABELS, "source"),
        )

        # Create the model-labelled series now, so they read 0 instead of being absent
        # until the first event (an alert on their rate then works from the start).
        for metric in (self.predicted_rows, self.log_write_failures, self.log_rows_dropped):
            metric.labels(**self._model)

    def count_model_load(self, source: str) -> None:
        self.model_loads.labels(**self._model, source=source).inc()

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        labels = {"endpoint": endpoint, "status": str(status), **self._model}
        self.requests.labels(**labels).inc()
        self.latency.labels(**labels).observe(seconds)

    def observe_batch(self, n_requests: int, n_rows: int) -> None:
        self.batch_requests.labels(**self._model).observe(n_requests)
        self.predicted_rows.labels(**self._model).inc(n_rows)

    def count_log_write_failure(self) -> None:
        self.log_write_failures.labels(**self._model).inc()

    def count_log_rows_dropped(self, n_rows: int) -> None:
        self.log_rows_dropped.labels(**self._model).inc(n_rows)
