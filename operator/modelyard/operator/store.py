"""What the watches delivered: the latest version of each object the operator watches.

Kopf's event handlers put every object they see here (an informer's cache, in
controller-runtime's words). A reconcile reads the ModelDeployment and its children from
here instead of asking the API server, so a pass over an unchanged resource makes no
requests at all; a write the operator makes is put back here from the API's answer.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

Key = tuple[str, str]  # (namespace, name)
#: The operator's field manager (and the prefix of its others, like the handover's).
OWN_FIELD_MANAGER = "modelyard-operator"


def _resource_version(body: Mapping[str, Any]) -> int:
    return int((body.get("metadata") or {}).get("resourceVersion") or 0)


class ObjectStore:
    """Objects by kind and key, plus children by their controller's uid."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, dict[Key, dict[str, Any]]] = {}
        self._owned: dict[str, dict[str, set[Key]]] = {}

    def put(self, kind: str, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name")))
        kept = _without_others_fields(body)
        with self._lock:
            objects = self._objects.setdefault(kind, {})
            current = objects.get(key)
            if current is not None and _newer(current, body):
                return  # an older event arriving after our own write
            objects[key] = kept
            for uid in _controller_uids(body):
                self._owned.setdefault(kind, {}).setdefault(uid, set()).add(key)

    def remove(self, kind: str, namespace: str, name: str) -> None:
        with self._lock:
            body = self._objects.get(kind, {}).pop((namespace, name), None)
            if body is not None:
                for uid in _controller_uids(body):
                    self._owned.get(kind, {}).get(uid, set()).discard((namespace, name))

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._objects.get(kind, {}).get((namespace, name))
            return dict(found) if found is not None else None

    def owned(self, kind: str, owner_uid: str) -> list[dict[str, Any]]:
        """Objects of ``kind`` whose controller is ``owner_uid``."""
        with self._lock:
            keys = self._owned.get(kind, {}).get(owner_uid, set())
            objects = self._objects.get(kind, {})
            return [dict(objects[k]) for k in sorted(keys) if k in objects]

    def items(
        self, kind: str, *, namespace: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Objects of ``kind`` (in ``namespace``, carrying ``labels``), by key."""
        with self._lock:
            found = sorted(self._objects.get(kind, {}).items())
        out = []
        for (ns, _), body in found:
            if namespace is not None and ns != namespace:
                continue
            have = (body.get("metadata") or {}).get("labels") or {}
            if labels and any(have.get(k) != v for k, v in labels.items()):
                continue
            out.append(dict(body))
        return out

    def keys(self, kind: str) -> list[Key]:
        with self._lock:
            return sorted(self._objects.get(kind, {}))

    def count(self, kind: str) -> int:
        with self._lock:
            return len(self._objects.get(kind, {}))


def _without_others_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """A shallow copy of ``body`` whose ``managedFields`` keep only the operator's own
    entries (read to hand ``spec.replicas`` over to an HPA): the other managers' entries
    are most of a watched object's size and nothing here reads them."""
    copy = dict(body)
    meta = copy.get("metadata")
    if isinstance(meta, Mapping) and meta.get("managedFields"):
        own = [
            entry
            for entry in meta["managedFields"]
            if str(entry.get("manager", "")).startswith(OWN_FIELD_MANAGER)
        ]
        copy["metadata"] = (
            {**meta, "managedFields": own}
            if own
            else {k: v for k, v in meta.items() if k != "managedFields"}
        )
    return copy


def _newer(current: Mapping[str, Any], incoming: Mapping[str, Any]) -> bool:
    """True when ``current`` is a later version of the object than ``incoming``.

    resourceVersions are opaque strings to clients; etcd's happen to be increasing
    integers, and an event that is not (another storage) is simply taken.
    """
    try:
        return _resource_version(current) > _resource_version(incoming) and (
            current.get("metadata", {}).get("uid") == incoming.get("metadata", {}).get("uid")
        )
    except (TypeError, ValueError):
        return False


def _controller_uids(body: Mapping[str, Any]) -> list[str]:
    refs = (body.get("metadata") or {}).get("ownerReferences") or []
    return [str(r.get("uid")) for r in refs if r.get("controller")]
