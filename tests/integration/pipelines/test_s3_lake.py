"""A pipeline whose lake is on S3 (a real SeaweedFS server, keys required): the churn
sample through the real runner, every step reading and writing its partitions and
results on S3, training logged to an MLflow server whose artifacts are in a bucket too.
The steps get only what docs/pipelines.md tells a user to put in pipelines.envSecret."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tests.integration.pipelines.test_sample_pipelines import (
    RUN_DATE,
    SAMPLES,
    TRAINING_DATES,
    _run,
)
from tests.support.s3 import S3Server
from tests.support.servers import MlflowServer

pytestmark = pytest.mark.integration

SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3")


def test_churn_pipeline_on_an_s3_lake(
    s3: S3Server, s3_mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    s3.create_bucket("lake")
    env = {key: s3.env()[key] for key in SECRET_KEYS}
    # The sample as it is, on fewer customers: the same steps in a fraction of the time.
    pipeline = yaml.safe_load((SAMPLES / "churn.yaml").read_text())
    generate = next(step for step in pipeline["steps"] if step["name"] == "generate")
    generate["parameters"]["customers"] = 300
    validate = next(step for step in pipeline["steps"] if step["name"] == "validate")
    validate["parameters"]["min_rows"] = 100  # per partition, as 500 is for 2000 customers
    small = tmp_path / "churn-small.yaml"
    small.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    completed = _run(
        str(small),
        tmp_path,
        "--lake",
        "s3://lake/churn",
        "--home",
        str(tmp_path / "state"),
        "--summary-json",
        "summary.json",
        MLFLOW_TRACKING_URI=s3_mlflow_server.url,
        MODELYARD_MODEL_NAME="churn-s3-it",
        **env,
    )
    assert "pipeline churn succeeded" in completed.stdout

    # Every dataset's partitions and every step's result are objects in the bucket.
    paginator = s3.client().get_paginator("list_objects_v2")
    keys = {
        item["Key"]
        for page in paginator.paginate(Bucket="lake", Prefix="churn/")
        for item in page.get("Contents", [])
    }
    for dataset in ("customers", "usage", "usage_clean", "usage_enriched", "churn_features"):
        for day in TRAINING_DATES:
            assert any(k.startswith(f"churn/{dataset}/date={day}/part-") for k in keys), (
                f"{dataset} {day} is not on S3"
            )
    assert any(k.startswith(f"churn/_runs/churn/date={RUN_DATE}/train/") for k in keys)
    assert not [k for k in keys if k.rsplit("/", 1)[-1].startswith(".")], "temporary files left"
    assert not (tmp_path / "state" / "lake").exists(), "the lake was written locally"

    # The registered version's lineage names the S3 partitions it was trained on.
    client = MlflowClient(s3_mlflow_server.url)
    champion = client.get_model_version_by_alias("churn-s3-it", "champion")
    run = client.get_run(champion.run_id)
    sources = {json.loads(i.dataset.source)["uri"] for i in run.inputs.dataset_inputs}
    expected = {f"s3://lake/churn/churn_features/date={d}" for d in [*TRAINING_DATES, RUN_DATE]}
    assert sources == expected
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"]["promote"]["result"]["promoted"] is True

    # The model's files went to the MLflow server's bucket, not to a local directory.
    artifacts = s3.client().list_objects_v2(Bucket="mlflow", Prefix="artifacts/")
    model_files = [i["Key"] for i in artifacts.get("Contents", []) if i["Key"].endswith("MLmodel")]
    assert model_files, "no model in the MLflow bucket"
