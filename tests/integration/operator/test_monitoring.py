"""Drift monitoring on the real control plane: the operator's drift CronJob, the check it
runs (for real, against a prediction log in the serving contract's layout and a real
MLflow server), the result in status, and the retraining Job on drift."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kubernetes import client
from mlflow import MlflowClient
from typer.testing import CliRunner

from modelyard.cli import app
from tests.support.kube import ModelDeployments, condition, wait_for
from tests.support.models import register_sklearn_model

pytestmark = pytest.mark.integration

RESOLVE_INTERVAL = 2.0  # MODELYARD_RESOLVE_INTERVAL in conftest
PLANS = np.asarray(["basic", "plus", "pro"], dtype=object)


class Cluster(ModelDeployments):
    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        super().__init__(api_client, namespace)
        self.batch = client.BatchV1Api(api_client)

    def cronjob(self, name: str) -> dict[str, Any]:
        """As a user sees it (camelCase JSON, as kubectl get -o json)."""
        raw = self.batch.read_namespaced_cron_job(name, self.ns)
        return dict(self.api_client.sanitize_for_serialization(raw))

    def cronjob_names(self) -> list[str]:
        return [c.metadata.name for c in self.batch.list_namespaced_cron_job(self.ns).items]

    def jobs(self, label_selector: str) -> list[client.V1Job]:
        return list(self.batch.list_namespaced_job(self.ns, label_selector=label_selector).items)


@pytest.fixture
def k8s(api_client: client.ApiClient, namespace: str) -> Cluster:
    return Cluster(api_client, namespace)


def features(rows: int, seed: int, drift: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "amount": rng.lognormal(3.0 if not drift else 3.6, 0.5, rows),
            "tenure": rng.normal(24 if not drift else 30, 6, rows),
            "plan": PLANS[rng.choice(3, rows, p=[0.5, 0.3, 0.2])],
        }
    )


@dataclass(frozen=True)
class Model:
    name: str
    version: str
    estimator: Any


def register_with_lineage(tracking_uri: str, tmp_path: Path) -> Model:
    """A model the way the training pipeline registers one: with its reference data."""
    train = features(3_000, seed=1)
    registered = register_sklearn_model(
        tracking_uri,
        churn_estimator(),
        train,
        label=(train["amount"] > 25).astype(int),
        name=f"churn-{uuid.uuid4().hex[:8]}",
        reference=train,
    )
    return Model(registered.name, registered.version, registered.estimator)


def churn_estimator() -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    encode = ColumnTransformer([("plan", OneHotEncoder(), ["plan"])], remainder="passthrough")
    return Pipeline([("prep", encode), ("model", LogisticRegression(max_iter=500))])


def log_predictions(base: Path, model: Model, frame: pd.DataFrame) -> None:
    """What the server writes (docs/contracts.md), over the last hour."""
    start = datetime.now(UTC) - timedelta(hours=1)
    stamps = [start + timedelta(seconds=5 * i) for i in range(len(frame))]
    logged = frame.assign(
        prediction=model.estimator.predict(frame),
        _model_name=model.name,
        _model_version=model.version,
        _timestamp=pd.to_datetime(stamps, utc=True).astype("datetime64[us, UTC]"),
        _request_id=[uuid.uuid4().hex for _ in range(len(frame))],
    )
    for day, part in logged.groupby(logged["_timestamp"].dt.date):
        folder = base / model.name / f"version={model.version}" / f"date={day.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(
            pa.Table.from_pandas(part, preserve_index=False), folder / f"{uuid.uuid4()}.parquet"
        )


def run_drift_job(k8s: Cluster, cronjob: str) -> tuple[int, str]:
    """Run the drift CronJob's container command as the operator wrote it (image
    entrypoint ``modelyard``, its args and env) in this process."""
    spec = k8s.cronjob(cronjob)["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert container["command"] == ["modelyard"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    result = CliRunner().invoke(app, container["args"], env=env)
    return result.exit_code, result.output


def monitored(mlflow_url: str, model: Model, log: Path, **drift: Any) -> dict[str, Any]:
    return {
        "model": {"name": model.name, "alias": "champion"},
        "registry": {"trackingUri": mlflow_url},
        "monitoring": {"predictionLog": f"file://{log}", "drift": drift},
    }


def test_drift_cronjob_follows_monitoring_and_the_live_version(
    k8s: Cluster,
    operator: Any,
    kubelet: Any,
    register_model: Callable[..., Any],
    mlflow_server: Any,
) -> None:
    model = register_model(n=2)
    k8s.create(
        "churn",
        {
            "model": {"name": model.name, "alias": "champion"},
            "registry": {"trackingUri": mlflow_server.url},
            "monitoring": {
                "predictionLog": "s3://lake/predictions",
                "drift": {"schedule": "*/15 * * * *", "window": "6h"},
            },
        },
    )
    cj = wait_for("the drift CronJob", lambda: k8s.cronjob("churn-drift"))
    assert cj["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    assert cj["spec"]["schedule"] == "*/15 * * * *"
    pod = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--version") + 1] == "1"
    assert args[args.index("--window") + 1] == "6h"
    assert args[args.index("--prediction-log") + 1] == "s3://lake/predictions"
    assert pod["automountServiceAccountToken"] is False
    assert pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False
    md = k8s.wait_md("churn", "DataDrift", lambda m: condition(m, "DataDrift"))
    assert condition(md, "DataDrift")["status"] == "Unknown"
    assert condition(md, "DataDrift")["reason"] == "Pending"

    # The alias moves: the CronJob checks the new live version.
    MlflowClient(mlflow_server.url).set_registered_model_alias(model.name, "champion", "2")

    def version_arg() -> str:
        a = k8s.cronjob("churn-drift")["spec"]["jobTemplate"]["spec"]["template"]["spec"][
            "containers"
        ][0]["args"]
        return str(a[a.index("--version") + 1])

    wait_for("the CronJob to check version 2", lambda: version_arg() == "2", timeout=20)

    # Monitoring off: the CronJob, the condition and status.drift go away.
    k8s.patch_spec("churn", {"monitoring": None})
    wait_for("the CronJob to be deleted", lambda: "churn-drift" not in k8s.cronjob_names())
    md = k8s.wait_md(
        "churn",
        "no DataDrift condition",
        lambda m: not condition(m, "DataDrift") and "drift" not in m["status"],
    )


def test_status_records_what_the_drift_check_found(
    k8s: Cluster, operator: Any, kubelet: Any, mlflow_server: Any, tmp_path: Path
) -> None:
    model = register_with_lineage(mlflow_server.url, tmp_path)
    log = tmp_path / "predictions"
    k8s.create("churn", monitored(mlflow_server.url, model, log, thresholds={"driftShare": 0.3}))
    wait_for("the drift CronJob", lambda: k8s.cronjob("churn-drift"))

    # Nothing logged yet: the check runs but cannot compare; that is never "no drift".
    code, output = run_drift_job(k8s, "churn-drift")
    assert code == 4, output
    md = k8s.wait_md(
        "churn", "NotChecked", lambda m: condition(m, "DataDrift").get("reason") == "NotChecked"
    )
    said = condition(md, "DataDrift")
    assert said["status"] == "Unknown"
    assert "no_data" in said["message"] and "no rows" in said["message"], said
    assert md["status"]["drift"]["status"] == "no_data"

    # A day of served traffic whose amounts and tenures moved.
    log_predictions(log, model, features(400, seed=7, drift=True))
    code, output = run_drift_job(k8s, "churn-drift")
    assert code == 0, output  # --fail-on never: the verdict is in MLflow and status
    md = k8s.wait_md(
        "churn",
        "DriftDetected",
        lambda m: condition(m, "DataDrift").get("reason") == "DriftDetected",
    )
    said = condition(md, "DataDrift")
    assert said["status"] == "True"
    assert "amount" in said["message"] and "tenure" in said["message"], said
    drift = md["status"]["drift"]
    assert drift["version"] == int(model.version)
    assert drift["status"] == "ok"
    assert drift["datasetDrift"] is True and drift["driftFound"] is True
    assert {"amount", "tenure"} <= set(drift["driftedColumns"])
    assert drift["share"] >= 0.3
    assert drift["reportUri"] == f"runs:/{drift['runId']}/drift/report.html"
    assert drift["episode"]["runId"] == drift["runId"]
    assert "retrainJob" not in drift  # no retrain configured
    run = MlflowClient(mlflow_server.url).get_run(drift["runId"])
    assert run.data.tags["modelyard.drift.model_name"] == model.name

    # Served data like the training data again: no drift, the episode is over.
    for old in log.rglob("*.parquet"):
        old.unlink()
    log_predictions(log, model, features(400, seed=11))
    code, output = run_drift_job(k8s, "churn-drift")
    assert code == 0, output
    md = k8s.wait_md(
        "churn", "NoDrift", lambda m: condition(m, "DataDrift").get("reason") == "NoDrift"
    )
    assert condition(md, "DataDrift")["status"] == "False"
    assert "episode" not in md["status"]["drift"]


TRAINING_CRONJOB = {
    "apiVersion": "batch/v1",
    "kind": "CronJob",
    "metadata": {"name": "train-churn", "labels": {"app": "train-churn"}},
    "spec": {
        "schedule": "0 3 * * *",
        "suspend": True,
        "jobTemplate": {
            "metadata": {"labels": {"app": "train-churn"}},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "train",
                                "image": "modelyard/toolkit:test",
                                "args": ["pipeline", "run", "/pipelines/churn.yaml"],
                            }
                        ],
                    }
                },
            },
        },
    },
}


def test_drift_starts_exactly_one_retraining_job_per_episode(
    k8s: Cluster, operator: Any, kubelet: Any, mlflow_server: Any, tmp_path: Path
) -> None:
    model = register_with_lineage(mlflow_server.url, tmp_path)
    log = tmp_path / "predictions"
    log_predictions(log, model, features(400, seed=7, drift=True))
    k8s.create(
        "churn",
        monitored(mlflow_server.url, model, log, retrain={"cronJobName": "train-churn"}),
    )
    wait_for("the drift CronJob", lambda: k8s.cronjob("churn-drift"))

    code, output = run_drift_job(k8s, "churn-drift")
    assert code == 0, output
    # The training pipeline is not installed yet: said, and retried on the next ticks.
    md = k8s.wait_md(
        "churn",
        "the missing CronJob",
        lambda m: "train-churn not found" in condition(m, "DataDrift").get("message", ""),
    )
    assert condition(md, "DataDrift")["reason"] == "DriftDetected"
    assert "retrainJob" not in md["status"]["drift"]
    k8s.batch.create_namespaced_cron_job(k8s.ns, TRAINING_CRONJOB)
    md = k8s.wait_md(
        "churn", "the retraining Job", lambda m: m["status"]["drift"].get("retrainJob")
    )
    job_name = md["status"]["drift"]["retrainJob"]
    assert "retraining Job" in condition(md, "DataDrift")["message"]
    [job] = k8s.jobs("app=train-churn")
    assert job.metadata.name == job_name
    assert job.metadata.owner_references[0].name == "train-churn"
    assert job.spec.template.spec.containers[0].args == ["pipeline", "run", "/pipelines/churn.yaml"]
    assert job.metadata.annotations["modelyard.io/drift-run-id"] == md["status"]["drift"]["runId"]

    # The next check finds the drift again: same episode, no second training run,
    # however many timer ticks pass.
    code, output = run_drift_job(k8s, "churn-drift")
    assert code == 0, output
    first_run = md["status"]["drift"]["runId"]
    md = k8s.wait_md(
        "churn", "the second check", lambda m: m["status"]["drift"]["runId"] != first_run
    )
    # Three more scheduler passes (each re-reads the tags) make no second training run.
    passes = operator.metric("modelyard_operator_scheduler_passes_total")
    operator.wait_metric("modelyard_operator_scheduler_passes_total", passes + 3)
    md = k8s.md("churn")
    assert md["status"]["drift"]["episode"]["runId"] == first_run
    assert md["status"]["drift"]["retrainJob"] == job_name
    assert [j.metadata.name for j in k8s.jobs("app=train-churn")] == [job_name]
