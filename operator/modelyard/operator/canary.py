"""The Canary strategy as a pure state machine (``spec.rollout.strategy: Canary``).

While a canary runs, the server Deployment keeps the live (*stable*) version and a second
Deployment, ``<name>-canary``, runs the new (*candidate*) version behind its own Service;
a router in front of both sends the step's exact share of the requests to the candidate
(:class:`TrafficPlan` says what it should do; the router module renders it).

One call of :func:`advance` takes the spec, the current ``status.rollout`` and what the
operator observes (the time, the candidate's pods, the latest analysis
:class:`~modelyard.operator.analysis.Measurement`, a person's decision on an approval
step, a promote/abort command) and returns the next ``status.rollout`` with what to do:

- **Progressing**: the step's candidate pods are starting, or the router is moving to the
  step's weight; no analysis counts yet;
- **Paused**: holding at the step until its pause has passed *and* the latest
  measurement of a whole interval at this weight is Successful (Inconclusive holds and
  never fails; a Failed one holds until the next); an approval step holds until approved;
- **Promoting**: after the last step (or ``modelyard rollout promote``) the candidate
  takes all the traffic, then the server Deployment moves to it and it becomes live;
- **Aborted**: ``failureLimit`` failed measurements, a candidate that crashes or misses
  its deadline, a rejected approval step or ``modelyard rollout abort``: weight 0 at
  once, the candidate scaled down after ``scale_down_delay`` seconds.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelyard.operator.analysis import FAILED, SUCCESSFUL, Criteria, Measurement
from modelyard.operator.conditions import parse_time
from modelyard.operator.resource import Canary, CanaryStep, duration_seconds

CANARY = "Canary"
#: ``status.rollout.phase`` of a canary.
PROGRESSING = "Progressing"
PAUSED = "Paused"
PROMOTING = "Promoting"
ABORTED = "Aborted"
#: Why a canary was aborted (``status.rollout.abortReason``, the Degraded reason and the
#: rejection tag's reason). Rejected is a person's decision on an approval step.
ANALYSIS_FAILED = "AnalysisFailed"
ABORTED_BY_USER = "Aborted"
STEP_REJECTED = "Rejected"
#: Annotations ``modelyard rollout promote|abort|retry`` set on the ModelDeployment. The
#: promote and abort values name the candidate version they are about; retry's value is
#: a timestamp, acted on once (``status.retried``).
PROMOTE_ANNOTATION = "modelyard.io/rollout-promote"
ABORT_ANNOTATION = "modelyard.io/rollout-abort"
RETRY_ANNOTATION = "modelyard.io/rollout-retry"
#: How many measurements ``status.rollout.measurements`` keeps.
KEPT_MEASUREMENTS = 5
#: Seconds an aborted candidate keeps running at weight 0 before it is scaled down, so
#: the requests it is answering finish.
SCALE_DOWN_DELAY = 30.0


CANARY_SUFFIX = "-canary"


def rollout_command(annotations: Mapping[str, str], status: Mapping[str, Any]) -> bool:
    """Whether the annotations ask for something the status does not show done yet."""
    retry = annotations.get(RETRY_ANNOTATION)
    if retry and retry != status.get("retried"):
        return True
    rollout = status.get("rollout") or {}
    if rollout.get("strategy") != CANARY or rollout.get("phase") in (ABORTED, PROMOTING):
        return False
    version = str(rollout.get("version"))
    return version in (annotations.get(PROMOTE_ANNOTATION), annotations.get(ABORT_ANNOTATION))


def candidate_name(name: str) -> str:
    """The candidate Deployment and Service of ModelDeployment ``name``."""
    return f"{name}{CANARY_SUFFIX}"


def stable_service_name(name: str) -> str:
    """The Service of the stable pods only, for the router to target."""
    return f"{name}-stable"


def shadow_name(name: str) -> str:
    return f"{name}-shadow"


@dataclass(frozen=True)
class TrafficPlan:
    """What the router in front of a ModelDeployment's servers does, as plain data."""

    #: The ModelDeployment's Service, which clients call (it moves to the router).
    service: str
    #: The Service of the stable (live) version's pods.
    stable_service: str
    #: The candidate's Service and its share of the requests (0-100), or None.
    candidate_service: str | None = None
    candidate_weight: int = 0
    #: The shadow's Service and the share of the requests mirrored to it, or None.
    shadow_service: str | None = None
    shadow_percent: int = 0

    @property
    def stable_weight(self) -> int:
        return 100 - self.candidate_weight


