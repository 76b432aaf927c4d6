"""The whole product on a real node: chart -> pipeline Job -> registered model ->
ModelDeployment -> pods answering -> alias move under load -> drift check -> uninstall.

The tests share one installed release (module fixture); what a test needs from an
earlier step (the trained champion, the ModelDeployment serving it) is a fixture of its
own, so each test can run alone (pytest -k) and in any order.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
import pytest

from tests.support.incluster import E2E_RELEASE as RELEASE
from tests.support.incluster import port_forward, run_pod, start_pod, wait_pod
from tests.support.kube import wait_for

# Setting up the release (images loaded, chart installed) takes minutes on 2 cores.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

MODEL = "churn"


@contextmanager
def mlflow_client(cluster: Any, ns: str) -> Iterator[Any]:
    from mlflow import MlflowClient

    with port_forward(cluster, ns, f"svc/{RELEASE}-modelyard-mlflow", 5000) as port:
        uri = f"http://localhost:{port}"
        yield MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def md(cluster: Any, ns: str) -> dict[str, Any]:
    out = cluster.run_kubectl("-n", ns, "get", "md", MODEL, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def ready_version(obj: dict[str, Any]) -> int | None:
    status = obj.get("status") or {}
    ready = [c for c in status.get("conditions") or [] if c["type"] == "Ready"]
    if ready and ready[0]["status"] == "True":
        return int((status.get("model") or {}).get("version") or 0)
    return None


def test_chart_installs_and_its_pods_run(node_cluster: Any, release: str) -> None:
    deployments = json.loads(
        node_cluster.run_kubectl("-n", release, "get", "deploy", "-o", "json").stdout
    )["items"]
    available = {
        d["metadata"]["name"]: d["status"].get("availableReplicas", 0) for d in deployments
    }
    assert available == {f"{RELEASE}-modelyard-operator": 1, f"{RELEASE}-modelyard-mlflow": 1}
    helm = [str(node_cluster.bin_dir / "helm"), "--kubeconfig", str(node_cluster.kubeconfig)]
    tested = subprocess.run(
        [*helm, "test", RELEASE, "-n", release, "--timeout", "5m"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


@pytest.fixture(scope="module")
def champion(node_cluster: Any, release: str) -> int:
    """The sample pipeline run as a Job from the chart's CronJob: the version it made
    champion."""
    job = "churn-first-run"
    node_cluster.run_kubectl(
        "-n", release, "create", "job", job, f"--from=cronjob/{RELEASE}-modelyard-churn"
    )
    done = node_cluster.run_kubectl(
        "-n",
        release,
        "wait",
        "--for=condition=Complete",
        f"job/{job}",
        "--timeout=900s",
        check=False,
    )
    if done.returncode != 0:
        logs = node_cluster.run_kubectl("-n", release, "logs", f"job/{job}", check=False)
        pytest.fail(f"the pipeline Job did not complete:\n{logs.stdout[-5000:]}{logs.stderr}")
    with mlflow_client(node_cluster, release) as (mlflow, _):
        return int(mlflow.get_model_version_by_alias(MODEL, "champion").version)


def test_pipeline_job_trains_and_registers_the_champion(
    node_cluster: Any, release: str, champion: int
) -> None:
    with mlflow_client(node_cluster, release) as (mlflow, _):
        version = mlflow.get_model_version(MODEL, str(champion))
        assert version.status == "READY"
        run = mlflow.get_run(version.run_id)
        sources = [d.dataset.source for d in run.inputs.dataset_inputs]
        assert sources and all("date=" in s for s in sources)  # lineage: exact partitions


@pytest.fixture(scope="module")
def serving(node_cluster: Any, release: str, champion: int) -> int:
    """A ModelDeployment of churn@champion, Ready: the version it serves."""
    manifest = {
        "apiVersion": "modelyard.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": MODEL},
        "spec": {"model": {"name": MODEL, "alias": "champion"}},
    }
    subprocess.run(
        [
            node_cluster.kubectl,
            "--kubeconfig",
            str(node_cluster.kubeconfig),
            "-n",
            release,
            "apply",
            "-f",
            "-",
        ],
        input=json.dumps(manifest),
        text=True,
        check=True,
        capture_output=True,
    )
    waited = node_cluster.run_kubectl(
        "-n",
        release,
        "wait",
        "--for=condition=Ready",
        f"md/{MODEL}",
        "--timeout=600s",
        check=False,
    )
    if waited.returncode != 0:
        status = md(node_cluster, release).get("status")
        pytest.fail(f"md/{MODEL} not Ready:\n{json.dumps(status, indent=1)}")
    return champion


def test_model_deployment_becomes_ready_with_the_registered_version(
    node_cluster: Any, release: str, serving: int, champion: int
) -> None:
    obj = md(node_cluster, release)
    assert serving == champion
    assert obj["status"]["model"]["version"] == champion
    assert obj["status"]["model"]["uri"] == f"models:/{MODEL}/{champion}"


def test_predictions_in_the_cluster_equal_model_predict(
    node_cluster: Any, release: str, toolkit_image: str, serving: int
) -> None:
    import mlflow

    with mlflow_client(node_cluster, release) as (_, uri):
        mlflow.set_tracking_uri(uri)
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}/{serving}")
        rows = model.input_example
        assert isinstance(rows, pd.DataFrame) and len(rows) > 0
        expected = [float(x) for x in pd.Series(model.predict(rows)).tolist()]
    payload = json.dumps({"dataframe_split": rows.to_dict(orient="split")}, default=str)
    script = f"""
