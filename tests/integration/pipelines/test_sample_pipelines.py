"""The sample pipelines end to end, as a user runs them: `modelyard pipeline run
pipelines/samples/...yaml` leaves a registered model version whose lineage names the exact
lake partitions it was trained on."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest
from mlflow import MlflowClient

if TYPE_CHECKING:
    from tests.support.servers import MlflowServer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "pipelines" / "samples"
MODELYARD = str(Path(sys.executable).parent / "modelyard")
RUN_DATE = "2026-03-10"
TRAINING_DATES = [f"2026-03-{d:02d}" for d in range(4, 10)]


def _clean_env(**extra: str) -> dict[str, str]:
    """A fresh shell: none of the settings a developer might have exported."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MODELYARD_", "MLFLOW_")) and k != "JOB_COMPLETION_INDEX"
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def _run(sample: str, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    completed = subprocess.run(
        [MODELYARD, "pipeline", "run", str(SAMPLES / sample), "--date", RUN_DATE, *args],
        cwd=cwd,
        env=_clean_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    sys.stderr.write(f"{sample}: {time.monotonic() - started:.1f}s\n")
    assert completed.returncode == 0, completed.stdout + completed.stderr[-4000:]
    return completed


def _lake_digest(lake: Path) -> dict[str, str]:
    return {
        str(p.relative_to(lake)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(lake.rglob("*.parquet"))
    }


def test_churn_sample_on_a_fresh_checkout(tmp_path: Path) -> None:
    first = _run("churn.yaml", tmp_path, "--summary-json", "summary.json")
    assert "pipeline churn succeeded" in first.stdout
    assert "21 row(s) quarantined" in first.stdout

    # Local defaults: everything under ./.modelyard of the working directory.
    home = tmp_path / ".modelyard"
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("churn", "champion")
    assert str(champion.version) == "1"
    assert set(champion.aliases) == {"champion", "challenger"}

    run = client.get_run(champion.run_id)
    lake = home / "lake"
    inputs = {
        json.loads(i.dataset.source)["uri"]: {t.key: t.value for t in i.tags}["mlflow.data.context"]
        for i in run.inputs.dataset_inputs
    }
    expected = {str(lake / f"churn_features/date={d}"): "training" for d in TRAINING_DATES}
    expected[str(lake / f"churn_features/date={RUN_DATE}")] = "holdout"
    assert inputs == expected
    assert all(i.dataset.digest for i in run.inputs.dataset_inputs)
    assert run.data.tags["modelyard.pipeline"] == "churn"
    assert run.data.tags["modelyard.code_version"]
    assert float(run.data.metrics["holdout_roc_auc"]) > 0.65

    reference = pd.read_parquet(
        client.download_artifacts(run.info.run_id, "reference/data.parquet", str(tmp_path))
    )
    assert len(reference.columns) == 25
    assert len(reference) == int(run.data.params["training_rows"])

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rows_quarantined"] == 21
    assert summary["steps"]["promote"]["result"]["promoted"] is True

    # A rerun of the same date rewrites the same lake and registers version 2; it scores
    # the same as version 1, which is below the 0.005 margin, so the champion stays.
    before = _lake_digest(lake)
    second = _run("churn.yaml", tmp_path)
    assert _lake_digest(lake) == before
    assert "version=2, promoted=False" in second.stdout
    assert str(client.get_model_version_by_alias("churn", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("churn", "challenger").version) == "2"


def test_tuned_sample_against_an_mlflow_server(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    completed = _run(
        "churn-tuned.yaml",
        tmp_path,
        "--home",
        str(tmp_path / "state"),
        MLFLOW_TRACKING_URI=mlflow_server.url,
        MODELYARD_MODEL_NAME="churn-tuned-it",
        MODELYARD_TUNING_TRIALS="6",
    )
    assert "pipeline churn-tuned succeeded" in completed.stdout
    client = MlflowClient(mlflow_server.url)
    version = client.get_model_version_by_alias("churn-tuned-it", "champion")
    run = client.get_run(version.run_id)
    # The study's choice is logged on its run, and the forest loads back (skops trusted types).
    assert run.data.params["study.trials"] == "6"
    assert {"best.n_estimators", "best.max_depth"} <= set(run.data.params)
    assert version.tags["modelyard.study"] == "churn-tuned.tune.2026-03-10"
    sources = sorted(json.loads(i.dataset.source)["uri"] for i in run.inputs.dataset_inputs)
    assert sources == [
        str(tmp_path / "state" / "lake" / f"tuned_churn_features/date=2026-03-{d:02d}")
        for d in range(6, 11)
    ]
