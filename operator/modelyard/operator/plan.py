"""The plan phase: from a ModelDeployment, what its reference resolved to and what the
watches show, decide what to apply, what to delete, what to tell (Events, registry tags,
answers to ModelApprovals) and what status to write. Pure: no cluster, no registry; the
decision tests call it directly.

Three versions matter:

- the **live** one (``status.model``): serves all the traffic it should;
- the **candidate**: what the reference resolves to, when it is not the live one. The
  approval gate (:mod:`~modelyard.operator.approvals`) says whether it may go live; while
  it may not, it is **pending** (``status.pending``) and the server keeps the live one;
- the **target**: what the server Deployment runs. The candidate once it may go live
  (``status.rollout`` tracks it until it runs on every replica and becomes live, or fails
  and is rolled back), else the live version.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelyard.core import contracts as c
from modelyard.core import pods
from modelyard.core.registry import ModelVersion, ResolvedModel
from modelyard.operator import canary
from modelyard.operator import conditions as cond
from modelyard.operator.analysis import Measurement
from modelyard.operator.approvals import (
    APPLIED,
    APPROVED,
    AWAITING,
    EXPIRED,
    NOT_REQUIRED,
    REJECTED,
    Answer,
    Decision,
    Judgment,
    decision_tags,
    judge,
    operator_rejection,
    stamp,
)
from modelyard.operator.approvals import required as approval_required
from modelyard.operator.children import (
    SERVER_APP,
    ModelCachePlan,
    ServerPlan,
    build_server_deployment,
    build_server_hpa,
    build_server_network_policy,
    build_server_pdb,
    build_server_service,
    build_stable_service,
    ready_replicas,
    server_url,
    variant_plan,
)
from modelyard.operator.conditions import parse_time
from modelyard.operator.credentials import RegistryAccounts, build_credentials_secret
from modelyard.operator.monitoring import (
    DriftResult,
    assess,
    build_drift_cronjob,
    build_shadow_compare_cronjob,
    drift_cronjob_name,
    retrain_job_name,
    shadow_compare_cronjob_name,
)
from modelyard.operator.resolve import Failure, Resolution
from modelyard.operator.resource import Canary, ModelDeploymentSpec
from modelyard.operator.rollout import COMPLETE, FAILED, crashing, progress
from modelyard.operator.router import (
    build_router,
    build_router_network_policy,
    from_traffic,
    router_children,
    router_ready,
    router_selector,
    router_serving,
    selects_router,
    served_weight,
)
from modelyard.operator.settings import OperatorSettings

HISTORY_LIMIT = 10
#: Rejections the operator made, which ``modelyard rollout retry`` clears (never a
#: person's: reason Rejected, or Expired).
RETRYABLE = frozenset({"RolloutFailed", canary.ANALYSIS_FAILED, canary.ABORTED_BY_USER})
#: What ``status.shadow.comparison`` shows of the tag (the CRD's schema lists the same).
SHADOW_COMPARISON_KEYS = frozenset(
    {
        "stableVersion",
        "status",
        "kind",
        "comparedRows",
        "agreementRate",
        "meanAbsDifference",
        "stableLatencyP99Ms",
        "shadowLatencyP99Ms",
        "windowStart",
        "windowEnd",
        "runId",
    }
)
# Reasons of a canary rolled back: Degraded only until its pods are scaled down.
CANARY_ROLLBACKS = frozenset({canary.ANALYSIS_FAILED, canary.ABORTED_BY_USER, canary.STEP_REJECTED})
DETAILS = ("by", "at", "comment", "reason")


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


@dataclass(frozen=True)
class Observed:
    """What the reconcile knows besides the resource and the registry: from the watches."""

    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    decisions: tuple[Decision, ...] = ()
    #: The server Deployment and its pods as the watch last delivered them.
    deployment: Mapping[str, Any] | None = None
    pods: tuple[Mapping[str, Any], ...] = ()
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    #: The installation's registry users (when its registry has users): the servers and
    #: the drift check of a ModelDeployment on that registry get theirs in a Secret.
    accounts: RegistryAccounts | None = None
    #: The canary Deployment (``<name>-canary``) and its pods as the watch delivered them.
    canary_deployment: Mapping[str, Any] | None = None
    canary_pods: tuple[Mapping[str, Any], ...] = ()
    #: The latest analysis measurement of the canary in flight (from the collector).
    measurement: Measurement | None = None
    #: The candidate weight the router reports it serves; None: as planned.
    router_weight: int | None = None
    #: What ``spec.rollout.shadow`` resolves to (None: no shadow, or not resolved).
    shadow: ModelVersion | None = None
    #: The ModelDeployment's Service (``<name>``), the router's Deployment
    #: (``<name>-router``) and the router's pods, as the watches delivered them: the
    #: Service moves to the router once it is ready, and back before it goes.
    service: Mapping[str, Any] | None = None
    router_deployment: Mapping[str, Any] | None = None
    router_pods: tuple[Mapping[str, Any], ...] = ()


@dataclass
class Plan:
    """What one reconcile does; ``status`` is the whole status to write."""

    status: dict[str, Any]
    apply: list[dict[str, Any]] = field(default_factory=list)
    delete: list[ChildRef] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    tags: list[TagChange] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    retrain: RetrainIntent | None = None
    failure: Failure | None = None
    #: The server Deployment is applied: its health decides Ready/Progressing/Degraded.
    serves: bool = False
    #: A rollout failed: (reason, message) for the Degraded condition.
    degraded: tuple[str, str] | None = None
    #: A rollout is in progress (Progressing=True, with this message).
    progressing: str | None = None
    #: Look again after this many seconds even if nothing changes (something awaited).
    requeue_after: float | None = None
    #: What the router in front of the servers does; None: no router (clients reach the
    #: stable pods through the ModelDeployment's Service directly).
    traffic: canary.TrafficPlan | None = None


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


def live_version(live: Mapping[str, Any]) -> ModelVersion | None:
    """``status.model`` as a version the server can be given (no registry call)."""
    if not live.get("version") or not live.get("name"):
        return None
    return ModelVersion(
        name=str(live["name"]),
        version=int(live["version"]),
        run_id=str(live.get("runId") or ""),
        source=str(live.get("source") or ""),
        status="READY",
    )


def _same(a: ModelVersion | None, b: ModelVersion | None) -> bool:
    return a is not None and b is not None and (a.name, a.version) == (b.name, b.version)


def plan_reconcile(
    body: dict[str, Any],
    spec: ModelDeploymentSpec,
    resolution: Resolution,
    settings: OperatorSettings,
    observed: Observed | None = None,
) -> Plan:
    """The plan for one ModelDeployment; see the module docstring."""
    observed = observed or Observed()
    if resolution.failure is not None or resolution.model is None or resolution.target is None:
        failure = resolution.failure or Failure("RegistryError", "the reference did not resolve")
        return plan_failure(body, failure, spec.model.label)
    return _Planner(body, spec, resolution.model, resolution, settings, observed).build()


class _Planner:
    def __init__(
        self,
        body: dict[str, Any],
        spec: ModelDeploymentSpec,
        resolved: ResolvedModel,
        resolution: Resolution,
        settings: OperatorSettings,
        observed: Observed,
    ) -> None:
        meta = body["metadata"]
        self.body, self.spec, self.resolution = body, spec, resolution
        self.settings, self.observed = settings, observed
        self.namespace, self.name = str(meta["namespace"]), str(meta["name"])
        self.generation = int(meta.get("generation") or 0)
        self.now = stamp(observed.now)
        self.resolved = resolved
        self.candidate = resolved.version
        self.old = dict(body.get("status") or {})
        self.live_status = dict(self.old.get("model") or {})
        self.live = live_version(self.live_status)
        self.rollout = dict(self.old.get("rollout") or {})
        self.required = approval_required(spec.rollout.approval, observed.namespace_labels)
        self.plan = Plan(status={})
        self.conditions = cond.set_condition(
            _conditions(self.old),
            cond.MODEL_RESOLVED,
            True,
            "Resolved",
            f"{spec.model.label} of model {self.candidate.name!r} is version "
            f"{self.candidate.version}",
            self.generation,
        )
        self.pending: dict[str, Any] | None = None
        self.history = list(self.old.get("history") or [])
        self.new_live: dict[str, Any] | None = None
        annotations = dict(meta.get("annotations") or {})
        self.annotations = {str(k_): str(v) for k_, v in annotations.items()}
        self.retried = self.old.get("retried")
        self.rejected: dict[str, Any] | None = self.old.get("rejected") or None
        #: The candidate Deployment to run (its version and replicas) and its weight.
        self.canary_run: tuple[ModelVersion, int] | None = None
        self.canary_weight = 0

    def event(self, type_: str, reason: str, message: str) -> None:
        self.plan.events.append(Event(type_, reason, message))

    def approved(self, state: bool, reason: str, message: str) -> None:
        self.conditions = cond.set_condition(
            self.conditions, cond.APPROVED, state, reason, message, self.generation
        )

    def tag(self, version: ModelVersion, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.plan.tags.append(TagChange(version.name, version.version, key, value))

    # ------------------------------------------------------------------ the decision
    def build(self) -> Plan:
        target = self.live
        if _same(self.candidate, self.live):
            self.steady()
        else:
            target = self.change()
        if target is not None:
            self.plan.serves = True
            self.children(target)
        self.plan.tags += self.deployed_tags()
        self.finish(target)
        return self.plan

    def steady(self) -> None:
        """The reference resolves to the live version."""
        assert self.live is not None
        if self.rollout:
            self.event(
                "Normal",
                "RolloutAborted",
                f"{self.spec.model.label} is version {self.live.version} again: the rollout "
                f"of version {self.rollout.get('version')} stopped",
            )
        self.rollout = {}
        said = cond.get_condition(self.conditions, cond.APPROVED) or {}
        reason = APPROVED if self.required else NOT_REQUIRED
        if said.get("status") == "True" and said.get("reason") in (APPROVED, NOT_REQUIRED):
            reason = str(said["reason"])
        self.approved(True, reason, f"version {self.live.version} is live")

    def change(self) -> ModelVersion | None:
        """The reference resolves to another version: the gate, then the rollout."""
        self.retry()
        self.remember_rejection()
        candidate = self.candidate
        in_flight = (self.rollout.get("name"), self.rollout.get("version")) == (
            candidate.name,
            candidate.version,
        )
        judgment = Judgment(APPROVED, str(self.rollout.get("approval") or "approved"))
        if not in_flight:
            judgment = judge(
                namespace=self.namespace,
                name=self.name,
                candidate=candidate,
                reference=self.spec.model.label,
                approval=self.spec.rollout.approval,
                is_required=self.required,
                pending=self.old.get("pending"),
                decisions=self.observed.decisions,
                now=self.observed.now,
            )
            self.plan.answers = judgment.answers
            self.tag(candidate, judgment.tags)
        self.approved(judgment.may_go_live, judgment.state, judgment.message)
        if not judgment.may_go_live:
            self.rollout = {}
            self.pending = judgment.pending
            # A version the operator rolled back stays reported (Degraded, with its
            # reason) for as long as the reference resolves to it; a canary rolled back
            # is Degraded until its pods are gone, then Approved=False keeps the why.
            fault = operator_rejection(candidate, self.namespace, self.name)
            if judgment.state == REJECTED and fault and fault not in CANARY_ROLLBACKS:
                self.plan.degraded = (fault, judgment.message)
            if judgment.pending_started:
                self.event("Normal", AWAITING, judgment.message)
            if judgment.state in (REJECTED, EXPIRED) and judgment.tags:
                self.event("Warning", judgment.state, judgment.message)
            return self.live
        if not in_flight:
            self.start_rollout(judgment)
        return self.follow_rollout()

    def roll_back(self, candidate: ModelVersion, reason: str, why: str, by: str = "") -> str:
        """The candidate failed (or was aborted): back to the live version, Degraded with
        ``reason``, the version tagged rejected for this deployment; the message."""
        assert self.live is not None
        message = f"{why}; rolled back to version {self.live.version}"
        self.plan.degraded = (reason, message)
        self.tag(
            candidate,
            decision_tags(
                self.namespace, self.name, c.ApprovalTags.REJECTED, by, self.now, why, reason
            ),
        )
        self.rejected = {
            "name": candidate.name,
            "version": candidate.version,
            "reason": reason,
            "message": why[: c.DriftTags.MAX_TEXT],
            "by": by,
            "at": self.now,
        }
        self.approved(False, REJECTED, f"version {candidate.version} failed: {message}")
        return message

    def retry(self) -> None:
        """``modelyard rollout retry``: start the candidate's rollout over, clearing a
        rejection the operator made (a failed rollout or analysis, an abort), never one a
        person made through a ModelApproval. Acted on once per annotation value."""
        asked = self.annotations.get(canary.RETRY_ANNOTATION)
        if not asked or asked == self.retried:
            return
        self.retried = asked
        if self.rollout.get("version") == self.candidate.version:
            self.rollout = {}
        if self._rejected_here(self.candidate):
            self.rejected = None
        key = c.ApprovalTags.key(self.namespace, self.name)
        tags = dict(self.candidate.tags)
        reason = tags.get(c.ApprovalTags.detail(self.namespace, self.name, "reason"))
        if tags.get(key) == c.ApprovalTags.REJECTED and reason in RETRYABLE:
            for tag in [
                key,
                *(c.ApprovalTags.detail(self.namespace, self.name, w) for w in DETAILS),
            ]:
                tags.pop(tag, None)
                self.plan.tags.append(
                    TagChange(self.candidate.name, self.candidate.version, tag, None)
                )
            self.candidate = dataclasses.replace(self.candidate, tags=tags)
            self.event(
                "Normal",
                "RolloutRetried",
                f"version {self.candidate.version} is tried again (it was rejected: {reason})",
            )

    def _rejected_here(self, version: ModelVersion) -> bool:
        record = self.rejected or {}
        return (record.get("name"), record.get("version")) == (version.name, version.version)

    def remember_rejection(self) -> None:
        """A version this operator rolled back stays rejected even when the registry tag
        that says so could not be written (the registry was down, a permission was
        missing): ``status.rejected`` keeps it, and the tag is written again until it
        holds. Without this, the next pass would find no tag and start the same failed
        rollout over, again and again."""
        candidate, record = self.candidate, self.rejected or {}
        if not self._rejected_here(candidate) or self.rollout.get("version") == candidate.version:
            return
        key = c.ApprovalTags.key(self.namespace, self.name)
        if candidate.tags.get(key) == c.ApprovalTags.REJECTED:
            return
        written = decision_tags(
            self.namespace,
            self.name,
            c.ApprovalTags.REJECTED,
            str(record.get("by") or ""),
            str(record.get("at") or self.now),
            str(record.get("message") or ""),
            str(record.get("reason") or "RolloutFailed"),
        )
        self.tag(candidate, written)
        self.candidate = dataclasses.replace(candidate, tags={**candidate.tags, **written})

    def start_rollout(self, judgment: Judgment) -> None:
        candidate = self.candidate
        reason = _rollout_reason(
            self.spec.model.label, self.live.version if self.live else None, candidate.version
        )
        self.rollout = {
            "name": candidate.name,
            "version": candidate.version,
            "runId": candidate.run_id,
            "uri": candidate.uri,
            "source": candidate.source,
            "datasets": [d.to_status() for d in self.resolved.datasets],
            "reference": self.spec.model.label,
            "since": self.now,
            "reason": reason,
            "approval": judgment.message,
            "strategy": "RollingUpdate",
        }
        if self.spec.rollout.canary is not None and self.live is not None:
            # The first version has nothing to compare with: it rolls out as a whole.
            self.rollout.update(canary.start(self.observed.now))
        if judgment.decision is not None:
            self.rollout["approvedBy"] = judgment.decision.spec.approver
            self.event("Normal", APPROVED, judgment.message)
        self.event(
            "Normal",
            "RollingOut",
            f"rolling out model {candidate.name!r} version {candidate.version} ({reason})",
        )

    def follow_rollout(self) -> ModelVersion | None:
        if self.rollout.get("strategy") == canary.CANARY and self.spec.rollout.canary:
            return self.follow_canary(self.spec.rollout.canary)
        return self.follow_server()

    def follow_canary(self, spec: Canary) -> ModelVersion | None:
        """The candidate runs beside the live version; :mod:`canary` decides its share."""
        candidate, observed = self.candidate, self.observed
        assert self.live is not None
        step = int(self.rollout.get("step") or 0)
        crash = crashing(observed.canary_pods, candidate.version)
        deadline = (observed.canary_deployment or {}).get("status", {}).get("conditions") or []
        late = any(x.get("reason") == "ProgressDeadlineExceeded" for x in deadline)
        failure = crash.message if crash else None
        if late and failure is None:
            failure = (
                f"the canary pods of version {candidate.version} did not become ready within "
                f"{self.spec.rollout.progress_deadline_seconds}s"
            )
        version = str(candidate.version)
        outcome = canary.advance(
            spec,
            self.rollout,
            canary.Observation(
                now=observed.now,
                stable_replicas=self.stable_replicas(),
                candidate_ready=ready_replicas(observed.canary_deployment, candidate.version),
                candidate_failure=failure,
                measurement=observed.measurement,
                step_decision=self.step_decision(step),
                router_weight=observed.router_weight,
                promote=self.annotations.get(canary.PROMOTE_ANNOTATION) == version,
                abort=self.annotations.get(canary.ABORT_ANNOTATION) == version,
            ),
            self.name,
            self.settings.canary_scale_down_delay,
        )
        for event in outcome.events:
            self.event(*event)
        self.plan.requeue_after = outcome.requeue_after
        self.rollout = outcome.rollout
        if outcome.aborted is not None:
            why = outcome.aborted
            self.roll_back(candidate, why.reason, why.message, by=why.by)
        elif self.rollout.get("phase") == canary.ABORTED and not outcome.finished:
            reason = str(self.rollout.get("abortReason") or canary.ANALYSIS_FAILED)
            self.plan.degraded = (reason, str(self.rollout.get("message") or reason))
        if outcome.finished:
            self.rollout = {}
            return self.live
        if outcome.candidate_replicas:
            self.canary_run = (candidate, outcome.candidate_replicas)
        self.canary_weight = outcome.weight
        if outcome.promote_stable:
            target = self.follow_server()
            if not self.rollout:  # live (or rolled back): no canary, no router
                self.canary_run = None
            return target
        self.plan.progressing = str(self.rollout.get("pauseReason") or "canary in progress")
        return self.live

    def stable_replicas(self) -> int:
        seen = (self.observed.deployment or {}).get("spec", {}).get("replicas")
        return int(seen) if seen is not None else self.spec.server.desired_replicas

    def step_decision(self, step: int) -> canary.StepDecision | None:
        """A person's decision on approval step ``step`` of the candidate, made after the
        rollout started, by one of the approvers (when the spec names them)."""
        approvers = self.spec.rollout.approval.approvers
        since = parse_time(self.rollout.get("since"))
        for d in sorted(self.observed.decisions, key=lambda d: d.created):
            s = d.spec
            if (s.step, s.version) != (step, self.candidate.version):
                continue
            if since is not None and d.created < since.replace(microsecond=0):
                continue
            if approvers and s.approver not in approvers:
                continue
            if not d.answered:
                verb = "approves" if s.decision == APPROVED else "rejects"
                self.plan.answers.append(
                    Answer(d, APPLIED, f"{s.approver} {verb} step {step} of version {s.version}")
                )
            return canary.StepDecision(s.decision == APPROVED, s.approver, s.comment)
        return None

    def follow_server(self) -> ModelVersion | None:
        """The server Deployment moves to the candidate; live once every replica runs it."""
        candidate = self.candidate
        state = progress(
            self.observed.deployment,
            self.observed.pods,
            candidate.version,
            str(self.rollout.get("since") or self.now),
            self.spec.rollout.progress_deadline_seconds,
            self.observed.now,
        )
        if state.state == COMPLETE:
            self.new_live = {**self.rollout, "since": self.now}
            entry = {
                "version": candidate.version,
                "runId": candidate.run_id,
                "uri": candidate.uri,
                "since": self.now,
                "reason": str(self.rollout.get("reason", "")),
            }
            if self.rollout.get("approvedBy"):
                entry["approvedBy"] = self.rollout["approvedBy"]
            self.history = [entry, *self.history][:HISTORY_LIMIT]
            self.event("Normal", "Live", f"version {candidate.version} is live ({state.message})")
            self.rollout = {}
            return candidate
        if state.state == FAILED and self.live is not None:
            # Back to what was live; the candidate is not tried again while the
            # reference still resolves to it (a registry tag records why).
            message = self.roll_back(candidate, state.reason, state.message)
            self.event("Warning", "RolledBack", message)
            self.rollout = {}
            return self.live
        if state.state == FAILED:
            self.plan.degraded = (state.reason, f"{state.message}; no earlier version")
        self.rollout = {**self.rollout, "message": state.message}
        self.plan.progressing = state.message
        return candidate

    # ------------------------------------------------------------------ the outputs
    def children(self, target: ModelVersion) -> None:
        spec, settings = self.spec, self.settings
        assert self.resolution.target is not None
        drift = spec.monitoring.drift
        compare_log = _prediction_log(spec, settings, self.namespace, self.name)
        shadow = self.observed.shadow if spec.rollout.shadow is not None else None
        # The shadow comparison checks the live version's answers against the shadow's.
        compared = shadow is not None and bool(compare_log) and _same(target, self.current_live())
        server_secret, drift_secret = self.credentials_secrets(drift is not None or compared)
        server = ServerPlan(
            name=self.name,
            namespace=self.namespace,
            spec=spec,
            model=target,
            tracking_uri=self.resolution.target.tracking_uri,
            image=spec.server.image or settings.server_image,
            image_pull_policy=spec.server.image_pull_policy or settings.server_image_pull_policy,
            prediction_log=_prediction_log(spec, settings, self.namespace, self.name),
            prediction_log_secret=_prediction_log_secret(spec, settings),
            credentials_secret=server_secret,
            drift_credentials_secret=drift_secret,
            model_cache=model_cache_plan(spec, settings),
        )
        self.plan.apply.append(build_server_deployment(server))
        self.variants(server)
        if settings.network_policies:
            self.plan.apply.append(build_server_network_policy(server, settings.client_namespaces))
        else:
            self.plan.delete.append(ChildRef("networking.k8s.io/v1", "NetworkPolicy", self.name))
        for api_version, kind, manifest in (
            ("autoscaling/v2", "HorizontalPodAutoscaler", build_server_hpa(server)),
            ("policy/v1", "PodDisruptionBudget", build_server_pdb(server)),
        ):
            if manifest is None:
                self.plan.delete.append(ChildRef(api_version, kind, self.name))
            else:
                self.plan.apply.append(manifest)
        drift_log = _drift_prediction_log(spec, settings, self.namespace, self.name)
        if drift is not None and drift_log and _same(target, self.current_live()):
            # The drift CronJob checks the live version only.
            self.plan.apply.append(
                build_drift_cronjob(
                    server,
                    drift,
                    prediction_log=drift_log,
                    image=settings.toolkit_image,
                    image_pull_policy=settings.server_image_pull_policy,
                )
            )
        elif drift is None or not drift_log:
            self.plan.delete.append(ChildRef("batch/v1", "CronJob", drift_cronjob_name(self.name)))
        if compared:
            assert shadow is not None and compare_log
            self.plan.apply.append(
                build_shadow_compare_cronjob(
                    server,
                    shadow,
                    prediction_log=compare_log,
                    schedule=settings.shadow_compare_schedule,
                    window=settings.shadow_compare_window,
                    image=settings.toolkit_image,
                    image_pull_policy=settings.server_image_pull_policy,
                )
            )
        elif shadow is None or not compare_log:
            self.plan.delete.append(
                ChildRef("batch/v1", "CronJob", shadow_compare_cronjob_name(self.name))
            )

    def variants(self, server: ServerPlan) -> None:
        """The candidate (``<name>-canary``) and shadow (``<name>-shadow``) Deployments
        and Services beside the stable one, the router in front of them and the
        ModelDeployment's Service; removed when unused.

        The order keeps every request answered: the variants' Services exist before the
        router (nginx does not start with an upstream it cannot resolve), the Service
        moves to the router only once it is ready, and when the rollout is over it moves
        back to the stable pods first; the router goes once the watch shows it moved,
        the variants once the router's pods (which may still send them requests) are
        gone."""
        name, observed = self.name, self.observed
        candidate = shadow = None
        if self.canary_run is not None:
            version, replicas = self.canary_run
            candidate = variant_plan(server, canary.candidate_name(name), version, replicas)
        shadow_spec = self.spec.rollout.shadow
        if shadow_spec is not None and observed.shadow is not None:
            shadow = variant_plan(
                server,
                canary.shadow_name(name),
                observed.shadow,
                shadow_spec.replicas or max(1, server.spec.server.desired_replicas),
                shadow_spec.resources,
            )
        routed = self.rollout.get("strategy") == canary.CANARY and (
            candidate is not None or self.rollout.get("phase") == canary.ABORTED
        )
        wanted = routed or shadow is not None
        on_router = selects_router(observed.service, name)
        router_up = observed.router_deployment is not None or any(
            _running(pod, observed.now) for pod in observed.router_pods
        )
        leaving = not wanted and (on_router or router_up)
        # Router pods still sending the candidate requests (promoted, with a shadow left,
        # while they roll to a configuration without it) keep it.
        served = served_weight(observed.router_deployment, observed.service, name)
        kept = {canary.candidate_name(name)} if served != 0 else set()
        for variant, variant_name in (
            (candidate, canary.candidate_name(name)),
            (shadow, canary.shadow_name(name)),
        ):
            if variant is None:
                if variant_name in kept and not leaving:
                    self.look_again(2.0)
                elif not leaving:
                    self.plan.delete += [
                        ChildRef("apps/v1", "Deployment", variant_name),
                        ChildRef("v1", "Service", variant_name),
                        ChildRef("networking.k8s.io/v1", "NetworkPolicy", variant_name),
                    ]
                continue
            self.plan.apply += [build_server_deployment(variant), build_server_service(variant)]
            if self.settings.network_policies:
                self.plan.apply.append(
                    build_server_network_policy(variant, self.settings.client_namespaces)
                )
        service = build_server_service(server)
        if not wanted:
            self.plan.apply.append(service)  # the stable pods, first
            if on_router:
                self.look_again(2.0)  # the router goes once the watch shows the move
            else:
                self.plan.delete += [ChildRef(*ref) for ref in router_children(name)]
            if router_up:
                self.look_again(2.0)  # the variants go once the router's pods are gone
            else:
                self.plan.delete.append(ChildRef("v1", "Service", canary.stable_service_name(name)))
            return
        self.plan.apply.append(build_stable_service(server, canary.stable_service_name(name)))
        self.plan.traffic = canary.TrafficPlan(
            service=name,
            stable_service=canary.stable_service_name(name),
            candidate_service=canary.candidate_name(name) if candidate is not None else None,
            candidate_weight=self.canary_weight if candidate is not None else 0,
            shadow_service=canary.shadow_name(name) if shadow is not None else None,
            shadow_percent=shadow_spec.percent if shadow is not None and shadow_spec else 0,
        )
        router_plan = from_traffic(
            self.plan.traffic,
            self.namespace,
            image=self.settings.router_image,
            image_pull_policy=self.settings.router_image_pull_policy,
            cluster_domain=self.settings.cluster_domain,
        )
        self.plan.apply += build_router(router_plan)
        if self.settings.network_policies:
            policy = build_router_network_policy(router_plan, self.settings.client_namespaces)
            self.plan.apply.append(policy)
        else:
            self.plan.delete.append(
                ChildRef("networking.k8s.io/v1", "NetworkPolicy", router_plan.resource_name)
            )
        router = observed.router_deployment
        if router_ready(router) or (on_router and router_serving(router)):
            service["spec"]["selector"] = router_selector(name)
        else:
            self.look_again(2.0)  # the Service moves once the router is ready
        self.plan.apply.append(service)

    def look_again(self, seconds: float) -> None:
        current = self.plan.requeue_after
        self.plan.requeue_after = seconds if current is None else min(current, seconds)

    def credentials_secrets(self, monitored: bool) -> tuple[str | None, str | None]:
        """The Secrets the servers and the drift check take registry credentials from: the
        one the spec names, or, on the installation's registry with users, one each that
        the operator writes here with only that component's user."""
        ref = self.spec.registry.credentials_secret_ref
        if ref is not None:
            return ref.name, ref.name
        accounts = self.observed.accounts
        assert self.resolution.target is not None
        names = (c.server_credentials_secret(self.name), c.drift_credentials_secret(self.name))
        if accounts is None or not self.resolution.target.installation:
            self.plan.delete += [ChildRef("v1", "Secret", n) for n in names]
            return None, None
        labels = pods.app_labels(SERVER_APP, self.name, "registry-credentials")
        users = [(names[0], c.RegistryUsers.SERVER)]
        if monitored:
            users.append((names[1], c.RegistryUsers.DRIFT))
        else:
            self.plan.delete.append(ChildRef("v1", "Secret", names[1]))
        for secret, user in users:
            self.plan.apply.append(
                build_credentials_secret(secret, self.namespace, labels, accounts.credentials(user))
            )
        return names[0], names[1] if monitored else None

    def shadow_status(self) -> dict[str, Any] | None:
        return _shadow_status(self.spec, self.observed.shadow, self.namespace, self.name)

    def current_live(self) -> ModelVersion | None:
        if self.new_live is not None:
            return self.candidate
        return self.live

    def deployed_tags(self) -> list[TagChange]:
        """The live version carries the deployment's tag, the previous one loses it.
        Written only when missing: an unchanged deployment makes no registry writes."""
        key = c.deployed_tag_key(self.namespace, self.name)
        changes: list[TagChange] = []
        if self.new_live is not None:
            if self.live is not None:
                changes.append(TagChange(self.live.name, self.live.version, key, None))
            changes.append(TagChange(self.candidate.name, self.candidate.version, key, self.now))
        elif _same(self.candidate, self.live) and key not in self.candidate.tags:
            since = str(self.live_status.get("since") or self.now)
            changes.append(TagChange(self.candidate.name, self.candidate.version, key, since))
        return changes

    def finish(self, target: ModelVersion | None) -> None:
        live = self.current_live()
        model = _model_status(self.new_live) if self.new_live else (self.live_status or None)
        drift_status: dict[str, Any] | None = self.old.get("drift")
        if _same(self.candidate, live):
            # The candidate's tags are the live version's: the drift check's verdict.
            self.conditions, drift_status, self.plan.retrain = _drift(
                self.body,
                self.spec,
                self.candidate,
                self.old,
                self.conditions,
                _drift_prediction_log(self.spec, self.settings, self.namespace, self.name),
            )
        elif self.spec.monitoring.drift is None:
            self.conditions = [x for x in self.conditions if x.get("type") != cond.DATA_DRIFT]
            drift_status = None
        self.plan.status = {
            "observedGeneration": self.generation,
            "reference": self.spec.model.label,
            "drift": drift_status,
            "shadow": self.shadow_status(),
            "model": model,
            "rollout": self.rollout or None,
            "pending": self.pending,
            "history": self.history,
            "retried": self.retried,
            "rejected": self.rejected,
            "url": server_url(self.name, self.namespace, self.settings.cluster_domain),
            "endpoints": c.server_endpoints(self.spec.model.name),
            "conditions": self.conditions,
        }


