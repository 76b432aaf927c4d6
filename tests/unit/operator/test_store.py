"""The watch cache keeps only what the operator reads of the objects it watches."""

from __future__ import annotations

from typing import Any

from modelyard.operator.events import MAX_MESSAGE, event_body
from modelyard.operator.kube import FIELD_MANAGER, HANDOVER_MANAGER, replicas_handover
from modelyard.operator.store import ObjectStore


def deployment(managers: list[str], replicas: int = 3) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "fraud",
            "namespace": "ml",
            "resourceVersion": "7",
            "managedFields": [
                {"manager": m, "fieldsV1": {"f:spec": {"f:replicas": {}}}} for m in managers
            ],
        },
        "spec": {"replicas": replicas},
    }


def test_other_managers_fields_are_dropped_and_the_operators_kept() -> None:
    store = ObjectStore()
    body = deployment(["kube-controller-manager", FIELD_MANAGER, HANDOVER_MANAGER, "kubectl"])
    store.put("Deployment", body)
    kept = store.get("Deployment", "ml", "fraud")
    assert kept is not None
    assert [e["manager"] for e in kept["metadata"]["managedFields"]] == [
        FIELD_MANAGER,
        HANDOVER_MANAGER,
    ]
    # The handover still sees that the operator owned the replica count.
    manifest = {"kind": "Deployment", "spec": {}}
    assert replicas_handover(manifest, kept) == 3
    # The object handed in is not changed.
    assert len(body["metadata"]["managedFields"]) == 4


def test_an_object_with_only_others_fields_keeps_none() -> None:
    store = ObjectStore()
    store.put("Deployment", deployment(["kube-controller-manager"]))
    kept = store.get("Deployment", "ml", "fraud")
    assert kept is not None
    assert "managedFields" not in kept["metadata"]
    assert replicas_handover({"kind": "Deployment", "spec": {}}, kept) is None


def test_an_event_is_plain_json_about_its_object() -> None:
    body = {
        "apiVersion": "modelyard.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "fraud", "namespace": "ml", "uid": "u-1", "resourceVersion": "9"},
    }
    event = event_body(body, "Normal", "Live", "x" * (MAX_MESSAGE + 10))
    assert event["metadata"]["namespace"] == "ml"
    assert event["metadata"]["name"].startswith("fraud.")
    assert event["involvedObject"] == {
        "apiVersion": "modelyard.io/v1alpha1",
        "kind": "ModelDeployment",
        "name": "fraud",
        "namespace": "ml",
        "uid": "u-1",
        "resourceVersion": "9",
    }
    assert (event["type"], event["reason"]) == ("Normal", "Live")
    assert len(event["message"]) == MAX_MESSAGE
    assert event["firstTimestamp"].endswith("Z")
