"""The canary wired through the operator's phases: what the watches show (the watch cache,
filled here as the watch would), the analysis measurement the operator takes from the
pods' /metrics, and the plan: the router applied after its upstream Services, the
ModelDeployment's Service moved to it only once it is ready and back before it goes, and
measurements taken once per interval that promote or roll back the candidate.

The registry is a real (local, SQLite) MLflow one; the pods' /metrics pages are the
model server's exposition format, as in test_collect."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from modelyard.core import contracts as c
from modelyard.core.registry import ModelVersion
from modelyard.operator import canary as k
from modelyard.operator.children import SERVER_APP
from modelyard.operator.measure import Analyses, measuring
from modelyard.operator.plan import Plan, plan_reconcile
from modelyard.operator.reconcile import (
    Operator,
    _measure_in,
    observe_world,
    take_measurement,
)
from modelyard.operator.resolve import RegistryPolicy, resolve_model
from modelyard.operator.resource import ModelDeploymentSpec
from modelyard.operator.router import (
    WEIGHT_ANNOTATION,
    router_selector,
    served_weight,
)
from modelyard.operator.settings import OperatorSettings
from tests.unit.operator.test_collect import Pods, exposition
from tests.unit.operator.test_decisions import NAME, NOW, NS, Registry, body, live

ROUTER = f"{NAME}-router"
SERVER_SELECTOR = {c.LABEL_NAME: SERVER_APP, c.LABEL_INSTANCE: NAME}
SPEC = {
    "model": {"name": "churn", "alias": "champion"},
    "server": {"replicas": 4},
    "rollout": {
        "strategy": "Canary",
        "canary": {
            "steps": [{"weight": 10, "pause": "1m"}, {"weight": 50, "pause": "1m"}],
            "analysis": {"interval": "30s", "minRequests": 50, "failureLimit": 2},
        },
    },
}


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path)


class World:
    """One operator and its watch cache; :meth:`apply` puts a plan's children there as
    the watch would show them once the cluster ran them (Deployments rolled out, unless
    the router is held back)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.settings = OperatorSettings(default_tracking_uri=registry.uri, resolve_interval=30)
        self.pods = Pods()
        self.scrapes = 0
        self.op = Operator(
            self.settings,
            client.ApiClient(),
            post_event=lambda *_: None,
            analyses=Analyses(fetch=self.fetch),
        )
        self.router_ready = True

    def fetch(self, url: str, timeout: float) -> str:
        self.scrapes += 1
        return self.pods.fetch(url, timeout)

    def close(self) -> None:
        self.op.close()

    def put(self, kind: str, obj: dict[str, Any]) -> None:
        obj = copy.deepcopy(obj)
        obj["metadata"].setdefault("namespace", NS)
        self.op.store.put(kind, obj)

    def pod(self, instance: str, ip: str, app: str = SERVER_APP) -> None:
        self.put(
            "Pod",
            {
                "metadata": {
                    "name": f"{instance}-{ip}",
                    "uid": f"uid-{ip}",
                    "labels": {c.LABEL_NAME: app, c.LABEL_INSTANCE: instance},
                },
                "status": {"phase": "Running", "podIP": ip},
            },
        )

    def apply(self, plan: Plan) -> None:
        for manifest in plan.apply:
            kind = manifest["kind"]
            obj = copy.deepcopy(manifest)
            if kind == "Deployment":
                replicas = int(obj["spec"].get("replicas") or 1)
                ready = self.router_ready or obj["metadata"]["name"] != ROUTER
                obj["metadata"]["generation"] = 1
                obj["status"] = {
                    "observedGeneration": 1,
                    "replicas": replicas,
                    "updatedReplicas": replicas if ready else 0,
                    "availableReplicas": replicas if ready else 0,
                }
            self.put(kind, obj)
        for ref in plan.delete:
            self.op.store.remove(ref.kind, NS, ref.name)

    def reconcile(self, obj: dict[str, Any], at: float) -> Plan:
        """resolve, observe (the watch cache, the measurement), plan, apply."""
        spec = ModelDeploymentSpec.parse(obj["spec"])
        assert self.op.resolver is not None
        current = (obj.get("status") or {}).get("model") or {}
        resolution = resolve_model(
            self.op.resolver, spec, NS, current, RegistryPolicy(self.registry.uri)
        )
        self.op.resolver.forget("churn")
        observed = dataclasses.replace(
            observe_world(self.op, obj), now=NOW + dt.timedelta(seconds=at)
        )
        observed = dataclasses.replace(
            observed, measurement=take_measurement(self.op, obj, spec, observed)
        )
        self.observed = observed
        plan = plan_reconcile(obj, spec, resolution, self.settings, observed)
        self.apply(plan)
        self.registry.write(plan)
        return plan


