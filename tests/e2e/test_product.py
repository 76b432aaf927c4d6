"""The whole product on a real node: chart -> pipeline Job -> registered model ->
ModelDeployment -> pods answering -> alias move under load -> drift check -> uninstall.

The tests share one installed release (module fixture); what a test needs from an
earlier step (the trained champion, the ModelDeployment serving it) is a fixture of its
own, so each test can run alone (pytest -k) and in any order.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from modelyard.core.contracts import RegistryUsers
from tests.e2e.conftest import LOCAL_IMAGES, RETRAIN_PIPELINE, wait_available
from tests.support.incluster import E2E_RELEASE as RELEASE
from tests.support.incluster import (
    port_forward,
    registry_password,
    run_pod,
    start_pod,
    wait_pod,
)
from tests.support.kube import wait_for
from tests.support.models import mlflow_uri, registry_login
from tests.support.servers import REPO
from tests.support.users import User, make_user

# Setting up the release (images loaded, chart installed) takes minutes on 2 cores.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

MODEL = "churn"


@contextmanager
def mlflow_client(cluster: Any, ns: str, user: str = RegistryUsers.ADMIN) -> Iterator[Any]:
    """MLflow through `kubectl port-forward`, logged in as ``user`` (the chart's registry
    has users: docs/security.md)."""
    from mlflow import MlflowClient

    with (
        registry_login(user, registry_password(cluster, ns, user)),
        port_forward(cluster, ns, f"svc/{RELEASE}-modelyard-mlflow", 5000) as port,
    ):
        uri = f"http://localhost:{port}"
        yield MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def md(cluster: Any, ns: str, name: str = MODEL) -> dict[str, Any]:
    out = cluster.run_kubectl("-n", ns, "get", "md", name, "-o", "json", check=False)
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
    # The chart's default: two operator replicas (one acts, through a Lease; the other
    # stands by, Ready), one MLflow.
    assert available == {f"{RELEASE}-modelyard-operator": 2, f"{RELEASE}-modelyard-mlflow": 1}
    helm = [str(node_cluster.bin_dir / "helm"), "--kubeconfig", str(node_cluster.kubeconfig)]
    tested = subprocess.run(
        [*helm, "test", RELEASE, "-n", release, "--timeout", "5m"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


@dataclass(frozen=True)
class FirstRun:
    """The sample pipeline's first run, whose orchestrating pod was killed once mid-run."""

    champion: int  # the version it made champion
    killed_pod: str  # the orchestrating pod deleted while a step Job ran
    jobs_before_kill: dict[str, str]  # step Job name -> uid, when it was deleted


def step_jobs(cluster: Any, ns: str) -> list[dict[str, Any]]:
    """The sample pipeline's step Jobs (the orchestrating Job has no step label)."""
    selector = f"modelyard.io/pipeline={MODEL},modelyard.io/step"
    out = cluster.run_kubectl("-n", ns, "get", "jobs", "-l", selector, "-o", "json").stdout
    return list(json.loads(out)["items"])


def orchestrator_pods(cluster: Any, ns: str, job: str) -> list[dict[str, Any]]:
    out = cluster.run_kubectl("-n", ns, "get", "pods", "-l", f"job-name={job}", "-o", "json")
    return list(json.loads(out.stdout)["items"])


@pytest.fixture(scope="module")
def first_run(node_cluster: Any, release: str) -> FirstRun:
    """The sample pipeline run as a Job from the chart's CronJob. Once its first step Job
    exists, the orchestrating pod is deleted (SIGTERM, 1 s grace): the Job starts another
    pod (backoffLimit 1), which must find the step Jobs by name and adopt them."""
    job = "churn-first-run"
    node_cluster.run_kubectl(
        "-n", release, "create", "job", job, f"--from=cronjob/{RELEASE}-modelyard-churn"
    )
    jobs = wait_for(
        "the first step Job", lambda: step_jobs(node_cluster, release), timeout=600, interval=1
    )
    [pod] = [p["metadata"]["name"] for p in orchestrator_pods(node_cluster, release, job)]
    before = {j["metadata"]["name"]: j["metadata"]["uid"] for j in jobs}
    node_cluster.run_kubectl(
        "-n", release, "delete", "pod", pod, "--grace-period=1", "--wait=false"
    )
    done = node_cluster.run_kubectl(
        "-n",
        release,
        "wait",
        "--for=condition=Complete",
        f"job/{job}",
        "--timeout=900s",
        check=False,
        timeout=960,
    )
    if done.returncode != 0:
        logs = node_cluster.run_kubectl("-n", release, "logs", f"job/{job}", check=False)
        pytest.fail(f"the pipeline Job did not complete:\n{logs.stdout[-5000:]}{logs.stderr}")
    with mlflow_client(node_cluster, release) as (mlflow, _):
        champion = int(mlflow.get_model_version_by_alias(MODEL, "champion").version)
    return FirstRun(champion, pod, before)


