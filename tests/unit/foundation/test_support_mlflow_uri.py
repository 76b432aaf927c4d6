"""The tests' own helper: pointing MLflow at a registry for a while leaves the
environment as it was (tests.support.models.mlflow_uri)."""

from __future__ import annotations

import os

import mlflow
import pytest

from tests.support.models import mlflow_uri


@pytest.mark.parametrize("before", [None, "sqlite:////tmp/elsewhere.db"])
def test_mlflow_uri_leaves_the_environment_as_it_was(
    before: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if before is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", before)
    previous = mlflow.get_tracking_uri()
    with mlflow_uri("http://registry.invalid:5000"):
        assert mlflow.get_tracking_uri() == "http://registry.invalid:5000"
    assert os.environ.get("MLFLOW_TRACKING_URI") == before
    assert mlflow.get_tracking_uri() == previous
