"""The chart's CronJobs run pipelines exactly as `modelyard pipeline render` describes
them: the whole pod and the Job's limits are compared, so a pipeline behaves the same
whichever way it was scheduled."""

from __future__ import annotations

from typing import Any

import pytest

from modelyard._version import __version__
from modelyard.pipelines.definition import load_pipeline
from modelyard.pipelines.manifests import RenderOptions, build_cronjob
from tests.unit.chart.rendering import CHART, find, render

RELEASE, NAMESPACE = "my", "ml"
SAMPLES = sorted((CHART / "files" / "pipelines").glob("*.yaml"))


def _chart_cronjob(objects: list[dict[str, Any]], pipeline: str) -> dict[str, Any]:
    found = [
        o
        for o in find(objects, "CronJob")
        if o["metadata"]["labels"].get("modelyard.io/pipeline") == pipeline
    ]
    assert len(found) == 1, f"the chart renders no CronJob for {pipeline}"
    return found[0]


def _rendered(path: Any, **options: Any) -> dict[str, Any]:
    pipeline = load_pipeline(path, {}, strict_placeholders=False)
    defaults: dict[str, Any] = {
        "image": f"ghcr.io/modelyard/modelyard/toolkit:{__version__}",  # the published one
        "namespace": NAMESPACE,
        "config_map": f"{RELEASE}-modelyard-{pipeline.name}-pipeline",
        "lake_pvc": f"{RELEASE}-modelyard-lake",
        "tracking_uri": f"http://{RELEASE}-modelyard-mlflow.{NAMESPACE}.svc:5000",
        # The chart's MLflow has users by default (docs/security.md).
        "registry_credentials": f"{RELEASE}-modelyard-registry-credentials",
        "service_account": f"{RELEASE}-modelyard-pipelines",
        "steps_on_node": True,
        # The chart's study storage, beside MLflow (pipelines.tuning.storage.proxy).
        "study_storage_url": f"grpc://{RELEASE}-modelyard-mlflow:50051",
    }
    return build_cronjob(pipeline.spec, RenderOptions(**{**defaults, **options}))


def _job(cronjob: dict[str, Any]) -> dict[str, Any]:
    spec = dict(cronjob["spec"]["jobTemplate"]["spec"])
    template = spec.pop("template")
    return {"job": spec, "pod": template["spec"]}


@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_chart_pod_is_the_rendered_pod(default_objects: list[dict[str, Any]], path: Any) -> None:
    name = load_pipeline(path, {}, strict_placeholders=False).name
    assert _job(_chart_cronjob(default_objects, name)) == _job(_rendered(path))


def test_chart_pod_with_registry_secrets_and_an_s3_lake() -> None:
    objects = render(
        "--set",
        "pipelines.envSecret=pipeline-env",
        "--set",
        "lake.url=s3://lake/data",
        "--set",
        "imagePullSecrets[0].name=regcred",
        "--set",
        "image.toolkit.pullPolicy=Always",
    )
    for path in SAMPLES:
        name = load_pipeline(path, {}, strict_placeholders=False).name
        expected = _rendered(
            path,
            lake="s3://lake/data",
            lake_pvc=None,
            env_secret="pipeline-env",
            image_pull_secrets=["regcred"],
            image_pull_policy="Always",
            steps_on_node=False,
        )
        assert _job(_chart_cronjob(objects, name)) == _job(expected)


def test_sample_pipelines_load(tmp_path: Any) -> None:
    """The files the chart mounts are valid pipelines."""
    for path in SAMPLES:
        pipeline = load_pipeline(
            path, {"lake": str(tmp_path), "home": str(tmp_path), "date": "2026-11-28"}
        )
        assert pipeline.spec.schedule, path.name


def test_chart_pod_with_a_study_storage_and_one_pod_per_run() -> None:
    objects = render(
        "--set",
        "pipelines.tuning.storage.existingSecret=optuna-db",
        "--set",
        "pipelines.executor=local",
    )
    for path in SAMPLES:
        name = load_pipeline(path, {}, strict_placeholders=False).name
        expected = _rendered(
            path,
            executor="local",
            service_account=None,
            steps_on_node=False,
            study_storage_secret="optuna-db",
        )
        assert _job(_chart_cronjob(objects, name)) == _job(expected)


def test_the_orchestrator_may_run_jobs_and_read_pods_in_its_namespace_only(
    default_objects: list[dict[str, Any]],
) -> None:
    from modelyard.pipelines.manifests import ORCHESTRATOR_RULES

    [role] = [
        o
        for o in find(default_objects, "Role")
        if o["metadata"]["name"] == f"{RELEASE}-modelyard-pipelines"
    ]
    assert role["rules"] == ORCHESTRATOR_RULES
    [binding] = [
        o
        for o in find(default_objects, "RoleBinding")
        if o["metadata"]["name"] == f"{RELEASE}-modelyard-pipelines"
    ]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{RELEASE}-modelyard-pipelines", "namespace": NAMESPACE}
    ]
    for cronjob in find(default_objects, "CronJob"):
        pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == f"{RELEASE}-modelyard-pipelines"
