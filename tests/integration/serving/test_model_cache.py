"""Serving survives a registry outage (docs/serving.md, "Model cache").

A real `mlflow server` of this module's own (it is stopped half-way) and real model server
processes: the first server downloads the version and fills the cache; with MLflow
stopped a second server for the same version starts from the cache and answers the same
predictions; a corrupted entry is refused; without a cache the server does not start and
says which registry it could not reach; a cached model whose format runs code is refused
exactly as a downloaded one is.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from modelyard.serving.model_cache import MANIFEST, ModelCache, registry_key
from tests.support.models import mlflow_uri, register_sklearn_model, small_frame
from tests.support.servers import (
    MLFLOW_START_S,
    VENV_BIN,
    ServerProcess,
    free_port,
    log_tail,
    start_mlflow_server,
    start_server,
    stop_process,
    subprocess_env,
    wait_http,
)

FEATURES = ["x0", "x1", "x2"]
#: Seconds a server that must fail to start is given to do so.
FAIL_WITHIN_S = float(os.environ.get("MODELYARD_CACHE_TEST_FAIL_S", "120"))


@dataclass
class Registry:
    url: str
    proc: subprocess.Popen[bytes]
    name: str
    rows: pd.DataFrame
    expected: list[Any]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/1"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """An `mlflow server` of this module's own, with version 1 of a small forest."""
    import mlflow.pyfunc
    from sklearn.ensemble import RandomForestClassifier

    root = tmp_path_factory.mktemp("mlflow-outage")
    port = free_port()
    proc, log = start_mlflow_server(root, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", MLFLOW_START_S, proc, log)
        rng = np.random.default_rng(7)
        train = pd.DataFrame(rng.normal(size=(300, len(FEATURES))), columns=FEATURES)
        name = f"cached-{uuid.uuid4().hex[:6]}"
        register_sklearn_model(
            url,
            RandomForestClassifier(n_estimators=10, random_state=0),
            train,
            label=(train["x0"] > train["x1"]).astype(int),
            name=name,
            alias=None,
            trusted_types=["sklearn.tree._tree.Tree"],
        )
        rows = pd.DataFrame(rng.normal(size=(25, len(FEATURES))), columns=FEATURES)
        with mlflow_uri(url):
            expected = mlflow.pyfunc.load_model(f"models:/{name}/1").predict(rows).tolist()
        yield Registry(url, proc, name, rows, expected)
    finally:
        stop_process(proc)


def _argv(uri: str, port: int) -> list[str]:
    modelyard = shutil.which("modelyard", path=str(VENV_BIN)) or "modelyard"
    return [modelyard, "serve", "--model-uri", uri, "--host", "127.0.0.1", "--port", str(port)]


def serve(registry: Registry, log: Path, **env: str) -> ServerProcess:
    port = free_port()
    # A BentoML home of its own, as in a pod: servers sharing one share (and each wipe
    # at start) the multiprocess metrics directory.
    home = log.with_suffix(".bentoml")
    return start_server(
        _argv(registry.uri, port),
        port,
        "/readyz",
        log,
        {"MLFLOW_TRACKING_URI": registry.url, "BENTOML_HOME": str(home), **env},
    )


def fails_to_start(uri: str, tracking_uri: str, log: Path, **env: str) -> str:
    """Start a server that must not start; its log once it has stopped."""
    port = free_port()
    proc = subprocess.Popen(
        _argv(uri, port),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=subprocess_env(BENTOML_DO_NOT_TRACK="True", MLFLOW_TRACKING_URI=tracking_uri, **env),
        start_new_session=True,
    )
    try:
        proc.wait(FAIL_WITHIN_S)
    except subprocess.TimeoutExpired:
        ready = _answers(f"http://127.0.0.1:{port}/readyz")
        stop_process(proc)
        pytest.fail(
            f"the server was still running after {FAIL_WITHIN_S}s (ready: {ready}):\n"
            f"{log_tail(log)}",
            pytrace=False,
        )
    return log.read_text(errors="replace")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def predictions(server: ServerProcess, rows: pd.DataFrame) -> list[Any]:
    answer = httpx.post(
        f"{server.url}/invocations",
        json={"dataframe_split": rows.to_dict(orient="split", index=False)},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    values: list[Any] = answer.json()["predictions"]
    return values


def model_loads(server: ServerProcess, name: str) -> dict[str, float]:
    """``modelyard_model_loads_total`` of model ``name`` by source, as /metrics shows it."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("modelyard_model_loads_total{") and f'model_name="{name}"' in line:
            source = line.split('source="', 1)[1].split('"', 1)[0]
            found[source] = found.get(source, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


def manifests(cache: Path) -> list[Path]:
    return sorted(cache.rglob(MANIFEST))


def test_a_server_starts_from_the_cache_while_the_registry_is_down(
    registry: Registry, tmp_path: Path
) -> None:
    cache = tmp_path / "model-cache"
    cache_url = f"file://{cache}"

    # 1. The registry is up: the server downloads the version and fills the cache.
    first = serve(registry, tmp_path / "first.log", MODELYARD_MODEL_CACHE=cache_url)
    try:
        assert predictions(first, registry.rows) == registry.expected
        assert model_loads(first, registry.name) == {"registry": 1.0}
    finally:
        first.stop()
    [manifest] = manifests(cache)
    entry = manifest.parent
    assert entry.parent == cache / registry_key(registry.url) / registry.name / "1"
    listed = json.loads(manifest.read_text())["files"]
    assert "MLmodel" in listed
    assert all((entry / "files" / name).is_file() for name in listed)

    # 2. MLflow goes down.
    stop_process(registry.proc)
    assert not _answers(f"{registry.url}/health")

    # 3. A new server for the same version starts from the cache: the same answers.
    second = serve(registry, tmp_path / "second.log", MODELYARD_MODEL_CACHE=cache_url)
    try:
        assert predictions(second, registry.rows) == registry.expected
        assert model_loads(second, registry.name) == {"cache": 1.0}
    finally:
        second.stop()
    said = (tmp_path / "second.log").read_text(errors="replace")
    assert "serving model" in said and "from the model cache" in said, log_tail(
        tmp_path / "second.log"
    )

    # 4. Without a cache it does not start, and says which registry it could not reach.
    said = fails_to_start(registry.uri, registry.url, tmp_path / "no-cache.log")
    assert "RegistryUnavailable" in said and registry.url in said, said[-3000:]
    assert "no model cache is configured (MODELYARD_MODEL_CACHE)" in said, said[-3000:]

    # 5. A corrupted entry is refused, never loaded: with no other entry, no start.
    model_file = next(p for p in (entry / "files").rglob("*.skops"))
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))
    said = fails_to_start(
        registry.uri, registry.url, tmp_path / "corrupt.log", MODELYARD_MODEL_CACHE=cache_url
    )
    assert "refusing the cached" in said and "does not match the manifest" in said, said[-3000:]
    assert "no intact cached copy" in said, said[-3000:]
    assert f"loading model {registry.uri}" not in said, said[-3000:]


class _Planted:
    """Unpickling this creates ``path``: code chosen by whoever saved the model."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def test_a_cached_model_whose_format_runs_code_is_refused(tmp_path: Path) -> None:
    """The format check applies to the cache's files as to the registry's: a cloudpickle
    entry (e.g. planted by whoever may write to the cache) is not deserialized."""
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    marker = tmp_path / "unpickled"
    frame, label = small_frame()
    estimator = LogisticRegression().fit(frame, label)
    estimator.planted = _Planted(marker)  # type: ignore[attr-defined]
    saved = tmp_path / "pickled-model"
    mlflow.sklearn.save_model(
        estimator,
        str(saved),
        signature=infer_signature(frame, estimator.predict(frame)),
        serialization_format="cloudpickle",
        pip_requirements=["scikit-learn"],
    )
    # Nothing listens here: the registry is unreachable.
    tracking_uri = f"http://127.0.0.1:{free_port()}"
    cache = tmp_path / "model-cache"
    ModelCache(str(cache)).publish(registry_key(tracking_uri), "planted", "1", saved)

    said = fails_to_start(
        "models:/planted/1", tracking_uri, tmp_path / "server.log", MODELYARD_MODEL_CACHE=str(cache)
    )
    assert "from the model cache" in said, said[-3000:]
    assert "UnsafeModelFormat" in said and "cloudpickle" in said, said[-3000:]
    assert not marker.exists()
