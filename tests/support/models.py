"""Registering real scikit-learn models in a real MLflow, as the tests need them.

One helper for every test tier: it logs a run with the model (signature from the
training frame), optionally the lineage the training pipeline records (dataset inputs,
``reference/data.parquet``), registers a version and moves an alias. MLflow's fluent API
is used under a lock, with the tracking URI restored afterwards.
"""

from __future__ import annotations

import os
import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

_FLUENT = threading.Lock()
_TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    run_id: str
    estimator: Any = field(repr=False)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@contextmanager
def mlflow_uri(tracking_uri: str) -> Iterator[None]:
    """MLflow's fluent API (``models:/`` loaders) pointed at ``tracking_uri`` for a while.

    ``mlflow.set_tracking_uri`` also sets ``MLFLOW_TRACKING_URI`` in the environment
    (for subprocesses); that is put back too, or a later test's ``modelyard`` subprocess
    would log to the default URI left there instead of its own ``--home``."""
    import mlflow

    with _FLUENT:
        previous = mlflow.get_tracking_uri()
        environment = os.environ.get(_TRACKING_URI_ENV)
        mlflow.set_tracking_uri(tracking_uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(previous)
            if environment is None:
                os.environ.pop(_TRACKING_URI_ENV, None)
            else:
                os.environ[_TRACKING_URI_ENV] = environment


@contextmanager
def registry_login(user: str | None, password: str | None = None) -> Iterator[None]:
    """MLflow's client (which reads MLFLOW_TRACKING_USERNAME/PASSWORD at each request)
    signed in as ``user`` for a while; ``None``: no credentials at all."""
    keys = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    saved = {k: os.environ.get(k) for k in keys}
    for key in keys:
        os.environ.pop(key, None)
    if user is not None:
        os.environ.update(zip(keys, (user, password or ""), strict=True))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def small_frame(seed: int = 1, rows: int = 60) -> tuple[pd.DataFrame, pd.Series]:
    """Three numeric columns and a binary label that depends on them."""
    rng = np.random.default_rng(seed)
    x = pd.DataFrame(rng.normal(size=(rows, 3)), columns=["a", "b", "c"])
    return x, (x["a"] > 0).astype(int)


def register_sklearn_model(
    tracking_uri: str,
    estimator: Any = None,
    frame: pd.DataFrame | None = None,
    *,
    name: str | None = None,
    label: pd.Series | None = None,
    alias: str | None = "champion",
    datasets: Sequence[tuple[str, str]] = (),
    reference: pd.DataFrame | None = None,
    input_example: bool = False,
    trusted_types: Sequence[str] = (),
) -> Registered:
    """Fit (if ``estimator`` is not fitted yet and ``label`` is given), log and register
    a version of ``name`` (a fresh name by default). ``datasets``: (source URL, context)
    pairs logged as dataset inputs of the run; ``reference``: logged as the run's
    ``reference/data.parquet`` (contracts.md)."""
    import mlflow
    import mlflow.sklearn
    from mlflow import MlflowClient
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    if frame is None:
        frame, label = small_frame()
    if estimator is None:
        estimator = LogisticRegression()
    if label is not None:
        estimator = estimator.fit(frame, label)
    name = name or f"m-{uuid.uuid4().hex[:8]}"
    with mlflow_uri(tracking_uri):
        mlflow.set_experiment(name)
        with mlflow.start_run() as run:
            for source, context in datasets:
                data = frame if label is None else frame.assign(label=label)
                mlflow.log_input(mlflow.data.from_pandas(data, source=source), context=context)
            info = mlflow.sklearn.log_model(
                estimator,
                name="model",
                signature=infer_signature(frame, estimator.predict(frame)),
                input_example=frame.head(2) if input_example else None,
                registered_model_name=name,
                skops_trusted_types=list(trusted_types) or None,
            )
            if reference is not None:
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / "data.parquet"
                    reference.to_parquet(path, index=False)
                    mlflow.log_artifact(str(path), artifact_path="reference")
    version = str(info.registered_model_version)
    if alias:
        MlflowClient(tracking_uri).set_registered_model_alias(name, alias, version)
    return Registered(name, version, run.info.run_id, estimator)
