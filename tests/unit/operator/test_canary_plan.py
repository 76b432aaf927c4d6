"""A Canary rollout as the planner runs it: children, traffic, tags, status, against a
real (local, SQLite) MLflow registry."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from modelyard.core.contracts import ApprovalTags, ShadowTags
from modelyard.operator import canary as k
from modelyard.operator.analysis import Criteria, VariantStats, judge
from modelyard.operator.approvals import Decision
from modelyard.operator.plan import Observed, Plan, plan_reconcile
from modelyard.operator.resolve import Registries, RegistryPolicy, Resolver, resolve_model
from modelyard.operator.resource import ModelDeploymentSpec
from modelyard.operator.settings import OperatorSettings
from tests.unit.operator.test_decisions import (
    NAME,
    NOW,
    NS,
    Registry,
    body,
    condition,
    live,
    serving,
)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path)


CANARY = {
    "model": {"name": "churn", "alias": "champion"},
    "server": {"replicas": 4},
    "rollout": {
        "strategy": "Canary",
        "canary": {"steps": [{"weight": 10, "pause": "1m"}, {"weight": 50, "pause": "1m"}]},
    },
}


def decide(obj: dict[str, Any], uri: str, at: float = 0, **observed: Any) -> Plan:
    ours = OperatorSettings(default_tracking_uri=uri, resolve_interval=30)
    resolver = Resolver(Registries(client.ApiClient(), timeout=2.0), interval=30)
    spec = ModelDeploymentSpec.parse(obj["spec"])
    current = (obj.get("status") or {}).get("model") or {}
    resolution = resolve_model(resolver, spec, NS, current, RegistryPolicy(uri))
    seen = Observed(now=NOW + dt.timedelta(seconds=at), **observed)
    return plan_reconcile(obj, spec, resolution, ours, seen)


def model_version(manifest: dict[str, Any]) -> str:
    annotations = manifest["spec"]["template"]["metadata"]["annotations"]
    return str(annotations["modelyard.io/model-version"])


def deployments(plan: Plan) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m for m in plan.apply if m["kind"] == "Deployment"}


def bad(at: float) -> Any:
    return judge(
        Criteria(),
        VariantStats(200, 0, 0.05),
        VariantStats(200, 40, 0.05),
        NOW + dt.timedelta(seconds=at),
    )


def started(registry: Registry) -> tuple[dict[str, Any], int]:
    """v1 live on 4 replicas, the alias moved to v2: the canary's first pass."""
    v1 = registry.version()
    registry.alias("champion", v1)
    status = live(registry, CANARY, v1)
    v2 = registry.version()
    registry.alias("champion", v2)
    return status, v2


def test_the_candidate_runs_beside_the_live_version_at_the_step_weight(
    registry: Registry,
) -> None:
    status, v2 = started(registry)
    first = decide(body(CANARY, status), registry.uri, deployment=serving(1, 4))
    made = deployments(first)
    assert model_version(made[NAME]) == "1"  # the stable keeps the live version
    assert model_version(made[f"{NAME}-canary"]) == str(v2)
    assert made[f"{NAME}-canary"]["spec"]["replicas"] == 1  # ceil(10% of 4)
    assert first.traffic == k.TrafficPlan(NAME, f"{NAME}-stable", f"{NAME}-canary", 0)
    assert first.status["model"]["version"] == 1
    assert first.status["rollout"]["phase"] == k.PROGRESSING
    services = {m["metadata"]["name"] for m in first.apply if m["kind"] == "Service"}
    assert services == {NAME, f"{NAME}-stable", f"{NAME}-canary"}

    ready = decide(
        body(CANARY, first.status),
        registry.uri,
        5,
        deployment=serving(1, 4),
        canary_deployment=serving(v2, 1),
    )
    assert ready.traffic is not None and ready.traffic.candidate_weight == 10
    assert ready.status["rollout"]["actualWeight"] == 10
    assert ready.status["rollout"]["phase"] == k.PAUSED
    assert ready.progressing == "bake time at 10%: 60s left"


def failed_analysis(registry: Registry) -> tuple[Plan, int]:
    """The canary of v2 through two bad measurements: the pass that rolls it back."""
    status, v2 = started(registry)
    plan = decide(body(CANARY, status), registry.uri, deployment=serving(1, 4))
    for at in (5, 40, 70):
        plan = decide(
            body(CANARY, plan.status),
            registry.uri,
            at,
            deployment=serving(1, 4),
            canary_deployment=serving(v2, 1),
            measurement=bad(at) if at > 5 else None,
        )
    return plan, v2


