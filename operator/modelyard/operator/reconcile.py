"""The reconciliation of one ModelDeployment, in four phases, safe to repeat:

1. **resolve** (:mod:`~modelyard.operator.resolve`): what the reference points to now;
2. **plan** (:mod:`~modelyard.operator.plan`, pure): children, status, Events, tags;
3. **apply**: the children (skipped when unchanged), the registry tags, a retraining Job;
4. **observe**: the server Deployment's health into Ready/Progressing/Degraded, and the
   status written only if it changed.

Everything a process shares (clients, settings, the watch cache, the resolver) lives in
one :class:`Operator`, created at start-up and kept in kopf's memo, never in a module.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modelyard.core import contracts as c
from modelyard.core.contracts import deployed_tag_key, parse_window
from modelyard.core.registry import RegistryError
from modelyard.operator import conditions as cond
from modelyard.operator.analysis import Measurement
from modelyard.operator.approvals import Answer, Decision
from modelyard.operator.canary import candidate_name
from modelyard.operator.children import SERVER_APP, deployment_health
from modelyard.operator.conditions import parse_time
from modelyard.operator.credentials import RegistryAccounts
from modelyard.operator.kube import ApplyFailed, ChildConflict, Kube
from modelyard.operator.measure import Analyses, measuring
from modelyard.operator.metrics import OperatorMetrics
from modelyard.operator.monitoring import build_retrain_job
from modelyard.operator.plan import Observed, Plan, plan_failure, plan_reconcile
from modelyard.operator.resolve import (
    Failure,
    Registries,
    RegistryPolicy,
    RegistryTarget,
    Resolver,
    registry_target,
    resolve_model,
    resolve_shadow,
)
from modelyard.operator.resource import (
    APPROVAL_KIND,
    APPROVAL_PLURAL,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    ModelDeploymentSpec,
    SpecError,
)
from modelyard.operator.rest import Rest
from modelyard.operator.router import ROUTER_APP, ROUTER_SUFFIX, served_weight
from modelyard.operator.settings import OperatorSettings
from modelyard.operator.store import ObjectStore

logger = logging.getLogger(__name__)

Key = tuple[str, str]
#: Posts an Event about an object: (body, type, reason, message).
EventPoster = Callable[[Mapping[str, Any], str, str, str], None]
#: How long a failed resolve waits before the next try, by reason (doubling each time).
RETRY_AFTER = {"RegistryUnavailable": 30.0}
DEFAULT_RETRY_AFTER = 15.0
#: Children are applied even when unchanged this often, to undo hand edits.
RESYNC_SECONDS = 600.0


@dataclass
class Operator:
    """What one operator process shares between its handlers and worker threads."""

    settings: OperatorSettings
    api_client: client.ApiClient
    post_event: EventPoster
    store: ObjectStore = field(default_factory=ObjectStore)
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    registries: Registries | None = None
    resolver: Resolver | None = None
    kube: Kube | None = None
    #: The installation's registry users, when its registry has users.
    accounts: RegistryAccounts | None = None
    #: The canaries' analysis measurements (a collector per canary in flight).
    analyses: Analyses | None = None
    #: When the children were last applied regardless of their hash, by owner uid; the
    #: first such resync is a resync period after the start.
    _last_resync: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    _failures: dict[Key, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.registries is None:
            self.registries = Registries(
                self.api_client,
                timeout=self.settings.registry_timeout,
                api_timeout=self.settings.api_timeout,
                own_credentials=(
                    self.accounts.credentials(c.RegistryUsers.OPERATOR) if self.accounts else None
                ),
            )
        if self.resolver is None:
            self.resolver = Resolver(
                self.registries, self.settings.resolve_interval, metrics=self.metrics
            )
        if self.kube is None:
            self.kube = Kube(
                self.api_client, self.store, self.settings.api_timeout, metrics=self.metrics
            )
        if self.analyses is None:
            self.analyses = Analyses(
                self.settings.prometheus_url, self.settings.prometheus_namespace_label
            )
        self.rest = Rest(self.api_client, self.settings.api_timeout)
        self.rest.know(f"{GROUP}/{VERSION}", KIND, PLURAL)
        self.rest.know(f"{GROUP}/{VERSION}", APPROVAL_KIND, APPROVAL_PLURAL)
        self.policy = RegistryPolicy.from_settings(
            self.settings.default_tracking_uri, self.settings.allowed_registries
        )

    # ------------------------------------------------------------------ the resource
    def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The ModelDeployment as the watch last delivered it, else from the API."""
        found = self.store.get(KIND, namespace, name)
        if found is not None:
            return found
        body = self.rest.get(f"{GROUP}/{VERSION}", KIND, namespace, name)
        if body is None:
            return None
        self.store.put(KIND, body)
        return body

    def write_status(self, body: Mapping[str, Any], status: dict[str, Any]) -> None:
        """Merge-patch ``status`` when it differs from what the object shows."""
        if _same(body.get("status") or {}, status):
            return
        meta = body["metadata"]
        self.metrics.api_writes.labels("status").inc()
        written = self.rest.merge_patch(
            f"{GROUP}/{VERSION}",
            KIND,
            meta["namespace"],
            meta["name"],
            {"status": status},
            subresource="status",
        )
        self.store.put(KIND, written)

    def retry_after(self, key: Key, failure: Failure) -> float | None:
        """Seconds until a failed ModelDeployment is tried again: doubling per failure."""
        if failure.permanent:
            return None
        count = self._failures.get(key, 0)
        self._failures[key] = count + 1
        base = RETRY_AFTER.get(failure.reason, DEFAULT_RETRY_AFTER)
        return float(min(300.0, base * 2 ** min(count, 5)))

    def succeeded(self, key: Key) -> None:
        self._failures.pop(key, None)

    def event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        self.metrics.api_writes.labels("event").inc()
        self.post_event(body, type_, reason, message)

    def close(self) -> None:
        assert self.registries is not None
        self.registries.close()
        self.metrics.close()


