"""Drift monitoring of a ModelDeployment: pure builders and the episode logic.

The drift CronJob runs ``modelyard drift check`` against the served version's lineage and
prediction log and logs its verdict to MLflow (a run, plus ``modelyard.drift.last_*``
tags on the model version). It needs no Kubernetes API access: the operator reads those
tags on its timer and records them in ``status.drift`` and the ``DataDrift`` condition,
and starts the retraining Job when a drift episode begins. Nothing here talks to a
cluster or a registry.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelyard.core import contracts as c
from modelyard.core import pods
from modelyard.core.registry import ModelVersion
from modelyard.operator.children import ServerPlan, prediction_log_env_from
from modelyard.operator.resource import DriftMonitoring, Retrain

# The check uses both cores when it can (columns in parallel); it asks for a quarter of one.
DRIFT_CPU_REQUEST = "250m"
# CronJob names are limited to 52 characters (the Job names get a suffix).
CRONJOB_NAME_MAX = 52
#: The shadow comparison holds one window of two versions' predictions (no features).
SHADOW_COMPARE_MEMORY = "512Mi"


def _cronjob_name(md_name: str, suffix: str) -> str:
    name = f"{md_name}-{suffix}"
    if len(name) <= CRONJOB_NAME_MAX:
        return name
    digest = hashlib.sha256(md_name.encode()).hexdigest()[:6]
    keep = CRONJOB_NAME_MAX - len(suffix) - 8
    return f"{md_name[:keep].rstrip('-')}-{digest}-{suffix}"


def drift_cronjob_name(md_name: str) -> str:
    return _cronjob_name(md_name, "drift")


def shadow_compare_cronjob_name(md_name: str) -> str:
    return _cronjob_name(md_name, "shadow-compare")


def drift_labels(md_name: str) -> dict[str, str]:
    """Not the server's labels: the server's Service must never select a drift pod."""
    return pods.app_labels("modelyard-drift", md_name, "drift-check")


def drift_check_args(plan: ServerPlan, drift: DriftMonitoring, prediction_log: str) -> list[str]:
    """``modelyard drift check`` for the live version; the tracking URI comes from env."""
    return [
        "drift",
        "check",
        "--model",
        plan.model.name,
        "--version",
        str(plan.model.version),
        "--prediction-log",
        prediction_log,
        "--window",
        drift.window,
        "--drift-share",
        f"{drift.thresholds.drift_share:g}",
        # What the check holds for data at once: half the pod's memory limit.
        "--memory-budget",
        drift.resources.memory_budget,
        # The verdict goes to MLflow; the Job fails only when the check could not run.
        "--fail-on",
        "never",
        "--log-to-mlflow",
        # The verdict is this deployment's alone (another may serve the same version).
        "--deployment",
        f"{plan.namespace}/{plan.name}",
        "--json",
    ]


def drift_resources(drift: DriftMonitoring) -> dict[str, dict[str, str]]:
    """The drift container's resources: ``spec.monitoring.drift.resources`` (memory)."""
    return {
        "requests": {"cpu": DRIFT_CPU_REQUEST, "memory": drift.resources.requests.memory},
        "limits": {"memory": drift.resources.limits.memory},
    }


def build_drift_cronjob(
    plan: ServerPlan,
    drift: DriftMonitoring,
    *,
    prediction_log: str,
    image: str,
    image_pull_policy: str,
) -> dict[str, Any]:
    """The CronJob checking the served version's prediction log for drift."""
    return _registry_cronjob(
        plan,
        name=drift_cronjob_name(plan.name),
        labels=drift_labels(plan.name),
        container="drift",
        args=drift_check_args(plan, drift, prediction_log),
        resources=drift_resources(drift),
        schedule=drift.schedule,
        image=image,
        image_pull_policy=image_pull_policy,
        # The drift check loads the model too.
        loads_model=True,
    )


def shadow_compare_labels(md_name: str) -> dict[str, str]:
    return pods.app_labels("modelyard-shadow-compare", md_name, "shadow-compare")


def shadow_compare_args(
    plan: ServerPlan, shadow: ModelVersion, prediction_log: str, window: str
) -> list[str]:
    """``modelyard shadow compare`` of the live version and the shadow; the verdict goes
    to MLflow (metrics, and a tag the operator reads into ``status.shadow``)."""
    return [
        "shadow",
        "compare",
        "--model",
        plan.model.name,
        "--stable",
        str(plan.model.version),
        "--shadow",
        str(shadow.version),
        "--prediction-log",
        prediction_log,
        "--window",
        window,
        "--log-to-mlflow",
        "--deployment",
        f"{plan.namespace}/{plan.name}",
        "--json",
    ]


