"""Start the operator process (``modelyard operator``).

With leader election (the default, ``MODELYARD_LEADER_ELECTION``) the process first stands
by until it holds the Lease (:mod:`modelyard.operator.leader`); meanwhile it serves its
``/metrics`` (``modelyard_operator_leader`` 0) and answers its liveness endpoint, so a
standby is live and Ready. Holding the Lease, it runs kopf with the handlers; losing it,
it exits at once (Kubernetes restarts it, as a standby); stopping, it lets kopf finish and
then releases the Lease for the standby.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import kopf

from modelyard.core.contracts import RegistryWebhook
from modelyard.operator import leader as leadership
from modelyard.operator.leader import LeaderElector, new_identity, own_namespace
from modelyard.operator.metrics import OperatorMetrics
from modelyard.operator.settings import OperatorSettings
from modelyard.operator.webhooks import (
    WEBHOOK_ADDRESS_ANNOTATION,
    WebhookReceiver,
    webhook_address,
)

logger = logging.getLogger(__name__)

#: Exit status of a replica that lost the Lease (it is restarted as a standby).
LOST_LEASE_EXIT = 3


class StandbyHealth:
    """The liveness endpoint while kopf does not run yet: 200 with the Lease's holder.
    kopf's own endpoint takes the same address once this process leads."""

    def __init__(self, url: str, elector: LeaderElector) -> None:
        parts = urlsplit(url)
        path = parts.path or "/"

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != path:
                    self.send_error(404)
                    return
                body = json.dumps(
                    {"leader": elector.is_leader(), "holder": elector.holder}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:  # probes every few seconds: no log
                return

        self.server = ThreadingHTTPServer((parts.hostname or "0.0.0.0", parts.port or 80), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="standby-health", daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _exit_on_lost_lease() -> None:
    """Stop acting at once: no handler, worker or scheduler may write after this."""
    logging.shutdown()
    sys.stderr.flush()
    os._exit(LOST_LEASE_EXIT)


def elector_for(settings: OperatorSettings) -> LeaderElector:
    from kubernetes import client

    from modelyard.operator.handlers import _kube_api_client

    return LeaderElector(
        client.CoordinationV1Api(_kube_api_client()),
        namespace=own_namespace(settings.leader_election_namespace),
        name=settings.leader_election_lease,
        identity=new_identity(settings.pod_name),
        lease_duration=settings.leader_election_lease_duration,
        renew_deadline=settings.leader_election_renew_deadline,
        retry_period=settings.leader_election_retry_period,
        on_lost=_exit_on_lost_lease,
        annotations=(
            {WEBHOOK_ADDRESS_ANNOTATION: webhook_address(settings.pod_ip, settings.webhook_port)}
            if settings.webhook_port and settings.pod_ip
            else None
        ),
    )


def run(*, namespaces: list[str], liveness: str | None, verbose: bool) -> None:
    """Stand by for the Lease, then run kopf with our handlers until SIGTERM/SIGINT.

    kopf runs standalone: its peering would pause every replica of equal priority, it is
    not leader election; the Lease decides which replica runs kopf at all.
    """
    kopf.configure(verbose=verbose)
    settings = OperatorSettings.from_env()
    metrics = OperatorMetrics()
    if settings.metrics_port:
        port = metrics.serve(settings.metrics_port)
        logger.info("metrics at http://0.0.0.0:%d/metrics", port)
    elector: LeaderElector | None = None
    hooks: WebhookReceiver | None = None
    if settings.webhook_port:
        # On every replica from the start: a standby forwards what the Service sends it
        # to the leader the Lease names (or answers 503, which MLflow retries); it acts
        # once the handlers attach the scheduler on the leader.
        hooks = WebhookReceiver(
            settings.webhook_secret.get_secret_value(),
            None,
            metrics,
            tolerance=settings.webhook_tolerance,
            is_leader=lambda: elector is None or elector.is_leader(),
            # The elector stands by inside leadership_of() below: read it from there.
            active_address=lambda: (
                standby.holder_annotation(WEBHOOK_ADDRESS_ANNOTATION)
                if (standby := leadership.current()) is not None
                else None
            ),
            name=settings.pod_name,
        )
        port = hooks.serve(settings.webhook_port)
        logger.info("MLflow webhooks at http://0.0.0.0:%d%s", port, RegistryWebhook.PATH)
    if settings.leader_election:
        elector = leadership_of(settings, metrics, liveness)
    else:
        metrics.leader.set(1)
    importlib.import_module("modelyard.operator.handlers")  # registers the handlers
    try:
        kopf.run(
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=liveness or None,
            memo=kopf.Memo(metrics=metrics, elector=elector, webhooks=hooks),
        )
    finally:
        if hooks is not None:
            hooks.close()
        if elector is not None:
            elector.release()
        metrics.close()


def leadership_of(
    settings: OperatorSettings, metrics: OperatorMetrics, liveness: str | None
) -> LeaderElector:
    """Stand by (live, with metrics) until this process holds the Lease; keep renewing it."""
    elector = elector_for(settings)
    leadership.set_current(elector)
    metrics.leader.set_function(lambda: 1.0 if elector.is_leader() else 0.0)
    health = StandbyHealth(liveness, elector) if liveness else None
    try:
        elector.acquire()
    finally:
        if health is not None:
            health.close()
    elector.start_renewing()
    return elector