import json, urllib.request
req = urllib.request.Request("http://{MODEL}.{release}.svc.cluster.local/invocations",
    data={payload!r}.encode(), headers={{"Content-Type": "application/json"}})
print(urllib.request.urlopen(req, timeout=30).read().decode())
"""
    answer = json.loads(run_pod(node_cluster, release, toolkit_image, script).strip())
    assert [float(x) for x in answer["predictions"]] == pytest.approx(expected)


LOAD_SCRIPT = """
import json, time, threading, urllib.request
url = "http://{host}/invocations"
body = {body!r}.encode()
rate, seconds = {rate}, {seconds}
ok, failed, errors = 0, 0, []
lock = threading.Lock()
def one():
    global ok, failed
    try:
        req = urllib.request.Request(url, data=body, headers={{"Content-Type": "application/json",
                                                              "Connection": "close"}})
        with urllib.request.urlopen(req, timeout=10) as r:
            good = r.status == 200
    except Exception as e:
        good = False
        with lock:
            errors.append(repr(e)[:200])
    with lock:
        if good: ok += 1
        else: failed += 1
start = time.monotonic()
threads = []
n = 0
while time.monotonic() - start < seconds:
    t = threading.Thread(target=one); t.start(); threads.append(t); n += 1
    time.sleep(max(0.0, start + n / rate - time.monotonic()))
for t in threads: t.join()
elapsed = time.monotonic() - start
print(json.dumps({{"sent": n, "ok": ok, "failed": failed, "seconds": elapsed,
                  "errors": errors[:5]}}))
"""


def test_alias_move_rolls_out_with_zero_failed_requests_under_load(
    node_cluster: Any, release: str, toolkit_image: str, serving: int
) -> None:
    with mlflow_client(node_cluster, release) as (mlflow, uri):
        v1 = mlflow.get_model_version(MODEL, str(serving))
        # A second version of the same model files (the same logged model): what matters
        # is the rollout.
        run = mlflow.get_run(v1.run_id)
        [logged] = mlflow.search_logged_models(
            [run.info.experiment_id], filter_string=f"source_run_id = '{v1.run_id}'"
        )
        v2 = mlflow.create_model_version(
            MODEL, source=v1.source, run_id=v1.run_id, model_id=logged.model_id
        )
        wait_for(
            "version 2 READY",
            lambda: mlflow.get_model_version(MODEL, v2.version).status == "READY",
        )
        import mlflow as mlflow_module

        mlflow_module.set_tracking_uri(uri)
        rows = mlflow_module.pyfunc.load_model(f"models:/{MODEL}/{v1.version}").input_example
    body = json.dumps({"dataframe_split": rows.head(1).to_dict(orient="split")}, default=str)
    seconds = 150
    script = LOAD_SCRIPT.format(
        host=f"{MODEL}.{release}.svc.cluster.local", body=body, rate=25, seconds=seconds
    )
    start_pod(node_cluster, release, toolkit_image, script, name="load")
    wait_for(
        "the load pod to run",
        lambda: (
            node_cluster.run_kubectl(
                "-n", release, "get", "pod", "load", "-o", "jsonpath={.status.phase}"
            ).stdout
            == "Running"
        ),
        timeout=120,
    )
    time.sleep(10)  # traffic flows to version 1 first
    with mlflow_client(node_cluster, release) as (mlflow, _):
        mlflow.set_registered_model_alias(MODEL, "champion", v2.version)
    wait_for(
        "version 2 to be live and Ready",
        lambda: ready_version(md(node_cluster, release)) == int(v2.version),
        timeout=seconds - 20,
        interval=1,
    )
    result = json.loads(wait_pod(node_cluster, release, "load", timeout=seconds + 120).strip())
    assert result["failed"] == 0, result
    assert result["ok"] / result["seconds"] >= 20, result
    history = md(node_cluster, release)["status"]["history"]
    assert [h["version"] for h in history[:2]] == [int(v2.version), serving]


DRIFT_SCRIPT = """
import json, subprocess, sys
import mlflow
client = mlflow.MlflowClient()
version = client.get_model_version("{model}", "{version}")
path = mlflow.artifacts.download_artifacts(
    run_id=version.run_id, artifact_path="reference/data.parquet", dst_path="/tmp/ref")
