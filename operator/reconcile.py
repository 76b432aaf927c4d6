"""The reconciliation of one ModelDeployment: level-based, safe to repeat.

Every path (create, spec update, resume after a restart, the periodic timer, a change of
the server Deployment) ends here or in :func:`refresh_health`: read the object fresh,
work out what should run, apply it, write what is true to ``status``.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modelyard.operator import conditions as cond
from modelyard.operator.children import (
    ServerPlan,
    build_server_deployment,
    build_server_hpa,
    build_server_pdb,
    build_server_service,
    deployment_health,
    server_url,
)
from modelyard.operator.kube import ChildConflict, Kube
from modelyard.operator.monitoring import (
    DriftResult,
    assess,
    build_drift_cronjob,
    build_retrain_job,
    drift_cronjob_name,
    retrain_job_name,
)
from modelyard.operator.registry import (
    Credentials,
    RegistryClient,
    RegistryError,
    RegistryUnavailable,
    ResolvedModel,
)
from modelyard.operator.resource import GROUP, PLURAL, VERSION, ModelDeploymentSpec
from modelyard.operator.settings import OperatorSettings

logger = logging.getLogger(__name__)

HISTORY_LIMIT = 10

# Posts a Kubernetes Event about the ModelDeployment: (body, type, reason, message).
EventPoster = Callable[[dict[str, Any], str, str, str], None]


class ReconcileFailed(Exception):
    """Reconciliation could not finish; ``permanent`` when the user must fix the spec."""

    def __init__(self, message: str, *, permanent: bool = False, delay: float = 15) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.delay = delay


@dataclass
class Operator:
    """Process-wide state: clients, settings, and one lock per ModelDeployment so that
    the timer and the event handlers never reconcile the same object at once."""

    settings: OperatorSettings
    api_client: client.ApiClient
    post_event: EventPoster
    registry_factory: Callable[[str, Credentials | None], RegistryClient] = RegistryClient
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.kube = Kube(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.core = client.CoreV1Api(self.api_client)

    def lock(self, uid: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(uid, threading.Lock())

    def forget(self, uid: str) -> None:
        with self._locks_guard:
            self._locks.pop(uid, None)

    # ------------------------------------------------------------------ API helpers
    def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return dict(cast(dict[str, Any], obj))

    def write_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status}
        )

    def credentials(self, namespace: str, spec: ModelDeploymentSpec) -> Credentials | None:
        ref = spec.registry.credentials_secret_ref
        if ref is None:
            return None
        try:
            secret = self.core.read_namespaced_secret(ref.name, namespace)
        except ApiException as e:
            if e.status == 404:
                raise RegistryCredentialsMissing(
                    f"Secret {namespace}/{ref.name} named in spec.registry.credentialsSecretRef "
                    "does not exist"
                ) from e
            raise
        data = {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
        return Credentials.from_secret_data(data)

    def tracking_uri(self, spec: ModelDeploymentSpec) -> str:
        uri = spec.registry.tracking_uri or self.settings.default_tracking_uri
        if not uri:
            raise ReconcileFailed(
                "no registry: set spec.registry.trackingUri (the operator has no default "
                "MODELYARD_DEFAULT_TRACKING_URI)",
                permanent=True,
            )
        return uri


class RegistryCredentialsMissing(RegistryError):
    reason = "CredentialsNotFound"


def _conds(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(c) for c in status.get("conditions") or []]


def _with_health(
    conditions: list[dict[str, Any]], deployment: dict[str, Any] | None, generation: int
) -> list[dict[str, Any]]:
    health = deployment_health(deployment)
    conditions = cond.set_condition(
        conditions, cond.READY, health.ready, health.reason, health.message, generation
    )
    conditions = cond.set_condition(
        conditions,
        cond.PROGRESSING,
        health.progressing,
        health.reason if health.progressing else "Stable",
        health.message if health.progressing else "no rollout in progress",
        generation,
    )
    return cond.set_condition(
        conditions,
        cond.DEGRADED,
        health.degraded,
        health.reason if health.degraded else "AsExpected",
        health.message if health.degraded else "the server is running as specified",
        generation,
    )


def reconcile(op: Operator, namespace: str, name: str) -> None:
    """Bring one ModelDeployment's children and status in line with its spec and the
    registry. Raises :class:`ReconcileFailed` when it must be retried or fixed."""
    body = op.read(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    uid = body["metadata"]["uid"]
    with op.lock(uid):
        body = op.read(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        _reconcile_locked(op, body)


def _reconcile_locked(op: Operator, body: dict[str, Any]) -> None:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    generation = int(meta.get("generation") or 0)
    status: dict[str, Any] = dict(body.get("status") or {})
    conditions = _conds(status)
    spec = ModelDeploymentSpec.parse(body.get("spec") or {})
    new_status: dict[str, Any] = {
        "observedGeneration": generation,
        "reference": spec.model.label,
    }

    def fail(reason: str, message: str, *, permanent: bool = False, delay: float = 15) -> None:
        # The running server, if any, is left exactly as it is.
        new_conditions = cond.set_condition(
            conditions, cond.MODEL_RESOLVED, False, reason, message, generation
        )
        if not status.get("model"):
            new_conditions = cond.set_condition(
                new_conditions, cond.READY, False, reason, message, generation
            )
        op.write_status(namespace, name, {**new_status, "conditions": new_conditions})
        raise ReconcileFailed(message, permanent=permanent, delay=delay)

    try:
        tracking_uri = op.tracking_uri(spec)
        registry = op.registry_factory(tracking_uri, op.credentials(namespace, spec))
        resolved = registry.resolve(spec.model)
    except ReconcileFailed as e:
        fail("NoRegistry", str(e), permanent=True)
        return
    except RegistryError as e:
        delay = 30 if isinstance(e, RegistryUnavailable) else 15
        fail(e.reason, str(e), delay=delay)
        return

    conditions = cond.set_condition(
        conditions,
        cond.MODEL_RESOLVED,
        True,
        "Resolved",
        f"{spec.model.label} of model {resolved.name!r} is version {resolved.version}",
        generation,
    )
    live = status.get("model") or {}
    previous_version = live.get("version")
    previous_name = live.get("name")
    changed = previous_version != resolved.version or previous_name != resolved.name
    since = cond.now_rfc3339() if changed else str(live.get("since") or cond.now_rfc3339())

    plan = ServerPlan(
        name=name,
        namespace=namespace,
        spec=spec,
        model=resolved,
        tracking_uri=tracking_uri,
        image=spec.server.image or op.settings.server_image,
        image_pull_policy=spec.server.image_pull_policy or op.settings.server_image_pull_policy,
        prediction_log=spec.monitoring.prediction_log or op.settings.prediction_log,
    )
    drift_log = _drift_prediction_log(op, spec)
    try:
        deployment = _apply_children(op, plan, body, drift_log)
    except ChildConflict as e:
        conditions = cond.set_condition(
            conditions, cond.READY, False, "ChildConflict", str(e), generation
        )
        op.write_status(namespace, name, {**new_status, "conditions": conditions})
        raise ReconcileFailed(str(e), delay=60) from e

    model_status = _model_status(resolved, since)
    history = list(status.get("history") or [])
    if changed:
        reason = _rollout_reason(spec.model.label, previous_version, resolved.version)
        history = [
            {
                "version": resolved.version,
                "runId": resolved.run_id,
                "uri": resolved.uri,
                "since": since,
                "reason": reason,
            },
            *history,
        ][:HISTORY_LIMIT]
        op.post_event(
            body,
            "Normal",
            "RollingOut",
            f"serving model {resolved.name!r} version {resolved.version} ({reason})",
        )
        logger.info("%s/%s: rolling out %s (%s)", namespace, name, resolved.uri, reason)
    _sync_registry_tags(op, registry, body, live, resolved, since)

    conditions = _with_health(conditions, deployment, generation)
    conditions, drift_status = _drift(
        op, registry, body, spec, resolved, status, conditions, drift_log
    )
    new_status.update(
        {
            "drift": drift_status,
            "model": model_status,
            "history": history,
            "url": server_url(name, namespace, op.settings.cluster_domain),
            "conditions": conditions,
        }
    )
    op.write_status(namespace, name, new_status)


def _drift_prediction_log(op: Operator, spec: ModelDeploymentSpec) -> str | None:
    drift = spec.monitoring.drift
    if drift is None:
        return None
    return drift.prediction_log or spec.monitoring.prediction_log or op.settings.prediction_log


def _apply_children(
    op: Operator, plan: ServerPlan, body: dict[str, Any], drift_log: str | None
) -> dict[str, Any]:
    uid = body["metadata"]["uid"]
    owner = {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "name": body["metadata"]["name"],
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }

    def owned(manifest: dict[str, Any]) -> dict[str, Any]:
        manifest["metadata"]["ownerReferences"] = [owner]
        return manifest

    deployment = op.kube.apply_owned(owned(build_server_deployment(plan)), uid)
    op.kube.apply_owned(owned(build_server_service(plan)), uid)
    for kind, api_version, manifest in (
        ("HorizontalPodAutoscaler", "autoscaling/v2", build_server_hpa(plan)),
        ("PodDisruptionBudget", "policy/v1", build_server_pdb(plan)),
    ):
        if manifest is None:
            op.kube.delete_owned(api_version, kind, plan.name, plan.namespace, uid)
        else:
            op.kube.apply_owned(owned(manifest), uid)
    drift = plan.spec.monitoring.drift
    if drift is not None and drift_log:
        cronjob = build_drift_cronjob(
            plan,
            drift,
            prediction_log=drift_log,
            image=op.settings.toolkit_image,
            image_pull_policy=op.settings.server_image_pull_policy,
        )
        op.kube.apply_owned(owned(cronjob), uid)
    else:
        op.kube.delete_owned(
            "batch/v1", "CronJob", drift_cronjob_name(plan.name), plan.namespace, uid
        )
    return deployment


def _drift(
    op: Operator,
    registry: RegistryClient,
    body: dict[str, Any],
    spec: ModelDeploymentSpec,
    resolved: ResolvedModel,
    status: dict[str, Any],
    conditions: list[dict[str, Any]],
    drift_log: str | None,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The DataDrift condition and ``status.drift`` from the live version's registry
    tags (written by the drift CronJob), and the retraining Job of a new drift episode.
    ``None`` for the status removes it (merge patch)."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    generation = int(meta.get("generation") or 0)
    drift = spec.monitoring.drift
    if drift is None:
        return [c for c in conditions if c.get("type") != cond.DATA_DRIFT], None
    if not drift_log:
        message = (
            "no prediction log to check: set spec.monitoring.predictionLog (the operator "
            "has no MODELYARD_PREDICTION_LOG)"
        )
        conditions = cond.set_condition(
            conditions, cond.DATA_DRIFT, None, "NoPredictionLog", message, generation
        )
        return conditions, None
    previous = status.get("drift")
    try:
        result = DriftResult.from_tags(registry.version_tags(resolved.name, resolved.version))
    except RegistryError as e:
        logger.warning("%s/%s: could not read the drift result: %s", namespace, name, e)
        return conditions, previous
    assessment = assess(result, previous, resolved.version, drift)
    drift_status = dict(assessment.status)
    message = assessment.message
    if assessment.start_retrain and drift.retrain is not None and result is not None:
        episode_run = str(drift_status["episode"]["runId"])
        cron_name = drift.retrain.cron_job_name
        try:
            cronjob = op.kube.get("batch/v1", "CronJob", cron_name, namespace)
            if cronjob is None:
                missing = f"; retraining CronJob {namespace}/{cron_name} not found"
                said = cond.get_condition(conditions, cond.DATA_DRIFT) or {}
                message += missing
                if missing not in str(said.get("message", "")):  # one Event, not one a tick
                    op.post_event(
                        body,
                        "Warning",
                        "RetrainNotStarted",
                        f"drift found but CronJob {cron_name} (spec.monitoring.drift.retrain) "
                        "does not exist",
                    )
            else:
                job_name = retrain_job_name(drift.retrain, meta["uid"], episode_run)
                created = op.kube.create(build_retrain_job(cronjob, job_name, name, result.run_id))
                drift_status["retrainJob"] = job_name
                if created:
                    op.post_event(
                        body,
                        "Normal",
                        "Retraining",
                        f"drift in version {resolved.version}: started Job {job_name} from "
                        f"CronJob {cron_name}",
                    )
                    logger.info("%s/%s: drift, started Job %s", namespace, name, job_name)
        except ApiException as e:
            logger.warning("%s/%s: could not start the retraining Job: %s", namespace, name, e)
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
    return conditions, drift_status


def _model_status(resolved: ResolvedModel, since: str) -> dict[str, Any]:
    return {
        "name": resolved.name,
        "version": resolved.version,
        "runId": resolved.run_id,
        "uri": resolved.uri,
        "source": resolved.source,
        "since": since,
        "datasets": [d.to_status() for d in resolved.datasets],
    }


def _rollout_reason(label: str, previous: Any, new: int) -> str:
    if previous is None:
        return f"{label} is version {new}"
    return f"{label} moved from version {previous} to {new}"


def _sync_registry_tags(
    op: Operator,
    registry: RegistryClient,
    body: dict[str, Any],
    live: dict[str, Any],
    resolved: ResolvedModel,
    since: str,
) -> None:
    """The served version carries the deployment tag; the previous one loses it.
    A failure here is logged and retried on the next pass: it never blocks serving."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    try:
        old_name, old_version = live.get("name"), live.get("version")
        if (
            old_name
            and old_version
            and (old_name, old_version)
            != (
                resolved.name,
                resolved.version,
            )
        ):
            registry.unmark_deployed(str(old_name), int(old_version), namespace, name)
        registry.mark_deployed(resolved.name, resolved.version, namespace, name, since)
    except RegistryError as e:
        logger.warning("%s/%s: could not update the registry tags: %s", namespace, name, e)


