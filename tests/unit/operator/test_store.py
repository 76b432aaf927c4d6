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


def test_a_reader_changes_its_own_copy_and_an_older_event_is_not_taken() -> None:
    store = ObjectStore()
    body = deployment([FIELD_MANAGER], replicas=3)
    body["metadata"]["uid"] = "u-1"
    store.put("Deployment", body)
    first = store.get("Deployment", "ml", "fraud")
    assert first is not None
    first["spec"]["replicas"] = 99
    assert store.get("Deployment", "ml", "fraud") == body  # only the operator's own fields
    older = deployment([FIELD_MANAGER], replicas=1)
    older["metadata"].update(uid="u-1", resourceVersion="6")
    store.put("Deployment", older)
    kept = store.get("Deployment", "ml", "fraud")
    assert kept is not None and kept["spec"]["replicas"] == 3


def test_items_filter_by_namespace_and_labels_and_come_by_name() -> None:
    store = ObjectStore()
    for namespace, name, app in [
        ("ml", "b", "server"),
        ("ml", "a", "server"),
        ("ml", "c", "router"),
        ("other", "a", "server"),
    ]:
        store.put(
            "Pod", {"metadata": {"namespace": namespace, "name": name, "labels": {"app": app}}}
        )
    found = store.items("Pod", namespace="ml", labels={"app": "server"})
    assert [p["metadata"]["name"] for p in found] == ["a", "b"]
    assert len(store.items("Pod")) == 4


def test_owned_follows_the_controller_and_forgets_removed_children() -> None:
    store = ObjectStore()
    ref = {"kind": "ModelDeployment", "name": "fraud", "uid": "md-1", "controller": True}
    for name in ("fraud", "fraud-router"):
        store.put(
            "Deployment", {"metadata": {"namespace": "ml", "name": name, "ownerReferences": [ref]}}
        )
    assert [d["metadata"]["name"] for d in store.owned("Deployment", "md-1")] == [
        "fraud",
        "fraud-router",
    ]
    store.remove("Deployment", "ml", "fraud")
    assert [d["metadata"]["name"] for d in store.owned("Deployment", "md-1")] == ["fraud-router"]
    assert store.owned("Deployment", "md-2") == []


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