@dataclass(frozen=True)
class StepDecision:
    """A person's decision about an approval step of the candidate (a ModelApproval)."""

    approved: bool
    approver: str
    comment: str = ""


@dataclass(frozen=True)
class Observation:
    """What the operator observes about a canary in flight."""

    now: dt.datetime
    #: Replicas of the stable Deployment (the candidate's are derived from them).
    stable_replicas: int
    #: Ready pods of the candidate version (in the candidate Deployment).
    candidate_ready: int = 0
    #: Why the candidate's pods are failing (crash loop, deadline), if they are.
    candidate_failure: str | None = None
    #: The latest analysis measurement, if any (counted once: by its time).
    measurement: Measurement | None = None
    #: A decision about the current approval step, if one was made.
    step_decision: StepDecision | None = None
    #: The candidate weight the router reports it serves; None: as desired.
    router_weight: int | None = None
    promote: bool = False
    abort: bool = False


@dataclass(frozen=True)
class Abort:
    """A canary just aborted: the Degraded reason and message, and the rejection's."""

    reason: str
    message: str
    by: str = ""


@dataclass
class Outcome:
    """What :func:`advance` decided."""

    rollout: dict[str, Any]
    #: The candidate's share of the requests now (0-100).
    weight: int
    #: Replicas of the candidate Deployment; 0: remove it.
    candidate_replicas: int
    #: The stable Deployment may move to the candidate (Promoting at 100%).
    promote_stable: bool = False
    #: Set on the pass that aborts.
    aborted: Abort | None = None
    #: The aborted candidate has been scaled down: the rollout is over.
    finished: bool = False
    events: list[tuple[str, str, str]] = field(default_factory=list)
    #: Look again after this many seconds (a pause ends, an interval passes).
    requeue_after: float | None = None


def criteria(canary: Canary) -> Criteria:
    """``spec.rollout.canary.analysis`` as :func:`analysis.judge` takes it."""
    a = canary.analysis
    return Criteria(
        interval_seconds=duration_seconds(a.interval),
        min_requests=a.min_requests,
        max_error_rate_increase=a.max_error_rate_increase,
        max_latency_ratio=a.max_latency_ratio,
        min_latency_increase_seconds=duration_seconds(a.min_latency_increase),
        failure_limit=a.failure_limit,
    )


def step_weight(steps: tuple[CanaryStep, ...], index: int) -> int:
    """The weight in force at step ``index``: an approval step keeps the one before."""
    for step in reversed(steps[: index + 1]):
        if step.weight is not None:
            return step.weight
    return 0


def candidate_replicas(steps: tuple[CanaryStep, ...], index: int, stable_replicas: int) -> int:
    """The step's ``replicas``, else the weight's share of the stable replicas, rounded
    up, at least 1 (an approval step keeps the count of the step before)."""
    for step in reversed(steps[: index + 1]):
        if step.weight is not None:
            if step.replicas is not None:
                return step.replicas
            return max(1, math.ceil(step.weight * max(stable_replicas, 1) / 100))
    return 1


def start(now: dt.datetime) -> dict[str, Any]:
    """The canary fields of a new ``status.rollout``."""
    return {
        "strategy": CANARY,
        "phase": PROGRESSING,
        "step": 0,
        "stepSince": None,
        "desiredWeight": 0,
        "actualWeight": 0,
        "failedMeasurements": 0,
        "measurements": [],
        "pauseReason": None,
    }


