"""Kubernetes objects for a pipeline: a CronJob for the schedule, whose pod orchestrates
the run; one Job per step (an Indexed Job for a fanned-out or parallel step); the
ServiceAccount and Role the orchestrating pod needs. Pure functions from the checked spec
to plain dicts.

Every pod passes the Pod Security "restricted" profile: non-root uid 10001, no privilege
escalation, all capabilities dropped, RuntimeDefault seccomp, a read-only root filesystem
with an emptyDir at /tmp (HOME and MODELYARD_HOME point there).
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from modelyard._version import __version__
from modelyard.core import contracts as c
from modelyard.core import pods
from modelyard.pipelines.definition import PipelineSpec, Resources, StepSpec

DEFAULT_IMAGE = c.TOOLKIT_IMAGE
PIPELINE_DIR = c.PIPELINE_DIR
PIPELINE_FILE = c.PIPELINE_FILE
LAKE_MOUNT = c.LAKE_MOUNT


#: The orchestrating pod only watches Jobs: small, whatever its steps need.
ORCHESTRATOR_RESOURCES = Resources(
    requests={"cpu": "100m", "memory": "256Mi"}, limits={"memory": "512Mi"}
)
#: Step pods of pipelines that declare no resources (the chart's pipelines.resources).
DEFAULT_STEP_RESOURCES = Resources(
    requests={"cpu": "500m", "memory": "1Gi"}, limits={"memory": "2Gi"}
)
#: What the orchestrating pod may do, in its own namespace only (docs/pipelines.md).
ORCHESTRATOR_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": ["batch"],
        "resources": ["jobs"],
        "verbs": ["get", "list", "watch", "create", "delete"],
    },
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
]


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
    # kubernetes: the CronJob's pod runs each step as its own Job (it needs the
    # ServiceAccount and Role of build_rbac); local: every step a process in that pod.
    executor: Literal["kubernetes", "local"] = "kubernetes"
    # Container resources of the step pods of a pipeline that declares none.
    step_resources: Resources = field(default_factory=lambda: DEFAULT_STEP_RESOURCES)
    # Step pods on the orchestrator's node: the lake is a ReadWriteOnce volume.
    steps_on_node: bool = False
    # Secret (and key) with the study storage URL of tuning steps.
    study_storage_secret: str | None = None
    study_storage_key: str = "url"
    # Without a Secret: the study storage's address, e.g. the chart's proxy
    # (grpc://<release>-modelyard-mlflow:50051).
    study_storage_url: str | None = None


def kubernetes_name(*parts: str, limit: int = 63) -> str:
    """A DNS-1123 label made of ``parts`` (``_`` becomes ``-``), at most ``limit`` chars."""
    name = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    return name[:limit].rstrip("-")


def service_account_name(spec: PipelineSpec, options: RenderOptions) -> str:
    return options.service_account or kubernetes_name(spec.name, "pipeline")


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
    if options.executor == "kubernetes":
        env += _orchestrator_env(spec, options)
    env += _study_storage_env(options)
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
        # Only the orchestrator talks to the API server; a step (or a whole local run)
        # talks to the lake and the registry.
        "automountServiceAccountToken": options.executor == "kubernetes",
        "securityContext": pods.restricted_pod_security_context(),
        "containers": [container],
        "volumes": volumes,
    }
    if options.executor == "kubernetes" or options.service_account:
        pod["serviceAccountName"] = service_account_name(spec, options)
    if options.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in options.image_pull_secrets]
    return pod


def _orchestrator_env(spec: PipelineSpec, options: RenderOptions) -> list[dict[str, Any]]:
    def field_ref(path: str) -> dict[str, Any]:
        return {"fieldRef": {"fieldPath": path}}

    step_resources = spec.resources if _declares(spec.resources) else options.step_resources
    env: list[dict[str, Any]] = [
        {"name": c.PipelineEnv.EXECUTOR, "value": "kubernetes"},
        {"name": c.PipelineEnv.POD_NAME, "valueFrom": field_ref("metadata.name")},
        {"name": c.PipelineEnv.POD_NAMESPACE, "valueFrom": field_ref("metadata.namespace")},
        {"name": c.PipelineEnv.STEP_RESOURCES, "value": resources_json(step_resources)},
    ]
    if options.steps_on_node:
        env.append({"name": c.PipelineEnv.STEPS_ON_NODE, "value": "true"})
    return env


def _study_storage_env(options: RenderOptions) -> list[dict[str, Any]]:
    if not options.study_storage_secret:
        if options.study_storage_url:
            return [{"name": c.PipelineEnv.STUDY_STORAGE, "value": options.study_storage_url}]
        return []
    ref = {"name": options.study_storage_secret, "key": options.study_storage_key}
    return [{"name": c.PipelineEnv.STUDY_STORAGE, "valueFrom": {"secretKeyRef": ref}}]


def resources_json(resources: Resources) -> str:
    """Resources as the chart's ``toJson`` writes them (sorted keys, no spaces)."""
    return json.dumps(_resources(resources), sort_keys=True, separators=(",", ":"))


