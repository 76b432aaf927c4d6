"""Server metrics carry the model's name and version, the endpoint and the status."""

from __future__ import annotations

import functools

import prometheus_client
from prometheus_client import CollectorRegistry

from modelyard.serving.metrics import ServerMetrics
from modelyard.serving.model import ModelIdentity


def test_request_metrics_are_labelled_by_endpoint_status_and_model() -> None:
    registry = CollectorRegistry()
    metrics = ServerMetrics(
        ModelIdentity("fraud", "7"),
        functools.partial(prometheus_client.Counter, registry=registry),
        functools.partial(prometheus_client.Histogram, registry=registry),
    )
    metrics.observe_request("/predict", 200, 0.004)
    metrics.observe_request("/predict", 200, 0.006)
    metrics.observe_request("/invocations", 400, 0.001)
    metrics.observe_batch(n_requests=3, n_rows=5)
    metrics.count_log_write_failure()
    metrics.count_log_rows_dropped(12)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(
            name, {"model_name": "fraud", "model_version": "7", **labels}
        )

    ok = {"endpoint": "/predict", "status": "200"}
    assert value("modelyard_requests_total", **ok) == 2
    assert value("modelyard_requests_total", endpoint="/invocations", status="400") == 1
    assert value("modelyard_request_duration_seconds_count", **ok) == 2
    assert value("modelyard_request_duration_seconds_sum", **ok) == 0.01
    assert value("modelyard_request_duration_seconds_bucket", le="0.005", **ok) == 1
    assert value("modelyard_predicted_rows_total") == 5
    assert value("modelyard_batch_requests_sum") == 3
    assert value("modelyard_prediction_log_write_failures_total") == 1
    assert value("modelyard_prediction_log_rows_dropped_total") == 12
    exposition = prometheus_client.generate_latest(registry).decode()
    assert (
        'modelyard_requests_total{endpoint="/predict",model_name="fraud",'
        'model_version="7",status="200"} 2.0'
    ) in exposition
