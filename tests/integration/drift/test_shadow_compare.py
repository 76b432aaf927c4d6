"""`modelyard shadow compare` against a real MLflow server, on prediction logs written by
the server's own PredictionLog: the rows two versions logged for the same mirrored
requests are joined and compared, and the result lands where the operator reads it."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.linear_model import LinearRegression, LogisticRegression
from typer.testing import CliRunner

from modelyard.cli import app
from modelyard.core.contracts import ShadowTags
from modelyard.serving.prediction_log import LoggedRequest, PredictionLog
from tests.support.models import register_sklearn_model

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)


def frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"amount": rng.normal(30, 10, rows), "tenure": rng.normal(24, 6, rows)})


def log_requests(
    base: Path,
    model: str,
    version: str,
    estimator: Any,
    requests: list[tuple[str, pd.DataFrame]],
    latency_ms: float,
) -> None:
    """What a server answering ``requests`` writes (the real PredictionLog)."""
    log = PredictionLog(str(base), model, version, flush_interval=3600)
    for request_id, inputs in requests:
        log.record(
            LoggedRequest(
                request_id,
                NOW - timedelta(minutes=5),
                {k: inputs[k].to_numpy() for k in inputs.columns},
                np.asarray(estimator.predict(inputs)),
                len(inputs),
                latency_ms=latency_ms,
            )
        )
    log.close()


def run(*args: str) -> Any:
    return CliRunner().invoke(app, ["shadow", "compare", *args], catch_exceptions=False)


def test_agreement_of_a_classifier_from_mirrored_requests_is_logged_and_tagged(
    mlflow_server: Any, tmp_path: Path
) -> None:
    train = frame(500, seed=1)
    label = (train["amount"] > 30).astype(int)
    name = f"shadow-{uuid.uuid4().hex[:8]}"
    live = register_sklearn_model(
        mlflow_server.url, LogisticRegression(), train, name=name, label=label, alias=None
    )
    # The challenger learnt a different boundary: it disagrees on some inputs.
    challenger = register_sklearn_model(
        mlflow_server.url,
        LogisticRegression(),
        train,
        name=name,
        label=(train["amount"] > 34).astype(int),
        alias="challenger",
    )
    requests = [(uuid.uuid4().hex, frame(3, seed=100 + i)) for i in range(200)]
    mirrored = requests[::5]  # 20% of the requests reached the shadow too
    log_requests(tmp_path, name, live.version, live.estimator, requests, latency_ms=2.0)
    log_requests(tmp_path, name, challenger.version, challenger.estimator, mirrored, latency_ms=9.0)
    inputs = pd.concat([f for _, f in mirrored])
    expected = float(
        np.mean(live.estimator.predict(inputs) == challenger.estimator.predict(inputs))
    )
    assert 0.5 < expected < 1.0  # the versions disagree sometimes, agree mostly

    result = run(
        "--model", name, "--stable", live.version, "--shadow", "challenger",
        "--prediction-log", str(tmp_path), "--window", "1h",
        "--tracking-uri", mlflow_server.url, "--log-to-mlflow",
        "--deployment", "team-a/churn", "--json",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["shadow_version"] == challenger.version  # the alias, resolved
    assert summary["kind"] == "classification"
    assert summary["compared_rows"] == 3 * len(mirrored)
    assert summary["stable_rows"] == 3 * len(requests)
    assert summary["agreement_rate"] == pytest.approx(expected)
    assert summary["stable_latency_p99_ms"] == pytest.approx(2.0)
    assert summary["shadow_latency_p99_ms"] == pytest.approx(9.0)

    client = MlflowClient(mlflow_server.url)
    tag = client.get_model_version(name, challenger.version).tags[ShadowTags.key("team-a", "churn")]
    recorded = json.loads(tag)
    assert recorded["agreementRate"] == pytest.approx(expected)
    assert recorded["comparedRows"] == 3 * len(mirrored)
    assert recorded["stableVersion"] == live.version
    comparison_run = client.get_run(recorded["runId"])
    assert comparison_run.data.metrics["shadow.agreement_rate"] == pytest.approx(expected)
    assert comparison_run.data.metrics["shadow.shadow_latency_p99_ms"] == pytest.approx(9.0)
    # In the shadow version's experiment, beside its training run.
    trained = client.get_run(challenger.run_id)
    assert comparison_run.info.experiment_id == trained.info.experiment_id


def test_a_regressor_reports_how_far_apart_the_answers_are(
    mlflow_server: Any, tmp_path: Path
) -> None:
    train = frame(300, seed=2)
    target = 3 * train["amount"] + train["tenure"]
    name = f"shadow-{uuid.uuid4().hex[:8]}"
    live = register_sklearn_model(
        mlflow_server.url, LinearRegression(), train, name=name, label=target, alias=None
    )
    shadow = register_sklearn_model(
        mlflow_server.url, LinearRegression(), train, name=name, label=target + 5.0, alias=None
    )
    requests = [(uuid.uuid4().hex, frame(1, seed=300 + i)) for i in range(50)]
    log_requests(tmp_path, name, live.version, live.estimator, requests, latency_ms=1.0)
    log_requests(tmp_path, name, shadow.version, shadow.estimator, requests, latency_ms=1.0)

    result = run(
        "--model", name, "--stable", live.version, "--shadow", shadow.version,
        "--prediction-log", str(tmp_path), "--json",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["kind"] == "regression"
    assert summary["compared_rows"] == 50
    assert summary["mean_abs_difference"] == pytest.approx(5.0, rel=1e-6)
    assert summary["max_abs_difference"] == pytest.approx(5.0, rel=1e-6)
    assert summary["agreement_rate"] == 0.0


def test_nothing_mirrored_in_the_window_is_not_compared(mlflow_server: Any, tmp_path: Path) -> None:
    train = frame(100, seed=3)
    live = register_sklearn_model(
        mlflow_server.url, LinearRegression(), train, label=train["amount"], alias=None
    )
    requests = [(uuid.uuid4().hex, frame(1, seed=i)) for i in range(5)]
    log_requests(tmp_path, live.name, live.version, live.estimator, requests, latency_ms=1.0)

    result = run(
        "--model", live.name, "--stable", live.version, "--shadow", "7",
        "--prediction-log", str(tmp_path),
    )  # fmt: skip

    assert result.exit_code == 4
    assert f"no request answered by both v{live.version} and v7" in result.output


def test_bad_options_name_what_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    window = run(
        "--model", "m", "--stable", "1", "--shadow", "2",
        "--prediction-log", str(tmp_path), "--window", "soon",
    )  # fmt: skip
    assert window.exit_code == 2
    assert "'soon' is not a window such as 90m, 24h or 7d" in window.output
    alias = run("--model", "m", "--stable", "champion", "--shadow", "2", "--prediction-log", "x")
    assert alias.exit_code == 2
    assert "alias 'champion' needs --tracking-uri" in alias.output