def _declares(resources: Resources | None) -> bool:
    return resources is not None and bool(resources.requests or resources.limits)


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
    if options.executor == "kubernetes":
        resources: Resources | None = ORCHESTRATOR_RESOURCES
    else:
        resources = spec.resources if _declares(spec.resources) else None
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


@dataclass(frozen=True)
class StepPodTemplate:
    """What every step pod of a run starts from: the orchestrating pod's labels and pod
    spec (one ``pipeline`` container), without its arguments and resources."""

    labels: dict[str, str]
    pod_spec: dict[str, Any]
    pipeline_path: str


#: Labels the Job controller puts on its pods; a step's pods get their own.
_JOB_CONTROLLER_LABELS = (
    "batch.kubernetes.io/controller-uid",
    "batch.kubernetes.io/job-name",
    "batch.kubernetes.io/job-completion-index",
    "controller-uid",
    "job-name",
)
#: Environment of the orchestrator only.
_ORCHESTRATOR_ENV = {
    c.PipelineEnv.EXECUTOR,
    c.PipelineEnv.POD_NAME,
    c.PipelineEnv.POD_NAMESPACE,
    c.PipelineEnv.STEP_RESOURCES,
    c.PipelineEnv.STEPS_ON_NODE,
}
_POD_FIELDS = (
    "securityContext",
    "imagePullSecrets",
    "nodeSelector",
    "tolerations",
    "affinity",
    "priorityClassName",
    "runtimeClassName",
)
_CONTAINER_FIELDS = (
    "image",
    "imagePullPolicy",
    "command",
    "envFrom",
    "securityContext",
    "workingDir",
)


def template_from_options(spec: PipelineSpec, options: RenderOptions) -> StepPodTemplate:
    """The step pod template ``pipeline render --job`` uses (no orchestrator to copy)."""
    local = RenderOptions(**{**options.__dict__, "executor": "local", "service_account": None})
    labels = {**_labels(spec), c.LABEL_REGISTRY_CLIENT: "true"}
    return StepPodTemplate(labels, _pod_spec(spec, local, [], None), _pipeline_path(options))


def template_from_pod(pod: dict[str, Any]) -> StepPodTemplate:
    """The orchestrating pod (as the API server returns it) made into its steps' template:
    the same image, environment, volumes (lake, pipeline file, credentials), security
    contexts, pull secrets and scheduling constraints, so whatever the chart gives the
    pipeline's pod its steps get too; but no service account token, and none of what
    the API server or the Job controller filled in."""
    metadata, spec = pod["metadata"], pod["spec"]
    [container] = [x for x in spec["containers"] if x["name"] == "pipeline"]
    token_volumes = {
        volume["name"]
        for volume in spec.get("volumes") or []
        if any(
            "serviceAccountToken" in source
            for source in (volume.get("projected") or {}).get("sources") or []
        )
    }
    step_container: dict[str, Any] = {"name": "pipeline"}
    step_container.update(
        {k: copy.deepcopy(container[k]) for k in _CONTAINER_FIELDS if k in container}
    )
    step_container["env"] = [
        copy.deepcopy(e) for e in container.get("env") or [] if e["name"] not in _ORCHESTRATOR_ENV
    ]
    step_container["volumeMounts"] = [
        copy.deepcopy(m)
        for m in container.get("volumeMounts") or []
        if m["name"] not in token_volumes
    ]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "containers": [step_container],
        "volumes": [
            copy.deepcopy(v) for v in spec.get("volumes") or [] if v["name"] not in token_volumes
        ],
    }
    pod_spec.update({k: copy.deepcopy(spec[k]) for k in _POD_FIELDS if spec.get(k)})
    env = {e["name"]: e.get("value") for e in container.get("env") or []}
    if env.get(c.PipelineEnv.STEPS_ON_NODE) == "true" and spec.get("nodeName"):
        pod_spec["affinity"] = {
            **pod_spec.get("affinity", {}),
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchFields": [
                                {
                                    "key": "metadata.name",
                                    "operator": "In",
                                    "values": [spec["nodeName"]],
                                }
                            ]
                        }
                    ]
                }
            },
        }
    labels = {
        k: v for k, v in (metadata.get("labels") or {}).items() if k not in _JOB_CONTROLLER_LABELS
    }
    args = container.get("args") or [f"{PIPELINE_DIR}/{PIPELINE_FILE}"]
    return StepPodTemplate(labels, pod_spec, args[0])


def step_job_name(pipeline: str, run_date: dt.date, step: str) -> str:
    """The Job of ``step`` in the run of ``pipeline`` for ``run_date``: the same name
    every time, so an orchestrator that restarts finds the Jobs it already created.
    At most 52 characters (an Indexed Job's pods are named after it); a longer name is
    cut and made unique with a hash."""
    name = kubernetes_name(pipeline, run_date.strftime("%Y%m%d"), step, limit=253)
    if len(name) <= 52:
        return name
    digest = hashlib.sha256(f"{pipeline}/{run_date}/{step}".encode()).hexdigest()[:8]
    return f"{name[:43].rstrip('-')}-{digest}"