@pytest.fixture
def world(registry: Registry) -> Any:
    w = World(registry)
    yield w
    w.close()


def applied(plan: Plan, kind: str, name: str) -> dict[str, Any]:
    [found] = [m for m in plan.apply if m["kind"] == kind and m["metadata"]["name"] == name]
    return found


def position(plan: Plan, kind: str, name: str) -> int:
    return next(
        i for i, m in enumerate(plan.apply) if m["kind"] == kind and m["metadata"]["name"] == name
    )


def deleted(plan: Plan) -> set[tuple[str, str]]:
    return {(ref.kind, ref.name) for ref in plan.delete}


def start(world: World) -> tuple[dict[str, Any], int]:
    """v1 live on 4 pods (in the watch cache), the alias moved to v2."""
    registry = world.registry
    v1 = registry.version()
    registry.alias("champion", v1)
    status = live(registry, SPEC, v1)
    first = world.reconcile(body(SPEC, status), 0)  # v1 steady: its children exist
    for i in range(4):
        world.pod(NAME, f"10.0.0.{i + 1}")
    v2 = registry.version()
    registry.alias("champion", v2)
    return first.status, v2


def test_the_router_comes_after_its_upstreams_and_takes_the_service_once_ready(
    world: World,
) -> None:
    status, v2 = start(world)
    world.router_ready = False
    plan = world.reconcile(body(SPEC, status), 1)
    router = position(plan, "Deployment", ROUTER)
    for upstream in (f"{NAME}-stable", f"{NAME}-canary"):
        assert position(plan, "Service", upstream) < router
    assert position(plan, "ConfigMap", ROUTER) < router
    assert applied(plan, "PodDisruptionBudget", ROUTER)["spec"]["minAvailable"] == 1
    # The router admits the same callers as the servers, on its own port.
    policy = applied(plan, "NetworkPolicy", ROUTER)["spec"]
    assert policy["podSelector"]["matchLabels"] == router_selector(NAME)
    assert policy["ingress"][0]["ports"] == [{"port": c.ROUTER_PORT, "protocol": "TCP"}]
    # The router is not ready: the clients' Service keeps selecting the stable pods.
    assert applied(plan, "Service", NAME)["spec"]["selector"] == SERVER_SELECTOR
    assert plan.requeue_after is not None and plan.requeue_after <= 2.0

    again = world.reconcile(body(SPEC, plan.status), 2)
    assert applied(again, "Service", NAME)["spec"]["selector"] == SERVER_SELECTOR
    assert again.status["rollout"]["actualWeight"] == 0  # no client reaches the candidate

    world.router_ready = True
    world.apply(again)  # the router's pods became ready
    moved = world.reconcile(body(SPEC, again.status), 3)
    assert applied(moved, "Service", NAME)["spec"]["selector"] == router_selector(NAME)
    # The router now gets the step's weight; the candidate counts once it serves it.
    assert applied(moved, "Deployment", ROUTER)["metadata"]["annotations"] == {
        WEIGHT_ANNOTATION: "10"
    }
    assert moved.status["rollout"]["phase"] == k.PROGRESSING
    served = world.reconcile(body(SPEC, moved.status), 4)
    assert world.observed.router_weight == 10
    assert served.status["rollout"]["phase"] == k.PAUSED
    assert served.status["rollout"]["actualWeight"] == 10