def test_failed_analysis_rolls_back_rejects_and_retry_starts_over(registry: Registry) -> None:
    plan, v2 = failed_analysis(registry)
    assert plan.traffic is not None and plan.traffic.candidate_weight == 0
    assert plan.degraded is not None and plan.degraded[0] == "AnalysisFailed"
    assert "error rate 20.00% vs stable 0.00%" in plan.degraded[1]
    assert [e.reason for e in plan.events] == ["AnalysisFailed"]
    assert condition(plan, "Approved")["reason"] == "Rejected"
    registry.write(plan)
    tags = registry.tags(v2)
    assert tags[ApprovalTags.key(NS, NAME)] == ApprovalTags.REJECTED
    assert tags[ApprovalTags.detail(NS, NAME, "reason")] == "AnalysisFailed"

    # After the scale-down delay the candidate goes; it is not tried again.
    gone = decide(body(CANARY, plan.status), registry.uri, 101, deployment=serving(1, 4))
    assert f"{NAME}-canary" not in deployments(gone) and gone.traffic is None
    assert gone.status["rollout"] is None and gone.degraded is None
    again = decide(body(CANARY, gone.status), registry.uri, 200, deployment=serving(1, 4))
    assert f"{NAME}-canary" not in deployments(again)
    assert condition(again, "Approved")["reason"] == "Rejected"

    # modelyard rollout retry: the operator's rejection is cleared, the canary restarts.
    retried = body(CANARY, again.status)
    retried["metadata"]["annotations"] = {k.RETRY_ANNOTATION: "2026-12-01T10:05:00Z"}
    plan = decide(retried, registry.uri, 300, deployment=serving(1, 4))
    assert f"{NAME}-canary" in deployments(plan)
    assert plan.status["rollout"]["step"] == 0 and plan.status["retried"]
    registry.write(plan)
    assert ApprovalTags.key(NS, NAME) not in registry.tags(v2)


def test_a_rejection_whose_tag_was_never_written_is_kept_and_the_tag_written_again(
    registry: Registry,
) -> None:
    """The registry refused the rejection tag (down, or a permission missing): the
    status keeps the rejection, the canary is not started over, the tag is asked again."""
    plan, v2 = failed_analysis(registry)
    assert plan.status["rejected"]["version"] == v2
    assert plan.status["rejected"]["reason"] == "AnalysisFailed"
    # The tags of this plan are lost: registry.write(plan) is never called.
    gone = decide(body(CANARY, plan.status), registry.uri, 101, deployment=serving(1, 4))
    assert gone.status["rollout"] is None
    for at in (200, 300):
        again = decide(body(CANARY, gone.status), registry.uri, at, deployment=serving(1, 4))
        assert f"{NAME}-canary" not in deployments(again) and again.status["rollout"] is None
        assert condition(again, "Approved")["reason"] == "Rejected"
        asked = {t.key: t.value for t in again.tags if t.version == v2}
        assert asked[ApprovalTags.key(NS, NAME)] == ApprovalTags.REJECTED
        assert asked[ApprovalTags.detail(NS, NAME, "reason")] == "AnalysisFailed"
        gone = again
    registry.write(again)
    settled = decide(body(CANARY, again.status), registry.uri, 400, deployment=serving(1, 4))
    assert [t for t in settled.tags if t.version == v2] == []  # written: nothing more to ask
    assert condition(settled, "Approved")["reason"] == "Rejected"

    # modelyard rollout retry clears the record as well as the tag.
    retried = body(CANARY, settled.status)
    retried["metadata"]["annotations"] = {k.RETRY_ANNOTATION: "2026-12-01T10:05:00Z"}
    plan = decide(retried, registry.uri, 500, deployment=serving(1, 4))
    assert f"{NAME}-canary" in deployments(plan) and plan.status["rejected"] is None


def test_retry_never_clears_a_persons_rejection(registry: Registry) -> None:
    status, v2 = started(registry)
    registry.tag(
        v2,
        {
            ApprovalTags.key(NS, NAME): ApprovalTags.REJECTED,
            ApprovalTags.detail(NS, NAME, "reason"): "Rejected",
            ApprovalTags.detail(NS, NAME, "by"): "alice",
        },
    )
    obj = body(CANARY, status)
    obj["metadata"]["annotations"] = {k.RETRY_ANNOTATION: "2026-12-01T10:05:00Z"}
    plan = decide(obj, registry.uri, deployment=serving(1, 4))
    assert f"{NAME}-canary" not in deployments(plan)
    assert plan.tags == [] or all(t.value is not None for t in plan.tags)
    assert "rejected (Rejected by alice)" in condition(plan, "Approved")["message"]


