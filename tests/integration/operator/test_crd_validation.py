"""The API server itself rejects invalid ModelDeployments, saying what to fix."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.kube import md_body, wait_for

pytestmark = pytest.mark.integration

GOOD_MODEL = {"name": "churn", "alias": "champion"}

INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("no model", {}, "spec.model: Required value"),
    ("no model name", {"model": {"alias": "champion"}}, "spec.model.name: Required value"),
    (
        "no reference",
        {"model": {"name": "churn"}},
        "spec.model must set exactly one of version, alias or stage",
    ),
    (
        "two references",
        {"model": {"name": "churn", "alias": "champion", "version": 3}},
        "spec.model must set exactly one of version, alias or stage",
    ),
    (
        "version zero",
        {"model": {"name": "churn", "version": 0}},
        "spec.model.version: Invalid value: 0: spec.model.version in body should be "
        "greater than or equal to 1",
    ),
    (
        "version as text",
        {"model": {"name": "churn", "version": "latest"}},
        'spec.model.version: Invalid value: "string": spec.model.version in body must be '
        "of type integer",
    ),
    (
        "unknown stage",
        {"model": {"name": "churn", "stage": "Prod"}},
        'spec.model.stage: Unsupported value: "Prod": supported values: "Staging", '
        '"Production", "Archived"',
    ),
    (
        "alias that looks like a version",
        {"model": {"name": "churn", "alias": "v3"}},
        "aliases of the form v<N> are reserved by MLflow for versions",
    ),
    (
        "alias with a space",
        {"model": {"name": "churn", "alias": "my alias"}},
        "spec.model.alias in body should match",
    ),
    (
        "tracking URI that is not http",
        {"model": GOOD_MODEL, "registry": {"trackingUri": "mlflow.local:5000"}},
        "spec.registry.trackingUri in body should match '^https?://[^/]+'",
    ),
    (
        "inline credentials",
        {"model": GOOD_MODEL, "registry": {"password": "hunter2"}},
        'unknown field "spec.registry.password"',
    ),
    (
        "credentials secret without name",
        {"model": GOOD_MODEL, "registry": {"credentialsSecretRef": {}}},
        "spec.registry.credentialsSecretRef.name: Required value",
    ),
    (
        "negative replicas",
        {"model": GOOD_MODEL, "server": {"replicas": -1}},
        "spec.server.replicas in body should be greater than or equal to 0",
    ),
    (
        "min above max replicas",
        {"model": GOOD_MODEL, "server": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}},
        "spec.server.autoscaling.minReplicas must not exceed maxReplicas",
    ),
    (
        "replicas and autoscaling",
        {"model": GOOD_MODEL, "server": {"replicas": 2, "autoscaling": {"maxReplicas": 4}}},
        "set replicas or autoscaling, not both",
    ),
    (
        "CPU target above 100",
        {
            "model": GOOD_MODEL,
            "server": {"autoscaling": {"maxReplicas": 4, "targetCPUUtilizationPercentage": 150}},
        },
        "targetCPUUtilizationPercentage in body should be less than or equal to 100",
    ),
    (
        "unknown rollout strategy",
        {"model": GOOD_MODEL, "rollout": {"strategy": "BlueGreen"}},
        'spec.rollout.strategy: Unsupported value: "BlueGreen": supported values: "RollingUpdate"',
    ),
    (
        "tracking credentials through env",
        {
            "model": GOOD_MODEL,
            "server": {"env": [{"name": "MLFLOW_TRACKING_PASSWORD", "value": "x"}]},
        },
        "MLFLOW_TRACKING_* variables come from spec.registry",
    ),
    (
        "bad resource quantity",
        {"model": GOOD_MODEL, "server": {"resources": {"limits": {"memory": "lots"}}}},
        "spec.server.resources.limits.memory in body should match",
    ),
    (
        "drift window in weeks",
        {"model": GOOD_MODEL, "monitoring": {"drift": {"window": "1w"}}},
        "spec.monitoring.drift.window in body should match '^[1-9][0-9]*[mhd]$'",
    ),
    (
        "drift share above 1",
        {"model": GOOD_MODEL, "monitoring": {"drift": {"thresholds": {"driftShare": 1.5}}}},
        "spec.monitoring.drift.thresholds.driftShare in body should be less than or equal to 1",
    ),
    (
        "drift schedule with three fields",
        {"model": GOOD_MODEL, "monitoring": {"drift": {"schedule": "0 * *"}}},
        "spec.monitoring.drift.schedule in body should match",
    ),
    (
        "drift pod limited below what Python and the libraries need",
        {
            "model": GOOD_MODEL,
            "monitoring": {"drift": {"resources": {"limits": {"memory": "256Mi"}}}},
        },
        "spec.monitoring.drift.resources.limits.memory must be at least 512Mi",
    ),
    (
        "drift pod requesting more memory than its limit",
        {
            "model": GOOD_MODEL,
            "monitoring": {
                "drift": {"resources": {"requests": {"memory": "3Gi"}, "limits": {"memory": "2Gi"}}}
            },
        },
        "spec.monitoring.drift.resources.requests.memory must not exceed limits.memory",
    ),
    (
        "drift memory that is not a quantity",
        {
            "model": GOOD_MODEL,
            "monitoring": {"drift": {"resources": {"limits": {"memory": "2GB"}}}},
        },
        "spec.monitoring.drift.resources.limits.memory in body should match",
    ),
    (
        "retrain without a CronJob",
        {"model": GOOD_MODEL, "monitoring": {"drift": {"retrain": {}}}},
        "spec.monitoring.drift.retrain.cronJobName: Required value",
    ),
    (
        "model cache with both a URL and a volume claim",
        {
            "model": GOOD_MODEL,
            "server": {"modelCache": {"url": "s3://b/cache", "volumeClaim": "cache"}},
        },
        "spec.server.modelCache: set url or volumeClaim, not both",
    ),
    (
        "model cache enabled without a place",
        {"model": GOOD_MODEL, "server": {"modelCache": {"secretRef": {"name": "s3"}}}},
        "spec.server.modelCache: with enabled true, set url or volumeClaim",
    ),
    *(
        (
            f"tracking URI with {what}",
            {
                "model": {"name": "churn", "alias": "champion"},
                "registry": {"trackingUri": uri},
            },
            "trackingUri must be scheme://host[:port][/path]: put credentials in a Secret",
        )
        for what, uri in [
            ("credentials", "http://user:pass@mlflow:5000"),
            ("a query choosing the path", "http://internal:8080/admin?"),
            ("a fragment", "http://mlflow:5000/#x"),
        ]
    ),
]


@pytest.mark.parametrize(("case", "spec", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_resource_is_rejected_with_its_message(
    api_client: client.ApiClient, crd: Any, namespace: str, case: str, spec: Any, message: str
) -> None:
    custom = client.CustomObjectsApi(api_client)
    # 422 for schema and CEL violations; 400 for an unknown field (strict decoding).
    with pytest.raises(ApiException, match=r"\((400|422)\)") as rejected:
        custom.create_namespaced_custom_object(
            "modelyard.io",
            "v1alpha1",
            namespace,
            "modeldeployments",
            md_body("bad", spec),
            field_validation="Strict",
        )
    said = json.loads(rejected.value.body)["message"]
    assert message in said, said


def test_name_too_long_for_its_children(
    api_client: client.ApiClient, crd: Any, namespace: str
) -> None:
    custom = client.CustomObjectsApi(api_client)
    with pytest.raises(ApiException, match=r"\(422\)") as rejected:
        custom.create_namespaced_custom_object(
            "modelyard.io",
            "v1alpha1",
            namespace,
            "modeldeployments",
            md_body("x" * 60, {"model": GOOD_MODEL}),
        )
    said = json.loads(rejected.value.body)["message"]
    assert "metadata.name must be at most 52 characters" in said, said


def test_kubectl_explain_teaches_the_fields(cluster: Any, crd: Any) -> None:
    # The API server publishes a new CRD's OpenAPI schema a moment after Established.
    explained = wait_for(
        "kubectl explain",
        lambda: (
            (r := cluster.run_kubectl("explain", "md.spec.model", check=False)).returncode == 0
            and r
        ),
    )
    out = explained.stdout
    assert "exactly one of" in out
    for field in ("alias", "name", "stage", "version"):
        assert f"{field}\t" in out or f"  {field}" in out
    assert "A registry alias such as" in out


def test_kubectl_get_shows_the_printer_columns(
    api_client: client.ApiClient, cluster: Any, crd: Any, namespace: str
) -> None:
    client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        "modelyard.io",
        "v1alpha1",
        namespace,
        "modeldeployments",
        md_body("churn", {"model": GOOD_MODEL}),
    )
    lines = cluster.run_kubectl("-n", namespace, "get", "md", "-o", "wide").stdout.splitlines()
    assert lines[0].split() == [
        "NAME",
        "MODEL",
        "REFERENCE",
        "LIVE",
        "PENDING",
        "ROLLING",
        "WEIGHT",
        "SHADOW",
        "AGREEMENT",
        "READY",
        "REASON",
        "URL",
        "AGE",
    ]
    assert lines[1].split()[:2] == ["churn", "churn"]


def test_drift_monitoring_defaults(api_client: client.ApiClient, crd: Any, namespace: str) -> None:
    custom = client.CustomObjectsApi(api_client)
    created = custom.create_namespaced_custom_object(
        "modelyard.io",
        "v1alpha1",
        namespace,
        "modeldeployments",
        md_body("churn", {"model": GOOD_MODEL, "monitoring": {"drift": {}}}),
        field_validation="Strict",
    )
    assert created["spec"]["monitoring"]["drift"] == {
        "schedule": "0 * * * *",
        "window": "24h",
        "thresholds": {"driftShare": 0.5},
        "resources": {"requests": {"memory": "512Mi"}, "limits": {"memory": "2Gi"}},
    }