def _shadow_status(
    spec: ModelDeploymentSpec, shadow: ModelVersion | None, namespace: str, name: str
) -> dict[str, Any] | None:
    """``status.shadow``: the version mirrored to, and the last comparison of its answers
    with the live version's (the tag ``modelyard shadow compare`` writes on it)."""
    wanted = spec.rollout.shadow
    if wanted is None or shadow is None:
        return None
    status: dict[str, Any] = {
        "version": shadow.version,
        "reference": f"alias {wanted.alias}" if wanted.alias else f"version {wanted.version}",
        "percent": wanted.percent,
        # None removes an earlier version's comparison (the status is merge-patched).
        "comparison": None,
    }
    raw = shadow.tags.get(c.ShadowTags.key(namespace, name))
    if raw:
        try:
            found = json.loads(raw)
        except ValueError:
            found = None
        if isinstance(found, dict):
            status["comparison"] = {k: v for k, v in found.items() if k in SHADOW_COMPARISON_KEYS}
    return status


def _running(pod: Mapping[str, Any], now: dt.datetime) -> bool:
    """Whether a pod may still be answering: not deleted, or within its grace period (the
    deletion timestamp is when the kubelet kills what is left)."""
    deleted = parse_time((pod.get("metadata") or {}).get("deletionTimestamp"))
    return deleted is None or deleted > now


