"""A tuning step as it runs in the cluster, on this machine: three workers share one Optuna
study, log to a real `mlflow server`, and one worker is SIGKILLed in the middle of a
trial. The study still ends with exactly its budget of trials, the killed one failed and
no other, and the best model is registered with the study in its lineage.

The study is kept where the chart keeps it: in a real PostgreSQL (pipelines.tuning.storage
with your database), or behind the chart's default, Optuna's gRPC storage proxy
(`modelyard pipeline study-storage`) on an SQLite file, as beside the registry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from tests.support.servers import free_port

if TYPE_CHECKING:
    from tests.support.postgres import Postgres
    from tests.support.servers import MlflowServer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(1200),
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
]

#: Trials per study: the issue's 30 in PostgreSQL; fewer behind the proxy, whose test is
#: about the same kill through another storage (the CI's time is shared by all tests).
BUDGET = {"postgresql": 30, "proxy": 16}
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


@pytest.fixture(params=["postgresql", "proxy"])
def study_storage(
    request: pytest.FixtureRequest, postgres: Postgres, tmp_path: Path
) -> Iterator[tuple[str, str, Any]]:
    """(kind, MODELYARD_STUDY_STORAGE for the workers, the storage for the test to read)."""
    if request.param == "postgresql":
        # One storage, one connection pool, for every read the test makes: a URL given
        # to load_study makes a new pool each call, and the test's polling then kept
        # enough idle connections open to fill PostgreSQL's 100 (CI: "too many clients").
        reader = optuna.storages.RDBStorage(postgres.url)
        try:
            yield request.param, postgres.url, reader
        finally:
            reader.engine.dispose()
        return
    with study_storage_proxy(tmp_path / "studies.db") as (port, reader, proxy):
        yield request.param, f"grpc://127.0.0.1:{port}", reader
        assert proxy.poll() is None, "the study storage stopped during the run"


@contextmanager
def study_storage_proxy(
    database: Path,
) -> Iterator[tuple[int, Any, subprocess.Popen[str]]]:
    """`modelyard pipeline study-storage` on an SQLite file, ready: (its port, a client of
    it, the process); its output is printed when it stops."""
    port = free_port()
    proxy = subprocess.Popen(
        [MODELYARD, "pipeline", "study-storage", "--url", f"sqlite:///{database}",
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        client = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=port)
        client.wait_server_ready(timeout=60)
        yield port, client, proxy
    finally:
        proxy.terminate()
        out, _ = proxy.communicate(timeout=30)
        print(out[-3000:])


def _running_trial(storage: Any, run: subprocess.Popen[str]) -> tuple[int, int]:
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
    study_storage: tuple[str, str, Any], mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    kind, url, storage = study_storage
    model, budget = f"churn-tuned-kill-{kind}", BUDGET[kind]
    summary = tmp_path / "summary.json"
    run = subprocess.Popen(
        [MODELYARD, "pipeline", "run", str(SAMPLES / "churn-tuned.yaml"), "--date", RUN_DATE,
         "--home", str(tmp_path / "home"), "--summary-json", str(summary)],
        cwd=tmp_path,
        env=_clean_env(
            MLFLOW_TRACKING_URI=mlflow_server.url,
            MODELYARD_STUDY_STORAGE=url,
            MODELYARD_MODEL_NAME=model,
            MODELYARD_TUNING_TRIALS=str(budget),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        killed, pid = _running_trial(storage, run)
        os.kill(pid, signal.SIGKILL)
        output, _ = run.communicate(timeout=1100)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, output[-6000:]

    study = optuna.load_study(study_name=STUDY, storage=storage)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == budget
    states = {t.number: t.state for t in trials}
    assert states[killed] is TrialState.FAIL
    assert [n for n, s in states.items() if s is TrialState.FAIL] == [killed]
    assert all(
        s in {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL} for s in states.values()
    )
    if kind == "postgresql":  # with the full budget, pruning has stopped bad trials
        assert any(s is TrialState.PRUNED for s in states.values())
    # The killed worker was tried again (Kubernetes retries the index in the cluster).
    tune = json.loads(summary.read_text())["steps"]["tune"]
    assert tune["status"] == "succeeded" and tune["attempts"] == 2

    client = MlflowClient(mlflow_server.url)
    version = client.get_model_version_by_alias(model, "champion")
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
    assert len(children) == budget
    by_trial = {int(r.data.tags["modelyard.trial"]): r for r in children}
    assert by_trial[killed].info.status == "FAILED"
    assert by_trial[killed].data.tags["modelyard.trial_state"] == "FAIL"
    assert by_trial[best.number].data.tags["modelyard.trial_state"] == "COMPLETE"
    assert "trial_seconds" in by_trial[best.number].data.metrics


def test_workers_claiming_at_once_through_the_proxy_take_each_trial_once(
    tmp_path: Path,
) -> None:
    """Many workers claim the budget's waiting trials at the same moment through the
    proxy on SQLite (which has no row locks): each trial is run by exactly one worker.
    (CI once saw two workers run the same trial: 17 trial runs for a budget of 16.)"""
    import threading

    from modelyard.pipelines.tune import _claim

    budget, workers, rounds = 24, 6, 4
    with study_storage_proxy(tmp_path / "claims.db") as (port, setup, _):
        claimed: list[int] = []
        lock = threading.Lock()
        for round_ in range(rounds):
            name = f"claims-{round_}"
            study = optuna.create_study(study_name=name, storage=setup)
            for _ in range(budget):
                study.enqueue_trial({})
            start = threading.Barrier(workers)
            mine: list[int] = []

            def work(
                name: str = name, start: threading.Barrier = start, mine: list[int] = mine
            ) -> None:
                storage = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=port)
                loaded = optuna.load_study(study_name=name, storage=storage)
                study_id = storage.get_study_id_from_name(name)
                start.wait()
                while (taken := _claim(loaded, storage, study_id)) is not None:
                    with lock:
                        mine.append(taken[0].number)

            threads = [threading.Thread(target=work) for _ in range(workers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert sorted(mine) == list(range(budget)), sorted(mine)
            claimed.extend(mine)
        assert len(claimed) == budget * rounds
