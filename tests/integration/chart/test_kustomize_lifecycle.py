"""`kubectl apply -k manifests/` installs what the chart installs (release "modelyard" in
namespace "modelyard"), and `kubectl delete -k manifests/base` removes it again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.chart.cluster_checks import kubectl, wait_until_gone
from tests.unit.chart.rendering import REPO, template

pytestmark = pytest.mark.integration

NAMESPACE = "modelyard"


@pytest.fixture
def free_modelyard_namespace(cluster: Any, crd: Path) -> Any:
    existing = cluster.run_kubectl("get", "namespace", NAMESPACE, check=False)
    if existing.returncode == 0:
        pytest.fail(
            f"namespace {NAMESPACE} exists: this test installs manifests/ there and deletes "
            "it again; delete it first (kubectl delete -k manifests/base)",
            pytrace=False,
        )
    yield
    kubectl(
        cluster,
        "delete",
        "-k",
        str(REPO / "manifests" / "base"),
        "--ignore-not-found",
        "--wait=false",
        check=False,
    )


def test_apply_and_delete(cluster: Any, free_modelyard_namespace: None) -> None:
    applied = kubectl(cluster, "apply", "-k", str(REPO / "manifests"))
    assert "PodSecurity" not in applied.stderr
    created = set(applied.stdout.split("\n"))
    # The same objects as `helm install modelyard charts/modelyard -n modelyard`.
    chart = [
        o
        for o in yaml.safe_load_all(
            template("--skip-tests", release="modelyard", namespace=NAMESPACE)
        )
        if o
    ]
    for obj in chart:
        group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
        kind = obj["kind"].lower() + (f".{group}" if group else "")
        assert f"{kind}/{obj['metadata']['name']} created" in created, obj["kind"]
    assert "namespace/modelyard created" in created

    namespace = json.loads(cluster.run_kubectl("get", "namespace", NAMESPACE, "-o", "json").stdout)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    deployments = cluster.run_kubectl("get", "deployments", "-n", NAMESPACE, "-o", "name")
    assert set(deployments.stdout.split()) == {
        "deployment.apps/modelyard-operator",
        "deployment.apps/modelyard-mlflow",
    }

    # Not `delete -k manifests/`: that would delete the CRD and every ModelDeployment.
    kubectl(cluster, "delete", "-k", str(REPO / "manifests" / "base"), "--timeout=120s")
    wait_until_gone(cluster, [], "app.kubernetes.io/instance=modelyard")
    gone = cluster.run_kubectl("get", "namespace", NAMESPACE, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
    cluster.run_kubectl("get", "crd", "modeldeployments.modelyard.io")
