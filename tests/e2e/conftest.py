"""End to end: a real node, the project's images, the chart, real pods.

The session needs the local cluster with its node (``NODE=1``) and the images loaded;
both are started here when missing. If they cannot start, the tests fail loudly.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.incluster import E2E_RELEASE as RELEASE
from tests.support.servers import REPO, Cluster

#: The Secret shared by the e2e release's operator and MLflow for registry webhooks.
WEBHOOK_SECRET = "e2e-webhook"


def _version() -> str:
    from modelyard._version import __version__

    return __version__


@pytest.fixture(scope="session")
def node_cluster(request: pytest.FixtureRequest) -> Any:
    """A cluster whose pods really run: kind (CLUSTER=kind, needs Docker) or the built-in
    cluster with its node; and the project's images loaded into it."""
    if os.environ.get("CLUSTER") == "kind":
        up = subprocess.run(
            [str(REPO / "hack" / "kind.sh"), "up"], capture_output=True, text=True, check=False
        )
        if up.returncode != 0:
            pytest.fail(f"kind did not start:\n{up.stderr[-6000:]}", pytrace=False)
        cache = Path(os.environ.get("MODELYARD_CACHE", Path.home() / ".cache" / "modelyard"))
        cluster: Any = Cluster(
            kubeconfig=REPO / ".cluster" / "kind.kubeconfig", bin_dir=cache / "bin"
        )
    else:
        cluster = request.getfixturevalue("cluster")
        ready = cluster.run_kubectl(
            "get",
            "nodes",
            "-o",
            'jsonpath={.items[*].status.conditions[?(@.type=="Ready")].status}',
            check=False,
        ).stdout
        if "True" not in ready:
            up = subprocess.run(
                [str(REPO / "hack" / "cluster.sh"), "up"],
                env={**os.environ, "NODE": "1"},
                capture_output=True,
                text=True,
                check=False,
            )
            if up.returncode != 0:
                pytest.fail(
                    f"the node did not start (NODE=1 hack/cluster.sh up):\n{up.stderr[-6000:]}",
                    pytrace=False,
                )
    images = subprocess.run(
        [str(REPO / "hack" / "images.sh")], capture_output=True, text=True, check=False
    )
    if images.returncode != 0:
        pytest.fail(f"hack/images.sh failed:\n{images.stderr[-6000:]}", pytrace=False)
    return cluster


@pytest.fixture(scope="session")
def toolkit_image() -> str:
    return f"modelyard/toolkit:{_version()}"


#: A retraining pipeline for the production loop: the sample churn pipeline, but the
#: challenger always becomes champion (margin -1): a person approves what goes live. Its
#: train step asks for half a CPU, not the sample's one: the loop runs it beside three
#: model servers, MLflow and two operators on a 2-core node, and on kind the control
#: plane shares that node (with 1 CPU the step stayed Pending there: Insufficient cpu).
RETRAIN_PIPELINE = "churn-retrain"
#: The images as hack/images.sh loads them into the node (bare names), not the published
#: release's registry (the chart's default).
LOCAL_IMAGES = ("--set", "image.registry=")


def retrain_definition(directory: Path) -> Path:
    sample = (REPO / "pipelines" / "samples" / "churn.yaml").read_text()
    text = (
        sample.replace("name: churn\n", f"name: {RETRAIN_PIPELINE}\n", 1)
        .replace(
            "parameters: {train_step: train, metric: roc_auc, margin: 0.005}",
            "parameters: {train_step: train, metric: roc_auc, margin: -1.0}",
        )
        .replace('requests: {cpu: "1", memory: 2Gi}', "requests: {cpu: 500m, memory: 2Gi}")
    )
    assert "margin: -1.0" in text and f"name: {RETRAIN_PIPELINE}" in text
    assert "requests: {cpu: 500m, memory: 2Gi}" in text
    path = directory / f"{RETRAIN_PIPELINE}.yaml"
    path.write_text(text)
    return path


def wait_available(
    cluster: Any, ns: str, seconds: int = 600, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Wait for the release's Deployments (operator, MLflow) to be Available."""
    return cluster.run_kubectl(
        "-n", ns, "wait", "--for=condition=Available", "deployment", "-l",
        f"app.kubernetes.io/instance={RELEASE}", f"--timeout={seconds}s",
        check=check, timeout=seconds + 60,
    )  # fmt: skip


@pytest.fixture(scope="module")
def release(node_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The chart installed with its defaults into a restricted namespace (and one more
    pipeline, the production loop's retraining)."""
    ns = f"e2e-{uuid.uuid4().hex[:6]}"
    node_cluster.run_kubectl("create", "namespace", ns)
    for mode in ("enforce", "warn", "audit"):
        node_cluster.run_kubectl(
            "label", "namespace", ns, f"pod-security.kubernetes.io/{mode}=restricted"
        )
    # The operator receives MLflow's registry webhooks (through its Service); polling
    # stays on as the fallback (operator.resolveInterval).
    from cryptography.fernet import Fernet

    node_cluster.run_kubectl(
        "-n", ns, "create", "secret", "generic", WEBHOOK_SECRET,
        f"--from-literal=secret={uuid.uuid4().hex}",
        f"--from-literal=encryption-key={Fernet.generate_key().decode()}",
    )  # fmt: skip
    helm = [str(node_cluster.bin_dir / "helm"), "--kubeconfig", str(node_cluster.kubeconfig)]
    install = subprocess.run(
        [
            *helm,
            "install",
            RELEASE,
            str(REPO / "charts" / "modelyard"),
            "-n",
            ns,
            *LOCAL_IMAGES,
            "--set",
            "operator.resolveInterval=3",
            "--set",
            "pipelines.suspend=true",
            "--set",
            "operator.webhook.enabled=true",
            "--set",
            f"operator.webhook.secretName={WEBHOOK_SECRET}",
            "--set-file",
            f"pipelines.definitions.{RETRAIN_PIPELINE}.definition="
            f"{retrain_definition(tmp_path_factory.mktemp('pipelines'))}",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    # Not `helm --wait`: the data-lake claim binds only when a pipeline pod first uses it.
    available = wait_available(node_cluster, ns, check=False)
    if install.returncode != 0 or available.returncode != 0:
        pods = node_cluster.run_kubectl("-n", ns, "get", "pods,events", check=False).stdout
        pytest.fail(
            f"helm install failed:\n{install.stderr}\n{available.stderr}\n{pods}", pytrace=False
        )
    assert "would violate PodSecurity" not in install.stderr
    yield ns
    subprocess.run([*helm, "uninstall", RELEASE, "-n", ns, "--wait"], check=False, timeout=300)
    node_cluster.run_kubectl("delete", "namespace", ns, "--wait=false", check=False)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The chaos suite (tests/e2e/test_chaos.py) runs after the other e2e tests: it
    restarts the API server and stops MLflow, which nothing else should meet midway."""
    items.sort(key=lambda item: item.get_closest_marker("chaos") is not None)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """`make chaos`: one line per case (requests sent, failed, rows logged, dropped)."""
    from tests.support import chaos

    if chaos.RESULTS:
        terminalreporter.write_sep("=", "chaos: one line per case")
        for result in chaos.RESULTS:
            terminalreporter.write_line(result.line())
