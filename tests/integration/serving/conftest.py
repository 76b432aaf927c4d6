"""Real servers for the model-server tests: our BentoML server and `mlflow models serve`,
both serving the same model version from the session's real `mlflow server`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

VENV_BIN = Path(sys.executable).parent
MODEL_NAME = "it-forest"
FEATURES = ["x0", "x1", "x2", "x3"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, lines: int = 60) -> str:
    if not path.exists():
        return f"(no log at {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class RunningServer:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


def start_server(
    argv: list[str], port: int, ready_path: str, log: Path, env: dict[str, str]
) -> RunningServer:
    full_env = dict(os.environ)
    full_env["PATH"] = f"{VENV_BIN}{os.pathsep}{full_env.get('PATH', '')}"
    full_env["BENTOML_DO_NOT_TRACK"] = "True"
    full_env.update(env)
    proc = subprocess.Popen(
        argv,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=full_env,
        start_new_session=True,
    )
    server = RunningServer(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{argv[:3]} exited with {proc.returncode}:\n{log_tail(log)}")
        try:
            if httpx.get(server.url + ready_path, timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.stop()
    pytest.fail(f"{server.url}{ready_path} not ready in 180 s:\n{log_tail(log)}")


@dataclass(frozen=True)
class RegisteredModel:
    uri: str
    tracking_uri: str
    rows: pd.DataFrame  # rows the tests predict on
    expected: list[Any]  # the model's own predictions for ``rows``


@pytest.fixture(scope="session")
def registered_forest(mlflow_server: Any) -> RegisteredModel:
    """A small RandomForest, logged with a signature and registered as version 1."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.ensemble import RandomForestClassifier

    mlflow.set_tracking_uri(mlflow_server.url)
    rng = np.random.default_rng(3)
    train = pd.DataFrame(rng.normal(size=(600, len(FEATURES))), columns=FEATURES)
    target = (train["x0"] - train["x2"] > 0).astype(int) + (train["x1"] > 1).astype(int)
    forest = RandomForestClassifier(n_estimators=20, random_state=0).fit(train, target)
    with mlflow.start_run():
        mlflow.sklearn.log_model(
            forest,
            name="model",
            signature=infer_signature(train, forest.predict(train)),
            registered_model_name=MODEL_NAME,
            skops_trusted_types=["sklearn.tree._tree.Tree"],
        )
    uri = f"models:/{MODEL_NAME}/1"
    rows = pd.DataFrame(rng.normal(size=(40, len(FEATURES))), columns=FEATURES)
    expected = mlflow.pyfunc.load_model(uri).predict(rows).tolist()
    return RegisteredModel(uri, mlflow_server.url, rows, expected)


def start_modelyard(
    model: RegisteredModel, log: Path, prediction_log: Path, **extra_env: str
) -> RunningServer:
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
        "/readyz",
        log,
        {"MLFLOW_TRACKING_URI": model.tracking_uri, **extra_env},
    )


@dataclass(frozen=True)
class ServerUnderTest:
    server: RunningServer
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
) -> Iterator[RunningServer]:
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
    started: list[RunningServer] = []

    def start(**env: str) -> ServerUnderTest:
        server = start_modelyard(
            registered_forest, tmp_path / "server.log", tmp_path / "predictions", **env
        )
        started.append(server)
        return ServerUnderTest(server, tmp_path / "predictions")

    yield start
    for server in started:
        server.stop()
