"""The webhook receiver: what MLflow signs is accepted, anything else refused, over HTTP."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from modelyard.core.contracts import DEPLOYED_TAG_PREFIX, RegistryWebhook
from modelyard.operator.metrics import OperatorMetrics
from modelyard.operator.settings import OperatorSettings
from modelyard.operator.webhooks import WebhookReceiver, signature, webhook_address

SECRET = "s3cret-shared-with-mlflow"


class Receiving:
    def __init__(self, leader: bool = True) -> None:
        self.models: list[str] = []
        self.metrics = OperatorMetrics()
        self.leader = leader
        #: What the Lease says about the active replica (a standby forwards there).
        self.active: str | None = None
        self.receiver = WebhookReceiver(
            SECRET,
            self.models.append,
            self.metrics,
            is_leader=lambda: self.leader,
            active_address=lambda: self.active,
            name=f"replica-{uuid.uuid4().hex[:4]}",
        )
        self.port = self.receiver.serve(0, "127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port}{RegistryWebhook.PATH}"

    def post(
        self,
        payload: Any,
        *,
        secret: str = SECRET,
        stamp: int | None = None,
        delivery: str | None = None,
        drop: str | None = None,
    ) -> httpx.Response:
        """A delivery as MLflow sends it; ``drop``: a header left out."""
        body = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
        delivery = delivery or str(uuid.uuid4())
        ts = str(int(time.time()) if stamp is None else stamp)
        headers = {
            "Content-Type": "application/json",
            RegistryWebhook.DELIVERY_ID_HEADER: delivery,
            RegistryWebhook.TIMESTAMP_HEADER: ts,
            RegistryWebhook.SIGNATURE_HEADER: signature(secret.encode(), delivery, ts, body),
        }
        if drop:
            del headers[drop]
        return httpx.post(self.url, content=body, headers=headers, timeout=5)

    def count(self, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "modelyard_operator_webhook_deliveries_total", {"outcome": outcome}
        )
        return value or 0.0


@pytest.fixture
def hook() -> Iterator[Receiving]:
    receiving = Receiving()
    yield receiving
    receiving.receiver.close()


def alias_moved(model: str = "churn") -> dict[str, Any]:
    return {
        "entity": "model_version_alias",
        "action": "created",
        "timestamp": "2026-12-02T05:00:00+00:00",
        "data": {"name": model, "alias": "champion", "version": "2"},
    }


def test_the_signature_is_mlflows() -> None:
    from mlflow.webhooks.delivery import _generate_hmac_signature

    body = json.dumps(alias_moved())
    ours = signature(SECRET.encode(), "d-1", "1764650000", body.encode())
    assert ours == _generate_hmac_signature(SECRET, "d-1", "1764650000", body)


def test_a_signed_alias_move_names_its_model_to_the_scheduler(hook: Receiving) -> None:
    answer = hook.post(alias_moved("churn"))
    assert answer.status_code == 200, answer.text
    assert answer.json()["outcome"] == "accepted"
    assert hook.models == ["churn"]
    assert hook.count("accepted") == 1


def test_a_forged_delivery_is_refused_and_acts_on_nothing(hook: Receiving) -> None:
    answer = hook.post(alias_moved(), secret="guessed")
    assert answer.status_code == 401
    assert "does not match" in answer.json()["message"]
    assert RegistryWebhook.SECRET_ENV in answer.json()["message"]
    assert hook.models == []
    assert hook.count("forged") == 1


def test_an_altered_body_is_refused(hook: Receiving) -> None:
    body = json.dumps(alias_moved("churn")).encode()
    ts, delivery = str(int(time.time())), "d-2"
    headers = {
        RegistryWebhook.DELIVERY_ID_HEADER: delivery,
        RegistryWebhook.TIMESTAMP_HEADER: ts,
        RegistryWebhook.SIGNATURE_HEADER: signature(SECRET.encode(), delivery, ts, body),
    }
    altered = body.replace(b"churn", b"fraud")
    answer = httpx.post(hook.url, content=altered, headers=headers, timeout=5)
    assert answer.status_code == 401
    assert hook.models == []


def test_an_unsigned_delivery_is_refused(hook: Receiving) -> None:
    answer = hook.post(alias_moved(), drop=RegistryWebhook.SIGNATURE_HEADER)
    assert answer.status_code == 401
    assert "unsigned" in answer.json()["message"]
    assert "modelyard registry webhook create" in answer.json()["message"]
    assert hook.models == []
    assert hook.count("unsigned") == 1


def test_a_stale_or_replayed_delivery_is_refused(hook: Receiving) -> None:
    answer = hook.post(alias_moved(), stamp=int(time.time()) - 3600)
    assert answer.status_code == 401
    assert "more than 300 s" in answer.json()["message"]
    assert hook.count("stale") == 1
    first = hook.post(alias_moved(), delivery="same-id")
    again = hook.post(alias_moved(), delivery="same-id")
    assert (first.json()["outcome"], again.json()["outcome"]) == ("accepted", "duplicate")
    assert again.status_code == 200
    assert hook.models == ["churn"]


@pytest.mark.parametrize(
    ("payload", "drop", "status", "names"),
    [
        ("{not json", None, 400, "not JSON"),
        ({"entity": "model_version_alias", "action": "created"}, None, 400, "'data.name'"),
        ({"action": "created", "data": {"name": "m"}}, None, 400, "'entity'"),
        (alias_moved(), RegistryWebhook.TIMESTAMP_HEADER, 400, RegistryWebhook.TIMESTAMP_HEADER),
        (alias_moved(), RegistryWebhook.DELIVERY_ID_HEADER, 400, "Delivery-Id"),
    ],
)
def test_a_malformed_delivery_gets_a_400_naming_what(
    hook: Receiving, payload: Any, drop: str | None, status: int, names: str
) -> None:
    answer = hook.post(payload, drop=drop)
    assert answer.status_code == status
    assert names in answer.json()["message"]
    assert hook.models == []


def test_events_that_cannot_move_a_deployment_are_ignored(hook: Receiving) -> None:
    created = {"entity": "registered_model", "action": "created", "data": {"name": "m"}}
    own_tag = {
        "entity": "model_version_tag",
        "action": "set",
        "data": {"name": "m", "version": "1", "key": f"{DEPLOYED_TAG_PREFIX}/ns/md", "value": "x"},
    }
    drift = {
        "entity": "model_version_tag",
        "action": "set",
        "data": {"name": "m", "version": "1", "key": "modelyard.drift.status", "value": "x"},
    }
    assert [hook.post(p).json()["outcome"] for p in (created, own_tag, drift)] == [
        "ignored",
        "ignored",
        "accepted",
    ]
    assert hook.models == ["m"]


def test_wrong_path_method_and_size_are_refused(hook: Receiving) -> None:
    assert httpx.post(hook.url.replace("mlflow", "other"), content=b"{}").status_code == 404
    assert httpx.get(hook.url).status_code == 405
    big = httpx.post(hook.url, content=b"x" * (65 * 1024))
    assert big.status_code == 413


def test_a_replica_that_is_not_active_asks_for_a_retry() -> None:
    receiving = Receiving(leader=False)
    try:
        answer = receiving.post(alias_moved())
        assert answer.status_code == 503
        assert answer.headers["Retry-After"] == "1"
        assert receiving.models == []
    finally:
        receiving.receiver.close()


def test_a_standby_forwards_a_delivery_to_the_active_replica_once() -> None:
    """The Service sends a delivery to the standby: it hands it, as signed, to the
    replica the Lease names, and answers what that one answered; a forged one is refused
    there just the same; a replica never forwards a forwarded delivery again."""
    active, standby = Receiving(leader=True), Receiving(leader=False)
    try:
        standby.active = webhook_address("127.0.0.1", active.port)
        answer = standby.post(alias_moved("churn"))
        assert answer.status_code == 200, answer.text
        assert "forwarded to the active replica" in answer.json()["message"]
        assert active.models == ["churn"] and standby.models == []
        assert active.count("accepted") == 1 and standby.count("forwarded") == 1
        forged = standby.post(alias_moved("churn"), secret="not-the-secret")
        assert forged.status_code == 401, forged.text
        assert active.count("forged") == 1 and active.models == ["churn"]
        # Both take the other for the active one (a Lease read just before a handover):
        # one hop, then 503, never a loop.
        active.leader = False
        active.active = webhook_address("127.0.0.1", standby.port)
        looped = standby.post(alias_moved("churn"))
        assert looped.status_code == 503, looped.text
        assert active.count("not_leader") == 1
    finally:
        active.receiver.close()
        standby.receiver.close()


def test_a_standby_whose_active_replica_is_gone_asks_for_a_retry() -> None:
    standby = Receiving(leader=False)
    gone = Receiving(leader=True)
    gone.receiver.close()
    try:
        standby.active = webhook_address("127.0.0.1", gone.port)
        answer = standby.post(alias_moved("churn"))
        assert answer.status_code == 503, answer.text
        assert f"the active one at 127.0.0.1:{gone.port} did not answer" in answer.text
        assert webhook_address("fd00::5", 8443) == "[fd00::5]:8443"
    finally:
        standby.receiver.close()


def test_a_replica_answers_503_until_its_scheduler_is_attached(hook: Receiving) -> None:
    """`modelyard operator` serves the receiver on a standby too, with nothing to poke
    until it leads: the delivery is retried, not lost to a refused connection."""
    standby = WebhookReceiver(SECRET, None, hook.metrics)
    hook.url = f"http://127.0.0.1:{standby.serve(0, '127.0.0.1')}{RegistryWebhook.PATH}"
    try:
        waiting = hook.post(alias_moved("churn"))
        assert waiting.status_code == 503, waiting.text
        assert hook.count("not_leader") == 1
        standby.attach(hook.models.append)
        accepted = hook.post(alias_moved("churn"))
        assert accepted.status_code == 200, accepted.text
        assert hook.models == ["churn"]
    finally:
        standby.close()


def test_a_webhook_port_without_a_secret_does_not_start() -> None:
    with pytest.raises(ValueError, match="MODELYARD_WEBHOOK_SECRET is empty"):
        OperatorSettings.from_env({"MODELYARD_WEBHOOK_PORT": "8082"})
    with pytest.raises(ValueError, match="MODELYARD_WEBHOOK_SECRET is empty"):
        WebhookReceiver("", lambda _: None, OperatorMetrics())
    settings = OperatorSettings.from_env(
        {"MODELYARD_WEBHOOK_PORT": "8082", "MODELYARD_WEBHOOK_SECRET": SECRET}
    )
    assert SECRET not in repr(settings) and SECRET not in str(settings)
