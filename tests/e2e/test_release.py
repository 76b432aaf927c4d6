"""Install from published artifacts: `make release` pushes the images and the chart to a
real OCI registry (started here), and `helm install oci://...` on the node pulls
everything from it: the chart, and every image through containerd (none of these
references was imported into the node)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.registry import Registry, running_registry
from tests.support.servers import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.node_only, pytest.mark.timeout(2400)]


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    with running_registry() as running:
        yield running


def version() -> str:
    from modelyard._version import __version__

    return __version__


def test_install_from_the_released_chart_pulls_every_image(
    node_cluster: Any, registry: Registry
) -> None:
    released = subprocess.run(
        ["make", "-s", "release", f"REGISTRY={registry.host}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    assert released.returncode == 0, released.stderr[-4000:]
    digests = dict(
        line.split("@", 1)
        for line in (REPO / ".release" / version() / "digests.txt").read_text().split()
    )
    assert set(digests) == {
        f"{registry.host}/modelyard/{c}:{version()}"
        for c in ("operator", "server", "toolkit", "router")
    }

    ns = f"rel-{uuid.uuid4().hex[:6]}"
    node_cluster.run_kubectl("create", "namespace", ns)
    node_cluster.run_kubectl(
        "label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted"
    )
    helm = [str(node_cluster.bin_dir / "helm"), "--kubeconfig", str(node_cluster.kubeconfig)]
    try:
        installed = subprocess.run(
            [
                *helm, "install", "rel", f"oci://{registry.host}/charts/modelyard",
                "--version", version(), "--plain-http", "-n", ns,
                # Only its own namespace: the product e2e's operator may still run.
                "--set", f"operator.watchNamespaces={{{ns}}}",
                "--set", "pipelines.suspend=true",
            ],
            capture_output=True, text=True, check=False, timeout=600,
            env={**os.environ, "HELM_CACHE_HOME": str(REPO / ".release" / "helm-cache")},
        )  # fmt: skip
        assert installed.returncode == 0, installed.stderr
        available = node_cluster.run_kubectl(
            "-n", ns, "wait", "--for=condition=Available", "deployment", "--all",
            "--timeout=900s", check=False, timeout=960,
        )  # fmt: skip
        pods = node_cluster.run_kubectl("-n", ns, "get", "pods", "-o", "json").stdout
        assert available.returncode == 0, f"{available.stderr}\n{pods[-4000:]}"
        pulled = {
            status["imageID"]
            for pod in json.loads(pods)["items"]
            for status in [
                *pod["status"].get("initContainerStatuses", []),
                *pod["status"]["containerStatuses"],
            ]
        }
        specs = {
            container["image"]
            for pod in json.loads(pods)["items"]
            for container in [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]
        }
        # The operator and MLflow (the toolkit) run the released images, pulled by digest
        # from the registry (containerd may show another name of the same image as
        # status.image; the imageID's digest is what was pulled).
        for component in ("operator", "toolkit"):
            reference = f"{registry.host}/modelyard/{component}:{version()}"
            assert reference in specs, specs
            # containerd names a digest by the first reference it was pulled under: the
            # same content pulled from this machine's registry in an earlier run (another
            # port) keeps that name. The digest is what was released.
            assert any(
                p.endswith(f"/modelyard/{component}@{digests[reference]}") for p in pulled
            ), (digests[reference], pulled)
        env = node_cluster.run_kubectl(
            "-n", ns, "get", "deployment", "rel-modelyard-operator", "-o",
            "jsonpath={.spec.template.spec.containers[0].env[?(@.name=='MODELYARD_SERVER_IMAGE')].value}",
        ).stdout  # fmt: skip
        assert env == f"{registry.host}/modelyard/server:{version()}"
    finally:
        subprocess.run([*helm, "uninstall", "rel", "-n", ns, "--wait"], check=False, timeout=300)
        node_cluster.run_kubectl("delete", "namespace", ns, "--wait=false", check=False)