def test_a_router_moving_to_a_new_configuration_keeps_the_service_and_the_old_weight(
    world: World,
) -> None:
    status, _ = start(world)
    plan = world.reconcile(body(SPEC, status), 1)
    plan = world.reconcile(body(SPEC, plan.status), 2)
    plan = world.reconcile(body(SPEC, plan.status), 3)
    assert plan.status["rollout"]["phase"] == k.PAUSED
    router = world.op.store.get("Deployment", NS, ROUTER)
    assert router is not None
    rolling = copy.deepcopy(router)
    rolling["status"].update(updatedReplicas=1, replicas=3, availableReplicas=2)
    world.put("Deployment", rolling)
    service = world.op.store.get("Service", NS, NAME)
    assert served_weight(rolling, service, NAME) is None  # pods of two configurations
    again = world.reconcile(body(SPEC, plan.status), 4)
    assert world.observed.router_weight == 10  # as status.rollout recorded it
    assert applied(again, "Service", NAME)["spec"]["selector"] == router_selector(NAME)


def test_the_service_moves_back_before_the_router_goes_and_the_variants_last(
    world: World,
) -> None:
    status, v2 = start(world)
    plan = world.reconcile(body(SPEC, status), 1)
    plan = world.reconcile(body(SPEC, plan.status), 2)
    assert world.op.store.get("Service", NS, NAME)["spec"]["selector"] == router_selector(NAME)
    world.pod(NAME, "10.0.2.1", app="modelyard-router")
    # modelyard rollout abort; after the scale-down delay the rollout is over.
    obj = body(SPEC, plan.status)
    obj["metadata"]["annotations"] = {k.ABORT_ANNOTATION: str(v2)}
    aborted = world.reconcile(obj, 3)
    assert aborted.status["rollout"]["phase"] == k.ABORTED
    assert aborted.traffic is not None and aborted.traffic.candidate_weight == 0
    obj = body(SPEC, aborted.status)
    over = world.reconcile(obj, 3 + world.settings.canary_scale_down_delay + 1)
    assert over.status["rollout"] is None and over.traffic is None
    # First the clients' Service goes back to the stable pods; nothing else goes yet.
    assert applied(over, "Service", NAME)["spec"]["selector"] == SERVER_SELECTOR
    assert not any(name in (ROUTER, f"{NAME}-canary") for _, name in deleted(over))
    assert over.requeue_after is not None and over.requeue_after <= 2.0

    # The watch shows the Service moved: the router goes, the variants stay (its pods
    # may still be sending them requests while they drain).
    after = world.reconcile(body(SPEC, over.status), 40)
    router_kinds = {"Deployment", "ConfigMap", "PodDisruptionBudget", "NetworkPolicy"}
    assert {(kind, ROUTER) for kind in router_kinds} <= deleted(after)
    assert ("Deployment", f"{NAME}-canary") not in deleted(after)
    assert ("Service", f"{NAME}-stable") not in deleted(after)
    assert applied(after, "Service", NAME)["spec"]["selector"] == SERVER_SELECTOR

    # The router's pod terminates: while its grace period lasts the variants stay.
    terminating = copy.deepcopy(world.op.store.get("Pod", NS, f"{NAME}-10.0.2.1"))
    assert terminating is not None
    terminating["metadata"]["deletionTimestamp"] = "2026-12-01T10:00:50Z"
    world.put("Pod", terminating)
    draining = world.reconcile(body(SPEC, after.status), 44)
    assert ("Deployment", f"{NAME}-canary") not in deleted(draining)
    # Past its deletion timestamp nothing of it answers, even if the watch still shows it.
    last = world.reconcile(body(SPEC, draining.status), 51)
    assert {
        ("Deployment", f"{NAME}-canary"),
        ("Service", f"{NAME}-canary"),
        ("Service", f"{NAME}-stable"),
    } <= deleted(last)
    assert applied(last, "Service", NAME)["spec"]["selector"] == SERVER_SELECTOR


