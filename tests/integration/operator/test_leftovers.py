"""The ConfigMap of left registry tags against the real API server: concurrent writers
lose nothing (each write is a patch on the resourceVersion read, retried on 409)."""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kubernetes import client

from modelyard.operator.leftovers import LeftoverTags, LeftTags
from modelyard.operator.reconcile import VersionTag
from modelyard.operator.resolve import RegistryTarget

pytestmark = pytest.mark.integration


def record(name: str, uid: str) -> LeftTags:
    body = {"metadata": {"namespace": "team", "name": name, "uid": uid}}
    tags = [VersionTag("m", 1, f"modelyard.io/deployed/team/{name}")]
    return LeftTags.of(
        body, RegistryTarget("http://mlflow:5000"), tags, now=dt.datetime.now(dt.UTC)
    )


def test_concurrent_records_and_drops_lose_nothing(api_client: Any, namespace: str) -> None:
    store = LeftoverTags(api_client, namespace, "leftover-tags", timeout=30)
    records = [record(f"md{i % 4}", f"u{i}") for i in range(16)]
    # The ConfigMap does not exist yet: the first writers race to create it.
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(store.record, records))
    entries = store.entries()
    assert sorted(entries) == [f"team.md{i}" for i in range(4)]
    assert sorted(r.uid for rs in entries.values() for r in rs) == sorted(r.uid for r in records)

    # Drops and new records at once: the drops take only what they name.
    late = [record("md0", f"late{i}") for i in range(4)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(store.forget, "team.md1", entries["team.md1"])]
        futures += [pool.submit(store.record, r) for r in late]
        for future in futures:
            future.result()
    entries = store.entries()
    assert "team.md1" not in entries
    assert {r.uid for r in entries["team.md0"]} >= {r.uid for r in late}
    found = client.CoreV1Api(api_client).read_namespaced_config_map("leftover-tags", namespace)
    assert found.metadata.labels == {"app.kubernetes.io/part-of": "modelyard"}
