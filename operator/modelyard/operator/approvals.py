"""May a version go live? The approval gate, as pure functions.

The inputs are what the operator has already: the ModelDeployment's policy (and its
namespace's label), the version its reference resolves to (with the registry tags that
record earlier decisions), its ``status.pending``, and the ModelApprovals of its
namespace (from the watch). The output says what to do with the version, what to write
in ``status.pending`` and the ``Approved`` condition, which registry tags to set, and what
to answer on each ModelApproval.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from modelyard.core import contracts as c
from modelyard.core.registry import ModelVersion
from modelyard.operator.conditions import parse_time
from modelyard.operator.resource import Approval, ApprovalSpec

#: What a judgment can be; also the reasons of the Approved condition.
NOT_REQUIRED = "NotRequired"
AWAITING = "AwaitingApproval"
APPROVED = "Approved"
REJECTED = "Rejected"
EXPIRED = "Expired"
#: What the operator answers on a ModelApproval's status.
APPLIED = "Applied"
IGNORED = "Ignored"


def stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Decision:
    """A ModelApproval, as the operator reads it from the watch."""

    name: str
    namespace: str
    spec: ApprovalSpec
    created: dt.datetime
    #: The operator answered it already (its status says Applied or Ignored).
    answered: bool = False

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Decision | None:
        """None for an object whose spec does not parse (the CRD prevents that)."""
        from pydantic import ValidationError

        meta = body.get("metadata") or {}
        try:
            spec = ApprovalSpec.model_validate(dict(body.get("spec") or {}))
        except ValidationError:
            return None
        created = parse_time(meta.get("creationTimestamp")) or dt.datetime.now(dt.UTC)
        state = (body.get("status") or {}).get("state")
        return cls(str(meta.get("name")), str(meta.get("namespace")), spec, created, bool(state))


@dataclass(frozen=True)
class Answer:
    """The status to write on a ModelApproval (once)."""

    decision: Decision
    state: str
    message: str


@dataclass
class Judgment:
    """What the gate says about one candidate version."""

    #: NOT_REQUIRED or APPROVED: it may go live; the others: it may not.
    state: str
    message: str
    pending: dict[str, Any] | None = None
    #: The decision that settled it (approved or rejected by a person).
    decision: Decision | None = None
    tags: dict[str, str] = field(default_factory=dict)
    answers: list[Answer] = field(default_factory=list)
    #: A new pending state began: worth an Event.
    pending_started: bool = False

    @property
    def may_go_live(self) -> bool:
        return self.state in (NOT_REQUIRED, APPROVED)


def required(approval: Approval, namespace_labels: Mapping[str, str]) -> bool:
    """A namespace label makes approval required above the ModelDeployment's own spec."""
    if namespace_labels.get(c.NAMESPACE_APPROVAL_LABEL) == c.NAMESPACE_APPROVAL_REQUIRED:
        return True
    return approval.policy == "Required"


def recorded_rejection(version: ModelVersion, namespace: str, name: str) -> str | None:
    """Why the registry says ``version`` was rejected for this deployment, or None."""
    tags = version.tags
    if tags.get(c.ApprovalTags.key(namespace, name)) != c.ApprovalTags.REJECTED:
        return None
    by = tags.get(c.ApprovalTags.detail(namespace, name, "by"), "")
    reason = tags.get(c.ApprovalTags.detail(namespace, name, "reason"), REJECTED)
    comment = tags.get(c.ApprovalTags.detail(namespace, name, "comment"), "")
    text = f"version {version.version} was rejected ({reason}"
    text += f" by {by})" if by else ")"
    return text + (f": {comment}" if comment else "")


def operator_rejection(version: ModelVersion, namespace: str, name: str) -> str | None:
    """The reason the operator itself rejected ``version`` for this deployment (a failed
    rollout: crashing pods, an unsafe model, failed analysis), or None: not rejected, or
    rejected by a person (whose decision is not a fault to report)."""
    tags = version.tags
    if tags.get(c.ApprovalTags.key(namespace, name)) != c.ApprovalTags.REJECTED:
        return None
    if tags.get(c.ApprovalTags.detail(namespace, name, "by")):
        return None
    return tags.get(c.ApprovalTags.detail(namespace, name, "reason")) or None


def decision_tags(
    namespace: str, name: str, state: str, by: str, at: str, comment: str, reason: str
) -> dict[str, str]:
    return {
        c.ApprovalTags.key(namespace, name): state,
        c.ApprovalTags.detail(namespace, name, "by"): by,
        c.ApprovalTags.detail(namespace, name, "at"): at,
        c.ApprovalTags.detail(namespace, name, "comment"): comment[: c.DriftTags.MAX_TEXT],
        c.ApprovalTags.detail(namespace, name, "reason"): reason,
    }