def pages(world: World, stable: tuple[int, int], candidate: tuple[int, int]) -> None:
    """Each stable pod and the canary pod answered so many requests (and 5xx) so far."""

    def page(count: int, errors: int) -> str:
        fast = (0, count - errors, count - errors, count - errors)
        slow = (0, errors, errors, errors)
        return exposition({"200": (count - errors, fast), "500": (errors, slow)})

    for i in range(4):
        world.pods.pages[f"http://10.0.0.{i + 1}:3000/metrics"] = page(*stable)
    world.pods.pages["http://10.0.1.1:3000/metrics"] = page(*candidate)


def at_first_step(world: World) -> tuple[Plan, int]:
    """The candidate answers 10%: every pod counted from zero."""
    status, v2 = start(world)
    world.pod(f"{NAME}-canary", "10.0.1.1")
    pages(world, (0, 0), (0, 0))
    plan = world.reconcile(body(SPEC, status), 1)
    plan = world.reconcile(body(SPEC, plan.status), 2)
    plan = world.reconcile(body(SPEC, plan.status), 3)
    assert plan.status["rollout"]["phase"] == k.PAUSED
    assert plan.status["rollout"]["stepSince"]
    assert world.scrapes == 0  # no measurement before the step's traffic flows
    # The step has just begun: the scrape that starts its first interval comes at once.
    assert _measure_in(world.op, (NS, NAME), plan, NOW + dt.timedelta(seconds=3)) == 1.0
    return plan, v2


def test_a_failing_candidate_is_measured_once_per_interval_and_rolled_back(
    world: World,
) -> None:
    plan, v2 = at_first_step(world)
    plan = world.reconcile(body(SPEC, plan.status), 4)  # the baseline scrape
    assert world.scrapes == 5 and world.observed.measurement is None
    assert plan.status["rollout"]["measurements"] == []

    assert world.op.analyses is not None
    assert world.op.analyses.due_in(NS, NAME, NOW + dt.timedelta(seconds=4)) == 30.0

    pages(world, (20, 0), (10, 0))
    plan = world.reconcile(body(SPEC, plan.status), 20)  # within the interval: no scrape
    assert world.scrapes == 5 and world.observed.measurement is None
    # Whatever woke the reconcile, it comes back when the interval ends.
    assert world.op.analyses.due_in(NS, NAME, NOW + dt.timedelta(seconds=20)) == 14.0

    pages(world, (50, 0), (100, 30))
    plan = world.reconcile(body(SPEC, plan.status), 34)
    assert world.scrapes == 10
    measurement = world.observed.measurement
    assert measurement is not None and measurement.phase == "Failed"
    assert measurement.stable.requests == 200 and measurement.candidate.requests == 100
    assert plan.status["rollout"]["failedMeasurements"] == 1
    assert plan.status["rollout"]["phase"] == k.PAUSED  # one failure holds the step

    plan = world.reconcile(body(SPEC, plan.status), 50)
    assert world.scrapes == 10 and plan.status["rollout"]["failedMeasurements"] == 1

    pages(world, (100, 0), (200, 60))
    plan = world.reconcile(body(SPEC, plan.status), 64)
    assert world.scrapes == 15
    # failureLimit 2: weight 0 at once, Degraded, the version rejected.
    rollout = plan.status["rollout"]
    assert rollout["phase"] == k.ABORTED and rollout["abortReason"] == k.ANALYSIS_FAILED
    assert plan.traffic is not None and plan.traffic.candidate_weight == 0
    assert plan.degraded is not None and plan.degraded[0] == k.ANALYSIS_FAILED
    assert "error rate 30.00% vs stable 0.00%" in plan.degraded[1]
    assert applied(plan, "Deployment", ROUTER)["metadata"]["annotations"] == {
        WEIGHT_ANNOTATION: "0"
    }
    # Aborted: no more measurements, however long it waits.
    world.reconcile(body(SPEC, plan.status), 100)
    assert world.scrapes == 15