def model_cache_plan(
    spec: ModelDeploymentSpec, settings: OperatorSettings
) -> ModelCachePlan | None:
    """The servers' model cache: ``spec.server.modelCache``, else the operator's default
    (``MODELYARD_MODEL_CACHE`` or ``_VOLUME_CLAIM``, ``_SECRET``), else none."""
    own = spec.server.model_cache
    if own is not None:
        if not own.enabled:
            return None
        return ModelCachePlan(
            url=own.url,
            volume_claim=own.volume_claim,
            secret=own.secret_ref.name if own.secret_ref else None,
        )
    if not (settings.model_cache or settings.model_cache_volume_claim):
        return None
    return ModelCachePlan(
        url=settings.model_cache or None,
        volume_claim=settings.model_cache_volume_claim or None,
        secret=settings.model_cache_secret or None,
        secret_optional=True,
    )


def _prediction_log(
    spec: ModelDeploymentSpec, settings: OperatorSettings, namespace: str, name: str
) -> str | None:
    """Where this deployment's servers log: ``spec.monitoring.predictionLog``, or the
    operator-wide ``MODELYARD_PREDICTION_LOG`` under ``<namespace>/<name>/``, so two
    deployments serving one version never share (or check) each other's traffic."""
    if spec.monitoring.prediction_log:
        return spec.monitoring.prediction_log
    if settings.prediction_log:
        return c.deployment_prediction_log(settings.prediction_log, namespace, name)
    return None