def _stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def advance(
    canary: Canary,
    rollout: Mapping[str, Any],
    seen: Observation,
    name: str,
    scale_down_delay: float = SCALE_DOWN_DELAY,
) -> Outcome:
    """The next state of the canary recorded in ``rollout`` (see the module docstring)."""
    state = dict(rollout)
    steps = canary.steps
    version = state.get("version")
    index = min(int(state.get("step") or 0), len(steps) - 1)
    phase = str(state.get("phase") or PROGRESSING)
    stable = max(seen.stable_replicas, 1)

    if phase == ABORTED:
        return _aborted(state, seen, scale_down_delay)

    _record(state, seen.measurement, canary)
    limit = criteria(canary).failure_limit
    failed = int(state.get("failedMeasurements") or 0)
    why: Abort | None = None
    if seen.abort:
        why = Abort(ABORTED_BY_USER, f"version {version} was aborted (modelyard rollout abort)")
    elif seen.candidate_failure:
        why = Abort("RolloutFailed", seen.candidate_failure)
    elif failed >= limit:
        shown = "; ".join(
            f"{m['at']} {m['phase']}: {m['message']}"
            for m in state.get("measurements") or []
            if m.get("phase") == FAILED
        )
        why = Abort(
            ANALYSIS_FAILED,
            f"version {version} failed {failed} analysis measurements "
            f"(failureLimit {limit}): {shown}",
        )
    elif (
        steps[index].approval is not None
        and seen.step_decision is not None
        and not seen.step_decision.approved
        and phase != PROMOTING
    ):
        d = seen.step_decision
        why = Abort(
            STEP_REJECTED,
            f"step {index} of version {version} was rejected by {d.approver}"
            + (f": {d.comment}" if d.comment else ""),
            by=d.approver,
        )
    if why is not None:
        return _abort(state, seen, why, scale_down_delay)

    events: list[tuple[str, str, str]] = []
    if phase != PROMOTING and seen.promote:
        phase = PROMOTING
        events.append(("Normal", "Promoting", f"version {version} promoted by a person"))
    if phase == PROMOTING:
        return _promoting(state, seen, stable, version, events)

    weight = step_weight(steps, index)
    replicas = candidate_replicas(steps, index, stable)
    state.update(desiredWeight=weight, candidateReplicas=replicas)
    if seen.candidate_ready < replicas:
        # The router keeps the weight it has until the step's pods are ready.
        state.update(
            phase=PROGRESSING,
            actualWeight=_actual(seen, _kept(state)),
            pauseReason=f"waiting for {replicas} ready pods of version {version} "
            f"({seen.candidate_ready} ready)",
        )
        return Outcome(state, _kept(state), replicas, events=events, requeue_after=5.0)
    actual = _actual(seen, weight)
    state["actualWeight"] = actual
    if actual != weight:
        state.update(phase=PROGRESSING, pauseReason=f"the router moves to {weight}%")
        return Outcome(state, weight, replicas, events=events, requeue_after=2.0)
    if not state.get("stepSince"):
        state["stepSince"] = _stamp(seen.now)
        events.append(
            ("Normal", "CanaryStep", f"step {index}: version {version} answers {weight}%")
        )
    since = parse_time(state["stepSince"]) or seen.now
    held = _hold(canary, steps[index], state, since, seen, index, name)
    if held is not None:
        reason, wait = held
        state.update(phase=PAUSED, pauseReason=reason)
        return Outcome(state, weight, replicas, events=events, requeue_after=wait)
    # The step is done: the next one, or the promotion after the last.
    if index + 1 < len(steps):
        state.update(step=index + 1, stepSince=None, phase=PROGRESSING, pauseReason=None)
        following = step_weight(steps, index + 1)
        if following == weight and steps[index + 1].approval is not None:
            state["stepSince"] = _stamp(seen.now)  # an approval step keeps the weight
        outcome = advance(canary, state, _without_news(seen), name, scale_down_delay)
        outcome.events[:0] = events
        return outcome
    events.append(
        ("Normal", "Promoting", f"version {version} passed every step and takes all traffic")
    )
    return _promoting(state, seen, stable, version, events)


def _actual(seen: Observation, desired: int) -> int:
    return desired if seen.router_weight is None else seen.router_weight


def _kept(state: Mapping[str, Any]) -> int:
    return int(state.get("actualWeight") or 0)


def _without_news(seen: Observation) -> Observation:
    """The same observation with its measurement and commands already used."""
    return Observation(
        now=seen.now,
        stable_replicas=seen.stable_replicas,
        candidate_ready=seen.candidate_ready,
        router_weight=seen.router_weight,
    )