@pytest.fixture(scope="module")
def champion(first_run: FirstRun) -> int:
    return first_run.champion


def test_a_restarted_orchestrator_adopts_its_jobs_and_starts_no_step_twice(
    node_cluster: Any, release: str, first_run: FirstRun
) -> None:
    job = "churn-first-run"
    orchestrating = json.loads(
        node_cluster.run_kubectl("-n", release, "get", "job", job, "-o", "json").stdout
    )
    # One pod killed, one that finished the run.
    assert orchestrating["status"].get("failed") == 1, orchestrating["status"]
    assert orchestrating["status"].get("succeeded") == 1, orchestrating["status"]
    [second] = [
        p for p in orchestrator_pods(node_cluster, release, job)
        if p["metadata"]["name"] != first_run.killed_pod
    ]  # fmt: skip
    log = node_cluster.run_kubectl("-n", release, "logs", second["metadata"]["name"]).stdout
    after = {j["metadata"]["name"]: j for j in step_jobs(node_cluster, release)}
    print(f"killed {first_run.killed_pod} with {sorted(first_run.jobs_before_kill)} created")
    for name, uid in first_run.jobs_before_kill.items():
        # The same Job object (not deleted and made again), adopted by the second pod.
        assert after[name]["metadata"]["uid"] == uid, name
        assert f"job {name}: adopted (this run's)" in log, log[-3000:]
    for name, step_job in after.items():
        # Each step ran once: one Job per step (names are per run), its completions done.
        completions = step_job["spec"].get("completions") or 1
        assert step_job["status"].get("succeeded") == completions, (name, step_job["status"])


def test_pipeline_job_trains_and_registers_the_champion(
    node_cluster: Any, release: str, champion: int
) -> None:
    with mlflow_client(node_cluster, release) as (mlflow, _):
        version = mlflow.get_model_version(MODEL, str(champion))
        assert version.status == "READY"
        run = mlflow.get_run(version.run_id)
        sources = [d.dataset.source for d in run.inputs.dataset_inputs]
        assert sources and all("date=" in s for s in sources)  # lineage: exact partitions