def _same(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Would merge-patching ``wanted`` leave ``current`` as it is?"""
    for key, value in wanted.items():
        if value is None:
            if current.get(key) is not None:
                return False
        elif isinstance(value, Mapping) and isinstance(current.get(key), Mapping):
            if not _same(current[key], value):
                return False
        elif current.get(key) != value:
            return False
    return True


def run_reconcile(op: Operator, key: Key) -> float | None:
    """:func:`reconcile`, counted and timed by outcome."""
    started = time.monotonic()
    outcome = "error"
    try:
        again = reconcile(op, key)
        outcome = "ok" if again is None else "retry"
        return again
    finally:
        op.metrics.reconciles.labels(outcome).inc()
        op.metrics.reconcile_seconds.labels(outcome).observe(time.monotonic() - started)


def reconcile(op: Operator, key: Key) -> float | None:
    """Bring one ModelDeployment's children and status in line with its spec and the
    registry. Returns seconds until it should be looked at again, or None."""
    namespace, name = key
    body = op.read(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        op.succeeded(key)
        return None
    generation = int(body["metadata"].get("generation") or 0)
    try:
        spec = ModelDeploymentSpec.parse(body.get("spec") or {})
    except SpecError as error:
        failure = Failure("InvalidSpec", str(error), permanent=True)
        plan = plan_failure(body, failure, None)
        plan.status["conditions"] = cond.set_condition(
            plan.status["conditions"],
            cond.READY,
            False,
            failure.reason,
            failure.message,
            generation,
        )
        op.write_status(body, plan.status)
        logger.warning("%s/%s: %s", namespace, name, error)
        return None

    assert op.resolver is not None
    live = dict((body.get("status") or {}).get("model") or {})
    resolution = resolve_model(op.resolver, spec, namespace, live, op.policy)
    observed = observe_world(op, body)
    observed = dataclasses.replace(
        observed,
        shadow=resolve_shadow(op.resolver, spec, resolution.target),
        measurement=take_measurement(op, body, spec, observed),
    )
    plan = plan_reconcile(body, spec, resolution, op.settings, observed)
    if plan.failure is not None:
        op.write_status(body, plan.status)
        logger.info("%s/%s: %s: %s", namespace, name, plan.failure.reason, plan.failure.message)
        return op.retry_after(key, plan.failure)

    applied = apply_plan(op, body, plan)
    if isinstance(applied, Failure):
        status = dict(plan.status)
        status["conditions"] = cond.set_condition(
            status["conditions"], cond.READY, False, applied.reason, applied.message, generation
        )
        # What is live did not change: keep the old status.model and history.
        old = body.get("status") or {}
        for kept in ("model", "history"):
            status[kept] = old.get(kept)
        said = cond.get_condition((body.get("status") or {}).get("conditions") or [], cond.READY)
        if not said or said.get("message") != applied.message:
            op.event(body, "Warning", applied.reason, applied.message)
        op.write_status(body, status)
        return op.retry_after(key, applied)

    status = observe(plan, applied, generation)
    op.write_status(body, status)
    answer_approvals(op, plan)
    for event in plan.events:
        op.event(body, event.type, event.reason, event.message)
    op.succeeded(key)
    return _look_again(op, spec, plan, _measure_in(op, key, plan, observed.now))


def observe_world(op: Operator, body: Mapping[str, Any]) -> Observed:
    """What the watches show about one ModelDeployment: its namespace's labels, the
    ModelApprovals there, its server Deployment and pods."""
    meta = body["metadata"]
    namespace, name = str(meta["namespace"]), str(meta["name"])
    ns = op.store.get("Namespace", "", namespace) or {}
    decisions = tuple(
        d
        for d in (Decision.from_body(a) for a in op.store.items(APPROVAL_KIND, namespace=namespace))
        if d is not None and d.spec.model_deployment == name
    )
    pods = tuple(
        op.store.items(
            "Pod", namespace=namespace, labels={c.LABEL_INSTANCE: name, c.LABEL_NAME: SERVER_APP}
        )
    )
    candidate = candidate_name(name)
    canary_pods = tuple(
        op.store.items(
            "Pod",
            namespace=namespace,
            labels={c.LABEL_INSTANCE: candidate, c.LABEL_NAME: SERVER_APP},
        )
    )
    service = op.store.get("Service", namespace, name)
    router = op.store.get("Deployment", namespace, f"{name}{ROUTER_SUFFIX}")
    router_pods = tuple(
        op.store.items(
            "Pod", namespace=namespace, labels={c.LABEL_INSTANCE: name, c.LABEL_NAME: ROUTER_APP}
        )
    )
    weight = served_weight(router, service, name)
    if weight is None:  # the router's pods move to a new configuration: as it was
        rollout = (body.get("status") or {}).get("rollout") or {}
        weight = int(rollout.get("actualWeight") or 0)
    return Observed(
        namespace_labels=dict((ns.get("metadata") or {}).get("labels") or {}),
        decisions=decisions,
        deployment=op.store.get("Deployment", namespace, name),
        pods=pods,
        accounts=op.accounts,
        canary_deployment=op.store.get("Deployment", namespace, candidate),
        canary_pods=canary_pods,
        router_weight=weight,
        service=service,
        router_deployment=router,
        router_pods=router_pods,
    )


def take_measurement(
    op: Operator, body: Mapping[str, Any], spec: ModelDeploymentSpec, observed: Observed
) -> Measurement | None:
    """The canary's measurement of this analysis interval, when one is due (the only
    network calls to the servers the operator makes: :mod:`~modelyard.operator.measure`)."""
    assert op.analyses is not None
    meta, status = body["metadata"], body.get("status") or {}
    return op.analyses.measure(
        str(meta["namespace"]),
        str(meta["name"]),
        spec.rollout.canary,
        status.get("rollout") or {},
        status.get("model") or {},
        observed.pods,
        observed.canary_pods,
        observed.router_weight,
        observed.now,
    )


def _measure_in(op: Operator, key: Key, plan: Plan, now: dt.datetime) -> float | None:
    """Seconds until the canary's next measurement is due: at once when its step has just
    begun (the scrape that starts its first interval), else at the interval's end."""
    assert op.analyses is not None
    due = op.analyses.due_in(*key, now)
    if due is None and measuring(plan.status.get("rollout") or {}, None):
        return 1.0
    return due