def build_shadow_compare_cronjob(
    plan: ServerPlan,
    shadow: ModelVersion,
    *,
    prediction_log: str,
    schedule: str,
    window: str,
    image: str,
    image_pull_policy: str,
) -> dict[str, Any]:
    """The CronJob comparing the shadow's logged answers with the live version's."""
    return _registry_cronjob(
        plan,
        name=shadow_compare_cronjob_name(plan.name),
        labels=shadow_compare_labels(plan.name),
        container="compare",
        args=shadow_compare_args(plan, shadow, prediction_log, window),
        resources={
            "requests": {"cpu": DRIFT_CPU_REQUEST, "memory": SHADOW_COMPARE_MEMORY},
            "limits": {"memory": SHADOW_COMPARE_MEMORY},
        },
        schedule=schedule,
        image=image,
        image_pull_policy=image_pull_policy,
        loads_model=False,
    )


def _registry_cronjob(
    plan: ServerPlan,
    *,
    name: str,
    labels: dict[str, str],
    container: str,
    args: list[str],
    resources: dict[str, dict[str, str]],
    schedule: str,
    image: str,
    image_pull_policy: str,
    loads_model: bool,
) -> dict[str, Any]:
    """A CronJob of ``modelyard`` writing to the registry with the drift check's user: no
    Kubernetes API access, exit codes 2 and 4 (bad input, nothing to check) not retried."""
    env: list[dict[str, Any]] = [
        {"name": c.TRACKING_URI_ENV, "value": plan.tracking_uri},
        {"name": "HOME", "value": "/tmp"},
        {"name": "MPLCONFIGDIR", "value": "/tmp/matplotlib"},
    ]
    if loads_model and plan.spec.server.allow_pickle:
        env.append({"name": c.ServerEnv.ALLOW_PICKLE, "value": "true"})
    if plan.drift_credentials_secret is not None:
        env.extend(pods.credential_env(plan.drift_credentials_secret))
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pods.restricted_pod_security_context(),
        "containers": [
            {
                "name": container,
                "image": image,
                "imagePullPolicy": image_pull_policy,
                "command": ["modelyard"],
                "args": args,
                "env": env,
                **prediction_log_env_from(plan),
                "resources": resources,
                "securityContext": pods.restricted_container_security_context(),
                "volumeMounts": [pods.tmp_mount()],
            }
        ],
        "volumes": [pods.tmp_volume("2Gi")],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name, "namespace": plan.namespace, "labels": dict(labels)},
        "spec": {
            "schedule": schedule,
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 600,
            "successfulJobsHistoryLimit": 1,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "backoffLimit": 2,
                    "activeDeadlineSeconds": 3600,
                    "podFailurePolicy": {
                        "rules": [
                            {
                                "action": "FailJob",
                                "onExitCodes": {
                                    "containerName": container,
                                    "operator": "In",
                                    "values": list(c.DRIFT_NO_RETRY_EXIT_CODES),
                                },
                            }
                        ]
                    },
                    "template": {
                        "metadata": {
                            "labels": {**labels, c.LABEL_REGISTRY_CLIENT: "true"},
                            "annotations": {
                                c.ANNOTATION_MODEL_URI: plan.model.uri,
                                c.ANNOTATION_MODEL_VERSION: str(plan.model.version),
                            },
                        },
                        "spec": pod_spec,
                    },
                },
            },
        },
    }


def _bool(value: str | None) -> bool | None:
    return {"true": True, "false": False}.get((value or "").lower())


@dataclass(frozen=True)
class DriftResult:
    """The latest drift check of a model version, as its registry tags record it."""

    run_id: str
    checked_at: str
    status: str
    dataset_drift: bool | None
    prediction_drift: bool | None
    drifted_columns: tuple[str, ...]
    share: float | None
    message: str

    @classmethod
    def from_tags(
        cls, tags: Mapping[str, str], deployment: tuple[str, str] | None = None
    ) -> DriftResult | None:
        """The last check for ``deployment`` (its own ``modelyard.drift/<ns>/<name>.*``
        tags), or the plain tags of a check run without one."""
        if deployment is not None:
            tags = {
                key: tags[c.DriftTags.keyed(key, deployment)]
                for key in (
                    c.DriftTags.LAST_RUN_ID,
                    c.DriftTags.LAST_DRIFTED_COLUMNS,
                    c.DriftTags.LAST_SHARE,
                    c.DriftTags.LAST_CHECKED,
                    c.DriftTags.LAST_STATUS,
                    c.DriftTags.LAST_DATASET_DRIFT,
                    c.DriftTags.LAST_PREDICTION_DRIFT,
                    c.DriftTags.LAST_MESSAGE,
                )
                if c.DriftTags.keyed(key, deployment) in tags
            }
        run_id = tags.get(c.DriftTags.LAST_RUN_ID)
        if not run_id:
            return None
        columns = tags.get(c.DriftTags.LAST_DRIFTED_COLUMNS) or ""
        share = tags.get(c.DriftTags.LAST_SHARE) or ""
        try:
            share_value: float | None = float(share) if share else None
        except ValueError:
            share_value = None
        return cls(
            run_id=run_id,
            checked_at=tags.get(c.DriftTags.LAST_CHECKED) or "",
            status=tags.get(c.DriftTags.LAST_STATUS) or "unknown",
            dataset_drift=_bool(tags.get(c.DriftTags.LAST_DATASET_DRIFT)),
            prediction_drift=_bool(tags.get(c.DriftTags.LAST_PREDICTION_DRIFT)),
            drifted_columns=tuple(col for col in columns.split(",") if col),
            share=share_value,
            message=tags.get(c.DriftTags.LAST_MESSAGE) or "",
        )

    @property
    def checked(self) -> bool:
        return self.status == "ok"

    @property
    def drift_found(self) -> bool:
        """Dataset or prediction drift, as the CLI's ``--fail-on drift`` decides."""
        return self.checked and (bool(self.dataset_drift) or bool(self.prediction_drift))

    @property
    def report_uri(self) -> str:
        return f"runs:/{self.run_id}/{c.DRIFT_REPORT_ARTIFACT}"


