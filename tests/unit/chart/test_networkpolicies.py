"""The chart's NetworkPolicies: MLflow only for registry clients, the operator only for
the release, nothing else of the release reachable; and the pods carry the labels the
policies select on."""

from __future__ import annotations

from typing import Any

from tests.unit.chart.rendering import find, one, pod_spec, render

CLIENT = {"modelyard.io/registry-client": "true"}


def policies(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o["spec"] for o in find(objects, "NetworkPolicy")}


def test_mlflow_admits_only_registry_clients(default_objects: list[dict[str, Any]]) -> None:
    mlflow = policies(default_objects)["my-modelyard-mlflow"]
    assert mlflow["policyTypes"] == ["Ingress"]
    rule, studies = mlflow["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert rule["from"] == [{"namespaceSelector": {}, "podSelector": {"matchLabels": CLIENT}}]
    # The study storage beside MLflow: only tuning pods of the release's own namespace.
    assert studies == {
        "ports": [{"port": "studies", "protocol": "TCP"}],
        "from": [{"podSelector": {"matchLabels": {"modelyard.io/study-client": "true"}}}],
    }
    own_database = policies(render("--set", "pipelines.tuning.storage.existingSecret=optuna-url"))[
        "my-modelyard-mlflow"
    ]
    assert [r["ports"][0]["port"] for r in own_database["ingress"]] == ["http"]
    ui = {"namespaceSelector": {"matchLabels": {"name": "ingress"}}}
    widened = policies(
        render("--set-json", f"networkPolicy.mlflowIngress=[{ui}]".replace("'", '"'))
    )
    assert widened["my-modelyard-mlflow"]["ingress"][0]["from"][-1] == ui


def test_everything_else_of_the_release_accepts_nothing(
    default_objects: list[dict[str, Any]],
) -> None:
    deny = policies(default_objects)["my-modelyard-default-deny"]
    assert deny == {
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/instance": "my",
                "app.kubernetes.io/part-of": "modelyard",
            }
        },
        "policyTypes": ["Ingress"],
    }
    operator = policies(default_objects)["my-modelyard-operator"]
    assert operator["ingress"][0]["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "my"}}}
    ]


def test_the_pods_that_talk_to_mlflow_carry_the_label(
    default_objects: list[dict[str, Any]],
) -> None:
    operator = one(default_objects, "Deployment", "my-modelyard-operator")
    assert operator["spec"]["template"]["metadata"]["labels"].items() >= CLIENT.items()
    for cronjob in find(default_objects, "CronJob"):
        labels = cronjob["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
        assert labels.items() >= CLIENT.items(), cronjob["metadata"]["name"]
    mlflow = one(default_objects, "Deployment", "my-modelyard-mlflow")
    assert "modelyard.io/registry-client" not in pod_spec(mlflow)


def test_they_can_be_left_out() -> None:
    assert find(render("--set", "networkPolicy.enabled=false"), "NetworkPolicy") == []