def _look_again(
    op: Operator, spec: ModelDeploymentSpec, plan: Plan, measure_in: float | None = None
) -> float | None:
    """A rollout in flight is looked at again even without an event (a version that never
    gets ready sends none); so is a pending version that can expire, and a canary's next
    measurement."""
    waits = [plan.requeue_after] if plan.requeue_after else []
    if measure_in is not None:
        waits.append(measure_in)
    if plan.progressing is not None:
        waits.append(min(30.0, op.settings.resolve_interval))
    pending = plan.status.get("pending")
    if pending and spec.rollout.approval.expires_after:
        since = parse_time(pending.get("since"))
        if since is not None:
            left = since + parse_window(spec.rollout.approval.expires_after)
            waits.append(max(1.0, (left - dt.datetime.now(dt.UTC)).total_seconds()))
    return min(waits) if waits else None


def answer_approvals(op: Operator, plan: Plan) -> None:
    """Write the operator's answer on each ModelApproval it decided about (once)."""
    for answer in plan.answers:
        write_answer(op, answer)


def write_answer(op: Operator, answer: Answer) -> None:
    decision = answer.decision
    status = {"state": answer.state, "message": answer.message, "answeredAt": cond.now_rfc3339()}
    op.metrics.api_writes.labels("status").inc()
    try:
        written = op.rest.merge_patch(
            f"{GROUP}/{VERSION}",
            APPROVAL_KIND,
            decision.namespace,
            decision.name,
            {"status": status},
            subresource="status",
        )
    except ApiException as error:
        if error.status != 404:
            logger.warning("could not answer ModelApproval %s: %s", decision.name, error.reason)
        return
    op.store.put(APPROVAL_KIND, written)


