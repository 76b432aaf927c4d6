"""The plan phase: from a ModelDeployment and what its reference resolved to, decide
what to apply, what to delete, what to tell (Events, registry tags) and what status to
write. Pure: no cluster, no registry; the decision tests call it directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modelyard.core import contracts as c
from modelyard.core.registry import ModelVersion, ResolvedModel
from modelyard.operator import conditions as cond
from modelyard.operator.children import (
    ServerPlan,
    build_server_deployment,
    build_server_hpa,
    build_server_pdb,
    build_server_service,
    server_url,
)
from modelyard.operator.monitoring import (
    DriftResult,
    assess,
    build_drift_cronjob,
    drift_cronjob_name,
    retrain_job_name,
)
from modelyard.operator.resolve import Failure, Resolution
from modelyard.operator.resource import ModelDeploymentSpec
from modelyard.operator.settings import OperatorSettings

HISTORY_LIMIT = 10


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class TagChange:
    """A registry tag to set (``value``) or delete (``value is None``)."""

    model: str
    version: int
    key: str
    value: str | None


@dataclass(frozen=True)
class ChildRef:
    api_version: str
    kind: str
    name: str


@dataclass(frozen=True)
class RetrainIntent:
    """A drift episode began: start one Job from this CronJob (if it exists)."""

    cron_job_name: str
    job_name: str
    drift_run_id: str
    version: int


@dataclass
class Plan:
    """What one reconcile does; ``status`` is the whole status to write."""

    status: dict[str, Any]
    apply: list[dict[str, Any]] = field(default_factory=list)
    delete: list[ChildRef] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    tags: list[TagChange] = field(default_factory=list)
    retrain: RetrainIntent | None = None
    failure: Failure | None = None
    #: The server Deployment is applied: its health decides Ready/Progressing/Degraded.
    serves: bool = False
    #: Look again after this many seconds even if nothing changes (something awaited).
    requeue_after: float | None = None


def _conditions(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(x) for x in status.get("conditions") or []]


def plan_failure(body: dict[str, Any], failure: Failure, reference: str | None) -> Plan:
    """Nothing is applied: a running server is left exactly as it is."""
    generation = int(body["metadata"].get("generation") or 0)
    status = dict(body.get("status") or {})
    conditions = cond.set_condition(
        _conditions(status), cond.MODEL_RESOLVED, False, failure.reason, failure.message, generation
    )
    if not status.get("model"):
        conditions = cond.set_condition(
            conditions, cond.READY, False, failure.reason, failure.message, generation
        )
    status.update({"observedGeneration": generation, "conditions": conditions})
    if reference is not None:
        status["reference"] = reference
    return Plan(status=status, failure=failure)


def plan_reconcile(
    body: dict[str, Any],
    spec: ModelDeploymentSpec,
    resolution: Resolution,
    settings: OperatorSettings,
    now: str | None = None,
) -> Plan:
    """The plan for one ModelDeployment, given what its reference resolved to."""
    if resolution.failure is not None or resolution.model is None or resolution.target is None:
        failure = resolution.failure or Failure("RegistryError", "the reference did not resolve")
        return plan_failure(body, failure, spec.model.label)
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    generation = int(meta.get("generation") or 0)
    resolved = resolution.model
    version = resolved.version
    old = dict(body.get("status") or {})
    live = dict(old.get("model") or {})
    now = now or cond.now_rfc3339()

    conditions = cond.set_condition(
        _conditions(old),
        cond.MODEL_RESOLVED,
        True,
        "Resolved",
        f"{spec.model.label} of model {version.name!r} is version {version.version}",
        generation,
    )
    changed = live.get("version") != version.version or live.get("name") != version.name
    since = now if changed else str(live.get("since") or now)

    server = ServerPlan(
        name=name,
        namespace=namespace,
        spec=spec,
        model=version,
        tracking_uri=resolution.target.tracking_uri,
        image=spec.server.image or settings.server_image,
        image_pull_policy=spec.server.image_pull_policy or settings.server_image_pull_policy,
        prediction_log=spec.monitoring.prediction_log or settings.prediction_log,
    )
    plan = Plan(status={}, serves=True)
    plan.apply += [build_server_deployment(server), build_server_service(server)]
    for api_version, kind, manifest in (
        ("autoscaling/v2", "HorizontalPodAutoscaler", build_server_hpa(server)),
        ("policy/v1", "PodDisruptionBudget", build_server_pdb(server)),
    ):
        if manifest is None:
            plan.delete.append(ChildRef(api_version, kind, name))
        else:
            plan.apply.append(manifest)
    drift_log = _drift_prediction_log(spec, settings)
    drift = spec.monitoring.drift
    if drift is not None and drift_log:
        plan.apply.append(
            build_drift_cronjob(
                server,
                drift,
                prediction_log=drift_log,
                image=settings.toolkit_image,
                image_pull_policy=settings.server_image_pull_policy,
            )
        )
    else:
        plan.delete.append(ChildRef("batch/v1", "CronJob", drift_cronjob_name(name)))

    history = list(old.get("history") or [])
    if changed:
        reason = _rollout_reason(spec.model.label, live.get("version"), version.version)
        history = [
            {
                "version": version.version,
                "runId": version.run_id,
                "uri": version.uri,
                "since": since,
                "reason": reason,
            },
            *history,
        ][:HISTORY_LIMIT]
        plan.events.append(
            Event(
                "Normal",
                "RollingOut",
                f"serving model {version.name!r} version {version.version} ({reason})",
            )
        )
    plan.tags += _deployed_tags(namespace, name, live, version, since)

    conditions, drift_status, retrain = _drift(body, spec, version, old, conditions, drift_log)
    plan.retrain = retrain
    plan.status = {
        "observedGeneration": generation,
        "reference": spec.model.label,
        "drift": drift_status,
        "model": _model_status(resolved, since),
        "history": history,
        "url": server_url(name, namespace, settings.cluster_domain),
        "conditions": conditions,
    }
    return plan


def _drift_prediction_log(spec: ModelDeploymentSpec, settings: OperatorSettings) -> str | None:
    drift = spec.monitoring.drift
    if drift is None:
        return None
    return drift.prediction_log or spec.monitoring.prediction_log or settings.prediction_log


def _deployed_tags(
    namespace: str, name: str, live: dict[str, Any], version: ModelVersion, since: str
) -> list[TagChange]:
    """The served version carries the deployment's tag, the previous one loses it. Written
    only when missing: an unchanged deployment makes no registry writes."""
    key = c.deployed_tag_key(namespace, name)
    changes: list[TagChange] = []
    old_name, old_version = live.get("name"), live.get("version")
    if old_name and old_version and (old_name, old_version) != (version.name, version.version):
        changes.append(TagChange(str(old_name), int(old_version), key, None))
    if key not in version.tags:
        changes.append(TagChange(version.name, version.version, key, since))
    return changes


def _drift(
    body: dict[str, Any],
    spec: ModelDeploymentSpec,
    version: ModelVersion,
    old: dict[str, Any],
    conditions: list[dict[str, Any]],
    drift_log: str | None,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None, RetrainIntent | None]:
    """The DataDrift condition and ``status.drift`` from the live version's registry tags
    (written by the drift CronJob). ``None`` for the status removes it (merge patch)."""
    meta = body["metadata"]
    generation = int(meta.get("generation") or 0)
    drift = spec.monitoring.drift
    if drift is None:
        return [x for x in conditions if x.get("type") != cond.DATA_DRIFT], None, None
    if not drift_log:
        message = (
            "no prediction log to check: set spec.monitoring.predictionLog (the operator "
            "has no MODELYARD_PREDICTION_LOG)"
        )
        conditions = cond.set_condition(
            conditions, cond.DATA_DRIFT, None, "NoPredictionLog", message, generation
        )
        return conditions, None, None
    previous = old.get("drift")
    result = DriftResult.from_tags(version.tags)
    assessment = assess(result, previous, version.version, drift)
    drift_status = dict(assessment.status)
    retrain: RetrainIntent | None = None
    if assessment.start_retrain and drift.retrain is not None and result is not None:
        episode_run = str(drift_status["episode"]["runId"])
        retrain = RetrainIntent(
            cron_job_name=drift.retrain.cron_job_name,
            job_name=retrain_job_name(drift.retrain, meta["uid"], episode_run),
            drift_run_id=result.run_id,
            version=version.version,
        )
    message = assessment.message
    if drift_status.get("retrainJob"):
        message += f"; retraining Job {drift_status['retrainJob']}"
    for key in previous or {}:
        drift_status.setdefault(key, None)  # merge patch: a key left out would stay
    conditions = cond.set_condition(
        conditions,
        cond.DATA_DRIFT,
        assessment.condition_status,
        assessment.reason,
        message,
        generation,
    )
    return conditions, drift_status, retrain


def _model_status(resolved: ResolvedModel, since: str) -> dict[str, Any]:
    version = resolved.version
    return {
        "name": version.name,
        "version": version.version,
        "runId": version.run_id,
        "uri": version.uri,
        "source": version.source,
        "since": since,
        "datasets": [d.to_status() for d in resolved.datasets],
    }


def _rollout_reason(label: str, previous: Any, new: int) -> str:
    if previous is None:
        return f"{label} is version {new}"
    return f"{label} moved from version {previous} to {new}"
