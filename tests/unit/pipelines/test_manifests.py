"""The CronJob and Indexed Job built for a pipeline (checked against the real API server
in tests/integration/pipelines/test_render_dry_run.py)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from modelyard._version import __version__
from modelyard.pipelines.definition import load_pipeline
from modelyard.pipelines.manifests import (
    RenderOptions,
    build_cronjob,
    build_step_job,
    step_job_name,
    template_from_options,
    template_from_pod,
)

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
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["MODELYARD_LAKE"] == "/var/lib/modelyard/lake"
    assert {"name": "pipeline", "configMap": {"name": "churn-pipeline"}} in pod["volumes"]
    # The pod only orchestrates; the steps' Jobs get the pipeline's resources.
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"memory": "512Mi"},
    }
    assert env["MODELYARD_EXECUTOR"] == "kubernetes"
    assert env["MODELYARD_STEP_RESOURCES"] == (
        '{"limits":{"memory":"2Gi"},"requests":{"cpu":"500m","memory":"1Gi"}}'
    )
    assert pod["automountServiceAccountToken"] is True
    assert pod["serviceAccountName"] == "churn-pipeline"


DAY = dt.date(2026, 3, 1)


def test_indexed_job_for_a_fanned_out_step() -> None:
    pipeline = load_pipeline(CHURN, VARIABLES)
    template = template_from_options(pipeline.spec, RenderOptions(image="reg/p:1"))
    job = build_step_job(pipeline.spec, pipeline.step("ingest-usage"), template, DAY)
    assert job["metadata"]["name"] == "churn-20260301-ingest-usage"
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    # retries: {attempts: 2}: one more try per partition; the timeout is per attempt.
    assert spec["backoffLimitPerIndex"] == 1
    pod = spec["template"]["spec"]
    assert pod["activeDeadlineSeconds"] == 300
    assert spec["activeDeadlineSeconds"] == 2 * 300 + 10 + 120
    _restricted(pod)
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["args"] == ["/etc/modelyard/pipeline.yaml", "--step", "ingest-usage"]
    assert {"name": "MODELYARD_RUN_DATE", "value": "2026-03-01"} in container["env"]
    assert spec["template"]["metadata"]["labels"]["modelyard.io/run-date"] == "2026-03-01"


def test_every_step_is_a_job_with_its_own_resources() -> None:
    pipeline = load_pipeline(CHURN, VARIABLES)
    template = template_from_options(pipeline.spec, RenderOptions())
    train = build_step_job(pipeline.spec, pipeline.step("train"), template, DAY, run_id="r-1")
    assert "completionMode" not in train["spec"]
    assert train["spec"]["backoffLimit"] == 0
    assert train["metadata"]["annotations"] == {"modelyard.io/run-id": "r-1"}
    (container,) = train["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"}}
    # A step without resources of its own gets the pipeline's.
    clean = build_step_job(pipeline.spec, pipeline.step("clean"), template, DAY)
    (container,) = clean["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"memory": "2Gi"},
    }


def test_job_names_are_the_same_for_a_run_and_fit_kubernetes() -> None:
    assert step_job_name("churn", DAY, "ingest_usage") == "churn-20260301-ingest-usage"
    long = step_job_name("a" * 52, DAY, "b" * 40)
    assert len(long) <= 52 and long == step_job_name("a" * 52, DAY, "b" * 40)
    assert long != step_job_name("a" * 52, DAY, "b" * 39 + "c")


def test_step_pods_are_made_from_the_orchestrating_pod() -> None:
    pipeline = load_pipeline(CHURN, VARIABLES)
    orchestrator = build_cronjob(
        pipeline.spec,
        RenderOptions(
            lake_pvc="lake", env_secret="creds", steps_on_node=True, tracking_uri="http://m:5000"
        ),
    )["spec"]["jobTemplate"]["spec"]["template"]
    # As the API server returns it: a token volume, a node, the Job controller's labels.
    pod_spec = orchestrator["spec"]
    pod_spec["nodeName"] = "node-1"
    pod_spec["volumes"].append(
        {"name": "kube-api-access-x", "projected": {"sources": [{"serviceAccountToken": {}}]}}
    )
    pod_spec["containers"][0]["volumeMounts"].append(
        {"name": "kube-api-access-x", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}
    )
    labels = {**orchestrator["metadata"]["labels"], "job-name": "churn-1", "x": "y"}
    template = template_from_pod({"metadata": {"labels": labels}, "spec": pod_spec})
    assert "job-name" not in template.labels and template.labels["x"] == "y"
    job = build_step_job(pipeline.spec, pipeline.step("generate"), template, DAY)
    pod = job["spec"]["template"]["spec"]
    _restricted(pod)
    assert pod["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod
    assert {v["name"] for v in pod["volumes"]} == {"tmp", "pipeline", "lake"}
    (container,) = pod["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "creds"}}]
    env = {e["name"] for e in container["env"]}
    assert "MODELYARD_EXECUTOR" not in env and "MODELYARD_POD_NAME" not in env
    assert {"MLFLOW_TRACKING_URI", "MODELYARD_LAKE", "MODELYARD_RUN_DATE"} <= env
    node_terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert node_terms["nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["node-1"]


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
    config_map, account, role, binding, cronjob = yaml.safe_load_all(completed.stdout)
    assert config_map["kind"] == "ConfigMap"
    # The orchestrating pod's identity and exactly what it may do.
    assert [account["kind"], role["kind"], binding["kind"]] == [
        "ServiceAccount",
        "Role",
        "RoleBinding",
    ]
    assert {r["resources"][0]: set(r["verbs"]) for r in role["rules"]} == {
        "jobs": {"get", "list", "watch", "create", "delete"},
        "pods": {"get", "list", "watch"},
    }
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
    config_map, *_, cronjob = yaml.safe_load_all(completed.stdout)
    assert "url: ${ORDERS_DB_URL}" in config_map["data"]["pipeline.yaml"]
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "orders-db"}}]
