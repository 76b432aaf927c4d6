"""The operator as the chart deploys it: its command line, its environment and nothing
but the chart's RBAC (a token of the chart's ServiceAccount), against the MLflow server
started from the chart's command line. It serves a model; the `helm test` check passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.chart.cluster_checks import ChartMlflow, kubectl, sa_kubeconfig
from tests.support.kube import KubeletStandIn, condition, wait_for
from tests.support.models import register_sklearn_model
from tests.support.servers import free_port, log_tail, stop_process, subprocess_env
from tests.unit.chart.rendering import CHART, helm

pytestmark = pytest.mark.integration


def register_model(tracking_uri: str) -> str:
    return register_sklearn_model(tracking_uri, name=f"c-{uuid.uuid4().hex[:8]}").name


class RunningOperator:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path, liveness: str) -> None:
        self.proc, self.log, self.liveness = proc, log, liveness


@pytest.fixture
def installed(cluster: Any, restricted_namespace: str, release: str) -> str:
    """The chart, with the operator limited to the test's namespace."""
    helm(
        "install",
        release,
        str(CHART),
        "-n",
        restricted_namespace,
        "--set",
        f"operator.watchNamespaces={{{restricted_namespace}}}",
        "--set",
        "pipelines.enabled=false",
        kubeconfig=cluster.kubeconfig,
    )
    return release