def test_successful_measurements_after_the_bake_time_advance_the_step(world: World) -> None:
    plan, _ = at_first_step(world)
    stable, candidate = 0, 0
    for at in (4, 34, 64):
        pages(world, (stable, 0), (candidate, 0))
        plan = world.reconcile(body(SPEC, plan.status), at)
        stable, candidate = stable + 60, candidate + 60
    # 60s bake time passed and the latest whole interval was Successful: the next step.
    rollout = plan.status["rollout"]
    assert [m["phase"] for m in rollout["measurements"]] == ["Successful", "Successful"]
    assert rollout["step"] == 1 and rollout["desiredWeight"] == 50
    assert world.observed.measurement is not None


def test_too_little_traffic_is_inconclusive_and_holds(world: World) -> None:
    plan, _ = at_first_step(world)
    for at, count in ((4, 0), (34, 5), (64, 10), (94, 15)):
        pages(world, (count, 0), (count, 0))
        plan = world.reconcile(body(SPEC, plan.status), at)
    rollout = plan.status["rollout"]
    assert {m["phase"] for m in rollout["measurements"]} == {"Inconclusive"}
    assert rollout["step"] == 0 and rollout["phase"] == k.PAUSED
    assert rollout["failedMeasurements"] == 0 and plan.degraded is None


def test_measurements_count_only_while_the_candidate_has_its_weight() -> None:
    rollout = {
        "strategy": k.CANARY,
        "phase": k.PAUSED,
        "stepSince": "2026-01-01T00:00:00Z",
        "desiredWeight": 10,
    }
    assert measuring(rollout, 10)
    assert not measuring(rollout, 0)  # the Service is not on the router (yet)
    assert not measuring({**rollout, "stepSince": None}, 10)
    assert not measuring({**rollout, "phase": k.ABORTED, "desiredWeight": 0}, 0)
    assert not measuring({**rollout, "phase": k.PROMOTING}, 10)


def test_a_promoted_candidate_with_a_shadow_left_stays_until_the_router_leaves_it(
    world: World,
) -> None:
    status, v2 = start(world)
    plan = world.reconcile(body(SPEC, status), 1)
    plan = world.reconcile(body(SPEC, plan.status), 2)
    plan = world.reconcile(body(SPEC, plan.status), 3)
    # Promoted to 100%: every router pod sends the clients to the candidate.
    router = copy.deepcopy(world.op.store.get("Deployment", NS, ROUTER))
    assert router is not None
    router["metadata"]["annotations"] = {WEIGHT_ANNOTATION: "100"}
    world.put("Deployment", router)
    # The rollout is over (version 2 live on the stable Deployment); a shadow remains.
    shadowed = {**SPEC, "rollout": {**SPEC["rollout"], "shadow": {"version": 1, "percent": 20}}}
    world.registry.alias("champion", v2)
    done = dict(plan.status, rollout=None, model={**plan.status["model"], "version": v2})
    obj = body(shadowed, done)
    observed = dataclasses.replace(observe_world(world.op, obj), now=NOW + dt.timedelta(seconds=10))
    spec = ModelDeploymentSpec.parse(obj["spec"])
    assert world.op.resolver is not None
    world.op.resolver.forget("churn")
    resolution = resolve_model(
        world.op.resolver, spec, NS, done["model"], RegistryPolicy(world.registry.uri)
    )
    old = ModelVersion(name="churn", version=1, run_id="", source="", status="READY")
    later = plan_reconcile(
        obj, spec, resolution, world.settings, dataclasses.replace(observed, shadow=old)
    )
    assert later.traffic is not None and later.traffic.candidate_service is None
    assert ("Deployment", f"{NAME}-canary") not in deleted(later)  # still answering
    assert later.requeue_after is not None and later.requeue_after <= 2.0
    # Once every router pod runs the configuration without it, it goes.
    router["metadata"]["annotations"] = {WEIGHT_ANNOTATION: "0"}
    world.put("Deployment", router)
    observed = dataclasses.replace(observed, router_deployment=router)
    gone = plan_reconcile(
        obj, spec, resolution, world.settings, dataclasses.replace(observed, shadow=old)
    )
    assert ("Deployment", f"{NAME}-canary") in deleted(gone)
