"""`spec.registry.trackingUri` is not a way to make the operator fetch any URL and echo
it (docs/security.md): a registry outside the installation's allow-list is never
contacted, and what an allowed but hostile registry answers never reaches the
ModelDeployment's status, its Events or the operator's log."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client

from tests.support.kube import ModelDeployments, condition
from tests.support.operator import running_operator

MARKER = "MARKER-internal-secret-4be1"


@dataclass
class MarkerService:
    """An internal HTTP service that answers every request with the marker."""

    url: str
    status: int
    paths: list[str] = field(default_factory=list)


def _marker_service(
    host: str, status: int, body: bytes
) -> tuple[ThreadingHTTPServer, MarkerService]:
    service = MarkerService("", status)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            service.paths.append(self.path)
            self.send_response(service.status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

    server = ThreadingHTTPServer((host, 0), Handler)
    service.url = f"http://{host}:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, service


@pytest.fixture
def marker() -> Iterator[Any]:
    servers: list[ThreadingHTTPServer] = []

    def start(host: str, status: int = 200, body: bytes | None = None) -> MarkerService:
        server, service = _marker_service(host, status, body or f"{MARKER}\n".encode() * 64)
        servers.append(server)
        return service

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _status_and_events(mds: ModelDeployments, name: str) -> str:
    events = client.CoreV1Api(mds.api_client).list_namespaced_event(mds.ns).items
    return "\n".join([json.dumps(mds.md(name)), *(f"{e.reason} {e.message}" for e in events)])


def test_a_registry_not_allowed_is_never_contacted(
    api_client: client.ApiClient, namespace: str, crd: Any, marker: Any
) -> None:
    # Allowed here: http://127.0.0.1:* (tests/integration/operator/conftest.py).
    service = marker("127.0.0.2")
    mds = ModelDeployments(api_client, namespace)
    with running_operator(namespace) as operator:
        mds.create(
            "probe",
            {"model": {"name": "churn", "version": 1}, "registry": {"trackingUri": service.url}},
        )
        md = mds.wait_md(
            "probe",
            "ModelResolved=False",
            lambda md: condition(md, "ModelResolved").get("reason") == "RegistryNotAllowed",
        )
        message = condition(md, "ModelResolved")["message"]
        assert service.url in message and "allowedRegistries" in message
        # Several resolve passes later, still nothing reached it.
        passes = operator.metric("modelyard_operator_scheduler_passes_total")
        operator.wait_metric("modelyard_operator_scheduler_passes_total", passes + 3)
    assert service.paths == []
    assert client.AppsV1Api(api_client).list_namespaced_deployment(namespace).items == []


@pytest.mark.parametrize(
    ("status", "what"),
    [(200, "a 200 that is not JSON"), (404, "an error page"), (500, "a server error")],
)
def test_what_an_allowed_registry_answers_is_never_echoed(
    api_client: client.ApiClient, namespace: str, crd: Any, marker: Any, status: int, what: str
) -> None:
    service = marker("127.0.0.1", status)
    mds = ModelDeployments(api_client, namespace)
    with running_operator(namespace) as operator:
        mds.create(
            "probe",
            {
                "model": {"name": "churn", "alias": "champion"},
                "registry": {"trackingUri": service.url},
            },
        )
        md = mds.wait_md(
            "probe",
            f"ModelResolved=False after {what}",
            lambda md: (
                condition(md, "ModelResolved").get("status") == "False"
                and condition(md, "ModelResolved").get("reason") != "Pending"
            ),
        )
        # The operator did ask (so the test proves something) and says what went
        # wrong in its own words.
        assert service.paths, "the operator never asked the registry"
        assert condition(md, "ModelResolved")["message"]
        assert MARKER not in _status_and_events(mds, "probe")
    # Its log is what a user (and anyone who reads its logs) sees.
    assert service.url in operator.runner.output
    assert MARKER not in operator.runner.output
