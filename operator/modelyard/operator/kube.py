"""Applying and deleting a ModelDeployment's children: server-side apply, one field
manager, and no request at all when a child already is what was applied last.

Server-side apply is "create if missing, else patch" done by the API server: a retry or
an operator restart that applies the same manifest changes nothing, and fields other
managers own (an HPA's replica count) are left alone. Each applied child carries the hash
of the manifest it was applied from; when the watch shows a child with the hash of the
manifest about to be applied, the apply is skipped (a periodic resync applies anyway, so
a hand edit is undone within the resync period).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modelyard.operator.metrics import OperatorMetrics
from modelyard.operator.rest import Rest
from modelyard.operator.store import OWN_FIELD_MANAGER, ObjectStore

FIELD_MANAGER = OWN_FIELD_MANAGER
#: Holds a Deployment's replica count while it passes from our apply to an HPA.
HANDOVER_MANAGER = f"{OWN_FIELD_MANAGER}-handover"
APPLIED_HASH = "modelyard.io/applied-hash"


class ChildConflict(Exception):
    """An object with the child's name exists and belongs to someone else."""


class ApplyFailed(Exception):
    """The API server refused a child (quota, admission, a full service range, ...)."""

    def __init__(self, kind: str, name: str, status: int, message: str) -> None:
        super().__init__(f"applying {kind} {name} failed (HTTP {status}): {message}")
        self.status = status


def manifest_hash(manifest: Mapping[str, Any]) -> str:
    return hashlib.sha256(
        json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()[:20]


def owned_by(obj: Mapping[str, Any], owner_uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == owner_uid for ref in refs)


def replicas_handover(manifest: Mapping[str, Any], seen: Mapping[str, Any] | None) -> int | None:
    """The replica count to hand over before ``manifest`` drops ``spec.replicas``.

    A server-side apply that stops setting a field its manager owned alone resets it to
    its default: a Deployment switched from ``replicas: 4`` to autoscaling fell to one pod
    until the HPA scaled it back. Applying the current count first under a second manager
    (Kubernetes' documented way to hand a field to an HPA) keeps it where it is; the HPA
    then takes the field over by changing it.
    """
    if seen is None or manifest.get("kind") != "Deployment":
        return None
    if "replicas" in (manifest.get("spec") or {}):
        return None
    current = (seen.get("spec") or {}).get("replicas")
    if current is None:
        return None
    for entry in (seen.get("metadata") or {}).get("managedFields") or []:
        fields = (entry.get("fieldsV1") or {}).get("f:spec") or {}
        if entry.get("manager") == FIELD_MANAGER and "f:replicas" in fields:
            return int(current)
    return None


class Kube:
    """The operator's writes to children, as plain JSON (:mod:`~modelyard.operator.rest`),
    with timeouts."""

    def __init__(
        self,
        api_client: client.ApiClient,
        store: ObjectStore,
        timeout: float,
        metrics: OperatorMetrics | None = None,
    ) -> None:
        self.api_client = api_client
        self.store = store
        self.timeout = timeout
        self.metrics = metrics or OperatorMetrics()
        self.rest = Rest(api_client, timeout)
        #: Requests made, by verb (read by tests and the operator's metrics).
        self.calls: dict[str, int] = {"apply": 0, "delete": 0, "get": 0, "create": 0}

    def get(self, api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        """Read an object that is not one of our children (those are in the store)."""
        self.calls["get"] += 1
        return self.rest.get(api_version, kind, namespace, name)

    def apply_owned(
        self, manifest: dict[str, Any], owner: Mapping[str, Any], *, force: bool = False
    ) -> dict[str, Any]:
        """Server-side apply a child of ``owner`` (skipped when unchanged, unless ``force``);
        refuse to take over an object that is not ours."""
        meta = owner["metadata"]
        uid = str(meta["uid"])
        manifest = dict(manifest)
        manifest["metadata"] = {
            **manifest["metadata"],
            "ownerReferences": [
                {
                    "apiVersion": owner["apiVersion"],
                    "kind": owner["kind"],
                    "name": meta["name"],
                    "uid": uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        }
        digest = manifest_hash(manifest)
        manifest["metadata"]["annotations"] = {
            **(manifest["metadata"].get("annotations") or {}),
            APPLIED_HASH: digest,
        }
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        namespace = manifest["metadata"]["namespace"]
        seen = self.store.get(kind, namespace, name)
        if seen is not None and not owned_by(seen, uid):
            raise ChildConflict(
                f"{kind} {namespace}/{name} already exists and is not owned by this "
                "ModelDeployment; rename one of them or delete the old object"
            )
        annotations = ((seen or {}).get("metadata") or {}).get("annotations") or {}
        if seen is not None and annotations.get(APPLIED_HASH) == digest and not force:
            return seen
        keep = replicas_handover(manifest, seen)
        if keep is not None:
            self._server_side_apply(
                {
                    "apiVersion": manifest["apiVersion"],
                    "kind": kind,
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {"replicas": keep},
                },
                HANDOVER_MANAGER,
            )
        result = self._server_side_apply(manifest, FIELD_MANAGER)
        self.store.put(kind, result)
        return result

    def _server_side_apply(self, manifest: dict[str, Any], manager: str) -> dict[str, Any]:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        self.calls["apply"] += 1
        self.metrics.api_writes.labels("apply").inc()
        try:
            return self.rest.apply(manifest, manager)
        except ApiException as error:
            raise ApplyFailed(kind, name, int(error.status or 0), _api_message(error)) from None

    def create(self, manifest: dict[str, Any]) -> bool:
        """Create ``manifest``; False when an object of that name exists already."""
        self.calls["create"] += 1
        self.metrics.api_writes.labels("create").inc()
        try:
            self.rest.create(manifest)
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    def delete_owned(
        self, api_version: str, kind: str, name: str, namespace: str, owner_uid: str
    ) -> bool:
        """Delete the child if the watch shows it and it is ours; True when deleted."""
        seen = self.store.get(kind, namespace, name)
        if seen is None or not owned_by(seen, owner_uid):
            return False
        self.calls["delete"] += 1
        self.metrics.api_writes.labels("delete").inc()
        self.rest.delete(api_version, kind, namespace, name)
        self.store.remove(kind, namespace, name)
        return True


def _api_message(error: Exception) -> str:
    """The API server's own message (it says what to fix: a quota, a full range)."""
    body = getattr(error, "body", None)
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    if isinstance(body, str):
        try:
            parsed = json.loads(body)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict) and parsed.get("message"):
            return str(parsed["message"])[:2000]
    return str(getattr(error, "reason", "") or error)[:2000]
