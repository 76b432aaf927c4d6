"""Progressive delivery on a real node (docs/modeldeployment.md, "Canary"), as a client
of the ModelDeployment's Service sees it.

A keep-alive client (``httpx.Client``, a few threads, in a pod of the namespace) calls the
Service throughout each rollout and logs every answer: when it was sent, its status and
the ``X-Model-Version`` header; once a second it also reads the shadow's request counter
from the shadow's own ``/metrics``. The tests then read the answers against the
ModelDeployment's status as it was polled meanwhile:

- the candidate's share at a 10% and a 50% step and the share mirrored to a shadow at
  20% are each within 4 binomial standard deviations over at least
  ``MODELYARD_E2E_CANARY_REQUESTS`` (2000) requests, and no answer comes from the shadow;
- a healthy candidate goes through every step to 100% with zero failed requests;
- the shadow is a slow model (an ensemble of many small models on a small CPU limit, a
  few tenths of a second per answer): the requests that follow a mirrored one on their
  keep-alive connection are no slower than those that follow one not mirrored (the
  router says which it mirrored, ``X-Modelyard-Mirrored``);
- a faulty candidate (it fails, 500, on some inputs) is rolled back by its analysis
  within two intervals, with the client's errors within weight x fault rate;
- a slow candidate (the same slow model) is rolled back by its latency gate within two
  intervals, and no client request fails;
- a canary with too little traffic holds as Inconclusive and never fails.

The models are registered from here (the chart's MLflow, through a port-forward), all
loadable by the server's safe loader (skops, scikit-learn types only). The pauses are
parameters (environment, below), short by default.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from modelyard.core.contracts import DEFAULT_MAX_CONNECTION_AGE, ApprovalTags
from tests.e2e.test_product import condition, md, mlflow_client
from tests.support import load
from tests.support.kube import wait_for
from tests.support.load import ClientLog
from tests.support.models import register_sklearn_model, small_frame

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

NAME = "scorer"  # the ModelDeployment and its registered model
#: Requests at each measured step (the issue asks for at least 2000).
REQUESTS = int(os.environ.get("MODELYARD_E2E_CANARY_REQUESTS", "2000"))
#: The client's request rate (requests/s) and threads (each one keep-alive connection).
RATE = float(os.environ.get("MODELYARD_E2E_CANARY_RATE", "50"))
THREADS = 4
#: Seconds after a step begins before its answers count: the router's new pods start
#: (a few seconds), and the pods that ran the previous configuration keep their clients'
#: connections until those age out (closed after an answer once
#: DEFAULT_MAX_CONNECTION_AGE old, while the pods drain for DRAIN_SECONDS).
SETTLE = int(DEFAULT_MAX_CONNECTION_AGE) + 10
#: The bake time of the two measured steps: long enough for REQUESTS requests after SETTLE.
PAUSE = int(
    os.environ.get("MODELYARD_E2E_CANARY_PAUSE", str(SETTLE + math.ceil(REQUESTS / RATE * 1.25)))
)
#: The analysis interval of the faulty and the quiet canary (seconds).
INTERVAL = int(os.environ.get("MODELYARD_E2E_CANARY_INTERVAL", "10"))
#: The quiet canary's analysis interval (seconds): it waits for three measurements.
QUIET_INTERVAL = 5
#: The share of the faulty test's requests with an input the faulty model fails on.
FAULT_RATE = 0.5
#: Members of the slow model (the shadow, and the slow candidate): each one adds about a
#: millisecond to every call here, and a few kilobytes to the model (a large artifact
#: through the test's port-forward is what this avoids).
SLOW_MEMBERS = int(os.environ.get("MODELYARD_E2E_CANARY_SLOW_MEMBERS", "150"))
FAULTY_WEIGHT = 20
SHADOW_PERCENT = 20
#: The slow shadow's CPU limit: its model calls take several times a client's pause
#: between two requests on a connection, and it never starves the measured versions.
SHADOW_CPU = "150m"

GOOD_ROW = [0.2, -0.3, 0.1]
BAD_ROW = [10.0, 0.0, 0.0]  # the faulty model's prediction is out of its encoder's range


def body(row: list[float]) -> str:
    return json.dumps({"dataframe_split": {"columns": ["a", "b", "c"], "data": [row]}})


# ------------------------------------------------------------------------- the client
def start_client(
    cluster: Any, ns: str, *, shadow_version: int | None = None, bad_share: float = 0.0
) -> load.Client:
    """The keep-alive client (tests/support/load.py) of NAME's Service."""
    return load.Client(
        cluster,
        ns,
        image=load.toolkit(),
        url=f"http://{NAME}.{ns}.svc.cluster.local/invocations",
        shadow_url=(
            f"http://{NAME}-shadow.{ns}.svc.cluster.local/metrics" if shadow_version else ""
        ),
        shadow_version=shadow_version,
        good=body(GOOD_ROW),
        bad=body(BAD_ROW),
        rate=RATE,
        threads=THREADS,
        bad_share=bad_share,
    )