def test_promotion_moves_the_stable_then_removes_the_canary(registry: Registry) -> None:
    status, v2 = started(registry)
    plan = decide(body(CANARY, status), registry.uri, deployment=serving(1, 4))
    obj = body(CANARY, plan.status)
    obj["metadata"]["annotations"] = {k.PROMOTE_ANNOTATION: str(v2)}
    promoting = decide(
        obj, registry.uri, 5, deployment=serving(1, 4), canary_deployment=serving(v2, 4)
    )
    assert promoting.traffic is not None and promoting.traffic.candidate_weight == 100
    assert model_version(deployments(promoting)[NAME]) == str(v2)  # the stable moves
    assert promoting.status["model"]["version"] == 1  # not live yet
    obj = body(CANARY, promoting.status)
    obj["metadata"]["annotations"] = {k.PROMOTE_ANNOTATION: str(v2)}
    done = decide(
        obj, registry.uri, 30, deployment=serving(v2, 4), canary_deployment=serving(v2, 4)
    )
    assert done.status["model"]["version"] == v2 and done.status["rollout"] is None
    assert f"{NAME}-canary" not in deployments(done) and done.traffic is None
    assert model_version(deployments(done)[NAME]) == str(v2)


def test_a_rolling_update_has_no_router_and_no_canary(registry: Registry) -> None:
    spec = {"model": {"name": "churn", "alias": "champion"}}
    v1 = registry.version()
    registry.alias("champion", v1)
    plan = decide(body(spec), registry.uri)
    assert plan.traffic is None and set(deployments(plan)) == {NAME}
    assert plan.status["rollout"]["strategy"] == "RollingUpdate"


def live_with_shadow(
    registry: Registry, spec: dict[str, Any], version: int
) -> tuple[dict[str, Any], Any]:
    """The status once ``version`` went live, and the shadow the spec's reference resolves to."""
    from modelyard.operator.resolve import resolve_shadow

    status = live(registry, spec, version)
    ours = ModelDeploymentSpec.parse(spec)
    resolver = Resolver(Registries(client.ApiClient(), timeout=2.0), interval=30)
    target = resolve_model(resolver, ours, NS, {}, RegistryPolicy(registry.uri)).target
    return status, resolve_shadow(resolver, ours, target)


def test_a_shadow_runs_its_version_and_the_router_mirrors_to_it(registry: Registry) -> None:
    spec = {
        "model": {"name": "churn", "alias": "champion"},
        "rollout": {"shadow": {"alias": "challenger", "percent": 20}},
    }
    v1, v2 = registry.version(), registry.version()
    registry.alias("champion", v1)
    registry.alias("challenger", v2)
    status, shadow = live_with_shadow(registry, spec, v1)
    assert shadow is not None and shadow.version == v2
    plan = decide(body(spec, status), registry.uri, deployment=serving(v1), shadow=shadow)
    made = deployments(plan)
    assert model_version(made[NAME]) == str(v1)
    assert model_version(made[f"{NAME}-shadow"]) == str(v2)
    assert plan.traffic == k.TrafficPlan(
        NAME, f"{NAME}-stable", shadow_service=f"{NAME}-shadow", shadow_percent=20
    )
    # Without the shadow in the spec, its children go and there is no router.
    plain = decide(body(CANARY, status), registry.uri, deployment=serving(v1, 4))
    assert plain.traffic is None
    assert {(r.kind, r.name) for r in plain.delete} >= {
        ("Deployment", f"{NAME}-shadow"),
        ("Deployment", f"{NAME}-canary"),
        ("Service", f"{NAME}-stable"),
    }