def refresh_health(op: Operator, namespace: str, name: str, deployment: dict[str, Any]) -> None:
    """Re-derive Ready/Progressing/Degraded after the server Deployment changed."""
    body = op.read(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    with op.lock(body["metadata"]["uid"]):
        body = op.read(namespace, name)
        if body is None:
            return
        status = dict(body.get("status") or {})
        if not status.get("model"):
            return  # Nothing rolled out yet; reconcile writes the first status.
        generation = int(body["metadata"].get("generation") or 0)
        old = _conds(status)
        new = _with_health(old, deployment, generation)
        if _condition_words(new) != _condition_words(old):
            op.write_status(namespace, name, {"conditions": new})
            ready = cond.get_condition(new, cond.READY) or {}
            if (
                ready.get("status") == "True"
                and (cond.get_condition(old, cond.READY) or {}).get("status") != "True"
            ):
                version = (status.get("model") or {}).get("version")
                op.post_event(body, "Normal", "Ready", f"version {version} is serving")


def _condition_words(conditions: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(c.get("type"), c.get("status"), c.get("reason"), c.get("message")) for c in conditions]


def release(op: Operator, body: dict[str, Any]) -> None:
    """On deletion: remove the registry tag of the served version. Children go with
    their owner references."""
    live = (body.get("status") or {}).get("model") or {}
    meta = body["metadata"]
    if live.get("name") and live.get("version"):
        spec = ModelDeploymentSpec.parse(body.get("spec") or {})
        registry = op.registry_factory(
            op.tracking_uri(spec), op.credentials(meta["namespace"], spec)
        )
        registry.unmark_deployed(
            str(live["name"]), int(live["version"]), meta["namespace"], meta["name"]
        )
    op.forget(meta["uid"])
