"""Fixtures for the operator tests: the operator in-process (KopfRunner) against the real
local API server, and models registered in a real `mlflow server`."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest
from support.operator import running_operator
from support.servers import free_port, start_mlflow_server, stop_process, wait_http

RESOLVE_INTERVAL = 2.0


@pytest.fixture(scope="session", autouse=True)
def operator_environment(cluster: Any) -> None:
    # Read when modelyard.operator.handlers is imported (the timer interval is fixed then).
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    os.environ["MODELYARD_RESOLVE_INTERVAL"] = str(RESOLVE_INTERVAL)
    os.environ["MODELYARD_SERVER_IMAGE"] = "modelyard/server:test"


@pytest.fixture
def operator(namespace: str, crd: Any) -> Iterator[Any]:
    with running_operator(namespace) as runner:
        yield runner


@dataclass
class Registered:
    name: str
    versions: list[int]
    run_ids: list[str]


@pytest.fixture
def register_model(mlflow_server: Any) -> Callable[..., Registered]:
    """Register ``n`` versions of a small scikit-learn model under a fresh name."""
    import mlflow
    from mlflow import MlflowClient
    from sklearn.linear_model import LogisticRegression

    mlflow.set_tracking_uri(mlflow_server.url)

    def register(n: int = 1, alias: str | None = "champion") -> Registered:
        name = f"m-{uuid.uuid4().hex[:8]}"
        mlflow.set_experiment(name)
        versions, run_ids = [], []
        rng = np.random.default_rng(len(name))
        for i in range(n):
            x = pd.DataFrame(rng.normal(size=(60, 3)), columns=["a", "b", "c"])
            y = (x["a"] + i * x["b"] > 0).astype(int)
            with mlflow.start_run() as run:
                dataset = mlflow.data.from_pandas(
                    x.assign(label=y), source=f"file:///lake/{name}/date=2026-11-0{i + 1}"
                )
                mlflow.log_input(dataset, context="training")
                info = mlflow.sklearn.log_model(
                    LogisticRegression().fit(x, y),
                    name="model",
                    registered_model_name=name,
                    input_example=x.head(2),
                )
            versions.append(int(info.registered_model_version))
            run_ids.append(run.info.run_id)
        if alias:
            MlflowClient().set_registered_model_alias(name, alias, str(versions[0]))
        return Registered(name=name, versions=versions, run_ids=run_ids)

    return register


@dataclass
class PrivateMlflow:
    """An `mlflow server` of the test's own, so the test can take it down."""

    url: str
    proc: Any

    def register(self) -> str:
        import mlflow
        from mlflow import MlflowClient
        from sklearn.linear_model import LogisticRegression

        name = f"p-{uuid.uuid4().hex[:8]}"
        x = pd.DataFrame(np.random.default_rng(1).normal(size=(40, 3)), columns=["a", "b", "c"])
        y = (x["a"] > 0).astype(int)
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(self.url)
        try:
            mlflow.set_experiment(name)
            with mlflow.start_run():
                mlflow.sklearn.log_model(
                    LogisticRegression().fit(x, y), name="model", registered_model_name=name
                )
        finally:
            mlflow.set_tracking_uri(previous)
        MlflowClient(self.url).set_registered_model_alias(name, "champion", "1")
        return name

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def private_mlflow(tmp_path: Any) -> Iterator[PrivateMlflow]:
    port = free_port()
    proc, log = start_mlflow_server(tmp_path / "mlflow", port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", 90, proc, log)
        yield PrivateMlflow(url=url, proc=proc)
    finally:
        stop_process(proc)
