"""The chart's copies of the CRD and the sample pipelines equal their sources, and
manifests/ is what `make manifests` renders from the chart."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.unit.chart.rendering import CHART, REPO, tool


def test_crd_copies_are_identical() -> None:
    sources = {p.name: p.read_bytes() for p in (REPO / "manifests" / "crds").glob("*.yaml")}
    copies = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert set(sources) == {
        "modeldeployments.modelyard.io.yaml",
        "modelapprovals.modelyard.io.yaml",
    }
    assert copies == sources, (
        "charts/modelyard/crds/ differs from manifests/crds/: "
        "cp manifests/crds/*.yaml charts/modelyard/crds/"
    )
    # The operator applies its own copy at start (operator.manageCRDs).
    embedded = REPO / "operator" / "modelyard" / "operator" / "crds"
    assert {p.name: p.read_bytes() for p in embedded.glob("*.yaml")} == sources, (
        "operator/modelyard/operator/crds/ differs from manifests/crds/: "
        "cp manifests/crds/*.yaml operator/modelyard/operator/crds/"
    )


def test_sample_pipelines_copy_is_identical() -> None:
    sources = {p.name: p.read_bytes() for p in (REPO / "pipelines" / "samples").glob("*.yaml")}
    copies = {p.name: p.read_bytes() for p in (CHART / "files" / "pipelines").glob("*.yaml")}
    assert sources, "no sample pipelines in pipelines/samples"
    assert copies == sources, (
        "charts/modelyard/files/pipelines/ differs from pipelines/samples/*.yaml: "
        "rm charts/modelyard/files/pipelines/*.yaml && "
        "cp pipelines/samples/*.yaml charts/modelyard/files/pipelines/"
    )


def test_manifests_are_not_stale(tmp_path: Path) -> None:
    subprocess.run(
        ["make", "-s", "manifests", f"MANIFESTS_BASE={tmp_path}"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    rendered = (tmp_path / "modelyard.yaml").read_text()
    committed = (REPO / "manifests" / "base" / "modelyard.yaml").read_text()
    assert rendered == committed, "manifests/base/modelyard.yaml is stale: run `make manifests`"


def test_kustomization_builds_crd_and_chart() -> None:
    built = subprocess.run(
        [tool("kubectl"), "kustomize", str(REPO / "manifests")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    objects = [o for o in yaml.safe_load_all(built) if o]
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert ("CustomResourceDefinition", "modeldeployments.modelyard.io") in kinds
    assert ("CustomResourceDefinition", "modelapprovals.modelyard.io") in kinds
    assert ("ValidatingAdmissionPolicy", "modelyard-approver-is-requester") in kinds
    assert ("Namespace", "modelyard") in kinds
    assert ("Deployment", "modelyard-operator") in kinds
    assert ("Deployment", "modelyard-mlflow") in kinds
    namespaced = [o for o in objects if o["kind"] not in _CLUSTER_SCOPED]
    assert {o["metadata"].get("namespace") for o in namespaced} == {"modelyard"}


def test_samples_are_model_deployments() -> None:
    built = subprocess.run(
        [tool("kubectl"), "kustomize", str(REPO / "manifests" / "samples")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    samples = [o for o in yaml.safe_load_all(built) if o]
    assert {o["kind"] for o in samples} == {"ModelDeployment"}
    models = {o["metadata"]["name"]: o["spec"] for o in samples}
    assert models["churn"]["model"]["alias"] == "champion"
    assert models["churn-v1"]["model"]["version"] == 1
    assert models["fraud"]["server"]["autoscaling"]["maxReplicas"] == 10
    assert models["churn-prod"]["rollout"]["approval"]["policy"] == "Required"
    assert models["churn-prod"]["monitoring"]["drift"]["retrain"]["cronJobName"]
    assert models["fraud"]["registry"]["credentialsSecretRef"] == {"name": "mlflow-credentials"}


_CLUSTER_SCOPED = {
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "FlowSchema",
}
