"""MLflow Model Registry webhooks: the operator hears of an alias move at once.

MLflow (3.3+) POSTs a JSON delivery to ``MODELYARD_WEBHOOK_PORT`` + ``/webhooks/mlflow``
when an alias or a tag of a model version changes. A delivery is acted on only when its
``X-MLflow-Signature`` is the HMAC-SHA256, keyed with the shared secret
(``MODELYARD_WEBHOOK_SECRET``), of ``"{delivery id}.{timestamp}.{body}"``, and its
timestamp is within ``MODELYARD_WEBHOOK_TOLERANCE`` seconds of the operator's clock; a
delivery id already seen in that window is answered but not acted on again. What is
acted on: the model the event names is handed to the scheduler, which re-resolves every
reference to it that ModelDeployments follow, now rather than at its next pass. The
scheduler's passes go on regardless: a lost delivery is caught up by polling.

Answers: 200 acted on (or ignored: an event the operator does not need, a duplicate);
401 unsigned, forged or stale; 400 a malformed delivery (the field is named).

The Service sends a delivery to any replica. A standby forwards it, as it came (the
signature covers the body and its headers), to the active replica, whose address the
active one announces on the Lease (``WEBHOOK_ADDRESS_ANNOTATION``), and answers what the
active one answered; one hop only. Without a known active replica, or when it does not
answer, the standby answers 503 (MLflow retries 5xx; polling catches up regardless).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from modelyard.core import contracts as c
from modelyard.operator.metrics import OperatorMetrics, close_server
from modelyard.operator.resource import GROUP

logger = logging.getLogger(__name__)

Hook = c.RegistryWebhook
#: The largest body accepted; MLflow's deliveries are a few hundred bytes.
MAX_BODY = 64 * 1024
#: Seconds a client has to send its request.
READ_TIMEOUT = 10.0
#: On the Lease: ``host:port`` where its holder takes deliveries.
WEBHOOK_ADDRESS_ANNOTATION = f"{GROUP}/webhook-address"
#: Set on a forwarded delivery (to the forwarding replica's name): never forwarded again.
FORWARDED_HEADER = "X-Modelyard-Forwarded-By"
#: The headers a forwarded delivery keeps (what the signature and the checks read).
_FORWARDED = (
    "Content-Type",
    Hook.SIGNATURE_HEADER,
    Hook.DELIVERY_ID_HEADER,
    Hook.TIMESTAMP_HEADER,
)
#: Seconds the active replica has to answer a forwarded delivery.
FORWARD_TIMEOUT = 5.0


def nowhere() -> str | None:
    return None


def webhook_address(ip: str, port: int) -> str:
    """``host:port`` (an IPv6 address in brackets)."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def always() -> bool:
    return True


@dataclass(frozen=True)
class Answer:
    """The HTTP status, the outcome (the metric's label) and what the sender is told."""

    status: int
    outcome: str
    message: str


#: A standby's answer when it cannot hand the delivery on (MLflow retries a 503).
NOT_ACTIVE = Answer(503, "not_leader", "this operator replica is not the active one")


def signature(secret: bytes, delivery_id: str, timestamp: str, body: bytes) -> str:
    """MLflow's ``X-MLflow-Signature`` of a delivery."""
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret, signed, hashlib.sha256).digest()
    return f"{Hook.SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