def apply_plan(op: Operator, body: dict[str, Any], plan: Plan) -> dict[str, Any] | None | Failure:
    """Apply the plan's children, tags and Job; the server Deployment as applied, or the
    failure that stopped it."""
    assert op.kube is not None
    meta = body["metadata"]
    uid, namespace, name = str(meta["uid"]), meta["namespace"], meta["name"]
    now = time.monotonic()
    force = now - op._last_resync.get(uid, op.started) > RESYNC_SECONDS
    deployment: dict[str, Any] | None = None
    try:
        for manifest in plan.apply:
            applied = op.kube.apply_owned(manifest, body, force=force)
            if manifest["kind"] == "Deployment" and manifest["metadata"]["name"] == name:
                deployment = applied
        for ref in plan.delete:
            op.kube.delete_owned(ref.api_version, ref.kind, ref.name, namespace, uid)
    except ChildConflict as error:
        return Failure("ChildConflict", str(error))
    except ApplyFailed as error:
        return Failure("ApplyFailed", str(error))
    if force:
        op._last_resync[uid] = now
    _write_tags(op, body, plan)
    if plan.retrain is not None:
        _start_retrain(op, body, plan)
    return deployment


def _write_tags(op: Operator, body: Mapping[str, Any], plan: Plan) -> None:
    """A failure is logged: the tags are compared again on the next pass."""
    if not plan.tags:
        return
    assert op.registries is not None
    spec = ModelDeploymentSpec.parse(body.get("spec") or {})
    target = registry_target(spec, body["metadata"]["namespace"], op.policy)
    if isinstance(target, Failure):
        return
    try:
        registry = op.registries.client(target)
        for change in plan.tags:
            if change.value is None:
                registry.delete_version_tag_if_present(change.model, change.version, change.key)
            else:
                registry.set_version_tag(change.model, change.version, change.key, change.value)
    except RegistryError as error:
        logger.warning(
            "%s/%s: could not update the registry tags: %s",
            body["metadata"]["namespace"],
            body["metadata"]["name"],
            error,
        )
        return
    assert op.resolver is not None
    # The next resolve must see the tags as written.
    op.resolver.forget(plan.tags[0].model)


def _start_retrain(op: Operator, body: dict[str, Any], plan: Plan) -> None:
    assert op.kube is not None and plan.retrain is not None
    intent = plan.retrain
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    drift = plan.status.get("drift") or {}
    conditions = plan.status["conditions"]
    said = cond.get_condition((body.get("status") or {}).get("conditions") or [], cond.DATA_DRIFT)
    data_drift = dict(cond.get_condition(conditions, cond.DATA_DRIFT) or {})
    try:
        cronjob = op.kube.get("batch/v1", "CronJob", intent.cron_job_name, namespace)
        if cronjob is None:
            # Looked for again until it exists (the pipeline may be installed later).
            plan.requeue_after = op.settings.resolve_interval
            missing = f"; retraining CronJob {namespace}/{intent.cron_job_name} not found"
            data_drift["message"] = str(data_drift.get("message", "")) + missing
            if missing not in str((said or {}).get("message", "")):  # one Event, not one a pass
                op.event(
                    body,
                    "Warning",
                    "RetrainNotStarted",
                    f"drift found but CronJob {intent.cron_job_name} "
                    "(spec.monitoring.drift.retrain) does not exist",
                )
        else:
            job = build_retrain_job(cronjob, intent.job_name, name, intent.drift_run_id)
            created = op.kube.create(job)
            drift["retrainJob"] = intent.job_name
            data_drift["message"] = (
                str(data_drift.get("message", "")) + f"; retraining Job {intent.job_name}"
            )
            if created:
                op.event(
                    body,
                    "Normal",
                    "Retraining",
                    f"drift in version {intent.version}: started Job {intent.job_name} from "
                    f"CronJob {intent.cron_job_name}",
                )
                logger.info("%s/%s: drift, started Job %s", namespace, name, intent.job_name)
    except ApiException as error:
        logger.warning("%s/%s: could not start the retraining Job: %s", namespace, name, error)
        return
    plan.status["drift"] = drift
    plan.status["conditions"] = [
        data_drift if x.get("type") == cond.DATA_DRIFT else x for x in conditions
    ]


