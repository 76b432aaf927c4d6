"""Chaos on a real node (issue 15): faults under load, nothing failed, nothing lost.

One ModelDeployment with 2 replicas serves throughout. Each case runs under a
keep-alive client in a pod (tests/support/load.py: ``RATE`` requests/s over ``THREADS``
connections) that logs every request it sends, with a request id naming the case
(``X-Request-ID``, which the server writes to the prediction log's ``_request_id``):

1. the operator's leader SIGKILLed (its pod deleted with grace 0) while an alias move
   rolls out: the standby takes the Lease, the rollout completes, no duplicate children;
2. MLflow down for ``OUTAGE`` seconds: serving goes on, ``ModelResolved`` is False with
   reason ``RegistryUnavailable`` during it and True after; a server pod deleted during
   the outage comes back and serves (it loads its version from the model cache, on the
   same S3 store as the prediction log);
3. the API server restarted (``hack/cluster.sh restart-apiserver``, down
   ``APISERVER_OUTAGE`` seconds): the operator reconnects and acts on a change made right
   after;
4. a server pod deleted under load;
5. the prediction log's sink down for ``SINK_OUTAGE`` seconds: serving goes on, and
   every row is written after or dropped and counted;
6. a graceful stop of everything (the ModelDeployment deleted, its pods stopped with
   SIGTERM): rows logged + rows recorded as dropped == requests answered, per case.

Zero failed requests in every case. ``make chaos`` prints one line per case (requests
sent, failed, rows logged, dropped). The waits are parameters (environment, below),
short by default (CI) and longer by hand; docs/reliability.md lists them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from modelyard.core.contracts import SERVER_PORT
from tests.e2e.test_canary import GOOD_ROW, body
from tests.e2e.test_product import condition, md, mlflow_client
from tests.support import chaos, load
from tests.support.chaos import CaseResult
from tests.support.incluster import E2E_RELEASE as RELEASE
from tests.support.incluster import port_forward
from tests.support.kube import wait_for
from tests.support.load import ClientLog
from tests.support.models import register_sklearn_model, small_frame
from tests.support.servers import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.chaos, pytest.mark.timeout(1800)]

NAME = "chaos"  # the ModelDeployment and its registered model
REPLICAS = 2
#: The client's request rate (requests/s, at least 20) and threads (connections).
RATE = float(os.environ.get("MODELYARD_CHAOS_RATE", "24"))
THREADS = 4
#: Seconds of load before and after each fault.
SOAK = int(os.environ.get("MODELYARD_CHAOS_SOAK", "5"))
#: Seconds MLflow stays down (the issue: 2 minutes by hand).
OUTAGE = int(os.environ.get("MODELYARD_CHAOS_OUTAGE", "30"))
#: Seconds the API server stays down.
APISERVER_OUTAGE = int(os.environ.get("MODELYARD_CHAOS_APISERVER_OUTAGE", "5"))
#: Seconds the prediction log's sink stays down (the issue: a minute by hand).
SINK_OUTAGE = int(os.environ.get("MODELYARD_CHAOS_SINK_OUTAGE", "20"))
#: The Secret with the S3 store's keys, for the prediction log and the model cache.
SINK_SECRET = "chaos-s3"
#: Generous: the node has 2 cores shared with everything else.
LONG = 600

SERVER_SELECTOR = f"app.kubernetes.io/name=modelyard-server,app.kubernetes.io/instance={NAME}"
RUN = uuid.uuid4().hex[:6]
#: The client's log of each case, by case name (for the count after the graceful stop).
LOGS: dict[str, ClientLog] = {}


def kubectl(cluster: Any, ns: str, *args: str, check: bool = True) -> str:
    return str(cluster.run_kubectl("-n", ns, *args, check=check, timeout=LONG + 60).stdout)


# ---------------------------------------------------------------------- the setup
@pytest.fixture(scope="module")
def sink(release: str) -> Iterator[chaos.Sink]:
    """The prediction log every server pod writes to (tests/support/chaos.py)."""
    with chaos.s3_sink(host_address(), free_port(), f"{release}/{NAME}") as found:
        yield found


def host_address() -> str:
    """The host's address, which the node's pods reach (as hack/cluster.sh finds it)."""
    route = subprocess.run(
        ["ip", "-4", "route", "get", "1.1.1.1"], capture_output=True, text=True, check=True
    ).stdout.split()
    return route[route.index("src") + 1]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def versions(node_cluster: Any, release: str) -> tuple[int, int]:
    """Two versions of NAME (champion on the first), granted to the operator."""
    from sklearn.linear_model import LogisticRegression

    made = []
    with mlflow_client(node_cluster, release) as (client, uri):
        for seed in (1, 2):
            frame, label = small_frame(seed=seed)
            registered = register_sklearn_model(
                uri, LogisticRegression(), frame, name=NAME, label=label, alias=None
            )
            made.append(int(registered.version))
        client.set_registered_model_alias(NAME, "champion", str(made[0]))
        granted = subprocess.run(
            [str(Path(sys.executable).parent / "modelyard"), "registry", "grant", NAME,
             "--tracking-uri", uri],
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        assert granted.returncode == 0, granted.stdout + granted.stderr
    return made[0], made[1]


@pytest.fixture(scope="module")
def deployment(
    node_cluster: Any, release: str, versions: tuple[int, int], sink: chaos.Sink
) -> Iterator[str]:
    """ModelDeployment NAME, 2 replicas, logging to the sink; Ready. Deleted by case 6
    (the graceful stop) or, if that did not run, here."""
    spec: dict[str, Any] = {
        "model": {"name": NAME, "alias": "champion"},
        "server": {"replicas": REPLICAS},
    }
    # The store's keys reach the servers only through a Secret: the prediction log and
    # the model cache (which lets a pod start while MLflow is down, case 2) share it.
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SINK_SECRET},
              "stringData": sink.secret_data()}  # fmt: skip
    subprocess.run(
        [node_cluster.kubectl, "--kubeconfig", str(node_cluster.kubeconfig), "-n", release,
         "apply", "-f", "-"],
        input=json.dumps(secret), text=True, check=True, capture_output=True,
    )  # fmt: skip
    spec["monitoring"] = {
        "predictionLog": sink.url,
        "predictionLogSecretRef": {"name": SINK_SECRET},
    }
    spec["server"]["modelCache"] = {"url": sink.cache_url, "secretRef": {"name": SINK_SECRET}}
    manifest = {
        "apiVersion": "modelyard.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME},
        "spec": spec,
    }
    subprocess.run(
        [node_cluster.kubectl, "--kubeconfig", str(node_cluster.kubeconfig), "-n", release,
         "apply", "-f", "-"],
        input=json.dumps(manifest), text=True, check=True, capture_output=True,
    )  # fmt: skip
    serving_ready(node_cluster, release, versions[0])
    yield release
    delete_deployment(node_cluster, release)


def serving_ready(cluster: Any, ns: str, version: int, replicas: int = REPLICAS) -> None:
    """NAME Ready on ``version``, no rollout in flight, ``replicas`` server pods ready."""

    def ready() -> bool:
        obj = md(cluster, ns, NAME)
        status = obj.get("status") or {}
        return (
            condition(obj, "Ready").get("status") == "True"
            and int((status.get("model") or {}).get("version") or 0) == version
            and not status.get("rollout")
            and available(cluster, ns) == replicas
        )

    wait_for(f"md/{NAME} Ready on version {version}", ready, timeout=LONG, interval=2)


def available(cluster: Any, ns: str) -> int:
    """Ready server pods that are not terminating."""
    pods = json.loads(kubectl(cluster, ns, "get", "pods", "-l", SERVER_SELECTOR, "-o", "json",
                              check=False) or "{}")  # fmt: skip
    return sum(
        1
        for p in pods.get("items", [])
        if not p["metadata"].get("deletionTimestamp")
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p.get("status", {}).get("conditions", [])
        )
    )


def server_pods(cluster: Any, ns: str) -> list[str]:
    out = kubectl(cluster, ns, "get", "pods", "-l", SERVER_SELECTOR, "-o",
                  "jsonpath={.items[*].metadata.name}")  # fmt: skip
    return out.split()


@contextmanager
def loaded(cluster: Any, ns: str, case: str) -> Iterator[None]:
    """The keep-alive client for the whole ``with`` block (SOAK seconds more on each
    side); its log kept for the count after the graceful stop; zero failed asserted."""
    client = load.Client(
        cluster,
        ns,
        image=load.toolkit(),
        url=f"http://{NAME}.{ns}.svc.cluster.local/invocations",
        good=body(GOOD_ROW),
        rate=RATE,
        threads=THREADS,
        request_ids=f"{RUN}-{case}",
    )
    began = time.monotonic()
    try:
        time.sleep(SOAK)
        yield
        time.sleep(SOAK)
    finally:
        log = client.stop()
        LOGS[case] = log
        failed = log.failed()
        chaos.record(
            CaseResult(case, len(log.answers), len(failed), seconds=time.monotonic() - began)
        )
    assert log.answers, "the client sent nothing"
    assert not failed, f"{len(failed)} failed of {len(log.answers)}: {failed[:10]}"
    assert log.rate() >= 20, f"{log.rate():.1f} requests/s, below 20 (MODELYARD_CHAOS_RATE)"


# ---------------------------------------------------------------- 1: operator killed
def children(cluster: Any, ns: str) -> dict[str, set[str]]:
    """The ModelDeployment's Deployments and Services (owned by it) and their
    ReplicaSets, each as 'name' or, for ReplicaSets, 'name=replicas'."""
    uid = md(cluster, ns, NAME)["metadata"]["uid"]
    found: dict[str, set[str]] = {}
    owned: set[str] = set()
    for kind in ("deployments", "services", "replicasets"):
        items = json.loads(kubectl(cluster, ns, "get", kind, "-o", "json"))["items"]
        found[kind] = set()
        for item in items:
            owners = {o["uid"] for o in item["metadata"].get("ownerReferences") or []}
            if kind != "replicasets" and uid in owners:
                found[kind].add(item["metadata"]["name"])
                owned |= {item["metadata"]["uid"]}
            elif kind == "replicasets" and owners & owned:
                found[kind].add(f"{item['metadata']['name']}={item['spec'].get('replicas', 0)}")
    return found


def lease_holder(cluster: Any, ns: str) -> str:
    return kubectl(cluster, ns, "get", "lease", f"{RELEASE}-modelyard-operator", "-o",
                   "jsonpath={.spec.holderIdentity}", check=False).strip()  # fmt: skip


def test_1_operator_killed_mid_rollout(
    node_cluster: Any, deployment: str, versions: tuple[int, int]
) -> None:
    """The leader's pod deleted with grace 0 (its process SIGKILLed) while version 2
    rolls out: the standby takes the Lease and the rollout completes, with exactly the
    children one rollout makes (one new ReplicaSet, no extra Deployment or Service)."""
    ns, (v1, v2) = deployment, versions
    serving_ready(node_cluster, ns, v1)
    before = children(node_cluster, ns)
    holder = lease_holder(node_cluster, ns)
    assert holder, "no operator holds the Lease"
    with loaded(node_cluster, ns, "1-operator-killed"):
        with mlflow_client(node_cluster, ns) as (client, _):
            client.set_registered_model_alias(NAME, "champion", str(v2))

        def in_flight() -> bool:
            rollout = (md(node_cluster, ns, NAME).get("status") or {}).get("rollout") or {}
            return int(rollout.get("version") or 0) == v2

        wait_for(f"the rollout of version {v2} to start", in_flight, timeout=LONG, interval=0.3)
        leader = lease_holder(node_cluster, ns).rsplit("_", 1)[0]
        kubectl(node_cluster, ns, "delete", "pod", leader, "--grace-period=0", "--force")
        killed = time.time()
        serving_ready(node_cluster, ns, v2)
        print(f"  leader {leader} killed; rollout done {time.time() - killed:.0f}s after")
    after = children(node_cluster, ns)
    assert after["deployments"] == before["deployments"], (before, after)
    assert after["services"] == before["services"], (before, after)
    old = {r.split("=")[0] for r in before["replicasets"]}
    new = [r for r in after["replicasets"] if r.split("=")[0] not in old]
    assert len(new) == 1 and new[0].endswith(f"={REPLICAS}"), (before, after)
    scaled = [r for r in after["replicasets"] if not r.endswith("=0")]
    assert scaled == new, after
    new_holder = lease_holder(node_cluster, ns)
    assert new_holder and not new_holder.startswith(leader + "_"), new_holder


# ------------------------------------------------------------------ 2: MLflow down
def test_2_registry_down(node_cluster: Any, deployment: str, versions: tuple[int, int]) -> None:
    """MLflow scaled to 0 for OUTAGE seconds: the servers answer on; ModelResolved goes
    False (RegistryUnavailable) and back to True once MLflow is back."""
    ns, live = deployment, versions[1]
    serving_ready(node_cluster, ns, live)
    mlflow = f"deploy/{RELEASE}-modelyard-mlflow"
    seen: list[tuple[str, str]] = []

    def resolved() -> tuple[str, str]:
        found = condition(md(node_cluster, ns, NAME), "ModelResolved")
        seen.append((str(found.get("status")), str(found.get("reason"))))
        return seen[-1]

    with loaded(node_cluster, ns, "2-registry-down"), ExitStack() as restore:
        kubectl(node_cluster, ns, "scale", mlflow, "--replicas=0")
        restore.callback(kubectl, node_cluster, ns, "scale", mlflow, "--replicas=1")
        began = time.monotonic()
        wait_for(
            "ModelResolved False with reason RegistryUnavailable",
            lambda: resolved() == ("False", "RegistryUnavailable"),
            timeout=LONG,
            interval=1,
        )
        restarted_pod_serves(node_cluster, ns)
        while time.monotonic() < began + OUTAGE:
            resolved()
            time.sleep(1)
        restore.close()
        kubectl(node_cluster, ns, "rollout", "status", mlflow, f"--timeout={LONG}s")
        wait_for(
            "ModelResolved True again",
            lambda: resolved()[0] == "True",
            timeout=LONG,
            interval=1,
        )
        assert available(node_cluster, ns) == REPLICAS
    assert ("False", "RegistryUnavailable") in seen and seen[-1][0] == "True", seen
    assert (md(node_cluster, ns, NAME).get("status") or {})["model"]["version"] == live


def restarted_pod_serves(cluster: Any, ns: str) -> None:
    """A server pod deleted while MLflow is down comes back Ready (from the model cache,
    not the registry); the client, still running, sees it serve."""
    import httpx

    [victim, *others] = server_pods(cluster, ns)
    kubectl(cluster, ns, "delete", "pod", victim, "--wait=false")
    wait_for(
        "a new server pod Ready while MLflow is down",
        lambda: victim not in server_pods(cluster, ns) and available(cluster, ns) == REPLICAS,
        timeout=LONG,
        interval=2,
    )
    [new] = set(server_pods(cluster, ns)) - set(others)
    with port_forward(cluster, ns, f"pod/{new}", SERVER_PORT) as port:
        answer = httpx.post(
            f"http://127.0.0.1:{port}/invocations",
            content=body(GOOD_ROW),
            headers={"Content-Type": "application/json"},
            timeout=60,
        )
    assert answer.status_code == 200, answer.text


# --------------------------------------------------------------- 3: API server down
@pytest.mark.node_only
def test_3_apiserver_restarted(
    node_cluster: Any, deployment: str, versions: tuple[int, int]
) -> None:
    """kube-apiserver stopped for APISERVER_OUTAGE seconds and started again; right after,
    the ModelDeployment scaled to 3 and back: the operator acts on both."""
    ns, live = deployment, versions[1]
    serving_ready(node_cluster, ns, live)
    with loaded(node_cluster, ns, "3-apiserver-restarted"):
        restarted = subprocess.run(
            [str(REPO / "hack" / "cluster.sh"), "restart-apiserver", str(APISERVER_OUTAGE)],
            capture_output=True, text=True, check=False, timeout=LONG,
        )  # fmt: skip
        assert restarted.returncode == 0, restarted.stderr[-3000:]
        for replicas in (REPLICAS + 1, REPLICAS):
            wait_for(
                f"md/{NAME} patched to {replicas} replicas",
                lambda n=replicas: node_cluster.run_kubectl(
                    "-n", ns, "patch", "md", NAME, "--type=merge", "-p",
                    json.dumps({"spec": {"server": {"replicas": n}}}), check=False,
                ).returncode == 0,
                timeout=LONG,
                interval=2,
            )  # fmt: skip
            wait_for(
                f"the operator to scale the servers to {replicas}",
                lambda n=replicas: kubectl(
                    node_cluster, ns, "get", "deploy", NAME, "-o",
                    "jsonpath={.spec.replicas}", check=False,
                ) == str(n) and available(node_cluster, ns) == n,
                timeout=LONG,
                interval=2,
            )  # fmt: skip
    serving_ready(node_cluster, ns, live)


# ---------------------------------------------------------------- 4: a pod deleted
def test_4_server_pod_deleted(
    node_cluster: Any, deployment: str, versions: tuple[int, int]
) -> None:
    ns, live = deployment, versions[1]
    serving_ready(node_cluster, ns, live)
    with loaded(node_cluster, ns, "4-server-pod-deleted"):
        [victim, *_] = server_pods(node_cluster, ns)
        kubectl(node_cluster, ns, "delete", "pod", victim, "--wait=false")
        wait_for(
            "the deleted pod replaced and Ready",
            lambda: (
                victim not in server_pods(node_cluster, ns)
                and available(node_cluster, ns) == REPLICAS
            ),
            timeout=LONG,
            interval=2,
        )


# ------------------------------------------------------------------- 5: sink down
def test_5_prediction_log_sink_down(
    node_cluster: Any, deployment: str, versions: tuple[int, int], sink: chaos.Sink
) -> None:
    """The sink stopped for SINK_OUTAGE seconds: the servers answer on and keep the rows
    (the count after the graceful stop, case 6, says none was lost)."""
    ns, live = deployment, versions[1]
    serving_ready(node_cluster, ns, live)
    with loaded(node_cluster, ns, "5-sink-down"):
        sink.stop()
        try:
            time.sleep(SINK_OUTAGE)
        finally:
            sink.start()


# ----------------------------------------------- 6: graceful stop, rows == answers
def test_6_graceful_stop_loses_no_row(node_cluster: Any, deployment: str, sink: chaos.Sink) -> None:
    """Every server stopped with SIGTERM (the ModelDeployment deleted): each case's rows
    in the log plus the rows recorded as dropped equal the requests it had answered."""
    ns = deployment
    delete_deployment(node_cluster, ns)
    assert LOGS, "no case ran before the graceful stop"
    ids = sink.request_ids()
    mine = [i for i in ids if i.startswith(RUN + "-")]
    assert len(mine) == len(set(mine)), "a request logged twice"
    records = sink.dropped_records()
    dropped_total = sum(int(r["rows"]) for r in records)
    answered_total = 0
    for case, log in LOGS.items():
        logged = chaos.counted(mine, f"{RUN}-{case}")
        answers = log.answered()
        first, last = answers[0].sent - 1, answers[-1].sent + 1
        dropped = sum(int(r["rows"]) for r in records if overlaps(r, first, last))
        answered_total += len(answers)
        result = next(r for r in chaos.RESULTS if r.case == case)
        result.logged, result.dropped = logged, dropped
    chaos.record(
        CaseResult("6-all-after-graceful-stop", sum(len(x.answers) for x in LOGS.values()),
                   sum(len(x.failed()) for x in LOGS.values()), len(mine), dropped_total)
    )  # fmt: skip
    assert len(mine) + dropped_total == answered_total, (len(mine), dropped_total, answered_total)
    for result in chaos.RESULTS:
        assert result.logged is not None and result.dropped is not None, result
        assert result.logged + result.dropped == result.answered, result.line()


def overlaps(record: dict[str, Any], first: float, last: float) -> bool:
    import pandas as pd

    start = pd.Timestamp(record["first"]).timestamp()
    end = pd.Timestamp(record["last"]).timestamp()
    return bool(start <= last and end >= first)


def delete_deployment(cluster: Any, ns: str) -> None:
    """The ModelDeployment deleted; its server pods stopped (SIGTERM: they write what
    they hold) and gone."""
    kubectl(cluster, ns, "delete", "md", NAME, "--ignore-not-found", f"--timeout={LONG}s")
    wait_for(
        "the server pods gone",
        lambda: not server_pods(cluster, ns),
        timeout=LONG,
        interval=2,
    )
