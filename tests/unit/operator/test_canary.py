"""The Canary state machine: every transition, from the status a pass starts with."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from modelyard.operator import canary as k
from modelyard.operator.analysis import Criteria, VariantStats, judge
from modelyard.operator.resource import Canary, ModelDeploymentSpec, SpecError

T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)


def spec(steps: list[dict[str, Any]], **analysis: Any) -> Canary:
    parsed = ModelDeploymentSpec.parse(
        {
            "model": {"name": "m", "alias": "champion"},
            "rollout": {"strategy": "Canary", "canary": {"steps": steps, "analysis": analysis}},
        }
    )
    assert parsed.rollout.canary is not None
    return parsed.rollout.canary


STEPS = [{"weight": 10, "pause": "1m"}, {"weight": 50, "pause": "2m"}]


def fresh() -> dict[str, Any]:
    return {"name": "m", "version": 7, **k.start(T0)}


def seen(at: float = 0, **kw: Any) -> k.Observation:
    base: dict[str, Any] = {"stable_replicas": 4, "candidate_ready": 4}
    base.update(kw)
    return k.Observation(now=T0 + dt.timedelta(seconds=at), **base)


def measure(at: float, *, cand_errors: int = 0, requests: int = 100) -> Any:
    moment = T0 + dt.timedelta(seconds=at)
    return judge(
        Criteria(),
        VariantStats(requests, 0, 0.05),
        VariantStats(requests, cand_errors, 0.05),
        moment,
    )


def test_replicas_follow_the_weight_rounded_up_or_the_step() -> None:
    c = spec([{"weight": 10}, {"weight": 50, "replicas": 7}, {"approval": {}}, {"weight": 60}])
    assert k.candidate_replicas(c.steps, 0, 4) == 1  # ceil(0.4), at least 1
    assert k.candidate_replicas(c.steps, 0, 25) == 3  # ceil(2.5)
    assert k.candidate_replicas(c.steps, 1, 4) == 7
    assert k.candidate_replicas(c.steps, 2, 4) == 7  # an approval step keeps the one before
    assert k.step_weight(c.steps, 2) == 50
    assert k.candidate_replicas(c.steps, 3, 4) == 3


def test_no_traffic_until_the_candidate_pods_are_ready() -> None:
    out = k.advance(spec(STEPS), fresh(), seen(candidate_ready=0), "md")
    assert out.weight == 0 and out.candidate_replicas == 1
    assert out.rollout["phase"] == k.PROGRESSING
    assert "waiting for 1 ready pods" in out.rollout["pauseReason"]


def test_ready_candidate_takes_the_step_weight_and_bakes() -> None:
    out = k.advance(spec(STEPS), fresh(), seen(), "md")
    assert out.weight == 10 and out.rollout["actualWeight"] == 10
    assert out.rollout["phase"] == k.PAUSED and out.rollout["stepSince"] == "2026-01-01T12:00:00Z"
    assert out.rollout["pauseReason"] == "bake time at 10%: 60s left"
    assert out.requeue_after == 60
    assert ("Normal", "CanaryStep", "step 0: version 7 answers 10%") in out.events


def test_router_not_there_yet_holds_the_step_clock() -> None:
    out = k.advance(spec(STEPS), fresh(), seen(router_weight=0), "md")
    assert out.weight == 10 and out.rollout["actualWeight"] == 0
    assert out.rollout["phase"] == k.PROGRESSING and out.rollout["stepSince"] is None


def paused_at_step0() -> dict[str, Any]:
    return k.advance(spec(STEPS), fresh(), seen(), "md").rollout


def test_pause_passed_without_a_measurement_awaits_analysis() -> None:
    out = k.advance(spec(STEPS), paused_at_step0(), seen(61), "md")
    assert out.rollout["step"] == 0 and out.weight == 10
    assert "awaiting the analysis of a whole 30s interval" in out.rollout["pauseReason"]


def test_successful_analysis_after_the_pause_advances_and_scales() -> None:
    state = k.advance(spec(STEPS), paused_at_step0(), seen(40, measurement=measure(40)), "md")
    assert state.rollout["phase"] == k.PAUSED  # still baking
    out = k.advance(spec(STEPS), state.rollout, seen(61, candidate_ready=1), "md")
    assert out.rollout["step"] == 1 and out.candidate_replicas == 2  # ceil(50% of 4)
    # the router keeps 10% until the next step's pods are ready
    assert out.weight == 10 and out.rollout["phase"] == k.PROGRESSING
    out = k.advance(spec(STEPS), out.rollout, seen(65), "md")
    assert out.weight == 50 and out.rollout["stepSince"] == "2026-01-01T12:01:05Z"


def test_measurement_of_an_interval_begun_before_the_step_does_not_count() -> None:
    state = k.advance(spec(STEPS), paused_at_step0(), seen(20, measurement=measure(20)), "md")
    out = k.advance(spec(STEPS), state.rollout, seen(61), "md")
    assert out.rollout["step"] == 0
    assert len(out.rollout["measurements"]) == 1


def test_inconclusive_holds_and_never_fails() -> None:
    state = paused_at_step0()
    for t in (40, 70, 100, 130):
        state = k.advance(
            spec(STEPS), state, seen(t, measurement=measure(t, cand_errors=50, requests=3)), "md"
        ).rollout
    assert state["phase"] == k.PAUSED and state["step"] == 0
    assert state["failedMeasurements"] == 0
    assert state["pauseReason"].startswith("inconclusive: candidate answered 3 < 50")


def test_one_failure_holds_a_second_aborts_with_the_measurements() -> None:
    c = spec(STEPS)
    one = k.advance(c, paused_at_step0(), seen(40, measurement=measure(40, cand_errors=20)), "md")
    assert one.rollout["failedMeasurements"] == 1 and one.aborted is None
    # the same measurement seen again is not counted twice
    again = k.advance(c, one.rollout, seen(65, measurement=measure(40, cand_errors=20)), "md")
    assert again.rollout["failedMeasurements"] == 1
    assert again.rollout["pauseReason"].startswith("failed: error rate 20.00%")
    two = k.advance(c, again.rollout, seen(70, measurement=measure(70, cand_errors=20)), "md")
    assert two.weight == 0 and two.rollout["phase"] == k.ABORTED
    assert two.aborted is not None and two.aborted.reason == k.ANALYSIS_FAILED
    assert "failed 2 analysis measurements (failureLimit 2)" in two.aborted.message
    assert "2026-01-01T12:01:10Z Failed: error rate 20.00%" in two.aborted.message
    assert two.candidate_replicas == 1  # still running for the scale-down delay
    assert two.events[0][:2] == ("Warning", "AnalysisFailed")


def test_aborted_candidate_is_scaled_down_after_the_delay() -> None:
    c = spec(STEPS)
    out = k.advance(c, paused_at_step0(), seen(10, abort=True), "md", scale_down_delay=20)
    assert out.aborted is not None and out.aborted.reason == k.ABORTED_BY_USER
    assert out.requeue_after == 20
    held = k.advance(c, out.rollout, seen(25), "md", scale_down_delay=20)
    assert held.weight == 0 and held.candidate_replicas == 1 and not held.finished
    assert held.aborted is None  # aborted once, not once a pass
    gone = k.advance(c, out.rollout, seen(31), "md", scale_down_delay=20)
    assert gone.candidate_replicas == 0 and gone.finished


def test_crashing_candidate_aborts() -> None:
    out = k.advance(spec(STEPS), fresh(), seen(candidate_failure="pod x restarted 3 times"), "md")
    assert out.aborted == k.Abort("RolloutFailed", "pod x restarted 3 times")


def test_last_step_promotes_at_full_size_then_moves_the_stable() -> None:
    c = spec([{"weight": 10}])
    state = k.advance(c, fresh(), seen(candidate_ready=1), "md").rollout
    out = k.advance(c, state, seen(40, candidate_ready=1, measurement=measure(40)), "md")
    assert out.rollout["phase"] == k.PROMOTING and out.candidate_replicas == 4
    assert out.weight == 10 and not out.promote_stable  # 4 pods first
    out = k.advance(c, out.rollout, seen(50, candidate_ready=4), "md")
    assert out.weight == 100 and out.promote_stable


def test_promote_command_skips_the_remaining_steps() -> None:
    out = k.advance(spec(STEPS), paused_at_step0(), seen(5, promote=True), "md")
    assert out.rollout["phase"] == k.PROMOTING and out.weight == 100 and out.promote_stable
    assert ("Normal", "Promoting", "version 7 promoted by a person") in out.events


def test_approval_step_holds_mid_rollout_until_approved() -> None:
    c = spec([{"weight": 10}, {"approval": {}}, {"weight": 50}])
    state = k.advance(c, fresh(), seen(candidate_ready=1), "md").rollout
    out = k.advance(c, state, seen(40, candidate_ready=1, measurement=measure(40)), "md")
    assert out.rollout["step"] == 1 and out.weight == 10 and out.rollout["phase"] == k.PAUSED
    assert out.rollout["pauseReason"] == (
        "step 1 awaits approval: modelyard approve md --version 7 --step 1"
    )
    yes = k.StepDecision(approved=True, approver="ana")
    out = k.advance(c, out.rollout, seen(50, step_decision=yes), "md")
    assert out.rollout["step"] == 2 and out.weight == 50


def test_rejected_approval_step_aborts_as_a_persons_rejection() -> None:
    c = spec([{"weight": 10}, {"approval": {}}, {"weight": 50}])
    state = k.advance(c, fresh(), seen(candidate_ready=1), "md").rollout
    state = k.advance(c, state, seen(40, candidate_ready=1, measurement=measure(40)), "md").rollout
    no = k.StepDecision(approved=False, approver="bo", comment="too slow")
    out = k.advance(c, state, seen(50, step_decision=no), "md")
    assert out.aborted == k.Abort(
        k.STEP_REJECTED, "step 1 of version 7 was rejected by bo: too slow", by="bo"
    )
    assert out.weight == 0


def test_spec_rules_match_the_crd() -> None:
    with pytest.raises(SpecError, match="greater than the one before"):
        spec([{"weight": 50}, {"weight": 50}])
    with pytest.raises(SpecError, match="exactly one of"):
        spec([{"weight": 5, "approval": {}}])
    with pytest.raises(SpecError, match="canary is required"):
        ModelDeploymentSpec.parse(
            {"model": {"name": "m", "version": 1}, "rollout": {"strategy": "Canary"}}
        )
    with pytest.raises(SpecError, match="exactly one of alias or version"):
        ModelDeploymentSpec.parse(
            {"model": {"name": "m", "version": 1}, "rollout": {"shadow": {"percent": 5}}}
        )


def test_rollout_status_says_phase_step_weight_and_why_it_holds() -> None:
    from modelyard.operator.rollout_cli import describe

    state = k.advance(
        spec(STEPS), paused_at_step0(), seen(40, measurement=measure(40)), "md"
    ).rollout
    md = {
        "metadata": {"name": "md", "namespace": "ml"},
        "spec": {"rollout": {"canary": {"steps": STEPS}}},
        "status": {"model": {"version": 6}, "rollout": {**state, "since": "2026-01-01T12:00:00Z"}},
    }
    text = "\n".join(describe(md))
    assert "ml/md: live version 6" in text
    assert "candidate version 7 (Canary" in text
    assert "phase: Paused" in text and "step: 0 of 2" in text
    assert "weight: 10% (desired 10%)" in text
    assert "holding: bake time at 10%: 20s left" in text
    assert "Successful: candidate 100 requests" in text


def test_the_analysis_criteria_come_from_the_spec() -> None:
    c = spec(
        STEPS,
        interval="1m",
        minRequests=10,
        maxLatencyRatio=2,
        minLatencyIncrease="40ms",
        failureLimit=3,
    )
    assert k.criteria(c) == Criteria(60.0, 10, 0.01, 2.0, 3, 0.04)


def test_a_rollout_command_not_yet_acted_on_asks_for_a_reconcile() -> None:
    paused = {"retried": "t1", "rollout": {"strategy": "Canary", "phase": "Paused", "version": 7}}
    assert k.rollout_command({k.RETRY_ANNOTATION: "t2"}, paused)
    assert not k.rollout_command({k.RETRY_ANNOTATION: "t1"}, paused)
    assert k.rollout_command({k.PROMOTE_ANNOTATION: "7"}, paused)
    assert k.rollout_command({k.ABORT_ANNOTATION: "7"}, paused)
    assert not k.rollout_command({k.ABORT_ANNOTATION: "6"}, paused)
    aborted = {"rollout": {**paused["rollout"], "phase": "Aborted"}}
    assert not k.rollout_command({k.ABORT_ANNOTATION: "7"}, aborted)