def _hold(
    canary: Canary,
    step: CanaryStep,
    state: Mapping[str, Any],
    since: dt.datetime,
    seen: Observation,
    index: int,
    name: str,
) -> tuple[str, float] | None:
    """Why the step holds and when to look again, or None: it is done."""
    version = state.get("version")
    if step.approval is not None:
        if seen.step_decision is not None and seen.step_decision.approved:
            return None
        return (
            f"step {index} awaits approval: modelyard approve {name} --version {version} "
            f"--step {index}",
            60.0,
        )
    left = step.pause_seconds - (seen.now - since).total_seconds()
    if left > 0:
        return f"bake time at {step.weight}%: {math.ceil(left)}s left", left
    interval = criteria(canary).interval_seconds
    whole = [
        m
        for m in state.get("measurements") or []
        if (parse_time(m.get("at")) or since) - dt.timedelta(seconds=interval) >= since
    ]
    if not whole:
        return (
            f"awaiting the analysis of a whole {canary.analysis.interval} interval at "
            f"{step.weight}%",
            interval,
        )
    latest = whole[-1]
    if latest.get("phase") == SUCCESSFUL:
        return None
    return f"{str(latest.get('phase')).lower()}: {latest.get('message')}", interval


def _record(state: dict[str, Any], measurement: Measurement | None, canary: Canary) -> None:
    """Count a measurement once (a newer one than the last recorded), while traffic flows."""
    if measurement is None or not state.get("stepSince"):
        return
    shown = list(state.get("measurements") or [])
    last = parse_time(shown[-1].get("at")) if shown else None
    entry = measurement.to_status()
    if last is not None and (parse_time(entry["at"]) or last) <= last:
        return
    shown.append(entry)
    state["measurements"] = shown[-KEPT_MEASUREMENTS:]
    if measurement.phase == FAILED:
        state["failedMeasurements"] = int(state.get("failedMeasurements") or 0) + 1


def _promoting(
    state: dict[str, Any],
    seen: Observation,
    stable: int,
    version: Any,
    events: list[tuple[str, str, str]],
) -> Outcome:
    """All traffic to the candidate, once it runs as many pods as the stable version;
    then the stable Deployment may move to it."""
    state.update(phase=PROMOTING, desiredWeight=100, candidateReplicas=stable)
    if seen.candidate_ready < stable:
        state["pauseReason"] = (
            f"scaling version {version} to {stable} pods before it takes all traffic "
            f"({seen.candidate_ready} ready)"
        )
        return Outcome(state, _kept(state), stable, events=events, requeue_after=5.0)
    actual = _actual(seen, 100)
    state["actualWeight"] = actual
    if actual != 100:
        state["pauseReason"] = "the router moves to 100%"
        return Outcome(state, 100, stable, events=events, requeue_after=2.0)
    state["pauseReason"] = f"the server Deployment moves to version {version}"
    return Outcome(state, 100, stable, promote_stable=True, events=events, requeue_after=5.0)


def _abort(state: dict[str, Any], seen: Observation, why: Abort, delay: float) -> Outcome:
    state.update(
        phase=ABORTED,
        desiredWeight=0,
        abortedAt=_stamp(seen.now),
        abortReason=why.reason,
        pauseReason=None,
        message=why.message,
    )
    state["actualWeight"] = _actual(seen, 0)
    replicas = int(state.get("candidateReplicas") or 1)
    return Outcome(
        state,
        0,
        replicas,
        aborted=why,
        events=[("Warning", why.reason, f"{why.message}; all traffic back to the live version")],
        requeue_after=delay,
    )


def _aborted(state: dict[str, Any], seen: Observation, delay: float) -> Outcome:
    """Weight 0; the candidate keeps its pods for ``delay`` seconds, then goes."""
    state["actualWeight"] = _actual(seen, 0)
    at = parse_time(state.get("abortedAt")) or seen.now
    left = delay - (seen.now - at).total_seconds()
    if left > 0:
        replicas = int(state.get("candidateReplicas") or 1)
        return Outcome(state, 0, replicas, requeue_after=left)
    return Outcome(state, 0, 0, finished=True)