def judge(
    *,
    namespace: str,
    name: str,
    candidate: ModelVersion,
    reference: str,
    approval: Approval,
    is_required: bool,
    pending: Mapping[str, Any] | None,
    decisions: Iterable[Decision],
    now: dt.datetime,
) -> Judgment:
    """May ``candidate`` (a version other than the live one) go live now?"""
    mine = [
        d
        for d in decisions
        if d.spec.model_deployment == name and d.namespace == namespace and d.spec.step is None
    ]
    rejected = recorded_rejection(candidate, namespace, name)
    if rejected is not None:
        judgment = Judgment(REJECTED, rejected + "; the live version keeps serving")
        judgment.answers = _ignore(mine, candidate, "the version was rejected already")
        return judgment
    if not is_required:
        return Judgment(NOT_REQUIRED, "approval is not required")

    version = candidate.version
    since = parse_time((pending or {}).get("since")) if pending else None
    if not pending or pending.get("version") != version or since is None:
        since = now
    record = {
        "version": version,
        "runId": candidate.run_id,
        "reference": reference,
        "since": stamp(since),
    }
    started = not pending or pending.get("version") != version
    how = (
        f"modelyard approve {name} -n {namespace} --version {version} "
        f"(or create a ModelApproval for version {version})"
    )
    settled: Decision | None = None
    answers: list[Answer] = []
    for decision in sorted(mine, key=lambda d: d.created):
        problem = _why_not(decision, version, since, approval)
        if problem is not None:
            if not decision.answered:
                answers.append(Answer(decision, IGNORED, problem))
            continue
        if settled is None:
            settled = decision
            if not decision.answered:
                answers.append(Answer(decision, APPLIED, _applied(decision, name)))
        elif not decision.answered:
            answers.append(
                Answer(
                    decision,
                    IGNORED,
                    f"version {version} was decided already by "
                    f"{settled.spec.approver} ({settled.spec.decision})",
                )
            )
    if settled is not None:
        state = APPROVED if settled.spec.decision == "Approved" else REJECTED
        who = settled.spec.approver
        message = f"version {version} was {state.lower()} by {who}"
        if settled.spec.comment:
            message += f": {settled.spec.comment}"
        tags = decision_tags(
            namespace,
            name,
            c.ApprovalTags.APPROVED if state == APPROVED else c.ApprovalTags.REJECTED,
            who,
            stamp(settled.created),
            settled.spec.comment,
            state,
        )
        return Judgment(state, message, None, settled, tags, answers)

    if approval.expires_after:
        limit = c.parse_window(approval.expires_after)
        if now - since >= limit:
            message = (
                f"version {version} waited for approval since {stamp(since)}, longer than "
                f"spec.rollout.approval.expiresAfter ({approval.expires_after}): rejected"
            )
            tags = decision_tags(
                namespace, name, c.ApprovalTags.REJECTED, "", stamp(now), "", EXPIRED
            )
            return Judgment(EXPIRED, message, None, None, tags, answers)

    message = f"version {version} ({reference}) awaits approval since {stamp(since)}: {how}"
    tags = {}
    if candidate.tags.get(c.ApprovalTags.key(namespace, name)) != c.ApprovalTags.PENDING:
        tags = {c.ApprovalTags.key(namespace, name): c.ApprovalTags.PENDING}
    return Judgment(AWAITING, message, record, None, tags, answers, pending_started=started)


def _why_not(
    decision: Decision, version: int, since: dt.datetime, approval: Approval
) -> str | None:
    spec = decision.spec
    if spec.version != version:
        return (
            f"version {spec.version} is not pending for this ModelDeployment (version {version} is)"
        )
    # Creation timestamps have second resolution; an approval within the second the
    # version became pending counts.
    if decision.created < since.replace(microsecond=0):
        return (
            f"made at {stamp(decision.created)}, before version {version} became pending "
            f"({stamp(since)}): stale"
        )
    if approval.approvers and spec.approver not in approval.approvers:
        return (
            f"{spec.approver} is not among the approvers of this ModelDeployment "
            f"(spec.rollout.approval.approvers: {', '.join(approval.approvers)})"
        )
    return None


def _ignore(decisions: list[Decision], candidate: ModelVersion, why: str) -> list[Answer]:
    return [
        Answer(d, IGNORED, f"{why} (version {candidate.version})")
        for d in decisions
        if not d.answered and d.spec.version == candidate.version
    ]


def _applied(decision: Decision, name: str) -> str:
    verb = "approves" if decision.spec.decision == "Approved" else "rejects"
    return f"{decision.spec.approver} {verb} version {decision.spec.version} of {name}"


def unmatched(decision: Decision, deployments: Iterable[str]) -> Answer | None:
    """The answer to a ModelApproval whose ModelDeployment does not exist."""
    if decision.answered or decision.spec.model_deployment in set(deployments):
        return None
    return Answer(
        decision,
        IGNORED,
        f"there is no ModelDeployment {decision.spec.model_deployment!r} in namespace "
        f"{decision.namespace}",
    )