def test_the_pipeline_ran_as_one_job_per_step_with_their_resources(
    node_cluster: Any, release: str, champion: int, tmp_path: Path
) -> None:
    """The CronJob's pod orchestrated: one Job per step, the fanned-out ingestion as an
    Indexed Job, each with the resources its step declares; and the model it registered
    is the one a local run of the same pipeline for the same date makes."""
    from modelyard.pipelines.definition import load_pipeline

    sample = REPO / "pipelines" / "samples" / "churn.yaml"
    pipeline = load_pipeline(sample, {}, strict_placeholders=False)
    # The step Jobs (the orchestrating Job has the pipeline's label but no step).
    selector = f"modelyard.io/pipeline={MODEL},modelyard.io/step"
    jobs = json.loads(
        node_cluster.run_kubectl("-n", release, "get", "jobs", "-l", selector, "-o", "json").stdout
    )["items"]
    by_step = {j["metadata"]["labels"]["modelyard.io/step"]: j for j in jobs}
    print("\n".join(sorted(j["metadata"]["name"] for j in jobs)))  # the Jobs, for the log
    assert set(by_step) == set(pipeline.order)
    dates = {j["metadata"]["labels"]["modelyard.io/run-date"] for j in jobs}
    assert len(dates) == 1
    for name, job in by_step.items():
        step = pipeline.step(name)
        assert job["metadata"]["name"] == f"{MODEL}-{dates.copy().pop().replace('-', '')}-{name}"
        assert job["status"].get("succeeded"), name
        [container] = job["spec"]["template"]["spec"]["containers"]
        declared = step.resources or pipeline.spec.resources
        assert container["resources"] == {
            k: dict(v) for k, v in declared.model_dump().items() if v
        }, name
        if step.fan_out is not None:
            assert job["spec"]["completionMode"] == "Indexed"
            assert job["spec"]["completions"] == step.fan_out.completions
            assert job["status"]["succeeded"] == step.fan_out.completions
        else:
            assert job["spec"].get("completionMode", "NonIndexed") == "NonIndexed"
    assert by_step["ingest-usage"]["spec"]["completionMode"] == "Indexed"

    # The same pipeline run here, for the same date: the same model.
    run_date = dates.pop()
    summary = tmp_path / "summary.json"
    local = subprocess.run(
        [str(Path(sys.executable).parent / "modelyard"), "pipeline", "run", str(sample),
         "--home", str(tmp_path / "home"), "--date", run_date, "--summary-json", str(summary)],
        capture_output=True, text=True, timeout=900, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]
    trained = json.loads(summary.read_text())["steps"]["train"]["result"]
    from mlflow import MlflowClient

    here = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    local_run = here.get_run(trained["run_id"])
    with mlflow_client(node_cluster, release) as (mlflow, _):
        version = mlflow.get_model_version(MODEL, str(champion))
        cluster_run = mlflow.get_run(version.run_id)
    assert cluster_run.data.params == local_run.data.params
    metrics = ("holdout_roc_auc", "holdout_accuracy", "holdout_f1", "holdout_log_loss")
    for metric in metrics:
        assert cluster_run.data.metrics[metric] == pytest.approx(
            local_run.data.metrics[metric], abs=1e-12
        ), metric

    def digests(run: Any) -> set[tuple[str, str]]:
        return {(d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs}

    assert digests(cluster_run) == digests(local_run)  # the same data, partition by partition


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


def load_rows(tracking_uri: str, version: int) -> str:
    """A request body with one row of the version's input example."""
    import mlflow.pyfunc

    with mlflow_uri(tracking_uri):
        rows = mlflow.pyfunc.load_model(f"models:/{MODEL}/{version}").input_example
    return json.dumps({"dataframe_split": rows.head(1).to_dict(orient="split")}, default=str)


PROBE_SCRIPT = """
import json, urllib.request
seen = {{}}
for url in {urls!r}:
    try:
        with urllib.request.urlopen(url, timeout={timeout}) as answer:
            seen[url] = answer.status
    except urllib.error.HTTPError as error:  # an answer all the same
        seen[url] = error.code
    except Exception as error:
        seen[url] = "no connection: " + type(error).__name__
print(json.dumps(seen))
"""


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    found = [c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind]
    return found[0] if found else {}


@pytest.mark.security
def test_an_unsafe_version_is_refused_on_the_node_and_the_live_one_keeps_serving(
    node_cluster: Any, release: str, toolkit_image: str, serving: int
) -> None:
    """A cloudpickle model registered by anyone and moved to the alias never runs: the
    server refuses it before unpickling, the operator reports UnsafeModelFormat, tags it
    rejected for this deployment and rolls back; the live version answers throughout."""
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    from modelyard.core.contracts import ApprovalTags
    from tests.support.models import small_frame

    live = int(md(node_cluster, release)["status"]["model"]["version"])
    frame, label = small_frame()
    estimator = LogisticRegression().fit(frame, label)
    with mlflow_client(node_cluster, release) as (client, uri):
        body = load_rows(uri, live)
    with mlflow_client(node_cluster, release) as (client, uri), mlflow_uri(uri):
        mlflow.set_experiment("e2e-unsafe-model")
        with mlflow.start_run():
            info = mlflow.sklearn.log_model(
                estimator,
                name="model",
                signature=infer_signature(frame, estimator.predict(frame)),
                registered_model_name=MODEL,
                serialization_format="cloudpickle",
                pip_requirements=["scikit-learn"],
            )
        unsafe = int(info.registered_model_version)
        wait_for(
            "the unsafe version READY in the registry",
            lambda: client.get_model_version(MODEL, str(unsafe)).status == "READY",
        )
        client.set_registered_model_alias(MODEL, "champion", str(unsafe))

    def refused() -> dict[str, Any] | None:
        # The lasting record: Degraded says UnsafeModelFormat only until the rollback has
        # settled (then the live version runs as specified, a few seconds later), while
        # status.rejected keeps the refused version and why.
        rejected = (md(node_cluster, release).get("status") or {}).get("rejected") or {}
        found = rejected.get("version") == unsafe and rejected.get("reason") == "UnsafeModelFormat"
        return rejected if found else None

    try:
        try:
            rejected = wait_for(
                "the operator to refuse the unsafe version", refused, timeout=300, interval=2
            )
        except BaseException:
            pods = node_cluster.run_kubectl("-n", release, "get", "pods", "-o", "wide").stdout
            status = json.dumps(md(node_cluster, release).get("status"), indent=1)
            pytest.fail(f"not refused:\n{status}\n{pods}")
        obj = md(node_cluster, release)
        assert obj["status"]["model"]["version"] == live
        assert "pickle" in rejected["message"].lower()
        warnings = node_cluster.run_kubectl(
            "-n", release, "get", "events", "--field-selector",
            f"involvedObject.name={MODEL},reason=RolledBack", "-o", "jsonpath={.items[*].message}",
        ).stdout  # fmt: skip
        assert f"version {unsafe} is a scikit-learn model saved with cloudpickle" in warnings
        with mlflow_client(node_cluster, release) as (client, _):
            tags = client.get_model_version(MODEL, str(unsafe)).tags
        key = ApprovalTags.key(release, MODEL)
        assert tags.get(key) == ApprovalTags.REJECTED, tags
        # The live version still answers, through the ModelDeployment's Service.
        script = f"""
import json, urllib.request
req = urllib.request.Request("http://{MODEL}.{release}.svc.cluster.local/invocations",
    data={body!r}.encode(), headers={{"Content-Type": "application/json"}})
print(json.dumps(json.loads(urllib.request.urlopen(req, timeout=30).read())))
"""
        answer = json.loads(run_pod(node_cluster, release, toolkit_image, script).strip())
        assert len(answer["predictions"]) == 1
    finally:
        with mlflow_client(node_cluster, release) as (client, _):
            client.set_registered_model_alias(MODEL, "champion", str(live))


@pytest.mark.security
def test_network_policies_admit_the_toolkit_and_refuse_other_namespaces(
    node_cluster: Any, release: str, toolkit_image: str, serving: int
) -> None:
    """Enforced by kube-network-policies on the node (docs/security.md): a pod of another
    namespace reaches neither MLflow nor a model server; the toolkit's pods do (the
    operator and the servers read the registry: ``serving`` is Ready)."""
    mlflow_url = f"http://{RELEASE}-modelyard-mlflow.{release}.svc.cluster.local:5000/health"
    server_url = f"http://{MODEL}.{release}.svc.cluster.local/readyz"
    script = PROBE_SCRIPT.format(urls=[mlflow_url, server_url], timeout=8)
    foreign = f"foreign-{uuid.uuid4().hex[:6]}"
    node_cluster.run_kubectl("create", "namespace", foreign)
    try:
        refused = json.loads(run_pod(node_cluster, foreign, toolkit_image, script).strip())
    finally:
        node_cluster.run_kubectl("delete", "namespace", foreign, "--wait=false", check=False)
    admitted = json.loads(
        run_pod(
            node_cluster, release, toolkit_image, script, registry_user=RegistryUsers.SERVER
        ).strip()
    )
    assert admitted == {mlflow_url: 200, server_url: 200}
    assert all(str(v).startswith("no connection") for v in refused.values()), refused


STUDY_PROBE = """
import json, warnings
import optuna
warnings.simplefilter("ignore")
optuna.logging.set_verbosity(optuna.logging.WARNING)
storage = optuna.storages.GrpcStorageProxy(host={host!r}, port={port})
try:
    storage.wait_server_ready(timeout={timeout})
except ConnectionError:
    print(json.dumps({{"error": "no connection"}}))
    raise SystemExit(0)
study = optuna.create_study(study_name={study!r}, storage=storage, load_if_exists=True)
study.optimize(lambda trial: trial.suggest_float("x", 0, 1) ** 2, n_trials=3)
print(json.dumps({{"trials": len(study.trials)}}))
"""


def test_the_study_storage_serves_tuning_pods_and_no_other(
    node_cluster: Any, release: str, toolkit_image: str
) -> None:
    """The chart's study storage (pipelines.tuning.storage.proxy: Optuna's gRPC proxy
    beside MLflow, on the MLflow claim): a pod labelled as a tuning step's runs trials
    in a study through the Service; any other pod of the namespace gets no connection."""
    from modelyard.core.contracts import LABEL_STUDY_CLIENT

    study = f"e2e-{uuid.uuid4().hex[:6]}"
    script = STUDY_PROBE.format(
        host=f"{RELEASE}-modelyard-mlflow", port=50051, timeout=10, study=study
    )
    tuning = json.loads(
        run_pod(node_cluster, release, toolkit_image, script, labels={LABEL_STUDY_CLIENT: "true"})
    )
    other = json.loads(run_pod(node_cluster, release, toolkit_image, script))
    assert tuning == {"trials": 3}
    assert other == {"error": "no connection"}
    # The same study again: kept by the proxy, three more trials.
    again = json.loads(
        run_pod(node_cluster, release, toolkit_image, script, labels={LABEL_STUDY_CLIENT: "true"})
    )
    assert again == {"trials": 6}


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
        body = load_rows(uri, int(v1.version))
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
numeric = [c for c in current.select_dtypes("number").columns if current[c].nunique() > 10]
numeric = numeric[:{shift}]
for c in numeric:  # a shift no drift test can miss
    current[c] = current[c] * 3 + current[c].std() * 2
current.to_parquet("/tmp/current.parquet")
done = subprocess.run(["modelyard", "drift", "check", "--model", "{model}",
    "--version", "{version}", "--current", "/tmp/current.parquet", "--log-to-mlflow",
    "--fail-on", "column", "--json", *{deployment}], capture_output=True, text=True)
print(json.dumps({{"exit": done.returncode, "shifted": numeric,
                  "summary": json.loads(done.stdout), "stderr": done.stderr[-2000:]}}))
"""


def webhook_deliveries(cluster: Any, ns: str) -> dict[str, float]:
    """Registry webhook deliveries by outcome, summed over the operator's replicas."""
    pods = json.loads(
        cluster.run_kubectl(
            "-n", ns, "get", "pods", "-l", "app.kubernetes.io/component=operator", "-o", "json"
        ).stdout
    )["items"]  # fmt: skip
    total: dict[str, float] = {}
    for pod in pods:
        with port_forward(cluster, ns, f"pod/{pod['metadata']['name']}", 8081) as port:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        for line in text.splitlines():
            found = re.match(
                r'modelyard_operator_webhook_deliveries_total\{outcome="(\w+)"\} (\S+)', line
            )
            if found:
                total[found[1]] = total.get(found[1], 0.0) + float(found[2])
    return total


def test_a_registry_webhook_reaches_the_active_operator_through_its_service(
    node_cluster: Any, release: str, serving: int
) -> None:
    """The webhook registered as docs/operations.md says (`modelyard registry webhook
    create`, an MLflow admin, the shared secret from the Secret): a tag set on the served
    version is delivered by the MLflow pod to the operator's Service, and the replica
    that acts accepts it (the standby answers 503 and MLflow retries)."""
    from tests.e2e.conftest import WEBHOOK_SECRET

    secret = base64.b64decode(
        node_cluster.run_kubectl(
            "-n", release, "get", "secret", WEBHOOK_SECRET, "-o", "jsonpath={.data.secret}"
        ).stdout
    ).decode()  # fmt: skip
    receiver = f"http://{RELEASE}-modelyard-operator.{release}:8082/webhooks/mlflow"
    before = webhook_deliveries(node_cluster, release)
    with mlflow_client(node_cluster, release) as (mlflow, uri):
        created = subprocess.run(
            [str(Path(sys.executable).parent / "modelyard"), "registry", "webhook", "create",
             "--url", receiver, "--tracking-uri", uri],
            env={**os.environ, "MODELYARD_WEBHOOK_SECRET": secret},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert created.returncode == 0, created.stdout + created.stderr
        assert secret not in created.stdout + created.stderr

        def delivered() -> bool:
            # MLflow re-reads its list of webhooks at most every MLFLOW_WEBHOOK_CACHE_TTL
            # (60 s, docs/operations.md): a tag set before it has is not delivered (the
            # operator's own tag writes may have just cached the list without the new
            # webhook). So a new tag on each try, as a user would wait for the first one.
            mlflow.set_model_version_tag(MODEL, str(serving), "e2e.webhook", uuid.uuid4().hex)
            time.sleep(2)
            accepted = webhook_deliveries(node_cluster, release).get("accepted", 0.0)
            return accepted > before.get("accepted", 0.0)

        assert wait_for("an accepted webhook delivery", delivered, timeout=150, interval=5)
    after = webhook_deliveries(node_cluster, release)
    print(f"webhook deliveries before {before}, after {after}")
    # Every delivery was signed as the operator expects, and none was malformed.
    for refused in ("unsigned", "forged", "stale", "invalid"):
        assert after.get(refused, 0.0) == before.get(refused, 0.0), after


def test_drift_check_runs_in_the_cluster_and_its_report_exists(
    node_cluster: Any, release: str, toolkit_image: str, champion: int
) -> None:
    version = str(champion)
    out = run_pod(
        node_cluster,
        release,
        toolkit_image,
        DRIFT_SCRIPT.format(model=MODEL, version=version, shift=2, deployment=[]),
        env={"MLFLOW_TRACKING_URI": f"http://{RELEASE}-modelyard-mlflow.{release}.svc:5000"},
        registry_user=RegistryUsers.DRIFT,
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


PRODUCTION = "churn-prod"


def cli_as(user: User, *args: str) -> subprocess.CompletedProcess[str]:
    """The `modelyard` command as a person runs it, with their own kubeconfig."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "modelyard"), *args],
        env={**os.environ, "KUBECONFIG": str(user.kubeconfig)},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def pending_version(cluster: Any, ns: str, name: str) -> int | None:
    status = md(cluster, ns, name).get("status") or {}
    return (status.get("pending") or {}).get("version")


def test_the_production_loop_with_a_person_in_it(
    node_cluster: Any, release: str, toolkit_image: str, serving: int, tmp_path: Path
) -> None:
    """drift -> retraining Job -> the challenger becomes champion -> pending -> a person
    with only the approver role approves -> rollout with zero failed requests."""
    node_cluster.run_kubectl("label", "namespace", release, "modelyard.io/approval=required")
    alice = make_user(node_cluster, "alice", tmp_path)
    node_cluster.run_kubectl(
        "-n", release, "create", "rolebinding", "alice-approves",
        "--clusterrole=modelyard-approver", "--user=alice",
    )  # fmt: skip
    with mlflow_client(node_cluster, release) as (mlflow, _):
        first = int(mlflow.get_model_version_by_alias(MODEL, "champion").version)
    manifest = {
        "apiVersion": "modelyard.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": PRODUCTION},
        "spec": {
            "model": {"name": MODEL, "alias": "champion"},
            "server": {"replicas": 2},
            # The check's verdict comes from the drift pod below; its CronJob stays idle.
            "monitoring": {
                "predictionLog": "file:///tmp/predictions",
                "drift": {
                    "schedule": "0 0 1 1 *",
                    "retrain": {"cronJobName": f"{RELEASE}-modelyard-{RETRAIN_PIPELINE}"},
                },
            },
        },
    }
    subprocess.run(
        [node_cluster.kubectl, "--kubeconfig", str(node_cluster.kubeconfig), "-n", release,
         "apply", "-f", "-"],
        input=json.dumps(manifest), text=True, check=True, capture_output=True,
    )  # fmt: skip

    # The namespace requires approval: even the first version waits, and nothing runs.
    wait_for(
        "the first version to wait",
        lambda: pending_version(node_cluster, release, PRODUCTION) == first,
        timeout=120,
    )
    assert (
        node_cluster.run_kubectl("-n", release, "get", "deploy", PRODUCTION, check=False).returncode
        != 0
    )
    approved = cli_as(alice, "approve", PRODUCTION, "-n", release, "--comment", "first release")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    wait_for(
        "the first version live",
        lambda: ready_version(md(node_cluster, release, PRODUCTION)) == first,
        timeout=600,
        interval=2,
    )

    # Drift in what the live version sees: the operator starts the retraining Job.
    out = run_pod(
        # Most feature columns shift: dataset drift (at least half of them drifted).
        node_cluster, release, toolkit_image,
        # As the operator's own CronJob runs it: the verdict is this deployment's.
        DRIFT_SCRIPT.format(
            model=MODEL, version=first, shift=100,
            deployment=["--deployment", f"{release}/{PRODUCTION}"],
        ),
        env={"MLFLOW_TRACKING_URI": f"http://{RELEASE}-modelyard-mlflow.{release}.svc:5000"},
        registry_user=RegistryUsers.DRIFT,
        timeout=600,
    )  # fmt: skip
    verdict = json.loads(out.strip().splitlines()[-1])
    assert verdict["summary"]["dataset_drift"] is True, verdict
    job = wait_for(
        "the retraining Job",
        lambda: (
            (md(node_cluster, release, PRODUCTION).get("status") or {}).get("drift") or {}
        ).get("retrainJob"),
        timeout=120,
    )
    done = node_cluster.run_kubectl(
        "-n", release, "wait", "--for=condition=Complete", f"job/{job}", "--timeout=900s",
        check=False, timeout=960,
    )  # fmt: skip
    assert done.returncode == 0, node_cluster.run_kubectl(
        "-n", release, "logs", f"job/{job}", check=False
    ).stdout[-3000:]
    with mlflow_client(node_cluster, release) as (mlflow, _):
        challenger = int(mlflow.get_model_version_by_alias(MODEL, "champion").version)
    assert challenger > first
    wait_for(
        "the new champion to wait",
        lambda: pending_version(node_cluster, release, PRODUCTION) == challenger,
        timeout=120,
    )
    before = node_cluster.run_kubectl(
        "-n", release, "get", "deploy", PRODUCTION, "-o", "jsonpath={.metadata.resourceVersion}"
    ).stdout
    assert ready_version(md(node_cluster, release, PRODUCTION)) == first

    # alice approves under load: the new version rolls out with zero failed requests.
    with mlflow_client(node_cluster, release) as (_, uri):
        rows = load_rows(uri, first)
    seconds = 120
    script = LOAD_SCRIPT.format(
        host=f"{PRODUCTION}.{release}.svc.cluster.local", body=rows, rate=25, seconds=seconds
    )
    start_pod(node_cluster, release, toolkit_image, script, name="load-prod")
    phase = ("-n", release, "get", "pod", "load-prod", "-o", "jsonpath={.status.phase}")
    wait_for(
        "the load pod to run",
        lambda: node_cluster.run_kubectl(*phase).stdout == "Running",
        timeout=120,
    )
    assert (
        node_cluster.run_kubectl(
            "-n", release, "get", "deploy", PRODUCTION, "-o", "jsonpath={.metadata.resourceVersion}"
        ).stdout
        == before
    )  # still untouched while pending
    approved = cli_as(alice, "approve", PRODUCTION, "-n", release, "--version", str(challenger))
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert f"alice approves version {challenger}" in approved.stdout
    wait_for(
        "the approved version live",
        lambda: ready_version(md(node_cluster, release, PRODUCTION)) == challenger,
        timeout=seconds,
        interval=1,
    )
    result = json.loads(wait_pod(node_cluster, release, "load-prod", timeout=seconds + 120).strip())
    assert result["failed"] == 0, result
    status = md(node_cluster, release, PRODUCTION)["status"]
    assert status["history"][0]["version"] == challenger
    assert status["history"][0]["approvedBy"] == "alice"
    node_cluster.run_kubectl("label", "namespace", release, "modelyard.io/approval-")


def registered_versions(cluster: Any, ns: str) -> dict[str, Any]:
    """What the registry holds of the model: versions with their tags, and aliases."""
    with mlflow_client(cluster, ns) as (client, _):
        versions = client.search_model_versions(f"name = '{MODEL}'")
        aliases = client.get_registered_model(MODEL).aliases
    return {
        "versions": {int(v.version): dict(v.tags) for v in versions},
        "aliases": dict(aliases),
    }


def test_helm_uninstall_keeps_the_registry_and_cleans_up_the_rest(
    node_cluster: Any, release: str, champion: int
) -> None:
    node_cluster.run_kubectl(
        "-n", release, "delete", "md", "--all", "--wait=true", "--timeout=120s"
    )
    node_cluster.run_kubectl("-n", release, "delete", "modelapprovals,rolebindings", "--all")
    node_cluster.run_kubectl("-n", release, "delete", "pod", "--all", "--wait=true")
    # (After the ModelDeployments are gone: their deletion clears their "deployed" tags.)
    wait_available(node_cluster, release, 300)
    before = registered_versions(node_cluster, release)
    assert champion in before["versions"]
    helm = [str(node_cluster.bin_dir / "helm"), "--kubeconfig", str(node_cluster.kubeconfig)]
    chart = str(REPO / "charts" / "modelyard")
    subprocess.run([*helm, "uninstall", RELEASE, "-n", release, "--wait"], check=True, timeout=300)

    def left() -> list[str]:
        names = node_cluster.run_kubectl(
            "-n",
            release,
            "get",
            "all,cm,secret,pvc,sa,role,rolebinding,md",
            "-o",
            "name",
            check=False,
        ).stdout.split()
        # What Kubernetes itself keeps in every namespace, and Jobs' finished pods aside.
        return sorted(x for x in names if not x.endswith(("/kube-root-ca.crt", "/default")))

    # The data outlives the release (docs/install.md): the registry's and the lake's
    # claims, and the registry users' passwords, which the operator generated
    # (docs/security.md): a reinstall signs in to the kept users' database with them.
    # The webhook's Secret is the user's own (tests/e2e/conftest.py), not the chart's.
    from tests.e2e.conftest import WEBHOOK_SECRET

    kept = [
        f"persistentvolumeclaim/{RELEASE}-modelyard-lake",
        f"persistentvolumeclaim/{RELEASE}-modelyard-mlflow",
        f"secret/{RELEASE}-modelyard-registry-credentials",
        f"secret/{WEBHOOK_SECRET}",
    ]
    # The pods of the deleted Deployments go with garbage collection, a moment later.
    wait_for("the release's pods to go", lambda: left() == kept, timeout=180, interval=2)
    roles = node_cluster.run_kubectl(
        "get",
        "clusterrole,clusterrolebinding,flowschema",
        "-l",
        f"app.kubernetes.io/instance={RELEASE}",
        "-o",
        "name",
    ).stdout.split()
    assert roles == []
    crd = node_cluster.run_kubectl("get", "crd", "modeldeployments.modelyard.io", check=False)
    assert crd.returncode == 0  # CRDs are kept, as Helm does

    # A reinstall finds the same registry: every version, its tags, the aliases.
    subprocess.run(
        [
            *helm,
            "install",
            RELEASE,
            chart,
            "-n",
            release,
            *LOCAL_IMAGES,
            "--set",
            "pipelines.suspend=true",
        ],
        check=True,
        timeout=600,
        capture_output=True,
    )
    wait_available(node_cluster, release, 600)
    assert registered_versions(node_cluster, release) == before

    # Deleting the data is a deliberate second step.
    subprocess.run([*helm, "uninstall", RELEASE, "-n", release, "--wait"], check=True, timeout=300)
    node_cluster.run_kubectl("-n", release, "delete", *kept, "--wait=true", "--timeout=120s")
    wait_for("nothing left", lambda: left() == [], timeout=180, interval=2)