# ------------------------------------------------------------- status, as it was seen
@dataclasses.dataclass
class Seen:
    """The ModelDeployment polled once a second while a rollout ran."""

    snapshots: list[tuple[float, dict[str, Any]]] = dataclasses.field(default_factory=list)

    def take(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.snapshots.append((time.time(), obj))
        return obj

    def rollouts(self) -> list[dict[str, Any]]:
        return [(o.get("status") or {}).get("rollout") or {} for _, o in self.snapshots]

    def step_since(self, step: int) -> float | None:
        """When step ``step`` began (its ``stepSince``), as epoch seconds."""
        for r in self.rollouts():
            if r.get("step") == step and r.get("stepSince"):
                return epoch(str(r["stepSince"]))
        return None

    def conditions(self, kind: str) -> list[dict[str, Any]]:
        return [condition(o, kind) for _, o in self.snapshots]


def epoch(stamp: str) -> float:
    return float(pd.Timestamp(stamp).timestamp())


def events(cluster: Any, ns: str) -> list[dict[str, Any]]:
    out = cluster.run_kubectl(
        "-n", ns, "get", "events", "--field-selector", f"involvedObject.name={NAME}", "-o", "json"
    )  # fmt: skip
    return list(json.loads(out.stdout)["items"])


def service_app(cluster: Any, ns: str) -> str:
    """Which pods the ModelDeployment's Service sends its clients to."""
    return str(
        cluster.run_kubectl(
            "-n", ns, "get", "svc", NAME, "-o",
            "jsonpath={.spec.selector.app\\.kubernetes\\.io/name}",
        ).stdout
    )  # fmt: skip


def exists(cluster: Any, ns: str, kind: str, name: str) -> bool:
    found = cluster.run_kubectl("-n", ns, "get", kind, name, "-o", "name", check=False)
    return bool(found.returncode == 0)


def at_rest(cluster: Any, ns: str) -> bool:
    """No rollout in flight: no canary, no router, the Service on the server pods."""
    obj = md(cluster, ns, NAME)
    return (
        not (obj.get("status") or {}).get("rollout")
        and not exists(cluster, ns, "deploy", f"{NAME}-router")
        and not exists(cluster, ns, "deploy", f"{NAME}-canary")
        and service_app(cluster, ns) == "modelyard-server"
    )


def live_version(cluster: Any, ns: str) -> int:
    return int(md(cluster, ns, NAME)["status"]["model"]["version"])


def patch_rollout(cluster: Any, ns: str, rollout: dict[str, Any]) -> None:
    patch = json.dumps({"spec": {"rollout": rollout}})
    cluster.run_kubectl("-n", ns, "patch", "md", NAME, "--type=merge", "-p", patch)


def set_canary(
    cluster: Any, ns: str, canary: dict[str, Any], shadow: dict[str, Any] | None = None
) -> None:
    """The Canary strategy with these steps and analysis, and this shadow (or none)."""
    patch_rollout(cluster, ns, {"strategy": "Canary", "canary": canary, "shadow": shadow})


def move_alias(cluster: Any, ns: str, alias: str, version: int) -> None:
    with mlflow_client(cluster, ns) as (client, _):
        client.set_registered_model_alias(NAME, alias, str(version))


def binomial_ok(hits: int, n: int, p: float) -> tuple[bool, str]:
    """Whether ``hits`` of ``n`` is within 4 standard deviations of ``n * p``."""
    sd = math.sqrt(n * p * (1 - p))
    ok = abs(hits - n * p) <= 4 * sd
    return ok, f"{hits}/{n} = {hits / n:.4f} (expected {p:.2f} +- {4 * sd / n:.4f}, 4 SD)"


def step_spec(*steps: dict[str, Any], **analysis: Any) -> dict[str, Any]:
    return {"steps": list(steps), "analysis": {"interval": f"{INTERVAL}s", **analysis}}


# ---------------------------------------------------------------------- the setup
@dataclasses.dataclass(frozen=True)
class Versions:
    stable: int
    healthy: int  # the candidate that goes all the way
    shadow: int  # alias "challenger"; slow (SLOW_MEMBERS members), also the slow candidate
    faulty: int  # fails (500) on BAD_ROW
    quiet: int  # the candidate that never gets traffic
    #: The slow model's fastest call here, on one row (seconds).
    slow_seconds: float


def slow_estimator() -> Any:
    """A classifier that answers, slowly: every call asks each of SLOW_MEMBERS models."""
    from sklearn.dummy import DummyClassifier
    from sklearn.ensemble import BaggingClassifier

    return BaggingClassifier(DummyClassifier(), n_estimators=SLOW_MEMBERS, random_state=0)


def fastest_call(estimator: Any, row: list[float], tries: int = 5) -> float:
    frame = pd.DataFrame([row], columns=["a", "b", "c"])
    best = math.inf
    for _ in range(tries):
        began = time.perf_counter()
        estimator.predict(frame)
        best = min(best, time.perf_counter() - began)
    return best


def faulty_estimator(frame: pd.DataFrame) -> Any:
    """A scikit-learn model (skops, safe to load) that fails on some inputs: a regression
    decoded through an OrdinalEncoder of three classes; a prediction outside them (large
    ``a``) makes the encoder's inverse raise IndexError, which the server answers 500."""
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.linear_model import LinearRegression
    from sklearn.preprocessing import OrdinalEncoder

    target = np.clip(np.round(frame["a"] + 1), 0, 2)
    return TransformedTargetRegressor(
        regressor=LinearRegression(), transformer=OrdinalEncoder(), check_inverse=False
    ).fit(frame, target)


@pytest.fixture(scope="module")
def versions(node_cluster: Any, release: str) -> Versions:
    """The model's versions, registered as a training run would (skops), champion on
    the stable one and challenger on the shadow."""
    from sklearn.linear_model import LogisticRegression

    made: dict[str, int] = {}
    with mlflow_client(node_cluster, release) as (client, uri):
        slow = slow_estimator()
        for role, seed in (("stable", 1), ("healthy", 2), ("shadow", 3), ("quiet", 4)):
            frame, label = small_frame(seed=seed)
            made[role] = int(
                register_sklearn_model(
                    uri,
                    slow if role == "shadow" else LogisticRegression(),
                    frame,
                    name=NAME,
                    label=label,
                    alias=None,
                ).version
            )
        frame, _ = small_frame(seed=5)
        made["faulty"] = int(
            register_sklearn_model(
                uri, faulty_estimator(frame), frame, name=NAME, alias=None
            ).version
        )
        client.set_registered_model_alias(NAME, "champion", str(made["stable"]))
        client.set_registered_model_alias(NAME, "challenger", str(made["shadow"]))
        # Registered by a person, not the pipelines: the operator may tag its versions
        # (deployed, rejected) once the owner grants it (docs/security.md).
        granted = subprocess.run(
            [str(Path(sys.executable).parent / "modelyard"), "registry", "grant", NAME,
             "--tracking-uri", uri],
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        assert granted.returncode == 0, granted.stdout + granted.stderr
    found = Versions(**made, slow_seconds=fastest_call(slow, GOOD_ROW))
    # What the faulty model does, here: the good row is answered, the bad one raises.
    estimator = faulty_estimator(small_frame(seed=5)[0])
    estimator.predict(pd.DataFrame([GOOD_ROW], columns=["a", "b", "c"]))
    with pytest.raises(IndexError):
        estimator.predict(pd.DataFrame([BAD_ROW], columns=["a", "b", "c"]))
    return found


@pytest.fixture(scope="module")
def deployment(node_cluster: Any, release: str, versions: Versions) -> Iterator[str]:
    """ModelDeployment NAME (Canary strategy) serving the stable version, Ready."""
    manifest = {
        "apiVersion": "modelyard.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME},
        "spec": {
            "model": {"name": NAME, "alias": "champion"},
            "rollout": {"strategy": "Canary", "canary": step_spec({"weight": 10})},
        },
    }
    subprocess.run(
        [node_cluster.kubectl, "--kubeconfig", str(node_cluster.kubeconfig), "-n", release,
         "apply", "-f", "-"],
        input=json.dumps(manifest), text=True, check=True, capture_output=True,
    )  # fmt: skip
    waited = node_cluster.run_kubectl(
        "-n", release, "wait", "--for=condition=Ready", f"md/{NAME}", "--timeout=600s",
        check=False, timeout=660,
    )  # fmt: skip
    if waited.returncode != 0:
        status = md(node_cluster, release, NAME).get("status")
        pytest.fail(f"md/{NAME} not Ready:\n{json.dumps(status, indent=1)}")
    assert live_version(node_cluster, release) == versions.stable
    yield release
    node_cluster.run_kubectl(
        "-n", release, "delete", "md", NAME, "--wait=true", "--timeout=180s",
        check=False, timeout=240,
    )  # fmt: skip


def abandon(cluster: Any, ns: str) -> None:
    """A test that failed midway leaves no rollout in flight for the next one: abort it
    (``modelyard rollout abort``) and drop the shadow."""
    rollout = (md(cluster, ns, NAME).get("status") or {}).get("rollout") or {}
    if rollout.get("strategy") == "Canary" and rollout.get("phase") != "Aborted":
        subprocess.run(
            [str(Path(sys.executable).parent / "modelyard"), "rollout", "abort", NAME, "-n", ns],
            env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
    patch_rollout(cluster, ns, {"shadow": None})


def settled(cluster: Any, ns: str) -> int:
    """Wait until no rollout is in flight; the live version."""
    wait_for("no rollout in flight", lambda: at_rest(cluster, ns), timeout=300, interval=2)
    return live_version(cluster, ns)


# ------------------------------------------- 1 and 2: a healthy canary, with a shadow
@dataclasses.dataclass
class Rollout:
    stable: int
    candidate: int
    shadow: int
    seen: Seen
    client: ClientLog
    #: LIVE is the candidate, no rollout, no router, the Service on the servers.
    finished: bool
    shadow_removed_at: float | None


@pytest.fixture(scope="module")
def healthy_rollout(node_cluster: Any, deployment: str, versions: Versions) -> Rollout:
    """One canary of the healthy version through steps 10% and 50% (each held PAUSE
    seconds) to 100%, with a shadow at 20% until the 50% step's bake time is over; the
    client runs from before the alias moves until the rollout is over."""
    ns = deployment
    stable = settled(node_cluster, ns)
    set_canary(
        node_cluster,
        ns,
        step_spec(
            {"weight": 10, "pause": f"{PAUSE}s"},
            {"weight": 50, "pause": f"{PAUSE}s"},
            minRequests=20,
            # The candidate is the same kind of model as the stable one; a p99 over one
            # interval's few hundred requests on a 2-core node shared with the client is
            # noisy (CI saw 59 ms against 17 ms), and this test is about shares and
            # promotion; the latency gate is the slow candidate's test (about +100 ms).
            maxLatencyRatio=3,
            minLatencyIncrease="100ms",
        ),
        # The slow shadow on one small pod (SHADOW_CPU at most): it answers the router
        # late, and never takes the CPU of the versions being measured.
        shadow={
            "alias": "challenger",
            "percent": SHADOW_PERCENT,
            "replicas": 1,
            "resources": {"requests": {"cpu": "50m"}, "limits": {"cpu": SHADOW_CPU}},
        },
    )
    # The shadow (and the router that mirrors to it) first, so the client's connections
    # go to the router from the start.
    wait_for(
        "the shadow running and the Service on the router",
        lambda: (
            node_cluster.run_kubectl(
                "-n", ns, "get", "deploy", f"{NAME}-shadow", "-o",
                "jsonpath={.status.availableReplicas}", check=False,
            ).stdout == "1"
            and service_app(node_cluster, ns) == "modelyard-router"
        ),
        timeout=300,
        interval=2,
    )  # fmt: skip
    client = start_client(node_cluster, ns, shadow_version=versions.shadow)
    seen = Seen()
    move_alias(node_cluster, ns, "champion", versions.healthy)
    removed: float | None = None
    finished = False
    deadline = time.monotonic() + 2 * PAUSE + 420
    try:
        while time.monotonic() < deadline:
            obj = seen.take(md(node_cluster, ns, NAME))
            status = obj.get("status") or {}
            rollout = status.get("rollout") or {}
            fifty = seen.step_since(1)
            if removed is None and fifty is not None and time.time() >= fifty + PAUSE:
                patch_rollout(node_cluster, ns, {"shadow": None})
                removed = time.time()
            if rollout.get("phase") == "Aborted":
                break
            if (
                removed is not None
                and not rollout
                and int((status.get("model") or {}).get("version") or 0) == versions.healthy
                and at_rest(node_cluster, ns)
            ):
                finished = True
                break
            time.sleep(1)
        time.sleep(3)  # answers after the end, from the new live version
    finally:
        log = client.stop()
        if not finished:
            abandon(node_cluster, ns)
    return Rollout(stable, versions.healthy, versions.shadow, seen, log, finished, removed)


def window(run: Rollout, step: int) -> tuple[float, float]:
    """The time the step's weight held for sure: from SETTLE seconds after its start
    to a second before its bake time ends."""
    since = run.seen.step_since(step)
    assert since is not None, f"step {step} never began: {run.seen.rollouts()[-1]}"
    return since + SETTLE, since + PAUSE - 1


def test_canary_and_mirrored_shares_are_exact_and_no_client_sees_the_shadow(
    healthy_rollout: Rollout,
) -> None:
    run = healthy_rollout
    answered = {a.version for a in run.client.answers if a.status == 200}
    assert str(run.shadow) not in answered, answered
    assert answered <= {str(run.stable), str(run.candidate)}, answered
    report = []
    for step, weight in ((0, 10), (1, 50)):
        start, end = window(run, step)
        answers = [a for a in run.client.within(start, end) if a.status == 200]
        assert len(answers) >= REQUESTS, (
            f"only {len(answers)} answers at {weight}% in {end - start:.0f}s "
            f"(MODELYARD_E2E_CANARY_PAUSE / _RATE)"
        )
        hits = sum(a.version == str(run.candidate) for a in answers)
        ok, said = binomial_ok(hits, len(answers), weight / 100)
        report.append(f"candidate at {weight}%: {said}")
        assert ok, report
        # The mirrored share over the same time, from the shadow's own counter.
        readings = [(t, n) for t, n in run.client.shadow if start <= t <= end]
        assert len(readings) >= 2, run.client.shadow[-5:]
        (first, before), (last, after) = readings[0], readings[-1]
        sent = len(run.client.within(first, last))
        assert sent >= REQUESTS * 0.9, (sent, first, last)
        ok, said = binomial_ok(round(after - before), sent, SHADOW_PERCENT / 100)
        report.append(f"mirrored at {weight}%: {said}")
        assert ok, report
    print("\n".join(report))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def test_a_slow_shadow_leaves_the_clients_latency_unchanged(
    healthy_rollout: Rollout, versions: Versions
) -> None:
    """nginx's ``mirror`` holds the next request on a keep-alive connection until the
    shadow has answered the mirrored copy. So, in the same window (same load, same node),
    compare the requests that followed a mirrored one on their connection with those
    that followed one not mirrored: had a client waited for the slow shadow, the first
    would take the rest of the shadow's answer time more."""
    run = healthy_rollout
    assert run.shadow_removed_at is not None
    start, end = window(run, 0)[0], run.shadow_removed_at
    after_copy, after_plain = run.client.followers(start, end)
    assert len(after_copy) + len(after_plain) >= REQUESTS, (len(after_copy), len(after_plain))
    assert len(after_copy) >= REQUESTS * SHADOW_PERCENT / 100 / 2, len(after_copy)
    shadow = run.client.shadow_mean_seconds(start, end)
    #: What a request after a copy would wait for more, were the mirror held: the
    #: shadow's answer less the time the client waits before its connection's next one.
    held = shadow - THREADS / RATE
    said = (
        f"the shadow answered in {shadow * 1000:.0f}ms on average (its fastest call"
        f" {versions.slow_seconds * 1000:.0f}ms unthrottled); requests after a mirrored one:"
        f" median {percentile(after_copy, 0.5) * 1000:.1f}ms, p90"
        f" {percentile(after_copy, 0.9) * 1000:.1f}ms ({len(after_copy)}); after one not"
        f" mirrored: median {percentile(after_plain, 0.5) * 1000:.1f}ms, p90"
        f" {percentile(after_plain, 0.9) * 1000:.1f}ms ({len(after_plain)}); all clients'"
        f" p99 {percentile(after_copy + after_plain, 0.99) * 1000:.0f}ms"
    )
    print(said)
    # The shadow was slow enough to tell: a held connection would add 30 ms or more, half
    # of which is the most a follower may exceed by, several times the spread between the
    # two kinds of request (CI: medians 4.8 and 4.7 ms, p90s 8.4 and 9.1, with a 47 ms hold
    # possible; 50 ms was asked before and the slow model's calls on a faster VM missed it).
    assert held >= 0.03, said
    for q in (0.5, 0.9):
        excess = percentile(after_copy, q) - percentile(after_plain, q)
        assert excess < held / 2, f"the clients' latency follows the shadow's: {said}"


def test_a_healthy_candidate_goes_through_every_step_to_live_with_zero_failed_requests(
    node_cluster: Any, deployment: str, healthy_rollout: Rollout
) -> None:
    run = healthy_rollout
    failed = run.client.failed()
    assert not failed, f"{len(failed)} failed of {len(run.client.answers)}: {failed[:10]}"
    assert run.finished, json.dumps(run.seen.snapshots[-1][1].get("status"), indent=1)
    weights = [(r.get("step"), r.get("actualWeight")) for r in run.seen.rollouts() if r]
    assert (0, 10) in weights and (1, 50) in weights, weights
    assert any(r.get("phase") == "Promoting" for r in run.seen.rollouts()), weights
    assert not any(c.get("status") == "True" for c in run.seen.conditions("Degraded"))
    final = run.seen.snapshots[-1][1]["status"]
    assert final["model"]["version"] == run.candidate
    assert final["history"][0]["version"] == run.candidate
    said = [(e["reason"], e["message"]) for e in events(node_cluster, deployment)]
    for step, weight in ((0, 10), (1, 50)):
        assert (
            "CanaryStep",
            f"step {step}: version {run.candidate} answers {weight}%",
        ) in said, said
    assert (
        "Promoting",
        f"version {run.candidate} passed every step and takes all traffic",
    ) in said, said
    # The last answers come from the new live version, through the server pods.
    last = run.client.answers[-THREADS * 2 :]
    assert {a.version for a in last} == {str(run.candidate)}, last
    print(
        f"{len(run.client.answers)} requests over "
        f"{run.client.answers[-1].sent - run.client.answers[0].sent:.0f}s, 0 failed"
    )


# ------------------------------------------------ 3: canaries the analysis rolls back
def rolled_back(
    cluster: Any, ns: str, version: int, *, bad_share: float = 0.0, **analysis: Any
) -> tuple[Seen, ClientLog]:
    """Move the alias to ``version`` (a canary at FAULTY_WEIGHT, analysis every INTERVAL
    seconds, failureLimit 2) under the client; wait for its rollback and scale-down."""
    set_canary(
        cluster,
        ns,
        step_spec(
            {"weight": FAULTY_WEIGHT, "pause": "1m"},
            {"weight": 50},
            minRequests=10,
            failureLimit=2,
            **analysis,
        ),
    )
    client = start_client(cluster, ns, bad_share=bad_share)
    seen = Seen()
    move_alias(cluster, ns, "champion", version)
    done = False
    try:
        deadline = time.monotonic() + 300
        while True:
            obj = seen.take(md(cluster, ns, NAME))
            rollout = (obj.get("status") or {}).get("rollout") or {}
            started = seen.step_since(0)
            if rollout.get("phase") == "Aborted":
                break
            if time.monotonic() > deadline or (
                started is not None and time.time() > started + 2 * INTERVAL + 60
            ):
                pytest.fail(f"not rolled back:\n{json.dumps(obj.get('status'), indent=1)}")
            time.sleep(1)
        wait_for(
            "the candidate's pods gone and the Service on the servers",
            lambda: bool(seen.take(md(cluster, ns, NAME))) and at_rest(cluster, ns),
            timeout=180,
            interval=1,
        )
        time.sleep(5)  # the stable version answers on
        done = True
    finally:
        log = client.stop()
        if not done:
            abandon(cluster, ns)
    return seen, log


def judged(
    cluster: Any, ns: str, seen: Seen, version: int, failing: str, stable: int
) -> tuple[float, float, dict[str, Any]]:
    """What status, Events and the registry say of a canary its analysis rolled back
    (each failed measurement names ``failing``); when its first step began, how long it
    took, the aborted rollout."""
    rollouts = [r for r in seen.rollouts() if r.get("version") == version]
    aborted = next(r for r in rollouts if r.get("phase") == "Aborted")
    started = seen.step_since(0)
    assert started is not None
    took = epoch(aborted["abortedAt"]) - started
    # Two whole intervals after the step began; the first read of the servers' counters
    # (a baseline: it counts nothing) is taken a second after the step begins, and the
    # timestamps are whole seconds.
    assert took <= 2 * INTERVAL + 5, (took, aborted)
    assert aborted["abortReason"] == "AnalysisFailed"
    assert aborted["step"] == 0 and aborted["failedMeasurements"] == 2, aborted
    failed = [m for m in aborted["measurements"] if m["phase"] == "Failed"]
    assert len(failed) == 2 and all(failing in m["message"] for m in failed), aborted
    degraded = [c for c in seen.conditions("Degraded") if c.get("status") == "True"]
    assert degraded and degraded[0]["reason"] == "AnalysisFailed", seen.conditions("Degraded")
    assert f"version {version} failed 2 analysis measurements" in degraded[0]["message"]
    said = [(e["type"], e["reason"]) for e in events(cluster, ns)]
    assert ("Warning", "AnalysisFailed") in said, said
    with mlflow_client(cluster, ns) as (client_, _):
        tags = client_.get_model_version(NAME, str(version)).tags
    assert tags.get(ApprovalTags.key(ns, NAME)) == ApprovalTags.REJECTED, tags
    assert tags.get(ApprovalTags.detail(ns, NAME, "reason")) == "AnalysisFailed", tags
    # LIVE never moved, and the stable version answers.
    assert {int(o["status"]["model"]["version"]) for _, o in seen.snapshots} == {stable}
    final = seen.snapshots[-1][1]
    assert condition(final, "Degraded").get("status") == "False"
    assert condition(final, "Ready").get("status") == "True"
    return started, took, aborted


def test_a_faulty_candidate_is_rolled_back_by_its_analysis_and_the_stable_keeps_serving(
    node_cluster: Any, deployment: str, versions: Versions
) -> None:
    """The faulty version answers 500 on BAD_ROW, which FAULT_RATE of the client's
    requests carry; the stable version answers everything. Analysis every INTERVAL
    seconds, failureLimit 2: rolled back within two intervals of its first step."""
    ns = deployment
    stable = settled(node_cluster, ns)
    seen, log = rolled_back(node_cluster, ns, versions.faulty, bad_share=FAULT_RATE)
    started, took, aborted = judged(node_cluster, ns, seen, versions.faulty, "error rate", stable)

    # What the client saw: errors only from the candidate, only on the inputs it fails
    # on, and no more than its weight's share of those (binomial slack, 4 SD).
    errors = log.failed()
    assert errors, "the faulty version failed no client request"
    unexpected = [
        a for a in errors if not (a.status == 500 and a.bad and a.version == str(versions.faulty))
    ]
    assert not unexpected, f"{len(unexpected)} of {len(errors)} errors: {unexpected[:10]}"
    # Weight 0 is configured at once; the router's pods that ran the step's weight drain
    # their connections for up to SETTLE seconds after the new ones took over.
    zero = next(
        (
            t
            for t, o in seen.snapshots
            if ((o.get("status") or {}).get("rollout") or {}).get("phase") == "Aborted"
            and o["status"]["rollout"].get("actualWeight") == 0
        ),
        None,
    )
    assert zero is not None, "the router never showed weight 0 after the abort"
    end = zero + SETTLE
    # The candidate may answer from the moment the router's first pod with the step's
    # weight is ready, before the whole router runs it (stepSince): from when the
    # operator set out to move the router (polled once a second).
    moving = next(
        (
            t
            for t, o in seen.snapshots
            if ((o.get("status") or {}).get("rollout") or {}).get("version") == versions.faulty
            and o["status"]["rollout"].get("desiredWeight") == FAULTY_WEIGHT
        ),
        started,
    )
    begin = min(started, moving) - 2
    during = log.within(begin, end)
    assert all(begin <= a.sent <= end for a in errors), (begin, started, end, errors[:5])
    bad = [a for a in during if a.bad]
    weight = FAULTY_WEIGHT / 100
    bound = len(bad) * weight + 4 * math.sqrt(len(bad) * weight * (1 - weight))
    assert len(errors) <= bound, (len(errors), len(bad), bound)
    print(
        f"rolled back {took:.0f}s after its first step; client errors {len(errors)} of "
        f"{len(during)} requests meanwhile ({len(errors) / len(during):.2%}; weight x fault "
        f"rate {weight * FAULT_RATE:.0%}); {len(log.answers)} requests in all"
    )
    after = [a for a in log.answers if a.sent > end]
    assert after and {(a.status, a.version) for a in after} == {(200, str(stable))}


def test_a_slow_candidate_is_rolled_back_by_its_latency_gate_and_no_request_fails(
    node_cluster: Any, deployment: str, versions: Versions
) -> None:
    """The slow model as a candidate: it answers right, about a tenth of a second a call;
    its p99 over three times the stable's fails each measurement (failureLimit 2)."""
    ns = deployment
    stable = settled(node_cluster, ns)
    # Here the slow model answers in about 30 ms (median) against the stable's 8: the
    # increase is set below that, so the gate, not the node's noise, decides.
    seen, log = rolled_back(
        node_cluster, ns, versions.shadow, maxLatencyRatio=3, minLatencyIncrease="10ms"
    )
    _, took, aborted = judged(node_cluster, ns, seen, versions.shadow, "p99", stable)
    failed = log.failed()
    assert not failed, f"{len(failed)} failed of {len(log.answers)}: {failed[:10]}"
    slow = [a for a in log.answers if a.version == str(versions.shadow)]
    assert slow, "the slow candidate answered no client request"
    print(
        f"rolled back {took:.0f}s after its first step; {len(slow)} of "
        f"{len(log.answers)} requests answered by it (median "
        f"{sorted(a.seconds for a in slow)[len(slow) // 2] * 1000:.0f}ms), 0 failed"
    )
    after = [a for a in log.answers if a.sent > epoch(aborted["abortedAt"]) + SETTLE]
    assert after and {(a.status, a.version) for a in after} == {(200, str(stable))}


# ---------------------------------------------------------- 4: a canary with no traffic
def test_a_canary_without_traffic_holds_as_inconclusive_and_never_fails(
    node_cluster: Any, deployment: str, versions: Versions
) -> None:
    """No client at all: every measurement is Inconclusive (too few requests), which
    holds the step and never counts as a failure, even with failureLimit 1."""
    ns = deployment
    stable = settled(node_cluster, ns)
    set_canary(
        node_cluster,
        ns,
        {
            "steps": [{"weight": 10}, {"weight": 50}],
            "analysis": {"interval": f"{QUIET_INTERVAL}s", "minRequests": 50, "failureLimit": 1},
        },
    )
    seen = Seen()
    move_alias(node_cluster, ns, "champion", versions.quiet)

    def measured() -> bool:
        rollout = (seen.take(md(node_cluster, ns, NAME)).get("status") or {}).get("rollout")
        return len((rollout or {}).get("measurements") or []) >= 3

    wait_for("three measurements", measured, timeout=300, interval=1)
    rollout = seen.rollouts()[-1]
    phases = [m["phase"] for m in rollout["measurements"]]
    assert phases == ["Inconclusive"] * len(phases), rollout["measurements"]
    assert "answered 0 < 50 requests" in rollout["measurements"][-1]["message"]
    assert (rollout["phase"], rollout["step"], rollout["actualWeight"]) == ("Paused", 0, 10)
    assert int(rollout.get("failedMeasurements") or 0) == 0
    assert rollout["pauseReason"].startswith("inconclusive"), rollout["pauseReason"]
    assert not any(c.get("status") == "True" for c in seen.conditions("Degraded"))
    assert {int(o["status"]["model"]["version"]) for _, o in seen.snapshots} == {stable}
    assert exists(node_cluster, ns, "deploy", f"{NAME}-canary")
