"""Fixtures for the operator tests: the operator in-process (KopfRunner) against the real
local API server, and models registered in a real `mlflow server`."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from tests.support.kube import KubeletStandIn
from tests.support.models import register_sklearn_model, small_frame
from tests.support.operator import running_operator
from tests.support.servers import (
    MLFLOW_START_S,
    free_port,
    start_mlflow_server,
    stop_process,
    wait_http,
)

RESOLVE_INTERVAL = 2.0


@pytest.fixture(scope="session", autouse=True)
def operator_environment(cluster: Any) -> None:
    # Read by each operator when it starts (OperatorSettings.from_env).
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    os.environ["MODELYARD_RESOLVE_INTERVAL"] = str(RESOLVE_INTERVAL)
    os.environ["MODELYARD_SERVER_IMAGE"] = "modelyard/server:test"
    # The tests' registries (mlflow servers on this host, any port) are allowed.
    os.environ["MODELYARD_ALLOWED_REGISTRIES"] = "http://127.0.0.1:*"
    # An aborted canary's pods go one second after its weight went to 0.
    os.environ["MODELYARD_CANARY_SCALE_DOWN_DELAY"] = "1"


@pytest.fixture
def operator(namespace: str, crd: Any) -> Iterator[Any]:
    with running_operator(namespace) as runner:
        yield runner


@pytest.fixture
def kubelet(api_client: Any, namespace: str) -> Iterator[KubeletStandIn]:
    """Pods of the test's namespace are reported running and ready (no node here)."""
    with KubeletStandIn(api_client, namespace) as stand_in:
        yield stand_in


@dataclass
class RegisteredVersions:
    name: str
    versions: list[int]
    run_ids: list[str]


@pytest.fixture
def register_model(mlflow_server: Any) -> Callable[..., RegisteredVersions]:
    """Register ``n`` versions of a small scikit-learn model under a fresh name, each
    trained on a dated partition it records as its lineage."""

    def register(n: int = 1, alias: str | None = "champion") -> RegisteredVersions:
        name = f"m-{uuid.uuid4().hex[:8]}"
        versions, run_ids = [], []
        for i in range(n):
            x, _ = small_frame(seed=len(name))
            registered = register_sklearn_model(
                mlflow_server.url,
                frame=x,
                label=(x["a"] + i * x["b"] > 0).astype(int),
                name=name,
                alias=None,
                datasets=[(f"file:///lake/{name}/date=2026-11-0{i + 1}", "training")],
                input_example=True,
            )
            versions.append(int(registered.version))
            run_ids.append(registered.run_id)
        if alias:
            MlflowClient(mlflow_server.url).set_registered_model_alias(
                name, alias, str(versions[0])
            )
        return RegisteredVersions(name=name, versions=versions, run_ids=run_ids)

    return register


@dataclass
class PrivateMlflow:
    """An `mlflow server` of the test's own, so the test can take it down."""

    url: str
    proc: Any
    root: Path
    port: int

    def register(self) -> str:
        return register_sklearn_model(self.url, name=f"p-{uuid.uuid4().hex[:8]}").name

    def stop(self) -> None:
        stop_process(self.proc)

    def start(self) -> None:
        """Back after a stop: the same port and store, so the same registry."""
        self.proc, log = start_mlflow_server(self.root, self.port)
        wait_http(f"{self.url}/health", MLFLOW_START_S, self.proc, log)


@pytest.fixture
def private_mlflow(tmp_path: Any) -> Iterator[PrivateMlflow]:
    port = free_port()
    root = tmp_path / "mlflow"
    proc, log = start_mlflow_server(root, port)
    server = PrivateMlflow(url=f"http://127.0.0.1:{port}", proc=proc, root=root, port=port)
    try:
        wait_http(f"{server.url}/health", MLFLOW_START_S, proc, log)
        yield server
    finally:
        stop_process(server.proc)
