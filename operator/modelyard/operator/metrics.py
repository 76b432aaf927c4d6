"""The operator's own metrics, served at ``/metrics`` (``MODELYARD_METRICS_PORT``).

Each operator instance has its own registry (tests start several in one process); the
names are documented with the alerts to set on them in ``docs/operations.md``.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.reconciles = Counter(
            "modelyard_operator_reconciles_total",
            "ModelDeployment reconciles, by outcome (ok, retry: asked to come back later, error).",
            ["outcome"],
            registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "modelyard_operator_reconcile_duration_seconds",
            "Time one reconcile took, by outcome.",
            ["outcome"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "modelyard_operator_queue_depth",
            "ModelDeployments waiting to be reconciled (queued or delayed).",
            registry=self.registry,
        )
        self.scheduler_passes = Counter(
            "modelyard_operator_scheduler_passes_total",
            "Passes of the scheduler that re-resolves followed registry references.",
            registry=self.registry,
        )
        self.registry_requests = Counter(
            "modelyard_operator_registry_requests_total",
            "Requests to MLflow registries, by registry and kind (resolve, lineage, tag).",
            ["registry", "kind"],
            registry=self.registry,
        )
        self.registry_errors = Counter(
            "modelyard_operator_registry_errors_total",
            "Failed registry requests, by registry and reason.",
            ["registry", "reason"],
            registry=self.registry,
        )
        self.registry_seconds = Histogram(
            "modelyard_operator_registry_request_duration_seconds",
            "Latency of registry requests, by registry.",
            ["registry"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.api_writes = Counter(
            "modelyard_operator_api_writes_total",
            "Writes to the Kubernetes API, by kind of write (apply, delete, status, event).",
            ["verb"],
            registry=self.registry,
        )
        self.resources = Gauge(
            "modelyard_operator_modeldeployments",
            "ModelDeployments known to the operator, by condition type and status.",
            ["condition", "status"],
            registry=self.registry,
        )
        self.webhook_deliveries = Counter(
            "modelyard_operator_webhook_deliveries_total",
            "MLflow registry webhook deliveries, by outcome (accepted, ignored, duplicate, "
            "unsigned, forged, stale, invalid, not_leader).",
            ["outcome"],
            registry=self.registry,
        )
        self.leader = Gauge(
            "modelyard_operator_leader",
            "1 on the replica that holds the Lease and acts, 0 on a standby.",
            registry=self.registry,
        )
        self._server: Any = None

    def serve(self, port: int, address: str = "0.0.0.0") -> int:
        """Serve ``/metrics``; returns the port (0 picks a free one)."""
        server, _thread = start_http_server(port, addr=address, registry=self.registry)
        self._server = server
        return int(server.server_address[1])

    def close(self) -> None:
        close_server(self._server)
        self._server = None


def close_server(server: Any) -> None:
    """Stop an HTTP server serving on its own thread (None: nothing to stop)."""
    if server is not None:
        server.shutdown()
        server.server_close()
