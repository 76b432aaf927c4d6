"""The CronJob and Indexed Job built for a pipeline (checked against the real API server
in tests/integration/pipelines/test_render_dry_run.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelyard._version import __version__
from modelyard.pipelines.definition import load_pipeline
from modelyard.pipelines.manifests import RenderOptions, build_cronjob, build_indexed_job

REPO = Path(__file__).resolve().parents[3]
CHURN = REPO / "pipelines" / "samples" / "churn.yaml"
VARIABLES = {"lake": "/l", "home": "/h", "date": "2026-01-01"}


def _restricted(pod: dict[str, Any]) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]


def test_cronjob_runs_the_pipeline_from_its_configmap() -> None:
    spec = load_pipeline(CHURN, VARIABLES).spec
    cronjob = build_cronjob(spec, RenderOptions(tracking_uri="http://mlflow:5000", lake_pvc="lake"))
    assert cronjob["metadata"]["name"] == "churn"
    cron = cronjob["spec"]
    assert cron["schedule"] == "30 2 * * *"
    assert cron["concurrencyPolicy"] == "Forbid"
    assert cron["startingDeadlineSeconds"] == 600
    job = cron["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 1
    assert job["activeDeadlineSeconds"] == 1800 + 120
    assert job["ttlSecondsAfterFinished"] == 86400
    pod = job["template"]["spec"]
    _restricted(pod)
    (container,) = pod["containers"]
    assert container["image"] == f"modelyard/toolkit:{__version__}"
    assert container["command"] + container["args"] == [
        "modelyard",
        "pipeline",
        "run",
        "/etc/modelyard/pipeline.yaml",
    ]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["MODELYARD_LAKE"] == "/var/lib/modelyard/lake"
    assert {"name": "pipeline", "configMap": {"name": "churn-pipeline"}} in pod["volumes"]
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"memory": "2Gi"},
    }


def test_indexed_job_for_a_fanned_out_step() -> None:
    pipeline = load_pipeline(CHURN, VARIABLES)
    job = build_indexed_job(
        pipeline.spec, pipeline.step("ingest-usage"), RenderOptions(image="reg/p:1"), "2026-03-01"
    )
    assert job["metadata"]["name"] == "churn-ingest-usage"
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    pod = spec["template"]["spec"]
    _restricted(pod)
    (container,) = pod["containers"]
    assert container["args"] == ["/etc/modelyard/pipeline.yaml", "--step", "ingest-usage"]
    assert {"name": "MODELYARD_RUN_DATE", "value": "2026-03-01"} in container["env"]


def test_only_fanned_out_steps_become_jobs() -> None:
    pipeline = load_pipeline(CHURN, VARIABLES)
    with pytest.raises(ValueError, match="step 'train' has no fan_out"):
        build_indexed_job(pipeline.spec, pipeline.step("train"), RenderOptions())


def test_render_command_prints_configmap_and_cronjob(tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            str(Path(sys.executable).parent / "modelyard"),
            "pipeline",
            "render",
            str(CHURN),
            "--image",
            "registry.local/pipelines:dev",
            "--namespace",
            "ml",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=tmp_path,
    )
    config_map, cronjob = yaml.safe_load_all(completed.stdout)
    assert config_map["kind"] == "ConfigMap"
    assert config_map["data"]["pipeline.yaml"] == CHURN.read_text()
    assert cronjob["kind"] == "CronJob"
    assert cronjob["metadata"]["namespace"] == "ml"
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.local/pipelines:dev"


def test_render_keeps_placeholders_the_cluster_will_resolve(tmp_path: Path) -> None:
    file = tmp_path / "orders.yaml"
    file.write_text(
        """
name: orders
schedule: "@hourly"
steps:
  - name: ingest
    function: modelyard.pipelines.ingest:ingest_sql
    parameters:
      dataset: orders
      url: ${ORDERS_DB_URL}
      query: SELECT * FROM orders
      schema: {columns: [{name: id, type: integer}]}
"""
    )
    completed = subprocess.run(
        [
            str(Path(sys.executable).parent / "modelyard"),
            "pipeline",
            "render",
            str(file),
            "--env-secret",
            "orders-db",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={"PATH": str(Path(sys.executable).parent)},
    )
    config_map, cronjob = yaml.safe_load_all(completed.stdout)
    assert "url: ${ORDERS_DB_URL}" in config_map["data"]["pipeline.yaml"]
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "orders-db"}}]
