"""operator.webhook: the receiver of MLflow's webhooks, its Secret, Service port and
NetworkPolicy, and the chart's MLflow set up to deliver to it."""

from __future__ import annotations

from typing import Any

from tests.unit.chart.rendering import CHART, env_of, helm, one, pod_spec, render

ON = ("--set", "operator.webhook.enabled=true", "--set", "operator.webhook.secretName=hook")


def container(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return dict(pod_spec(one(objects, "Deployment", name))["containers"][0])


def test_off_by_default(default_objects: list[dict[str, Any]]) -> None:
    operator = container(default_objects, "my-modelyard-operator")
    assert not [k for k in env_of(operator) if "WEBHOOK" in k]
    assert "webhook" not in [p["name"] for p in operator["ports"]]
    service = one(default_objects, "Service", "my-modelyard-operator")
    assert [p["name"] for p in service["spec"]["ports"]] == ["health"]
    assert not [
        k for k in env_of(container(default_objects, "my-modelyard-mlflow")) if "WEBHOOK" in k
    ]


def test_enabled_the_operator_receives_and_the_secret_comes_from_a_secret() -> None:
    objects = render(*ON)
    operator = container(objects, "my-modelyard-operator")
    env = env_of(operator)
    assert env["MODELYARD_WEBHOOK_PORT"] == "8082"
    assert env["MODELYARD_WEBHOOK_SECRET"] == {"secretKeyRef": {"name": "hook", "key": "secret"}}
    assert {"name": "webhook", "containerPort": 8082, "protocol": "TCP"} in operator["ports"]
    service = one(objects, "Service", "my-modelyard-operator")
    assert {"name": "webhook", "port": 8082, "targetPort": "webhook", "protocol": "TCP"} in (
        service["spec"]["ports"]
    )
    mlflow = env_of(container(objects, "my-modelyard-mlflow"))
    assert mlflow["MLFLOW_WEBHOOK_ALLOWED_SCHEMES"] == "http,https"
    assert mlflow["MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS"] == "true"
    assert mlflow["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"] == {
        "secretKeyRef": {"name": "hook", "key": "encryption-key"}
    }


def test_the_webhook_port_admits_the_release_and_the_peers_named() -> None:
    peer = '{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mlflow"}}}'
    objects = render(*ON, "--set-json", f"operator.webhook.ingressFrom=[{peer}]")
    policy = one(objects, "NetworkPolicy", "my-modelyard-operator")["spec"]
    metrics, webhook = policy["ingress"]
    assert {"port": "webhook", "protocol": "TCP"} not in metrics["ports"]
    assert webhook["ports"] == [{"port": "webhook", "protocol": "TCP"}]
    assert webhook["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "my"}}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mlflow"}}},
    ]


def test_enabled_without_a_secret_is_refused_with_what_to_set() -> None:
    refused = helm(
        "template", "my", str(CHART), "--set", "operator.webhook.enabled=true", check=False
    )
    assert refused.returncode != 0
    assert "operator.webhook.secretName is required with operator.webhook.enabled" in (
        refused.stderr
    )