@dataclass(frozen=True)
class DriftAssessment:
    """What to write in ``status.drift`` and the DataDrift condition, and whether a
    retraining Job is due for the current episode."""

    status: dict[str, Any]
    condition_status: bool | None
    reason: str
    message: str
    start_retrain: bool


def _columns(columns: tuple[str, ...]) -> str:
    shown = ", ".join(columns[:10])
    return shown + (f" and {len(columns) - 10} more" if len(columns) > 10 else "")


def assess(
    result: DriftResult | None,
    previous: Mapping[str, Any] | None,
    version: int,
    drift: DriftMonitoring,
) -> DriftAssessment:
    """Level-based: the latest check of the live version, plus the episode carried over.

    An episode starts with the first check that finds drift and lasts until a check finds
    none, or another version goes live; at most one retraining Job is started per episode.
    A check that could not compare the data (no data, schema mismatch) neither starts nor
    ends one.
    """
    same_version = previous is not None and previous.get("version") == version
    episode = dict(previous.get("episode") or {}) if previous and same_version else {}
    retrain_job = str(previous.get("retrainJob") or "") if previous and same_version else ""
    status: dict[str, Any] = {"version": version, "schedule": drift.schedule}
    if result is None:
        reason, word = "Pending", None
        message = (
            f"no drift check of version {version} has run yet (schedule {drift.schedule!r}, "
            f"window {drift.window})"
        )
    else:
        status.update(
            {
                "checkedAt": result.checked_at or None,
                "runId": result.run_id,
                "status": result.status,
                "datasetDrift": result.dataset_drift,
                "predictionDrift": result.prediction_drift,
                "driftFound": result.drift_found,
                "driftedColumns": list(result.drifted_columns),
                "share": result.share,
                "message": result.message,
                "reportUri": result.report_uri,
            }
        )
        if not result.checked:
            reason, word = "NotChecked", None
            message = f"the last check could not compare the data ({result.status})"
            if result.message:
                message += f": {result.message}"
        elif result.drift_found:
            reason, word = "DriftDetected", True
            what = [
                kind
                for kind, found in (
                    ("dataset", result.dataset_drift),
                    ("prediction", result.prediction_drift),
                )
                if found
            ]
            message = f"{' and '.join(what)} drift in version {version}"
            if result.drifted_columns:
                message += f"; drifted columns: {_columns(result.drifted_columns)}"
            if result.share is not None:
                message += (
                    f" (share {result.share:.2g}, threshold {drift.thresholds.drift_share:g})"
                )
            if not episode:
                episode = {"runId": result.run_id, "startedAt": result.checked_at or None}
        else:
            reason, word = "NoDrift", False
            message = f"no drift in version {version}"
            if result.drifted_columns:
                message += f" (below the threshold: {_columns(result.drifted_columns)} drifted)"
            episode, retrain_job = {}, ""
    if episode:
        status["episode"] = episode
    if retrain_job:
        status["retrainJob"] = retrain_job
    start = (
        drift.retrain is not None
        and result is not None
        and result.drift_found
        and bool(episode)
        and not retrain_job
    )
    return DriftAssessment(status, word, reason, message, start)


def retrain_job_name(retrain: Retrain, owner_uid: str, episode_run_id: str) -> str:
    """One name per (ModelDeployment, episode): creating it twice is a conflict, not a
    second training run."""
    digest = hashlib.sha256(f"{owner_uid}/{episode_run_id}".encode()).hexdigest()[:10]
    return f"{retrain.cron_job_name}-{digest}"


def build_retrain_job(
    cronjob: Mapping[str, Any], job_name: str, md_name: str, drift_run_id: str
) -> dict[str, Any]:
    """A Job from the CronJob's template, as ``kubectl create job --from=cronjob/...``."""
    meta = cronjob["metadata"]
    template = cronjob["spec"]["jobTemplate"]
    template_meta = template.get("metadata") or {}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name,
            "namespace": meta["namespace"],
            "labels": {**(template_meta.get("labels") or {}), c.LABEL_DRIFT_OF: md_name},
            "annotations": {
                **(template_meta.get("annotations") or {}),
                "cronjob.kubernetes.io/instantiate": "manual",
                c.ANNOTATION_DRIFT_RUN: drift_run_id,
                c.ANNOTATION_TRIGGERED_BY: f"ModelDeployment/{md_name}",
            },
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "CronJob",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": copy.deepcopy(template["spec"]),
    }
