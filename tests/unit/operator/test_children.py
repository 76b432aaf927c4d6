"""The child builders and status readers, without a cluster."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelyard.core.registry import ModelVersion
from modelyard.operator import conditions as cond
from modelyard.operator.children import (
    ServerPlan,
    build_server_deployment,
    build_server_hpa,
    build_server_pdb,
    build_server_service,
    deployment_health,
)
from modelyard.operator.resource import ModelDeploymentSpec


def plan(spec: dict[str, Any], **kw: Any) -> ServerPlan:
    return ServerPlan(
        name="churn",
        namespace="ml",
        spec=ModelDeploymentSpec.parse(spec),
        model=ModelVersion("churn", 7, "r1", "mlflow-artifacts:/x", "READY"),
        tracking_uri="http://mlflow:5000",
        image="modelyard/server:1",
        image_pull_policy="IfNotPresent",
        **kw,
    )


BASE = {"model": {"name": "churn", "alias": "champion"}}


def env_of(dep: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_deployment_pins_the_version_never_the_alias() -> None:
    dep = build_server_deployment(plan(BASE))
    env = env_of(dep)
    assert env["MODELYARD_MODEL_URI"]["value"] == "models:/churn/7"
    assert "champion" not in str(dep)
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}


def test_deployment_passes_pod_security_restricted() -> None:
    pod = build_server_deployment(plan(BASE))["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["readOnlyRootFilesystem"] is True
        assert {p["httpGet"]["path"] for p in (c["readinessProbe"], c["livenessProbe"])} == {
            "/readyz",
            "/livez",
        }
    assert not any("hostPath" in v for v in pod["volumes"])


def test_credentials_come_only_from_the_secret() -> None:
    spec = {**BASE, "registry": {"credentialsSecretRef": {"name": "creds"}}}
    env = env_of(build_server_deployment(plan(spec, credentials_secret="creds")))
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {
            "name": "creds",
            "key": key,
            "optional": True,
        }
        assert "value" not in env[key]


@pytest.mark.parametrize(
    ("server", "replicas", "hpa", "pdb"),
    [
        ({}, 1, False, False),
        ({"replicas": 0}, 0, False, False),
        ({"replicas": 3}, 3, False, True),
        ({"autoscaling": {"maxReplicas": 1}}, None, True, False),
        ({"autoscaling": {"minReplicas": 2, "maxReplicas": 6}}, None, True, True),
    ],
)
def test_replicas_hpa_and_pdb(
    server: dict[str, Any], replicas: int | None, hpa: bool, pdb: bool
) -> None:
    p = plan({**BASE, "server": server})
    dep = build_server_deployment(p)
    # With autoscaling the HPA owns spec.replicas; we leave it out of our apply.
    assert dep["spec"].get("replicas") == replicas
    assert (build_server_hpa(p) is not None) == hpa
    assert (build_server_pdb(p) is not None) == pdb


def test_service_selects_the_server_pods() -> None:
    p = plan(BASE)
    svc = build_server_service(p)
    dep = build_server_deployment(p)
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"][0]["targetPort"] == "http"


GOLDEN = Path(__file__).parent / "golden"


def test_server_children_match_the_reviewed_manifests() -> None:
    """The whole Deployment and Service, as reviewed in tests/unit/operator/golden/: any
    change to what the operator applies shows up here and in the review of its diff
    (MODELYARD_UPDATE_GOLDEN=1 rewrites the files)."""
    spec = {
        **BASE,
        "server": {"replicas": 2, "env": [{"name": "LOG_LEVEL", "value": "debug"}]},
        "registry": {"credentialsSecretRef": {"name": "mlflow-creds"}},
    }
    built = plan(spec, prediction_log="s3://lake/predictions", credentials_secret="mlflow-creds")
    for name, manifest in (
        ("server-deployment", build_server_deployment(built)),
        ("server-service", build_server_service(built)),
    ):
        path = GOLDEN / f"{name}.yaml"
        if os.environ.get("MODELYARD_UPDATE_GOLDEN"):
            path.write_text(yaml.safe_dump(manifest, sort_keys=False))
        assert manifest == yaml.safe_load(path.read_text()), f"{path.name} differs"


def dep_status(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {"generation": 2},
        "spec": {"replicas": 2},
        "status": {"observedGeneration": 2, **status},
    }


@pytest.mark.parametrize(
    ("deployment", "ready", "reason"),
    [
        (None, False, "Creating"),
        (dep_status(observedGeneration=1), False, "RollingOut"),
        # Still serving on every wanted replica while the rolling update runs.
        (dep_status(replicas=3, updatedReplicas=1, availableReplicas=2), True, "RollingOut"),
        (dep_status(replicas=2, updatedReplicas=1, availableReplicas=1), False, "RollingOut"),
        (dep_status(replicas=2, updatedReplicas=2, availableReplicas=1), False, "PodsNotReady"),
        (dep_status(replicas=2, updatedReplicas=2, availableReplicas=2), True, "Serving"),
        (
            dep_status(
                replicas=2,
                updatedReplicas=1,
                availableReplicas=2,
                conditions=[{"type": "Progressing", "reason": "ProgressDeadlineExceeded"}],
            ),
            True,  # the old pods still serve; Degraded says what went wrong
            "ProgressDeadlineExceeded",
        ),
    ],
)
def test_deployment_health(deployment: dict[str, Any] | None, ready: bool, reason: str) -> None:
    health = deployment_health(deployment)
    assert (health.ready, health.reason) == (ready, reason)


def test_condition_transition_time_moves_only_with_the_status() -> None:
    c1 = cond.set_condition([], "Ready", False, "A", "a", 1, now="2026-01-01T00:00:00Z")
    c2 = cond.set_condition(c1, "Ready", False, "B", "b", 2, now="2026-01-02T00:00:00Z")
    assert c2[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert (c2[0]["reason"], c2[0]["observedGeneration"]) == ("B", 2)
    c3 = cond.set_condition(c2, "Ready", True, "C", "c", 2, now="2026-01-03T00:00:00Z")
    assert (c3[0]["status"], c3[0]["lastTransitionTime"]) == ("True", "2026-01-03T00:00:00Z")


@pytest.mark.parametrize(
    "model",
    [{"name": "m"}, {"name": "m", "version": 1, "alias": "a"}, {"name": "m", "version": 0}],
)
def test_spec_model_rejects_what_the_crd_rejects(model: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="spec.model|greater than or equal"):
        ModelDeploymentSpec.parse({"model": model})


def test_reference_labels() -> None:
    labels = [
        ModelDeploymentSpec.parse({"model": {"name": "m", **ref}}).model.label
        for ref in ({"alias": "champion"}, {"version": 3}, {"stage": "Production"})
    ]
    assert labels == ["alias:champion", "version:3", "stage:Production"]


@pytest.mark.parametrize(
    ("server", "operator_env", "expected"),
    [
        # No cache anywhere: nothing set, as before.
        ({}, {}, None),
        # The operator's default claim and optional Secret.
        (
            {},
            {
                "MODELYARD_MODEL_CACHE_VOLUME_CLAIM": "cache",
                "MODELYARD_MODEL_CACHE_SECRET": "s3",
            },
            ("/var/cache/modelyard/models", "cache", ("s3", True)),
        ),
        # The deployment's own URL and Secret win over the default.
        (
            {"modelCache": {"url": "s3://b/c", "secretRef": {"name": "mine"}}},
            {"MODELYARD_MODEL_CACHE": "s3://default/c"},
            ("s3://b/c", None, ("mine", False)),
        ),
        # Turned off for this deployment.
        ({"modelCache": {"enabled": False}}, {"MODELYARD_MODEL_CACHE": "s3://default/c"}, None),
    ],
)
def test_model_cache_reaches_the_server_pod(
    server: dict[str, Any], operator_env: dict[str, str], expected: Any
) -> None:
    from modelyard.operator.plan import model_cache_plan
    from modelyard.operator.settings import OperatorSettings

    spec = ModelDeploymentSpec.parse({**BASE, "server": server})
    cache = model_cache_plan(spec, OperatorSettings.from_env(operator_env))
    dep = build_server_deployment(plan({**BASE, "server": server}, model_cache=cache))
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = env_of(dep)
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    ]
    if expected is None:
        assert "MODELYARD_MODEL_CACHE" not in env
        assert not claims and "envFrom" not in container
        return
    url, claim, (secret, optional) = expected
    assert env["MODELYARD_MODEL_CACHE"]["value"] == url
    assert claims == ([claim] if claim else [])
    if claim:
        assert {"name": "model-cache", "mountPath": url} in container["volumeMounts"]
    assert container["envFrom"] == [{"secretRef": {"name": secret, "optional": optional}}]


def test_an_operator_default_cache_is_one_place() -> None:
    from modelyard.operator.settings import OperatorSettings

    with pytest.raises(ValueError, match="MODELYARD_MODEL_CACHE or MODELYARD_MODEL_CACHE_VOLUME"):
        OperatorSettings.from_env(
            {"MODELYARD_MODEL_CACHE": "s3://b/c", "MODELYARD_MODEL_CACHE_VOLUME_CLAIM": "x"}
        )
