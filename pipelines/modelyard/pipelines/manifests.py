"""Kubernetes objects for a pipeline: a CronJob for the schedule, an Indexed Job per
fanned-out step. Pure functions from the checked spec to plain dicts.

Every pod passes the Pod Security "restricted" profile: non-root uid 10001, no privilege
escalation, all capabilities dropped, RuntimeDefault seccomp, a read-only root filesystem
with an emptyDir at /tmp (HOME and MODELYARD_HOME point there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from modelyard._version import __version__
from modelyard.core import contracts as c
from modelyard.core import pods
from modelyard.pipelines.definition import PipelineSpec, Resources, StepSpec

DEFAULT_IMAGE = c.TOOLKIT_IMAGE
PIPELINE_DIR = c.PIPELINE_DIR
PIPELINE_FILE = c.PIPELINE_FILE
LAKE_MOUNT = c.LAKE_MOUNT


@dataclass(frozen=True)
class RenderOptions:
    """What the cluster side needs that the pipeline file does not say."""

    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: list[str] = field(default_factory=list)
    namespace: str | None = None
    # The ConfigMap holding the pipeline file (default: "<pipeline>-pipeline").
    config_map: str | None = None
    # The pipeline file: from a ConfigMap rendered alongside (default), or a path that
    # already exists inside the image (then no ConfigMap).
    pipeline_path_in_image: str | None = None
    lake: str | None = None
    lake_pvc: str | None = None
    tracking_uri: str | None = None
    env_secret: str | None = None
    # The installation's registry credentials Secret (docs/security.md): the pods log in
    # as the pipelines' user and grant the operator and drift users EDIT on the models
    # they register.
    registry_credentials: str | None = None
    service_account: str | None = None
    starting_deadline_seconds: int = 600
    backoff_limit: int = 1
    ttl_seconds_after_finished: int = 86_400
    active_deadline_seconds: int | None = None
    skip_steps: list[str] = field(default_factory=list)
    suspend: bool = False


def kubernetes_name(*parts: str, limit: int = 63) -> str:
    """A DNS-1123 label made of ``parts`` (``_`` becomes ``-``), at most ``limit`` chars."""
    name = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    return name[:limit].rstrip("-")


def config_map_name(spec: PipelineSpec, options: RenderOptions | None = None) -> str:
    if options is not None and options.config_map:
        return options.config_map
    return kubernetes_name(spec.name, "pipeline")


def _labels(spec: PipelineSpec, step: StepSpec | None = None) -> dict[str, str]:
    labels = {
        **pods.app_labels("modelyard-pipeline", spec.name, "pipeline"),
        c.LABEL_VERSION: __version__,
        c.LABEL_PIPELINE: spec.name,
    }
    if step is not None:
        labels[c.LABEL_STEP] = kubernetes_name(step.name)
    return labels


def _metadata(name: str, labels: dict[str, str], options: RenderOptions) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": labels}
    if options.namespace:
        metadata["namespace"] = options.namespace
    return metadata


def _resources(resources: Resources | None) -> dict[str, Any]:
    if resources is None:
        return {}
    out: dict[str, Any] = {}
    if resources.requests:
        out["requests"] = dict(resources.requests)
    if resources.limits:
        out["limits"] = dict(resources.limits)
    return out


def _pipeline_path(options: RenderOptions) -> str:
    return options.pipeline_path_in_image or f"{PIPELINE_DIR}/{PIPELINE_FILE}"


def _pod_spec(
    spec: PipelineSpec,
    options: RenderOptions,
    args: list[str],
    resources: Resources | None,
    extra_env: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    env: list[dict[str, Any]] = [
        *pods.home_env(),
        {"name": c.PipelineEnv.HOME, "value": "/tmp/modelyard"},
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
    ]
    lake = options.lake or (LAKE_MOUNT if options.lake_pvc else None)
    if lake:
        env.append({"name": c.PipelineEnv.LAKE, "value": lake})
    if options.tracking_uri:
        env.append({"name": c.TRACKING_URI_ENV, "value": options.tracking_uri})
    if options.registry_credentials:
        users = c.RegistryUsers
        env.extend(users.env(options.registry_credentials, users.PIPELINES))
        env.append({"name": users.MODEL_EDITORS_ENV, "value": ",".join(users.MODEL_EDITORS)})
    env.extend(extra_env or [])
    mounts: list[dict[str, Any]] = [pods.tmp_mount()]
    volumes: list[dict[str, Any]] = [pods.tmp_volume()]
    if options.pipeline_path_in_image is None:
        mounts.append({"name": "pipeline", "mountPath": PIPELINE_DIR, "readOnly": True})
        volumes.append({"name": "pipeline", "configMap": {"name": config_map_name(spec, options)}})
    if options.lake_pvc:
        mounts.append({"name": "lake", "mountPath": LAKE_MOUNT})
        volumes.append({"name": "lake", "persistentVolumeClaim": {"claimName": options.lake_pvc}})
    container: dict[str, Any] = {
        "name": "pipeline",
        "image": options.image,
        "imagePullPolicy": options.image_pull_policy,
        "command": ["modelyard", "pipeline", "run"],
        "args": args,
        "env": env,
        "volumeMounts": mounts,
        "securityContext": pods.restricted_container_security_context(),
    }
    if options.env_secret:
        container["envFrom"] = [{"secretRef": {"name": options.env_secret}}]
    container_resources = _resources(resources)
    if container_resources:
        container["resources"] = container_resources
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        # A pipeline step talks to the lake and the registry, never to the API server.
        "automountServiceAccountToken": False,
        "securityContext": pods.restricted_pod_security_context(),
        "containers": [container],
        "volumes": volumes,
    }
    if options.service_account:
        pod["serviceAccountName"] = options.service_account
    if options.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in options.image_pull_secrets]
    return pod


def _deadline(spec: PipelineSpec, options: RenderOptions, steps: list[StepSpec]) -> int:
    if options.active_deadline_seconds:
        return options.active_deadline_seconds
    if spec.timeout_seconds:
        return int(spec.timeout_seconds) + 120
    # Without a pipeline timeout: every step's worst case (all attempts), run one by one.
    total = sum((step.timeout_seconds or 3600) * step.retries.attempts for step in steps)
    return int(total) + 120


def build_config_map(
    spec: PipelineSpec, source_text: str, options: RenderOptions
) -> dict[str, Any]:
    """The pipeline file, mounted into the pods at /etc/modelyard/pipeline.yaml."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(config_map_name(spec, options), _labels(spec), options),
        "data": {PIPELINE_FILE: source_text},
    }