def test_a_shadow_has_its_own_size_when_the_spec_gives_one(registry: Registry) -> None:
    """A shadow serves no client: one small pod beside four large live ones."""
    small = {"requests": {"cpu": "50m", "memory": "256Mi"}, "limits": {"cpu": "200m"}}
    large = {"requests": {"cpu": "1", "memory": "1Gi"}}
    spec = {
        "model": {"name": "churn", "alias": "champion"},
        "server": {"replicas": 4, "resources": large},
        "rollout": {
            "shadow": {"alias": "challenger", "percent": 20, "replicas": 1, "resources": small}
        },
    }
    v1, v2 = registry.version(), registry.version()
    registry.alias("champion", v1)
    registry.alias("challenger", v2)
    status, shadow = live_with_shadow(registry, spec, v1)
    plan = decide(body(spec, status), registry.uri, deployment=serving(v1, 4), shadow=shadow)
    made = deployments(plan)

    def sized(deployment: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        return deployment["spec"]["replicas"], container["resources"]

    assert sized(made[f"{NAME}-shadow"]) == (1, small)
    assert sized(made[NAME]) == (4, large)
    # Without a size of its own, the shadow is sized as the live version.
    del spec["rollout"]["shadow"]["replicas"], spec["rollout"]["shadow"]["resources"]
    plan = decide(body(spec, status), registry.uri, deployment=serving(v1, 4), shadow=shadow)
    assert sized(deployments(plan)[f"{NAME}-shadow"]) == (4, large)


def test_a_shadow_is_compared_on_a_schedule_and_its_comparison_is_in_the_status(
    registry: Registry,
) -> None:
    spec = {
        "model": {"name": "churn", "alias": "champion"},
        "rollout": {"shadow": {"alias": "challenger", "percent": 20}},
        "monitoring": {"predictionLog": "s3://lake/predictions"},
    }
    v1, v2 = registry.version(), registry.version()
    registry.alias("champion", v1)
    registry.alias("challenger", v2)
    summary = '{"agreementRate": 0.93, "comparedRows": 410, "stableVersion": "1", "x": 1}'
    registry.tag(v2, {ShadowTags.key(NS, NAME): summary})
    status, shadow = live_with_shadow(registry, spec, v1)

    plan = decide(body(spec, status), registry.uri, deployment=serving(v1), shadow=shadow)

    cronjob = next(m for m in plan.apply if m["kind"] == "CronJob")
    assert cronjob["metadata"]["name"] == f"{NAME}-shadow-compare"
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[:2] == ["shadow", "compare"]
    assert args[args.index("--stable") + 1] == str(v1)
    assert args[args.index("--shadow") + 1] == str(v2)
    assert args[args.index("--prediction-log") + 1] == "s3://lake/predictions"
    assert args[args.index("--deployment") + 1] == f"{NS}/{NAME}"
    assert plan.status["shadow"] == {
        "version": v2,
        "reference": "alias challenger",
        "percent": 20,
        # Only the documented keys of the tag reach the status.
        "comparison": {"agreementRate": 0.93, "comparedRows": 410, "stableVersion": "1"},
    }
    # Without a prediction log there is nothing to compare: no CronJob.
    unlogged = {k: v for k, v in spec.items() if k != "monitoring"}
    plain = decide(body(unlogged, status), registry.uri, deployment=serving(v1), shadow=shadow)
    assert not [m for m in plain.apply if m["kind"] == "CronJob"]
    assert ("CronJob", f"{NAME}-shadow-compare") in {(r.kind, r.name) for r in plain.delete}


def step_approval(decision: str, version: int, step: int, at: float) -> Decision:
    created = NOW + dt.timedelta(seconds=at)
    found = Decision.from_body(
        {
            "metadata": {
                "name": f"a{step}",
                "namespace": NS,
                "creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
            "spec": {
                "modelDeployment": NAME,
                "version": version,
                "step": step,
                "decision": decision,
                "approver": "ana",
                "comment": "p99 ok",
            },
        }
    )
    assert found is not None
    return found


def test_an_approval_step_holds_until_a_modelapproval_for_that_step(registry: Registry) -> None:
    spec = {**CANARY, "rollout": {**CANARY["rollout"]}}
    spec["rollout"]["canary"] = {"steps": [{"weight": 10}, {"approval": {}}, {"weight": 50}]}
    v1 = registry.version()
    registry.alias("champion", v1)
    status = live(registry, spec, v1)
    v2 = registry.version()
    registry.alias("champion", v2)
    plan = decide(body(spec, status), registry.uri, deployment=serving(1, 4))
    good = judge(Criteria(), VariantStats(200, 0, 0.05), VariantStats(200, 0, 0.05), NOW)
    for at in (5, 40):
        plan = decide(
            body(spec, plan.status),
            registry.uri,
            at,
            deployment=serving(1, 4),
            canary_deployment=serving(v2, 1),
            measurement=dataclasses.replace(good, at=NOW + dt.timedelta(seconds=at)),
            # a decision about another step does not count
            decisions=(step_approval("Approved", v2, 2, 1),),
        )
    assert plan.status["rollout"]["step"] == 1 and plan.traffic is not None
    assert plan.traffic.candidate_weight == 10
    assert "step 1 awaits approval" in plan.status["rollout"]["pauseReason"]
    assert plan.answers == []

    yes = step_approval("Approved", v2, 1, 50)
    plan = decide(
        body(spec, plan.status),
        registry.uri,
        50,
        deployment=serving(1, 4),
        canary_deployment=serving(v2, 2),
        decisions=(yes,),
    )
    assert plan.status["rollout"]["step"] == 2 and plan.traffic is not None
    assert plan.traffic.candidate_weight == 50
    assert [(a.decision.name, a.state) for a in plan.answers] == [("a1", "Applied")]

    no = step_approval("Rejected", v2, 1, 50)
    back = decide(
        body(spec, {**plan.status, "rollout": {**plan.status["rollout"], "step": 1}}),
        registry.uri,
        60,
        deployment=serving(1, 4),
        canary_deployment=serving(v2, 2),
        decisions=(no,),
    )
    assert back.degraded is not None and back.degraded[0] == "Rejected"
    assert "step 1 of version 2 was rejected by ana: p99 ok" in back.degraded[1]
    registry.write(back)
    tags = registry.tags(v2)
    assert tags[ApprovalTags.detail(NS, NAME, "by")] == "ana"  # a person's: retry keeps it
