"""A tuning step as it runs in the cluster, on this machine: three workers share one Optuna
study in a real PostgreSQL, log to a real `mlflow server`, and one worker is SIGKILLed in
the middle of a trial. The study still ends with exactly its budget of trials, the killed
one failed and no other, and the best model is registered with the study in its lineage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.integration.pipelines.test_sample_pipelines import (
    MODELYARD,
    RUN_DATE,
    SAMPLES,
    _clean_env,
)

if TYPE_CHECKING:
    from tests.support.postgres import Postgres
    from tests.support.servers import MlflowServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

BUDGET = 30
STUDY = f"churn-tuned.tune.{RUN_DATE}"


def _descends_from(pid: int, ancestor: int) -> bool:
    """Whether ``pid`` is one of our run's processes (only those may be killed)."""
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False
        pid = int(next(line for line in status.splitlines() if line.startswith("PPid:")).split()[1])
    return False


def _running_trial(storage: str, run: subprocess.Popen[str]) -> tuple[int, int]:
    """Wait for a trial in the middle of the study that is running: (number, worker pid)."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        assert run.poll() is None, "the pipeline ended before a worker could be killed"
        try:
            study = optuna.load_study(study_name=STUDY, storage=storage)
        except KeyError:
            time.sleep(1)
            continue
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            pid = trial.user_attrs.get("worker_pid")
            if trial.number >= 8 and pid and _descends_from(int(pid), run.pid):
                return trial.number, int(pid)
        time.sleep(0.3)
    pytest.fail("no trial was running in the middle of the study")


def test_three_workers_one_killed_the_study_completes_and_the_best_is_registered(
    postgres: Postgres, mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    summary = tmp_path / "summary.json"
    run = subprocess.Popen(
        [MODELYARD, "pipeline", "run", str(SAMPLES / "churn-tuned.yaml"), "--date", RUN_DATE,
         "--home", str(tmp_path / "home"), "--summary-json", str(summary)],
        cwd=tmp_path,
        env=_clean_env(
            MLFLOW_TRACKING_URI=mlflow_server.url,
            MODELYARD_STUDY_STORAGE=postgres.url,
            MODELYARD_MODEL_NAME="churn-tuned-kill",
            MODELYARD_TUNING_TRIALS=str(BUDGET),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        killed, pid = _running_trial(postgres.url, run)
        os.kill(pid, signal.SIGKILL)
        output, _ = run.communicate(timeout=1100)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, output[-6000:]

    study = optuna.load_study(study_name=STUDY, storage=postgres.url)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == BUDGET
    states = {t.number: t.state for t in trials}
    assert states[killed] is TrialState.FAIL
    assert [n for n, s in states.items() if s is TrialState.FAIL] == [killed]
    assert all(
        s in {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL} for s in states.values()
    )
    assert any(s is TrialState.PRUNED for s in states.values())  # pruning stopped bad trials
    # The killed worker was tried again (Kubernetes retries the index in the cluster).
    tune = json.loads(summary.read_text())["steps"]["tune"]
    assert tune["status"] == "succeeded" and tune["attempts"] == 2

    client = MlflowClient(mlflow_server.url)
    version = client.get_model_version_by_alias("churn-tuned-kill", "champion")
    best = study.best_trial
    assert version.tags["modelyard.study"] == STUDY
    assert version.tags["modelyard.trial"] == str(best.number)
    parent = client.get_run(version.run_id)
    assert parent.data.tags["modelyard.study"] == STUDY
    assert {
        f"best.{k}": str(v) for k, v in best.params.items()
    }.items() <= parent.data.params.items()
    assert parent.data.metrics["best_cv_roc_auc"] == pytest.approx(best.value)
    sources = {json.loads(i.dataset.source)["uri"] for i in parent.inputs.dataset_inputs}
    assert len(sources) == 5 and all("tuned_churn_features/date=" in s for s in sources)
    # One child run per trial, under the study's run, each saying how it ended.
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        max_results=100,
    )
    assert len(children) == BUDGET
    by_trial = {int(r.data.tags["modelyard.trial"]): r for r in children}
    assert by_trial[killed].info.status == "FAILED"
    assert by_trial[killed].data.tags["modelyard.trial_state"] == "FAIL"
    assert by_trial[best.number].data.tags["modelyard.trial_state"] == "COMPLETE"
    assert "trial_seconds" in by_trial[best.number].data.metrics