def _prediction_log_secret(spec: ModelDeploymentSpec, settings: OperatorSettings) -> str | None:
    """The Secret with the log's storage credentials: the spec's, else the operator's."""
    ref = spec.monitoring.prediction_log_secret_ref
    if ref is not None:
        return ref.name
    return settings.prediction_log_secret or None


def _drift_prediction_log(
    spec: ModelDeploymentSpec, settings: OperatorSettings, namespace: str, name: str
) -> str | None:
    drift = spec.monitoring.drift
    if drift is None:
        return None
    return drift.prediction_log or _prediction_log(spec, settings, namespace, name)


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
    result = DriftResult.from_tags(version.tags, (str(meta["namespace"]), str(meta["name"])))
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


def _model_status(record: Mapping[str, Any]) -> dict[str, Any]:
    model = {
        "name": record["name"],
        "version": record["version"],
        "runId": record.get("runId", ""),
        "uri": record.get("uri", ""),
        "source": record.get("source", ""),
        "since": record.get("since", ""),
        "datasets": list(record.get("datasets") or []),
    }
    if record.get("approvedBy"):
        model["approvedBy"] = record["approvedBy"]
    return model


def _rollout_reason(label: str, previous: Any, new: int) -> str:
    if previous is None:
        return f"{label} is version {new}"
    return f"{label} moved from version {previous} to {new}"
