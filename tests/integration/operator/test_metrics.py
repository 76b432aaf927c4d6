"""The operator's own /metrics, scraped by a real Prometheus (Debian's package) while it
reconciles ModelDeployments against the real API server and a real `mlflow server`:
what a platform team's dashboards and alerts (docs/operations.md) would see."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from modelyard.operator.collect import PrometheusCollector
from tests.support.kube import ModelDeployments, condition
from tests.support.prometheus import start_prometheus, wait_until_up
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.integration

JOB = "modelyard-operator"


@pytest.fixture
def prometheus(operator: Any, tmp_path: Path) -> Iterator[PrometheusCollector]:
    """Prometheus scraping the operator's /metrics every second."""
    target = operator.metrics_url.removeprefix("http://").removesuffix("/metrics")
    server: ServerProcess = start_prometheus([target], tmp_path, job=JOB, interval=1.0)
    try:
        prom = PrometheusCollector(server.url)
        wait_until_up(prom.query, JOB, 1)
        yield prom
    finally:
        server.stop()


def settle(prom: PrometheusCollector, promql: str, expected: float, timeout: float = 40) -> None:
    """Wait until Prometheus answers ``expected`` for ``promql`` (a scrape lands every
    second, the operator's gauges move once per scheduler pass)."""
    deadline = time.monotonic() + timeout
    value = prom.query(promql)
    while value != expected:
        if time.monotonic() > deadline:
            pytest.fail(f"Prometheus said {value} for {promql}, not {expected}, for {timeout}s")
        time.sleep(0.5)
        value = prom.query(promql)


def test_prometheus_scrapes_what_the_operator_did(
    api_client: client.ApiClient,
    namespace: str,
    operator: Any,
    kubelet: Any,
    prometheus: PrometheusCollector,
    register_model: Callable[..., Any],
    mlflow_server: Any,
) -> None:
    k8s = ModelDeployments(api_client, namespace)
    model = register_model(n=1)
    registry = {"trackingUri": mlflow_server.url}
    for name in ("churn", "churn-eu"):
        k8s.create(name, {"model": {"name": model.name, "alias": "champion"}, "registry": registry})
    k8s.create(
        "ghost",
        {"model": {"name": f"{model.name}-gone", "alias": "champion"}, "registry": registry},
    )
    for name in ("churn", "churn-eu"):
        k8s.wait_md(name, "Ready", lambda m: condition(m, "Ready").get("status") == "True")
    k8s.wait_md("ghost", "ModelNotFound", lambda m: condition(m, "ModelResolved"))

    # ModelDeployments by condition: what the test created, and nothing else.
    by_condition = 'modelyard_operator_modeldeployments{{condition="{}",status="{}"}}'
    settle(prometheus, by_condition.format("ModelResolved", "True"), 2)
    settle(prometheus, by_condition.format("ModelResolved", "False"), 1)
    settle(prometheus, by_condition.format("Ready", "True"), 2)
    settle(prometheus, 'sum(modelyard_operator_modeldeployments{condition="ModelResolved"})', 3)

    # Reconciles by outcome: every one of the three was reconciled successfully at least
    # once, and the durations were observed for the same reconciles that were counted.
    ok = prometheus.query('sum(modelyard_operator_reconciles_total{outcome="ok"})')
    assert ok is not None and ok >= 3, ok
    assert prometheus.query(
        'sum(modelyard_operator_reconcile_duration_seconds_count{outcome="ok"})'
    ) == prometheus.query('sum(modelyard_operator_reconciles_total{outcome="ok"})')

    # Registry calls, labelled with the registry's host:port (never its full URI): the
    # latency histogram has samples, and the missing model is counted as an error.
    host = mlflow_server.url.removeprefix("http://")
    latency = prometheus.query(
        f'sum(modelyard_operator_registry_request_duration_seconds_count{{registry="{host}"}})'
    )
    assert latency is not None and latency > 0, latency
    resolves = prometheus.query(
        f'sum(modelyard_operator_registry_requests_total{{registry="{host}",kind="resolve"}})'
    )
    assert resolves is not None and resolves > 0, resolves
    errors = prometheus.query(
        f'sum(modelyard_operator_registry_errors_total{{registry="{host}",reason="ModelNotFound"}})'
    )
    assert errors is not None and errors > 0, errors
    p99 = prometheus.query(
        "histogram_quantile(0.99, sum by (le) "
        f'(modelyard_operator_registry_request_duration_seconds_bucket{{registry="{host}"}}))'
    )
    assert p99 is not None and 0 < p99 <= 10, p99

    # The scheduler keeps passing; Prometheus sees its counter grow between scrapes.
    settle(prometheus, "increase(modelyard_operator_scheduler_passes_total[10s]) > bool 0", 1)
