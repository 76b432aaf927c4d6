"""The drift check against a real MLflow server: lineage in, reports out, from the CLI too."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from modelyard.cli import app
from modelyard.pipelines.drift import (
    CheckStatus,
    check_drift,
    load_reference,
    log_drift_report,
    read_prediction_log,
    render_evidently_html,
)
from tests.support.models import register_sklearn_model

pytestmark = pytest.mark.integration

FEATURES = ["amount", "tenure", "plan"]
PLANS = np.asarray(["basic", "plus", "pro"], dtype=object)


def features(rows: int, seed: int, drift: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "amount": rng.lognormal(3.0 if not drift else 3.6, 0.5, rows),
            "tenure": rng.normal(24, 6, rows),
            "plan": PLANS[rng.choice(3, rows, p=[0.5, 0.3, 0.2])],
        }
    )


@dataclass(frozen=True)
class RegisteredModel:
    tracking_uri: str
    name: str
    version: str
    run_id: str
    model: Any


def _register(tracking_uri: str, tmp_path: Path, with_reference_artifact: bool) -> RegisteredModel:
    from tests.integration.operator.test_monitoring import churn_estimator

    name = f"churn-{uuid.uuid4().hex[:8]}"
    train = features(3_000, seed=1)
    label = (train["amount"] > 25).astype(int)
    partition = tmp_path / f"{name}-features.parquet"
    train.assign(churned=label).to_parquet(partition, index=False)
    registered = register_sklearn_model(
        tracking_uri,
        churn_estimator(),
        train,
        name=name,
        label=label,
        alias=None,
        datasets=[(str(partition), "training")],
        reference=train if with_reference_artifact else None,
    )
    return RegisteredModel(
        tracking_uri, name, registered.version, registered.run_id, registered.estimator
    )


@pytest.fixture
def registered(mlflow_server: Any, tmp_path: Path) -> Iterator[RegisteredModel]:
    yield _register(mlflow_server.url, tmp_path, with_reference_artifact=True)


def write_prediction_log(
    base: Path, model: RegisteredModel, frame: pd.DataFrame, start: datetime
) -> None:
    """Partitions exactly as docs/contracts.md lays them out, one file per hour."""
    stamps = [start + timedelta(minutes=3 * i) for i in range(len(frame))]
    logged = frame.assign(
        prediction=model.model.predict(frame),
        _model_name=model.name,
        _model_version=model.version,
        _timestamp=pd.to_datetime(stamps, utc=True).astype("datetime64[us, UTC]"),
        _request_id=[uuid.uuid4().hex for _ in range(len(frame))],
    )
    for (day, _hour), part in logged.groupby(
        [logged["_timestamp"].dt.date, logged["_timestamp"].dt.hour]
    ):
        folder = base / model.name / f"version={model.version}" / f"date={day.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(
            pa.Table.from_pandas(part, preserve_index=False), folder / f"{uuid.uuid4()}.parquet"
        )


def test_reference_comes_from_the_training_runs_artifact(registered: RegisteredModel) -> None:
    reference = load_reference(registered.tracking_uri, registered.name, registered.version)

    assert reference.run_id == registered.run_id
    assert reference.source == f"runs:/{registered.run_id}/reference/data.parquet"
    assert reference.table.column_names == FEATURES
    assert reference.table.num_rows == 3_000


def test_reference_falls_back_to_the_logged_training_inputs(
    mlflow_server: Any, tmp_path: Path
) -> None:
    model = _register(mlflow_server.url, tmp_path, with_reference_artifact=False)

    reference = load_reference(model.tracking_uri, model.name, model.version)

    assert reference.source.endswith("-features.parquet")
    # The label column of the partition is not a model input, so it is not compared.
    assert sorted(reference.table.column_names) == sorted(FEATURES)
    assert reference.table.num_rows == 3_000


def test_prediction_log_window_reads_only_rows_in_the_window(
    registered: RegisteredModel, tmp_path: Path
) -> None:
    start = datetime(2026, 11, 20, 22, 0, tzinfo=UTC)
    write_prediction_log(tmp_path / "log", registered, features(200, seed=5), start)

    # 200 rows, one every 3 minutes from 22:00: 10 hours, across midnight.
    table = read_prediction_log(
        f"file://{tmp_path / 'log'}",
        registered.name,
        registered.version,
        start + timedelta(hours=1),
        start + timedelta(hours=3),
    )

    assert table.num_rows == 40
    assert table.column_names == [*FEATURES, "prediction"]


def test_report_is_logged_next_to_the_model_version(registered: RegisteredModel) -> None:
    from mlflow.tracking import MlflowClient

    reference = load_reference(registered.tracking_uri, registered.name, registered.version)
    current = features(5_000, seed=9, drift=True)
    summary = check_drift(reference.table, current)
    html = render_evidently_html(reference.table, current, summary, sample_rows=1_000)
    assert html is not None

    logged = log_drift_report(
        summary,
        tracking_uri=registered.tracking_uri,
        model_name=registered.name,
        model_version=registered.version,
        html=html,
    )

    client = MlflowClient(registered.tracking_uri)
    run = client.get_run(logged.run_id)
    source = client.get_run(registered.run_id)
    assert run.info.experiment_id == source.info.experiment_id
    assert run.data.tags["modelyard.drift.model_version"] == registered.version
    assert run.data.tags["modelyard.drift.source_run_id"] == registered.run_id
    assert run.data.metrics["drift.number_of_drifted_columns"] == 1
    artifacts = {a.path for a in client.list_artifacts(logged.run_id, "drift")}
    assert artifacts == {"drift/summary.json", "drift/report.html"}
    stored = json.loads(
        Path(client.download_artifacts(logged.run_id, "drift/summary.json")).read_text()
    )
    assert stored["drifted_columns"] == ["amount"]
    report = Path(client.download_artifacts(logged.run_id, "drift/report.html")).read_text()
    assert "amount" in report
    version = client.get_model_version(registered.name, registered.version)
    assert version.tags["modelyard.drift.last_run_id"] == logged.run_id
    assert version.tags["modelyard.drift.last_drifted_columns"] == "amount"


def lineage_check_args(
    model: RegisteredModel, log: Path, *extra: str, version: str | None = None
) -> list[str]:
    return [
        "drift",
        "check",
        "--model",
        model.name,
        "--version",
        version or model.version,
        "--tracking-uri",
        model.tracking_uri,
        "--prediction-log",
        f"file://{log}",
        "--since",
        "2026-11-21",
        "--until",
        "2026-11-22",
        "--json",
        *extra,
    ]


def test_cli_checks_a_served_window_against_the_lineage_and_logs_it(
    registered: RegisteredModel, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    start = datetime(2026, 11, 21, 0, 0, tzinfo=UTC)
    write_prediction_log(tmp_path / "log", registered, features(400, seed=7, drift=True), start)

    result = CliRunner().invoke(
        app,
        lineage_check_args(
            registered, tmp_path / "log", "--log-to-mlflow", "--html-sample-rows", "500"
        ),
    )

    summary = json.loads(result.stdout)
    # The served amounts grew, and so did the share of positive predictions: the model's
    # own predictions on its training data are the like-for-like reference.
    assert result.exit_code == 3, result.output
    assert summary["status"] == CheckStatus.OK
    assert summary["current_rows"] == 400
    assert summary["drifted_columns"] == ["amount", "prediction"]
    assert summary["dataset_drift"] is False
    assert summary["prediction_drift"] is True
    [prediction] = summary["predictions"]
    assert prediction["reference_column"] is None
    assert prediction["method"] == "jensenshannon"
    version = MlflowClient(registered.tracking_uri).get_model_version(
        registered.name, registered.version
    )
    assert version.tags["modelyard.drift.last_status"] == "ok"
    assert version.tags["modelyard.drift.last_drifted_columns"] == "amount,prediction"


def test_cli_without_reference_predictions_says_prediction_drift_is_unchecked(
    registered: RegisteredModel, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    start = datetime(2026, 11, 21, 0, 0, tzinfo=UTC)
    write_prediction_log(tmp_path / "log", registered, features(400, seed=8), start)
    MlflowClient(registered.tracking_uri).set_registered_model_alias(
        registered.name, "champion", registered.version
    )

    result = CliRunner().invoke(
        app,
        lineage_check_args(
            registered, tmp_path / "log", "--no-score-reference", version="champion"
        ),
    )

    summary = json.loads(result.stdout)
    assert result.exit_code == 0, result.output
    assert summary["current_rows"] == 400
    assert summary["drifted_columns"] == []
    assert summary["prediction_drift"] is None
    assert summary["predictions"][0]["status"] == "skipped"


def test_cli_reports_an_empty_window_as_not_checked(
    registered: RegisteredModel, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        app,
        [
            "drift",
            "check",
            "--model",
            registered.name,
            "--version",
            registered.version,
            "--tracking-uri",
            registered.tracking_uri,
            "--prediction-log",
            f"file://{tmp_path / 'empty-log'}",
            "--since",
            "2026-11-01",
            "--until",
            "2026-11-02",
        ],
    )

    assert result.exit_code == 4
    assert "no rows" in result.stdout