@pytest.fixture
def chart_operator(
    cluster: Any,
    restricted_namespace: str,
    installed: str,
    chart_mlflow: ChartMlflow,
    tmp_path: Path,
) -> Iterator[RunningOperator]:
    """`modelyard operator` with the installed Deployment's args and env, authenticated
    as the chart's ServiceAccount."""
    ns = restricted_namespace
    deployment = json.loads(
        cluster.run_kubectl(
            "get", "deployment", f"{installed}-modelyard-operator", "-n", ns, "-o", "json"
        ).stdout
    )
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    port = free_port()
    args = [
        f"--liveness=http://127.0.0.1:{port}/healthz" if a.startswith("--liveness=") else a
        for a in container["args"]
    ]
    assert f"--namespace={ns}" in args
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    # The in-cluster Service name does not resolve here; the same server does.
    assert env["MODELYARD_DEFAULT_TRACKING_URI"].startswith(f"http://{installed}-modelyard-mlflow.")
    env["MODELYARD_DEFAULT_TRACKING_URI"] = chart_mlflow.url
    env["HOME"] = str(tmp_path)
    env["TMPDIR"] = str(tmp_path)
    kubeconfig = sa_kubeconfig(cluster, ns, pod["serviceAccountName"], tmp_path / "sa.kubeconfig")
    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "modelyard"), *container["command"][1:], *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=subprocess_env(KUBECONFIG=str(kubeconfig), **env),
        )
    running = RunningOperator(proc, log, f"http://127.0.0.1:{port}/healthz")
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log_tail(log)
            try:
                if httpx.get(running.liveness, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_tail(log)
            time.sleep(0.5)
        yield running
    finally:
        # Delete the ModelDeployments while the operator runs: it owns their finalizer.
        cluster.run_kubectl("delete", "md", "--all", "-n", ns, "--timeout=60s", check=False)
        stop_process(proc)
        sys.stderr.write(f"\n--- operator log\n{log_tail(log, 60)}\n")


def test_operator_serves_a_model_with_the_chart_rbac(
    cluster: Any,
    api_client: Any,
    restricted_namespace: str,
    chart_operator: RunningOperator,
    chart_mlflow: ChartMlflow,
) -> None:
    ns = restricted_namespace
    with KubeletStandIn(api_client, ns):  # no node in this tier: pods reported Ready
        _serve_a_model(cluster, ns, chart_operator, chart_mlflow)


def _serve_a_model(
    cluster: Any, ns: str, chart_operator: RunningOperator, chart_mlflow: ChartMlflow
) -> None:
    model = register_model(chart_mlflow.url)
    kubectl(
        cluster,
        "apply",
        "-n",
        ns,
        "-f",
        "-",
        input=yaml.safe_dump(
            {
                "apiVersion": "modelyard.io/v1alpha1",
                "kind": "ModelDeployment",
                "metadata": {"name": "churn"},
                "spec": {"model": {"name": model, "alias": "champion"}},
            }
        ),
    )

    def live() -> dict[str, Any] | None:
        md = json.loads(cluster.run_kubectl("get", "md", "churn", "-n", ns, "-o", "json").stdout)
        resolved = condition(md, "ModelResolved").get("status") == "True"
        return md if resolved and (md.get("status") or {}).get("model") else None

    md = wait_for("ModelResolved=True and a live version", live, timeout=90)
    assert md["status"]["model"]["version"] == 1
    # The children, created with the chart's permissions only.
    server = json.loads(
        cluster.run_kubectl("get", "deployment", "churn", "-n", ns, "-o", "json").stdout
    )
    env = {
        e["name"]: e.get("value")
        for e in server["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["MODELYARD_MODEL_URI"] == f"models:/{model}/1"
    cluster.run_kubectl("get", "service", "churn", "-n", ns)
    log = chart_operator.log.read_text()
    assert "Forbidden" not in log and " 403" not in log, log_tail(chart_operator.log, 60)


def helm_test_script(cluster: Any, namespace: str, release: str) -> dict[str, Any]:
    """The `helm test` pod as installed (`helm get hooks`)."""
    hooks = helm("get", "hooks", release, "-n", namespace, kubeconfig=cluster.kubeconfig).stdout
    pods = [o for o in yaml.safe_load_all(hooks) if o and o["kind"] == "Pod"]
    assert len(pods) == 1
    assert pods[0]["metadata"]["annotations"]["helm.sh/hook"] == "test"
    return dict(pods[0]["spec"]["containers"][0])


def run_check(container: dict[str, Any], **env: str) -> subprocess.CompletedProcess[str]:
    assert container["command"][0] == "python3"
    return subprocess.run(
        [sys.executable, *container["command"][1:], *container["args"]],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_helm_test_check(
    cluster: Any,
    restricted_namespace: str,
    installed: str,
    chart_operator: RunningOperator,
    chart_mlflow: ChartMlflow,
) -> None:
    container = helm_test_script(cluster, restricted_namespace, installed)
    urls = {e["name"]: e["value"] for e in container["env"]}
    assert urls["OPERATOR_URL"].endswith(":8080/healthz")
    assert urls["MLFLOW_URL"].endswith(":5000/health")
    ok = run_check(
        container,
        OPERATOR_URL=chart_operator.liveness,
        MLFLOW_URL=f"{chart_mlflow.url}/health",
        ATTEMPTS="3",
    )
    assert ok.returncode == 0, ok.stderr
    assert f"{chart_operator.liveness}: 200" in ok.stdout
    assert f"{chart_mlflow.url}/health: 200 OK" in ok.stdout
    dead = f"http://127.0.0.1:{free_port()}/health"
    failed = run_check(
        container, OPERATOR_URL=chart_operator.liveness, MLFLOW_URL=dead, ATTEMPTS="1"
    )
    assert failed.returncode == 1
    assert f"{dead}: no answer" in failed.stderr


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("my-modelyard-mlflow", 200),
        ("my-modelyard-mlflow:5000", 200),
        ("my-modelyard-mlflow.ml:5000", 200),
        ("my-modelyard-mlflow.ml.svc:5000", 200),
        ("my-modelyard-mlflow.ml.svc.cluster.local:5000", 200),
        ("localhost:5000", 200),
        ("evil.example.com", 403),
    ],
)
def test_mlflow_accepts_its_service_names(
    chart_mlflow: ChartMlflow, host: str, status: int
) -> None:
    """The chart's --allowed-hosts: in-cluster clients use the Service's DNS names."""
    response = httpx.get(
        f"{chart_mlflow.url}/api/2.0/mlflow/experiments/search",
        params={"max_results": 1},
        headers={"Host": host},
        timeout=10,
    )
    assert response.status_code == status, response.text
