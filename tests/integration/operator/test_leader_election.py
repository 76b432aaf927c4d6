"""The Lease elector against the real API server: one holder at a time, optimistic
concurrency between candidates, release, and a leader that cannot renew stops leading."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from kubernetes import client

from modelyard.operator.leader import LeaderElector

pytestmark = pytest.mark.integration

DURATION, DEADLINE, RETRY = 3.0, 2.0, 0.5


def elector(api_client: Any, namespace: str, lease: str, who: str, **kw: Any) -> LeaderElector:
    return LeaderElector(
        client.CoordinationV1Api(api_client),
        namespace=namespace,
        name=lease,
        identity=who,
        lease_duration=DURATION,
        renew_deadline=DEADLINE,
        retry_period=RETRY,
        **kw,
    )


def holder(api_client: Any, namespace: str, lease: str) -> str | None:
    spec = client.CoordinationV1Api(api_client).read_namespaced_lease(lease, namespace).spec
    return spec.holder_identity if spec is not None else None


def test_candidates_racing_for_a_new_lease_get_one_holder(api_client: Any, namespace: str) -> None:
    lease = f"race-{uuid.uuid4().hex[:6]}"
    candidates = [elector(api_client, namespace, lease, f"c{i}") for i in range(4)]
    barrier = threading.Barrier(len(candidates))
    won: list[bool] = [False] * len(candidates)

    def attempt(i: int) -> None:
        barrier.wait()
        won[i] = candidates[i].try_acquire_or_renew(5)
        barrier.wait()
        won[i] = candidates[i].try_acquire_or_renew(5) or won[i]

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(candidates))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(won) == 1, won
    [winner] = [c for c, w in zip(candidates, won, strict=True) if w]
    assert [c.is_leader() for c in candidates].count(True) == 1
    assert holder(api_client, namespace, lease) == winner.identity


def test_a_live_leader_keeps_the_lease_and_hands_it_over_on_release(
    api_client: Any, namespace: str
) -> None:
    lease = f"keep-{uuid.uuid4().hex[:6]}"
    first = elector(api_client, namespace, lease, "first")
    second = elector(api_client, namespace, lease, "second")
    assert first.acquire()
    first.start_renewing()
    stop = threading.Event()
    taken = threading.Thread(target=second.acquire, args=(stop,))
    taken.start()
    try:
        time.sleep(DURATION * 2)  # two lease durations: renewed all along, never taken
        assert first.is_leader() and not second.is_leader()
        assert second.holder == "first"
        assert first.release()
        assert holder(api_client, namespace, lease) is None
        taken.join(RETRY * 3)  # the next attempt, not a lease duration later
        assert not taken.is_alive()
        assert second.is_leader()
        spec = client.CoordinationV1Api(api_client).read_namespaced_lease(lease, namespace).spec
        assert spec.holder_identity == "second"
        assert spec.lease_transitions == 0  # a released Lease is taken, not stolen
    finally:
        stop.set()
        taken.join(10)


def test_a_leader_that_cannot_renew_stops_before_another_may_take_over(
    api_client: Any, namespace: str
) -> None:
    lease = f"lost-{uuid.uuid4().hex[:6]}"
    lost = threading.Event()
    cut_off = elector(api_client, namespace, lease, "cut-off", on_lost=lost.set)
    other = elector(api_client, namespace, lease, "other")
    assert cut_off.acquire()
    cut_off.start_renewing()
    # From now on its renewals cannot reach the API server.
    cut_off.api = client.CoordinationV1Api(
        client.ApiClient(client.Configuration(host="http://127.0.0.1:9"))
    )
    assert not other.try_acquire_or_renew(5)  # held, freshly renewed
    started = time.monotonic()
    assert lost.wait(DEADLINE + RETRY * 3)
    assert time.monotonic() - started <= DEADLINE + RETRY * 2
    assert not cut_off.is_leader()
    # The other candidate gets it only after a lease duration it measured itself.
    taken_at = None
    while time.monotonic() - started < DURATION * 3:
        if other.try_acquire_or_renew(5):
            taken_at = time.monotonic() - started
            break
        time.sleep(RETRY)
    assert taken_at is not None
    assert taken_at >= DURATION - RETRY, taken_at
    spec = client.CoordinationV1Api(api_client).read_namespaced_lease(lease, namespace).spec
    assert spec.holder_identity == "other"
    assert spec.lease_transitions == 1


def test_the_holder_announces_its_webhook_address_and_standbys_read_it(
    api_client: Any, namespace: str
) -> None:
    """What the holder writes on the Lease (where it takes MLflow's webhooks) is what a
    standby reads when it tries; nobody announces anything once the Lease is released."""
    from modelyard.operator.webhooks import WEBHOOK_ADDRESS_ANNOTATION as KEY

    lease = f"hooks-{uuid.uuid4().hex[:6]}"
    first = elector(api_client, namespace, lease, "first", annotations={KEY: "10.0.0.7:8082"})
    second = elector(api_client, namespace, lease, "second", annotations={KEY: "10.0.0.8:8082"})
    assert first.try_acquire_or_renew(5)
    assert not second.try_acquire_or_renew(5)
    assert second.holder_annotation(KEY) == "10.0.0.7:8082"
    assert first.holder_annotation(KEY) is None  # it is the holder itself
    assert first.try_acquire_or_renew(5)  # a renewal (one write) keeps the annotation
    read = client.CoordinationV1Api(api_client).read_namespaced_lease(lease, namespace)
    assert (read.metadata.annotations or {}).get(KEY) == "10.0.0.7:8082"
    assert first.release()
    assert second.try_acquire_or_renew(5)  # it takes the released Lease at once
    assert first.try_acquire_or_renew(5) is False
    assert first.holder_annotation(KEY) == "10.0.0.8:8082"
