"""A Canary rollout by the real operator against a real API server and MLflow registry:
the candidate Deployment beside the stable one, the router the Service moves to and back
from, the status a person reads, and ``modelyard rollout promote|abort|retry``. No
container runs here (the kubelet stand-in reports pods ready, with no IP): the router's
pods are ready but nothing is scraped, so analysis is Inconclusive and the first step
holds for it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from mlflow import MlflowClient
from typer.testing import CliRunner

from modelyard.cli import app
from modelyard.core.contracts import ApprovalTags, ShadowTags
from tests.integration.operator.test_operator import Cluster
from tests.support.kube import condition, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def k8s(api_client: client.ApiClient, namespace: str) -> Cluster:
    return Cluster(api_client, namespace)


def canary_spec(model: str, url: str) -> dict[str, Any]:
    return {
        "model": {"name": model, "alias": "champion"},
        "registry": {"trackingUri": url},
        "server": {"replicas": 2},
        "rollout": {
            "strategy": "Canary",
            "canary": {"steps": [{"weight": 10, "pause": "1s"}, {"weight": 50}]},
        },
    }


def exists(k8s: Cluster, name: str) -> bool:
    try:
        k8s.deployment(name)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def service_app(k8s: Cluster) -> str:
    """Which pods the ModelDeployment's Service sends clients to."""
    selector = k8s.core.read_namespaced_service("churn", k8s.ns).spec.selector
    return str(selector["app.kubernetes.io/name"])


def rollout(k8s: Cluster, *args: str) -> str:
    ran = CliRunner().invoke(app, ["rollout", *args, "churn", "-n", k8s.ns])
    assert ran.exit_code == 0, ran.output
    return ran.output


def started(
    k8s: Cluster, register_model: Callable[..., Any], mlflow_server: Any
) -> tuple[Any, dict[str, Any]]:
    model = register_model(n=2)
    k8s.create("churn", canary_spec(model.name, mlflow_server.url))
    k8s.wait_md("churn", "version 1 live", lambda m: (m.get("status") or {}).get("model"))
    MlflowClient(mlflow_server.url).set_registered_model_alias(model.name, "champion", "2")
    md = k8s.wait_md(
        "churn",
        "the canary to hold at step 0 for its analysis",
        lambda m: (
            "awaiting the analysis"
            in str(((m.get("status") or {}).get("rollout") or {}).get("pauseReason"))
        ),
    )
    return model, md


def test_the_candidate_runs_beside_the_stable_and_promote_makes_it_live(
    k8s: Cluster,
    operator: Any,
    kubelet: Any,
    register_model: Callable[..., Any],
    mlflow_server: Any,
    cluster: Any,
) -> None:
    model, md = started(k8s, register_model, mlflow_server)
    state = md["status"]["rollout"]
    assert md["status"]["model"]["version"] == 1  # LIVE does not move during a canary
    assert (state["strategy"], state["version"], state["step"]) == ("Canary", 2, 0)
    assert (state["desiredWeight"], state["actualWeight"], state["candidateReplicas"]) == (
        10,
        10,
        1,
    )
    assert "awaiting the analysis of a whole 30s interval at 10%" in state["pauseReason"]
    assert k8s.env("churn")["MODELYARD_MODEL_URI"] == f"models:/{model.name}/1"
    assert k8s.env("churn-canary")["MODELYARD_MODEL_URI"] == f"models:/{model.name}/2"
    assert k8s.deployment("churn-canary").spec.replicas == 1
    selector = k8s.core.read_namespaced_service("churn-canary", k8s.ns).spec.selector
    assert selector["app.kubernetes.io/instance"] == "churn-canary"
    stable = k8s.core.read_namespaced_service("churn-stable", k8s.ns).spec.selector
    assert stable["app.kubernetes.io/instance"] == "churn"
    # The clients' Service selects the router, which is ready (the weight is reached).
    assert service_app(k8s) == "modelyard-router"
    assert k8s.deployment("churn-router").status.available_replicas == 2
    assert condition(md, "Progressing")["status"] == "True"
    row = cluster.run_kubectl("-n", k8s.ns, "get", "md", "churn").stdout.splitlines()
    at = row[0].index("WEIGHT")  # columns may be empty: read it under its header
    assert row[1][at:].split()[0] == "10"
    shown = rollout(k8s, "status")
    assert "phase: Paused" in shown and "weight: 10% (desired 10%)" in shown

    assert "is promoted" in rollout(k8s, "promote")
    md = k8s.wait_md(
        "churn", "version 2 live", lambda m: m["status"]["model"]["version"] == 2, timeout=60
    )
    assert md["status"].get("rollout") is None
    assert k8s.env("churn")["MODELYARD_MODEL_URI"] == f"models:/{model.name}/2"
    wait_for("the canary to go", lambda: not exists(k8s, "churn-canary"))
    assert "Promoting: version 2 promoted by a person" in k8s.events("churn")
    # The Service went back to the servers before the router was removed.
    assert service_app(k8s) == "modelyard-server" and not exists(k8s, "churn-router")