def observe(plan: Plan, deployment: Mapping[str, Any] | None, generation: int) -> dict[str, Any]:
    """The plan's status with Ready, Progressing and Degraded as they are: Ready means a
    live version serves (every wanted replica available); Progressing, a rollout or the
    Deployment moving; Degraded, a rollout that failed or a Deployment stuck."""
    status = plan.status
    conditions = list(status.get("conditions") or [])
    health = deployment_health(deployment)
    live = status.get("model")
    pending = status.get("pending")
    if not plan.serves:
        reason = "AwaitingApproval" if pending else "NotServing"
        message = (
            f"no version is live yet: version {pending['version']} awaits approval"
            if pending
            else "no version may be served (see the Approved condition)"
        )
        ready: tuple[bool, str, str] = (False, reason, message)
    elif not live and plan.degraded:  # the first version failed (e.g. UnsafeModelFormat)
        ready = (False, *plan.degraded)
    elif not live:
        ready = (False, "RollingOut", plan.progressing or "the first version is rolling out")
    else:
        ready = (health.ready, health.reason if not health.ready else "Serving", health.message)
    conditions = cond.set_condition(conditions, cond.READY, *ready, generation)
    progressing = plan.progressing or (health.message if health.progressing else None)
    conditions = cond.set_condition(
        conditions,
        cond.PROGRESSING,
        progressing is not None,
        "RollingOut" if progressing is not None else "Stable",
        progressing or "no rollout in progress",
        generation,
    )
    degraded = plan.degraded or (
        (health.reason, health.message) if health.degraded and plan.serves else None
    )
    conditions = cond.set_condition(
        conditions,
        cond.DEGRADED,
        degraded is not None,
        degraded[0] if degraded else "AsExpected",
        degraded[1] if degraded else "the server is running as specified",
        generation,
    )
    return {**status, "conditions": conditions}


class VersionTag(NamedTuple):
    """One registry tag a ModelDeployment put on a model version."""

    model: str
    version: int
    key: str


def registry_tags(
    op: Operator, body: Mapping[str, Any]
) -> tuple[RegistryTarget, list[VersionTag]] | None:
    """The registry tags a ModelDeployment holds, and where: the live version's deployed
    tag and the approval tag of a version awaiting approval. None: it holds none. Raises
    SpecError when its spec no longer names a registry the operator may use."""
    status = body.get("status") or {}
    live = status.get("model") or {}
    pending = status.get("pending") or {}
    meta = body["metadata"]
    namespace, name = str(meta["namespace"]), str(meta["name"])
    if not (live.get("name") and live.get("version")) and not pending.get("version"):
        return None
    spec = ModelDeploymentSpec.parse(body.get("spec") or {})
    target = registry_target(spec, namespace, op.policy)
    if isinstance(target, Failure):
        raise SpecError(target.message)
    tags = []
    if live.get("name") and live.get("version"):
        tags.append(
            VersionTag(str(live["name"]), int(live["version"]), deployed_tag_key(namespace, name))
        )
    if pending.get("version"):
        tags.append(
            VersionTag(
                spec.model.name, int(pending["version"]), c.ApprovalTags.key(namespace, name)
            )
        )
    return target, tags


def remove_tags(op: Operator, target: RegistryTarget, tags: list[VersionTag]) -> None:
    """Remove ``tags`` (those already gone are fine). Raises what kept it from the
    registry."""
    assert op.registries is not None
    registry = op.registries.client(target)
    for tag in tags:
        registry.delete_version_tag_if_present(tag.model, tag.version, tag.key)


def release(op: Operator, body: Mapping[str, Any]) -> None:
    """On deletion: remove the registry tag of the live version, and the pending state of
    a version awaiting approval (nothing may say a deleted deployment waits for it). The
    children go with their owner references. Raises what kept it from the registry."""
    meta = body["metadata"]
    op._last_resync.pop(str(meta.get("uid")), None)
    if op.analyses is not None:
        op.analyses.forget(str(meta["namespace"]), str(meta["name"]))
    found = registry_tags(op, body)
    if found is not None:
        remove_tags(op, *found)
