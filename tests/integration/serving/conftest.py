"""Real servers for the model-server tests: our BentoML server and `mlflow models serve`,
both serving the same model version from the session's real `mlflow server`."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.support.models import mlflow_uri, register_sklearn_model
from tests.support.servers import (
    VENV_BIN,
    ServerProcess,
    free_port,
    start_server,
)

MODEL_NAME = "it-forest"
FEATURES = ["x0", "x1", "x2", "x3"]


@dataclass(frozen=True)
class RegisteredModel:
    uri: str
    tracking_uri: str
    rows: pd.DataFrame  # rows the tests predict on
    expected: list[Any]  # the model's own predictions for ``rows``


@pytest.fixture(scope="session")
def registered_forest(mlflow_server: Any) -> RegisteredModel:
    """A small RandomForest, logged with a signature and registered as version 1."""
    import mlflow.pyfunc
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(3)
    train = pd.DataFrame(rng.normal(size=(600, len(FEATURES))), columns=FEATURES)
    target = (train["x0"] - train["x2"] > 0).astype(int) + (train["x1"] > 1).astype(int)
    register_sklearn_model(
        mlflow_server.url,
        RandomForestClassifier(n_estimators=20, random_state=0),
        train,
        label=target,
        name=MODEL_NAME,
        alias=None,
        trusted_types=["sklearn.tree._tree.Tree"],
    )
    uri = f"models:/{MODEL_NAME}/1"
    rows = pd.DataFrame(rng.normal(size=(40, len(FEATURES))), columns=FEATURES)
    with mlflow_uri(mlflow_server.url):
        expected = mlflow.pyfunc.load_model(uri).predict(rows).tolist()
    return RegisteredModel(uri, mlflow_server.url, rows, expected)


def start_modelyard(
    model: RegisteredModel,
    log: Path,
    prediction_log: Path | str,
    ready_path: str = "/readyz",
    **extra_env: str,
) -> ServerProcess:
    port = free_port()
    modelyard = shutil.which("modelyard", path=str(VENV_BIN)) or "modelyard"
    return start_server(
        [
            modelyard,
            "serve",
            "--model-uri",
            model.uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--prediction-log",
            str(prediction_log),
        ],  # fmt: skip
        port,
        ready_path,
        log,
        # Each server its own BENTOML_HOME, as each pod has: BentoML clears the
        # multiprocess metrics directory under it when a server starts, so servers sharing
        # one would wipe each other's counters.
        {
            "MLFLOW_TRACKING_URI": model.tracking_uri,
            "BENTOML_HOME": str(log.parent / f"bentoml-{port}"),
            **extra_env,
        },
    )


@dataclass(frozen=True)
class ServerUnderTest:
    server: ServerProcess
    prediction_log: Path

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="session")
def modelyard_server(
    registered_forest: RegisteredModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerUnderTest]:
    root = tmp_path_factory.mktemp("modelyard-server")
    server = start_modelyard(
        registered_forest,
        root / "server.log",
        root / "predictions",
        MODELYARD_LOG_FLUSH_INTERVAL="0.5",
        MODELYARD_MAX_BODY_BYTES=str(256 * 1024),
    )
    yield ServerUnderTest(server, root / "predictions")
    server.stop()


@pytest.fixture(scope="session")
def mlflow_models_serve(
    registered_forest: RegisteredModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """`mlflow models serve` on the same model version: the reference peer."""
    root = tmp_path_factory.mktemp("mlflow-models-serve")
    port = free_port()
    mlflow_bin = shutil.which("mlflow", path=str(VENV_BIN)) or "mlflow"
    server = start_server(
        [
            mlflow_bin,
            "models",
            "serve",
            "-m",
            registered_forest.uri,
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],  # fmt: skip
        port,
        "/ping",
        root / "server.log",
        {"MLFLOW_TRACKING_URI": registered_forest.tracking_uri},
    )
    yield server
    server.stop()


@pytest.fixture
def start_modelyard_server(
    registered_forest: RegisteredModel, tmp_path: Path
) -> Iterator[Callable[..., ServerUnderTest]]:
    """Start a server of the test's own (e.g. to stop it); stopped after the test."""
    started: list[ServerProcess] = []

    def start(ready_path: str = "/readyz", **env: str) -> ServerUnderTest:
        server = start_modelyard(
            registered_forest, tmp_path / "server.log", tmp_path / "predictions", ready_path, **env
        )
        started.append(server)
        return ServerUnderTest(server, tmp_path / "predictions")

    yield start
    for server in started:
        server.stop()


@dataclass(frozen=True)
class Variants:
    """Three real servers of the same model, each reporting its own version name (in
    ``X-Model-Version``, its metrics and its prediction log): what a router splits."""

    stable: ServerUnderTest
    candidate: ServerUnderTest
    shadow: ServerUnderTest

    def by_version(self) -> dict[str, ServerUnderTest]:
        return {"stable": self.stable, "candidate": self.candidate, "shadow": self.shadow}


@pytest.fixture(scope="session")
def variant_servers(
    registered_forest: RegisteredModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Variants]:
    started: dict[str, ServerUnderTest] = {}
    try:
        for version in ("stable", "candidate", "shadow"):
            root = tmp_path_factory.mktemp(f"variant-{version}")
            server = start_modelyard(
                registered_forest,
                root / "server.log",
                root / "predictions",
                MODELYARD_MODEL_VERSION=version,
                MODELYARD_LOG_FLUSH_INTERVAL="0.5",
                # Its own metrics directory, as in its own pod (BentoML keeps them there).
                BENTOML_HOME=str(root / "bentoml"),
            )
            started[version] = ServerUnderTest(server, root / "predictions")
        yield Variants(**started)
    finally:
        for under_test in started.values():
            under_test.server.stop()
