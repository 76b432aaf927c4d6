"""A model whose format runs code is not loaded (docs/security.md): a cloudpickle model
that creates a file when unpickled, registered in a real `mlflow server` and given to the
real model server, is refused before anything is deserialized, with a termination
message the operator turns into reason UnsafeModelFormat; allowed, it runs (which is the
attack)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.models import infer_signature

from tests.support.models import mlflow_uri, small_frame
from tests.support.servers import free_port, start_server


class Planted:
    """Unpickling this object creates ``path``: code chosen by whoever saved the model."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


@pytest.fixture
def pickled_model(mlflow_server: Any, tmp_path: Path) -> tuple[str, Path]:
    from sklearn.linear_model import LogisticRegression

    marker = tmp_path / "unpickled"
    frame, label = small_frame()
    estimator = LogisticRegression().fit(frame, label)
    estimator.planted = Planted(marker)  # type: ignore[attr-defined]
    name = f"pickled-{uuid.uuid4().hex[:6]}"
    with mlflow_uri(mlflow_server.url):
        mlflow.set_experiment(name)
        with mlflow.start_run():
            mlflow.sklearn.log_model(
                estimator,
                name="model",
                signature=infer_signature(frame, estimator.predict(frame)),
                registered_model_name=name,
                serialization_format="cloudpickle",
                # Inferring them would load (and so run) the model right here.
                pip_requirements=["scikit-learn"],
            )
    assert not marker.exists()
    return name, marker


def _serve(uri: str, tracking_uri: str, tmp_path: Path, **env: str) -> subprocess.Popen[bytes]:
    modelyard = shutil.which("modelyard", path=str(Path(sys.executable).parent)) or "modelyard"
    return subprocess.Popen(
        [modelyard, "serve", "--model-uri", uri, "--host", "127.0.0.1", "--port", str(free_port())],
        stdout=(tmp_path / "server.log").open("wb"),
        stderr=subprocess.STDOUT,
        env={
            **os.environ,
            "MLFLOW_TRACKING_URI": tracking_uri,
            "BENTOML_DO_NOT_TRACK": "True",
            **env,
        },
        start_new_session=True,
    )


def test_a_cloudpickle_model_is_refused_before_it_runs(
    pickled_model: tuple[str, Path], mlflow_server: Any, tmp_path: Path
) -> None:
    name, marker = pickled_model
    termination = tmp_path / "termination-log"
    proc = _serve(
        f"models:/{name}/1", mlflow_server.url, tmp_path, MODELYARD_TERMINATION_LOG=str(termination)
    )
    try:
        proc.wait(180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode is not None  # it stopped by itself, not serving
    said = termination.read_text()
    assert said.startswith(f"UnsafeModelFormat: model {name} version 1 is a scikit-learn model")
    assert "cloudpickle" in said and "spec.server.allowPickle: true" in said
    assert not marker.exists(), "the model's pickle ran"
    log = (tmp_path / "server.log").read_text(errors="replace")
    assert "the model server refuses to start: UnsafeModelFormat" in log


def test_allowed_the_same_model_loads_and_its_code_runs(
    pickled_model: tuple[str, Path], mlflow_server: Any, tmp_path: Path
) -> None:
    """What allowPickle trusts: the model's own code runs inside the server."""
    name, marker = pickled_model
    port = free_port()
    modelyard = shutil.which("modelyard", path=str(Path(sys.executable).parent)) or "modelyard"
    server = start_server(
        [modelyard, "serve", "--model-uri", f"models:/{name}/1", "--host", "127.0.0.1",
         "--port", str(port)],
        port,
        "/readyz",
        tmp_path / "allowed.log",
        {"MLFLOW_TRACKING_URI": mlflow_server.url, "MODELYARD_ALLOW_PICKLE": "true"},
    )  # fmt: skip
    try:
        assert marker.exists()
    finally:
        server.stop()