def run_selector(pipeline: str, run_date: dt.date) -> str:
    """The label selector of a run's step Jobs and their pods."""
    return f"{c.LABEL_PIPELINE}={pipeline},{c.LABEL_RUN_DATE}={run_date.isoformat()}"


def build_step_job(
    spec: PipelineSpec,
    step: StepSpec,
    template: StepPodTemplate,
    run_date: dt.date,
    *,
    run_id: str | None = None,
    default_resources: Resources | None = None,
    extra_labels: dict[str, str] | None = None,
    owner: dict[str, Any] | None = None,
    ttl_seconds_after_finished: int = 86_400,
) -> dict[str, Any]:
    """The Job that runs ``step`` once (``--step STEP``), or as an Indexed Job whose pod
    ``i`` gets JOB_COMPLETION_INDEX=i from Kubernetes, for a fanned-out or parallel step.

    The step's retries become the Job's backoff limit (per index for an Indexed Job), its
    timeout the pod's ``activeDeadlineSeconds`` (per attempt, as in a local run), and the
    Job's ``activeDeadlineSeconds`` is every attempt's worst case.
    """
    labels = {
        **template.labels,
        c.LABEL_PIPELINE: spec.name,
        c.LABEL_STEP: kubernetes_name(step.name),
        c.LABEL_RUN_DATE: run_date.isoformat(),
        **(extra_labels or {}),
    }
    pod = copy.deepcopy(template.pod_spec)
    [container] = pod["containers"]
    container["args"] = [template.pipeline_path, "--step", step.name]
    env = [
        e
        for e in container.get("env") or []
        if e["name"] not in (c.PipelineEnv.RUN_DATE, c.PipelineEnv.RUN_ID)
    ]
    env.append({"name": c.PipelineEnv.RUN_DATE, "value": run_date.isoformat()})
    if run_id:
        env.append({"name": c.PipelineEnv.RUN_ID, "value": run_id})
    container["env"] = env
    resources = next(
        (r for r in (step.resources, spec.resources, default_resources) if _declares(r)), None
    )
    container.pop("resources", None)
    if resources is not None:
        container["resources"] = _resources(resources)
    if step.timeout_seconds:
        pod["activeDeadlineSeconds"] = math.ceil(step.timeout_seconds)
    attempts = step.retries.attempts
    per_attempt = step.timeout_seconds or 3600
    indexes = step.indexes
    waves = math.ceil(indexes.completions / indexes.parallelism) if indexes else 1
    # Kubernetes waits 10 s, 20 s, 40 s ... before recreating a failed pod.
    backoff = sum(min(10 * 2**n, 360) for n in range(attempts - 1))
    job_spec: dict[str, Any] = {
        "activeDeadlineSeconds": int(waves * (attempts * per_attempt + backoff)) + 120,
        "ttlSecondsAfterFinished": ttl_seconds_after_finished,
    }
    if indexes is None:
        job_spec["backoffLimit"] = attempts - 1
    else:
        job_spec.update(
            completionMode="Indexed",
            completions=indexes.completions,
            parallelism=indexes.parallelism,
            backoffLimitPerIndex=attempts - 1,
        )
    job_spec["template"] = {"metadata": {"labels": labels}, "spec": pod}
    metadata: dict[str, Any] = {
        "name": step_job_name(spec.name, run_date, step.name),
        "labels": labels,
    }
    if run_id:
        metadata["annotations"] = {c.ANNOTATION_RUN_ID: run_id}
    if owner is not None:
        metadata["ownerReferences"] = [owner]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


def build_rbac(spec: PipelineSpec, options: RenderOptions) -> list[dict[str, Any]]:
    """The orchestrating pod's ServiceAccount and what it may do: Jobs and their pods in
    its own namespace, nothing else."""
    name = service_account_name(spec, options)
    labels = _labels(spec)
    subject: dict[str, Any] = {"kind": "ServiceAccount", "name": name}
    if options.namespace:
        subject["namespace"] = options.namespace
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _metadata(name, labels, options),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _metadata(name, labels, options),
            "rules": copy.deepcopy(ORCHESTRATOR_RULES),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _metadata(name, labels, options),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [subject],
        },
    ]


def build_manifests(
    spec: PipelineSpec,
    source_text: str,
    options: RenderOptions,
    job_step: str | None = None,
    run_date: dt.date | None = None,
) -> list[dict[str, Any]]:
    """ConfigMap (unless the file is in the image) plus the CronJob and, when it
    orchestrates, its ServiceAccount and Role; or the Job of ``job_step``."""
    objects: list[dict[str, Any]] = []
    if options.pipeline_path_in_image is None:
        objects.append(build_config_map(spec, source_text, options))
    if job_step is None:
        if options.executor == "kubernetes":
            objects += build_rbac(spec, options)
        objects.append(build_cronjob(spec, options))
    else:
        job = build_step_job(
            spec,
            spec.steps_by_name[job_step],
            template_from_options(spec, options),
            run_date or dt.datetime.now(dt.UTC).date(),
            default_resources=options.step_resources,
            ttl_seconds_after_finished=options.ttl_seconds_after_finished,
        )
        if options.namespace:
            job["metadata"]["namespace"] = options.namespace
        objects.append(job)
    return objects