def build_cronjob(spec: PipelineSpec, options: RenderOptions) -> dict[str, Any]:
    """The CronJob that runs the whole pipeline on its schedule, one run at a time."""
    if spec.schedule is None:
        raise ValueError(f"pipeline {spec.name!r} has no schedule; a CronJob needs one")
    args = [_pipeline_path(options)]
    for skipped in options.skip_steps:
        args += ["--skip", skipped]
    resources = spec.resources if (spec.resources.requests or spec.resources.limits) else None
    job_spec = {
        "backoffLimit": options.backoff_limit,
        "activeDeadlineSeconds": _deadline(spec, options, spec.steps),
        "ttlSecondsAfterFinished": options.ttl_seconds_after_finished,
        "template": {
            # MLflow's NetworkPolicy admits the toolkit's registry clients only.
            "metadata": {"labels": {**_labels(spec), c.LABEL_REGISTRY_CLIENT: "true"}},
            "spec": _pod_spec(spec, options, args, resources),
        },
    }
    cron_spec: dict[str, Any] = {
        "schedule": spec.schedule,
        "concurrencyPolicy": "Forbid",
        "startingDeadlineSeconds": options.starting_deadline_seconds,
        "successfulJobsHistoryLimit": 3,
        "failedJobsHistoryLimit": 3,
        "suspend": options.suspend,
        "jobTemplate": {"metadata": {"labels": _labels(spec)}, "spec": job_spec},
    }
    if spec.timezone:
        cron_spec["timeZone"] = spec.timezone
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": _metadata(kubernetes_name(spec.name, limit=52), _labels(spec), options),
        "spec": cron_spec,
    }


def build_indexed_job(
    spec: PipelineSpec,
    step: StepSpec,
    options: RenderOptions,
    run_date: str | None = None,
) -> dict[str, Any]:
    """An Indexed Job for a fanned-out step: pod ``i`` gets JOB_COMPLETION_INDEX=i from
    Kubernetes and runs only partition ``i`` of ``step``."""
    if step.fan_out is None:
        raise ValueError(f"step {step.name!r} has no fan_out; only fanned-out steps are Jobs")
    extra_env = [{"name": c.PipelineEnv.RUN_DATE, "value": run_date}] if run_date else []
    args = [_pipeline_path(options), "--step", step.name]
    resources = step.resources or (
        spec.resources if (spec.resources.requests or spec.resources.limits) else None
    )
    labels = _labels(spec, step)
    attempts = step.retries.attempts
    deadline = options.active_deadline_seconds or (
        int((step.timeout_seconds or 3600) * attempts * step.fan_out.completions) + 120
    )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(kubernetes_name(spec.name, step.name), labels, options),
        "spec": {
            "completionMode": "Indexed",
            "completions": step.fan_out.completions,
            "parallelism": step.fan_out.parallelism,
            "backoffLimit": options.backoff_limit * step.fan_out.completions,
            "activeDeadlineSeconds": deadline,
            "ttlSecondsAfterFinished": options.ttl_seconds_after_finished,
            "template": {
                "metadata": {"labels": {**labels, c.LABEL_REGISTRY_CLIENT: "true"}},
                "spec": _pod_spec(spec, options, args, resources, extra_env),
            },
        },
    }


def build_manifests(
    spec: PipelineSpec,
    source_text: str,
    options: RenderOptions,
    job_step: str | None = None,
    run_date: str | None = None,
) -> list[dict[str, Any]]:
    """ConfigMap (unless the file is in the image) plus the CronJob, or the Indexed Job
    of ``job_step``."""
    objects: list[dict[str, Any]] = []
    if options.pipeline_path_in_image is None:
        objects.append(build_config_map(spec, source_text, options))
    if job_step is None:
        objects.append(build_cronjob(spec, options))
    else:
        objects.append(build_indexed_job(spec, spec.steps_by_name[job_step], options, run_date))
    return objects