class WebhookReceiver:
    """Checks deliveries and hands the model each names to ``on_model``.

    ``is_leader`` is the seam for leader election: a replica that is not the active one
    answers 503 (MLflow retries, and the Service may route the retry to the active one);
    by default every replica is the active one. ``modelyard operator`` serves the receiver
    on every replica from the start, with no ``on_model`` yet: it answers 503 until the
    replica leads and its scheduler is attached (:meth:`attach`).
    """

    def __init__(
        self,
        secret: str,
        on_model: Callable[[str], None] | None,
        metrics: OperatorMetrics,
        *,
        tolerance: float = 300.0,
        is_leader: Callable[[], bool] = always,
        clock: Callable[[], float] = time.time,
        active_address: Callable[[], str | None] = nowhere,
        name: str = "",
    ) -> None:
        if not secret:
            raise ValueError(
                f"{Hook.SECRET_ENV} is empty: the webhook receiver would accept anyone's "
                "deliveries; set it from a Secret (chart: operator.webhook.secretName)"
            )
        self._secret = secret.encode()
        self._on_model = on_model
        self._metrics = metrics
        self._tolerance = tolerance
        self._is_leader = is_leader
        self._active_address = active_address
        self._name = name or "standby"
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ checking
    def receive(self, headers: Mapping[str, str], body: bytes) -> Answer:
        answer = self._check(headers, body)
        self._metrics.webhook_deliveries.labels(answer.outcome).inc()
        return answer

    def attach(self, on_model: Callable[[str], None]) -> None:
        """The scheduler to poke, once this replica acts."""
        self._on_model = on_model

    def _check(self, headers: Mapping[str, str], body: bytes) -> Answer:
        lower = {k.lower(): v for k, v in headers.items()}
        if self._on_model is None or not self._is_leader():
            return self._forward(lower, body)
        signed = lower.get(Hook.SIGNATURE_HEADER.lower())
        if not signed:
            return Answer(
                401,
                "unsigned",
                f"unsigned delivery: no {Hook.SIGNATURE_HEADER} header. Register the webhook "
                f"with the shared secret ({Hook.SECRET_ENV}): modelyard registry webhook create",
            )
        for header in (Hook.DELIVERY_ID_HEADER, Hook.TIMESTAMP_HEADER):
            if not lower.get(header.lower()):
                return Answer(400, "invalid", f"the {header} header is missing")
        delivery_id = lower[Hook.DELIVERY_ID_HEADER.lower()]
        stamp = lower[Hook.TIMESTAMP_HEADER.lower()]
        expected = signature(self._secret, delivery_id, stamp, body)
        # Senders may list several signatures, space-separated (while rotating a secret).
        if not any(hmac.compare_digest(expected, s) for s in signed.split()):
            return Answer(
                401,
                "forged",
                f"the {Hook.SIGNATURE_HEADER} does not match the delivery: it was signed with "
                f"another secret than the operator's {Hook.SECRET_ENV}, or altered",
            )
        try:
            sent = int(stamp)
        except ValueError:
            return Answer(400, "invalid", f"the {Hook.TIMESTAMP_HEADER} header is not Unix seconds")
        now = self._clock()
        if abs(now - sent) > self._tolerance:
            return Answer(
                401,
                "stale",
                f"the {Hook.TIMESTAMP_HEADER} is {abs(now - sent):.0f} s from the operator's "
                f"clock (more than {self._tolerance:.0f} s): a replayed or late delivery is "
                "refused",
            )
        if self._already_seen(delivery_id, now):
            return Answer(200, "duplicate", f"delivery {delivery_id} was received before")
        return self._act(body)

    def _forward(self, lower: Mapping[str, str], body: bytes) -> Answer:
        """A standby's answer: the active replica's, to the same delivery."""
        if FORWARDED_HEADER.lower() in lower:
            return NOT_ACTIVE  # one hop: the replica that forwarded it took us for the leader
        address = self._active_address()
        if not address:
            return NOT_ACTIVE
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        headers = {h: lower[h.lower()] for h in _FORWARDED if h.lower() in lower}
        headers[FORWARDED_HEADER] = self._name
        connection = http.client.HTTPConnection(host, int(port), timeout=FORWARD_TIMEOUT)
        try:
            connection.request("POST", Hook.PATH, body=body, headers=headers)
            response = connection.getresponse()
            status, data = response.status, response.read(MAX_BODY)
        except (OSError, http.client.HTTPException) as error:
            return Answer(
                503, "not_leader", f"{NOT_ACTIVE.message}, and the active one at {address} "
                f"did not answer: {error}",
            )  # fmt: skip
        finally:
            connection.close()
        try:
            message = str(json.loads(data).get("message", ""))
        except (ValueError, AttributeError):
            message = data[:200].decode(errors="replace")
        return Answer(status, "forwarded", f"forwarded to the active replica: {message}")

    def _already_seen(self, delivery_id: str, now: float) -> bool:
        with self._lock:
            for key in [k for k, at in self._seen.items() if now - at > 2 * self._tolerance]:
                del self._seen[key]
            if delivery_id in self._seen:
                return True
            self._seen[delivery_id] = now
            return False

    def _act(self, body: bytes) -> Answer:
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            return Answer(400, "invalid", f"the body is not JSON: {error}")
        if not isinstance(payload, dict):
            return Answer(400, "invalid", "the body is not a JSON object")
        for field in ("entity", "action"):
            if not isinstance(payload.get(field), str):
                return Answer(400, "invalid", f"the body's {field!r} is missing or not a string")
        event = f"{payload['entity']}.{payload['action']}"
        if event not in Hook.EVENTS:
            return Answer(200, "ignored", f"event {event} does not concern ModelDeployments")
        data = payload.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return Answer(400, "invalid", "the body's 'data.name' (the model) is missing")
        model: str = data["name"]
        key = data.get("key")
        if isinstance(key, str) and key.startswith(c.DEPLOYED_TAG_PREFIX + "/"):
            # The operator's own record of where a version is live: nothing to follow.
            return Answer(200, "ignored", f"tag {key} is the operator's own")
        poke = self._on_model
        if poke is None:  # detached meanwhile (the replica stopped acting)
            return NOT_ACTIVE
        poke(model)
        logger.info("webhook %s for model %s: re-resolving its references now", event, model)
        return Answer(
            200, "accepted", f"{event}: the references to model {model!r} are re-resolved"
        )

    # ------------------------------------------------------------------ serving
    def serve(self, port: int, address: str = "0.0.0.0") -> int:
        """Serve ``POST /webhooks/mlflow`` on a thread; returns the port (0: a free one)."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            timeout = READ_TIMEOUT

            def _reply(self, answer: Answer) -> None:
                data = json.dumps({"outcome": answer.outcome, "message": answer.message}).encode()
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if answer.status == 503:
                    self.send_header("Retry-After", "1")
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                if self.path.split("?", 1)[0] != Hook.PATH:
                    self._reply(Answer(404, "not_found", f"deliveries go to {Hook.PATH}"))
                    return
                length = self.headers.get("Content-Length")
                if length is None or not length.isdigit():
                    self._reply(Answer(411, "invalid", "a Content-Length header is required"))
                    return
                if int(length) > MAX_BODY:
                    self._reply(Answer(413, "invalid", f"the body exceeds {MAX_BODY} bytes"))
                    return
                body = self.rfile.read(int(length))
                answer = receiver.receive(dict(self.headers.items()), body)
                if answer.status >= 400:
                    logger.warning(
                        "webhook from %s refused (%d %s): %s",
                        self.client_address[0],
                        answer.status,
                        answer.outcome,
                        answer.message,
                    )
                self._reply(answer)

            def do_GET(self) -> None:
                self._reply(Answer(405, "invalid", f"POST MLflow's deliveries to {Hook.PATH}"))

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("webhook %s: " + format, self.client_address[0], *args)

        server = ThreadingHTTPServer((address, port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="webhooks", daemon=True).start()
        self._server = server
        return int(server.server_address[1])

    def close(self) -> None:
        close_server(self._server)
        self._server = None