import pandas as pd
current = pd.read_parquet(path)
numeric = [c for c in current.select_dtypes("number").columns if current[c].nunique() > 10][:2]
for c in numeric:  # a shift no drift test can miss
    current[c] = current[c] * 3 + current[c].std() * 2
current.to_parquet("/tmp/current.parquet")
done = subprocess.run(["modelyard", "drift", "check", "--model", "{model}",
    "--version", "{version}", "--current", "/tmp/current.parquet", "--log-to-mlflow",
    "--fail-on", "column", "--json"], capture_output=True, text=True)
print(json.dumps({{"exit": done.returncode, "shifted": numeric,
                  "summary": json.loads(done.stdout), "stderr": done.stderr[-2000:]}}))
"""


def test_drift_check_runs_in_the_cluster_and_its_report_exists(
    node_cluster: Any, release: str, toolkit_image: str, champion: int
) -> None:
    version = str(champion)
    out = run_pod(
        node_cluster,
        release,
        toolkit_image,
        DRIFT_SCRIPT.format(model=MODEL, version=version),
        env={"MLFLOW_TRACKING_URI": f"http://{RELEASE}-modelyard-mlflow.{release}.svc:5000"},
        timeout=600,
    )
    result = json.loads(out.strip().splitlines()[-1])
    assert result["exit"] == 3, result  # 3: drift found (--fail-on column)
    assert set(result["shifted"]) <= set(result["summary"]["drifted_columns"]), result
    with mlflow_client(node_cluster, release) as (mlflow, _):
        tags = mlflow.get_model_version(MODEL, version).tags
        run_id = tags["modelyard.drift.last_run_id"]
        reports = {a.path for a in mlflow.list_artifacts(run_id, "drift")}
    assert {"drift/report.html", "drift/summary.json"} <= reports


def test_helm_uninstall_cleans_up(node_cluster: Any, release: str) -> None:
    node_cluster.run_kubectl("-n", release, "delete", "md", MODEL, "--wait=true", "--timeout=120s")
    node_cluster.run_kubectl("-n", release, "delete", "pod", "--all", "--wait=true")
    helm = [str(node_cluster.bin_dir / "helm"), "--kubeconfig", str(node_cluster.kubeconfig)]
    subprocess.run([*helm, "uninstall", RELEASE, "-n", release, "--wait"], check=True, timeout=300)
    left = node_cluster.run_kubectl(
        "-n",
        release,
        "get",
        "all,cm,secret,pvc,sa,role,rolebinding,md",
        "-o",
        "name",
        check=False,
    ).stdout.split()
    # What Kubernetes itself keeps in every namespace, and Jobs' finished pods aside.
    left = [x for x in left if not x.endswith(("/kube-root-ca.crt", "/default"))]
    assert left == []
    roles = node_cluster.run_kubectl(
        "get",
        "clusterrole,clusterrolebinding",
        "-l",
        f"app.kubernetes.io/instance={RELEASE}",
        "-o",
        "name",
    ).stdout.split()
    assert roles == []
    crd = node_cluster.run_kubectl("get", "crd", "modeldeployments.modelyard.io", check=False)
    assert crd.returncode == 0  # CRDs are kept, as Helm does