def test_abort_rolls_back_rejects_and_retry_starts_over(
    k8s: Cluster,
    operator: Any,
    kubelet: Any,
    register_model: Callable[..., Any],
    mlflow_server: Any,
) -> None:
    model, _ = started(k8s, register_model, mlflow_server)
    assert "is aborted" in rollout(k8s, "abort")
    md = k8s.wait_md(
        "churn",
        "the Rejected approval",
        lambda m: condition(m, "Approved").get("reason") == "Rejected",
    )
    assert md["status"]["model"]["version"] == 1
    wait_for("the canary to go", lambda: not exists(k8s, "churn-canary"))
    mlflow = MlflowClient(mlflow_server.url)
    tags = mlflow.get_model_version(model.name, "2").tags
    assert tags[ApprovalTags.key(k8s.ns, "churn")] == ApprovalTags.REJECTED
    assert tags[ApprovalTags.detail(k8s.ns, "churn", "reason")] == "Aborted"
    assert any(e.startswith("Aborted: version 2 was aborted") for e in k8s.events("churn"))
    md = k8s.wait_md(
        "churn", "Degraded to clear", lambda m: condition(m, "Degraded")["status"] == "False"
    )
    assert md["status"].get("rollout") is None  # no Degraded-forever state

    assert "starts over" in rollout(k8s, "retry")
    md = k8s.wait_md(
        "churn",
        "the canary again",
        lambda m: ((m.get("status") or {}).get("rollout") or {}).get("phase") == "Paused",
        timeout=60,
    )
    assert md["status"]["rollout"]["step"] == 0
    assert exists(k8s, "churn-canary")
    tags = mlflow.get_model_version(model.name, "2").tags
    assert ApprovalTags.key(k8s.ns, "churn") not in tags


def test_a_shadow_follows_its_alias_and_shows_its_comparison(
    k8s: Cluster,
    operator: Any,
    kubelet: Any,
    register_model: Callable[..., Any],
    mlflow_server: Any,
    cluster: Any,
) -> None:
    model = register_model(n=3)  # champion: version 1
    mlflow = MlflowClient(mlflow_server.url)
    mlflow.set_registered_model_alias(model.name, "challenger", "2")
    k8s.create(
        "churn",
        {
            "model": {"name": model.name, "alias": "champion"},
            "registry": {"trackingUri": mlflow_server.url},
            "rollout": {"shadow": {"alias": "challenger", "percent": 20}},
            "monitoring": {"predictionLog": "s3://lake/predictions"},
        },
    )
    md = k8s.wait_md(
        "churn",
        "the shadow",
        lambda m: ((m.get("status") or {}).get("shadow") or {}).get("version"),
    )
    assert md["status"]["shadow"] == {"version": 2, "reference": "alias challenger", "percent": 20}
    assert k8s.env("churn-shadow")["MODELYARD_MODEL_URI"] == f"models:/{model.name}/2"
    # The comparison CronJob follows once version 1 is live: it compares against the live one.
    compare = wait_for(
        "the shadow's comparison CronJob",
        lambda: k8s.batch.read_namespaced_cron_job("churn-shadow-compare", k8s.ns),
    )
    args = compare.spec.job_template.spec.template.spec.containers[0].args
    assert args[args.index("--shadow") + 1] == "2"

    # What `modelyard shadow compare` writes arrives through the registry, unprompted.
    summary = '{"agreementRate": 0.9375, "comparedRows": 96, "stableVersion": "1"}'
    mlflow.set_model_version_tag(model.name, "2", ShadowTags.key(k8s.ns, "churn"), summary)
    md = k8s.wait_md(
        "churn",
        "the comparison",
        lambda m: ((m["status"].get("shadow") or {}).get("comparison") or {}).get("comparedRows"),
    )
    assert md["status"]["shadow"]["comparison"] == {
        "agreementRate": 0.9375,
        "comparedRows": 96,
        "stableVersion": "1",
    }
    row = cluster.run_kubectl("-n", k8s.ns, "get", "md", "churn", "-o", "wide").stdout.splitlines()
    assert row[1][row[0].index("AGREEMENT") :].split()[0] == "0.9375"

    # The alias moves: the shadow follows within a resolve interval, with no comparison yet.
    mlflow.set_registered_model_alias(model.name, "challenger", "3")
    md = k8s.wait_md(
        "churn", "the shadow to follow", lambda m: m["status"]["shadow"]["version"] == 3
    )
    assert "comparison" not in md["status"]["shadow"]  # version 2's is not version 3's
    wait_for(
        "the shadow Deployment to run version 3",
        lambda: k8s.env("churn-shadow")["MODELYARD_MODEL_URI"] == f"models:/{model.name}/3",
    )
