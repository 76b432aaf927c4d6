"""The model server with S3: a model whose artifacts the registry keeps in a bucket, and
the prediction log written to ``s3://`` (a real SeaweedFS server, keys required), with
only the variables docs/serving.md tells a user to put in the Secret."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from tests.integration.serving.conftest import FEATURES, RegisteredModel, start_modelyard
from tests.support.models import mlflow_uri, register_sklearn_model
from tests.support.s3 import S3Server
from tests.support.servers import MlflowServer, ServerProcess, log_tail

pytestmark = pytest.mark.integration

BUCKET = "predictions"
MODEL_NAME = "it-s3-forest"
#: What docs/serving.md says the prediction log's Secret holds for an S3-compatible store.
SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3")


@pytest.fixture(scope="module")
def model_on_s3(s3_mlflow_server: MlflowServer) -> RegisteredModel:
    """A forest registered in the MLflow server whose artifacts are in the bucket."""
    import mlflow.pyfunc
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(5)
    train = pd.DataFrame(rng.normal(size=(300, len(FEATURES))), columns=FEATURES)
    target = (train["x0"] + train["x3"] > 0).astype(int)
    register_sklearn_model(
        s3_mlflow_server.url,
        RandomForestClassifier(n_estimators=10, random_state=0),
        train,
        label=target,
        name=MODEL_NAME,
        alias=None,
        trusted_types=["sklearn.tree._tree.Tree"],
    )
    uri = f"models:/{MODEL_NAME}/1"
    rows = pd.DataFrame(rng.normal(size=(20, len(FEATURES))), columns=FEATURES)
    with mlflow_uri(s3_mlflow_server.url):
        expected = mlflow.pyfunc.load_model(uri).predict(rows).tolist()
    return RegisteredModel(uri, s3_mlflow_server.url, rows, expected)


@pytest.fixture
def server_logging_to_s3(
    s3: S3Server, model_on_s3: RegisteredModel, tmp_path: Path
) -> Iterator[tuple[ServerProcess, str]]:
    bucket = f"{BUCKET}-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(bucket)
    base = f"s3://{bucket}/log"
    env = {key: s3.env()[key] for key in SECRET_KEYS}
    server = start_modelyard(
        model_on_s3,
        tmp_path / "server.log",
        base,
        # Only the shutdown flush writes: every row in the bucket went through S3 once.
        MODELYARD_LOG_FLUSH_INTERVAL="3600",
        **env,
    )
    yield server, base
    server.stop()


def test_a_model_whose_artifacts_are_in_s3_is_served(
    s3: S3Server, model_on_s3: RegisteredModel, server_logging_to_s3: tuple[ServerProcess, str]
) -> None:
    server, _ = server_logging_to_s3
    listed = s3.client().list_objects_v2(Bucket="mlflow", Prefix="artifacts/")
    keys = [item["Key"] for item in listed.get("Contents", [])]
    assert any(key.endswith("/MLmodel") for key in keys), f"no MLmodel in the bucket: {keys}"

    response = httpx.post(
        f"{server.url}/predict", json=model_on_s3.rows.to_dict(orient="records"), timeout=30
    )
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == model_on_s3.expected


def test_prediction_log_on_s3_has_a_row_for_every_answered_row(
    s3: S3Server, model_on_s3: RegisteredModel, server_logging_to_s3: tuple[ServerProcess, str]
) -> None:
    import fsspec

    server, base = server_logging_to_s3
    answered: list[str] = []
    with httpx.Client(timeout=30) as http:
        for i in range(25):
            rows = model_on_s3.rows.iloc[[i % 20, (i + 1) % 20]]
            response = http.post(f"{server.url}/predict", json=rows.to_dict(orient="records"))
            assert response.status_code == 200, response.text
            answered.append(response.json()["request_id"])
    # SIGTERM: the server writes what it holds to S3 before it exits.
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(60) == 0, log_tail(server.log)
    assert "prediction log: writing" not in server.log.read_text(), log_tail(server.log)

    fs, root = fsspec.core.url_to_fs(base, **_s3fs_options(s3))
    files = fs.glob(f"{root}/{MODEL_NAME}/version=1/date=*/*.parquet")
    assert files, f"no Parquet file under {base}: {fs.find(root)}"
    log = ds.dataset(files, filesystem=fs, format="parquet").to_table().to_pandas()
    assert len(log) == 2 * len(answered)  # rows == answered rows, nothing twice
    assert sorted(set(log["_request_id"])) == sorted(answered)
    assert set(log["_model_name"]) == {MODEL_NAME}


def _s3fs_options(s3: S3Server) -> dict[str, object]:
    return {
        "key": s3.access_key,
        "secret": s3.secret_key,
        "endpoint_url": s3.endpoint_url,
    }


def test_the_server_refuses_a_client_without_keys(s3: S3Server) -> None:
    """The bucket is not anonymous: a client with the endpoint but no keys is refused
    (so the tests above show the keys reaching the server, not an open store)."""
    import fsspec

    s3.create_bucket("private")
    fs, _ = fsspec.core.url_to_fs("s3://private/x", anon=True, endpoint_url=s3.endpoint_url)
    with pytest.raises(PermissionError, match=r"(?i)access denied|forbidden"):
        fs.pipe("private/x", b"data")
