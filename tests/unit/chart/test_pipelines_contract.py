"""The chart's CronJobs run pipelines the way `modelyard pipeline render` does: same
pipeline file path, lake mount, environment and user, so a pipeline behaves the same
whichever way it was scheduled."""

from __future__ import annotations

from typing import Any

from unit.chart.rendering import CHART, env_of, find, pod_spec

from modelyard.pipelines import manifests
from modelyard.pipelines.definition import load_pipeline


def test_cronjobs_match_pipeline_render(default_objects: list[dict[str, Any]]) -> None:
    cronjobs = find(default_objects, "CronJob")
    assert cronjobs
    for cronjob in cronjobs:
        spec = pod_spec(cronjob)
        container = spec["containers"][0]
        assert container["args"][0] == f"{manifests.PIPELINE_DIR}/{manifests.PIPELINE_FILE}"
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["pipeline"] == manifests.PIPELINE_DIR
        assert mounts["lake"] == manifests.LAKE_MOUNT
        env = env_of(container)
        assert env["MODELYARD_LAKE"] == manifests.LAKE_MOUNT
        assert env["MODELYARD_HOME"].startswith("/tmp/")
        assert spec["securityContext"]["runAsUser"] == manifests.RUN_AS_USER


def test_sample_pipelines_load(tmp_path: Any) -> None:
    """The files the chart mounts are valid pipelines."""
    for path in sorted((CHART / "files" / "pipelines").glob("*.yaml")):
        pipeline = load_pipeline(
            path, {"lake": str(tmp_path), "home": str(tmp_path), "date": "2026-11-28"}
        )
        assert pipeline.spec.schedule, path.name
