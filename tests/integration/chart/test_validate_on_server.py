"""Every supported configuration renders objects the real API server accepts: its
OpenAPI schemas, the CRD's schema and CEL rules, and Pod Security "restricted"."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.chart.cluster_checks import kubectl
from tests.unit.chart.rendering import CI_VALUES, REPO, template

pytestmark = pytest.mark.integration


def dry_run(cluster: Any, manifest: str) -> tuple[str, str]:
    result = kubectl(
        cluster,
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        input=manifest,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout, result.stderr


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_configuration_is_accepted(
    cluster: Any,
    restricted_namespace: str,
    extra_namespaces: Callable[[int], list[str]],
    values: Path,
) -> None:
    args = ["--values", str(values)]
    if yaml.safe_load(values.read_text()).get("operator", {}).get("watchNamespaces"):
        # Roles go into the watched namespaces, which must exist.
        watched = extra_namespaces(2)
        args += ["--set", f"operator.watchNamespaces={{{','.join(watched)}}}"]
    manifest = template(*args, release="v", namespace=restricted_namespace)
    stdout, stderr = dry_run(cluster, manifest)
    # The helm test pod is in there too: a violating Pod would be rejected outright.
    assert "pod/v-modelyard-test created (server dry run)" in stdout
    assert "Warning" not in stderr
    assert "PodSecurity" not in stderr


def test_samples_are_valid_model_deployments(cluster: Any, namespace: str, crd: Path) -> None:
    result = cluster.run_kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-k", str(REPO / "manifests" / "samples")
    )
    assert result.stdout.split("\n")[:4] == [
        "modeldeployment.modelyard.io/churn created (server dry run)",
        "modeldeployment.modelyard.io/churn-prod created (server dry run)",
        "modeldeployment.modelyard.io/churn-v1 created (server dry run)",
        "modeldeployment.modelyard.io/fraud created (server dry run)",
    ]
