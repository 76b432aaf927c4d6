"""What the watches delivered: the latest version of each object the operator watches.

Kopf's event handlers put every object they see here (an informer's cache, in
controller-runtime's words). A reconcile reads the ModelDeployment and its children from
here instead of asking the API server, so a pass over an unchanged resource makes no
requests at all; a write the operator makes is put back here from the API's answer.

Each object is kept serialized, beside the few fields a lookup filters on
(resourceVersion, uid, labels, controller): a parsed Kubernetes object is a tree of
small dicts and strings several times the size of its serialized form (a server
Deployment is about 4 KB serialized and 30 KB of Python objects), and with 1,000
ModelDeployments and their children that difference was most of the operator's memory
above kopf's own. The serialization is pickle, because it is two to four times faster
than JSON both ways here; its bytes are made and read only by this store, in this
process (never written anywhere, never received). A read makes a new object (tens of
microseconds), so every caller gets one of its own that it may change freely.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Key = tuple[str, str]  # (namespace, name)
#: The operator's field manager (and the prefix of its others, like the handover's).
OWN_FIELD_MANAGER = "modelyard-operator"


def _resource_version(body: Mapping[str, Any]) -> int:
    return int((body.get("metadata") or {}).get("resourceVersion") or 0)


@dataclass(frozen=True, slots=True)
class _Entry:
    data: bytes
    resource_version: str
    uid: str
    labels: Mapping[str, str]
    controllers: tuple[str, ...]

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> _Entry:
        meta = body.get("metadata") or {}
        return cls(
            data=pickle.dumps(body, protocol=pickle.HIGHEST_PROTOCOL),
            resource_version=str(meta.get("resourceVersion") or ""),
            uid=str(meta.get("uid") or ""),
            labels=dict(meta.get("labels") or {}),
            controllers=tuple(_controller_uids(body)),
        )

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = pickle.loads(self.data)  # only bytes _Entry.of made
        return body

    def newer_than(self, body: Mapping[str, Any]) -> bool:
        """True when this entry is a later version of the same object than ``body``.

        resourceVersions are opaque strings to clients; etcd's happen to be increasing
        integers, and an event that is not (another storage) is simply taken.
        """
        meta = body.get("metadata") or {}
        try:
            return int(self.resource_version or 0) > _resource_version(body) and (
                self.uid == str(meta.get("uid") or "")
            )
        except (TypeError, ValueError):
            return False


class ObjectStore:
    """Objects by kind and key, plus children by their controller's uid and names by
    namespace (a reconcile lists one namespace's pods, not every namespace's)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, dict[Key, _Entry]] = {}
        self._owned: dict[str, dict[str, set[Key]]] = {}
        self._names: dict[str, dict[str, set[str]]] = {}

    def put(self, kind: str, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name")))
        entry = _Entry.of(_without_others_fields(body))
        with self._lock:
            objects = self._objects.setdefault(kind, {})
            current = objects.get(key)
            if current is not None and current.newer_than(body):
                return  # an older event arriving after our own write
            objects[key] = entry
            self._names.setdefault(kind, {}).setdefault(key[0], set()).add(key[1])
            for uid in entry.controllers:
                self._owned.setdefault(kind, {}).setdefault(uid, set()).add(key)

    def remove(self, kind: str, namespace: str, name: str) -> None:
        with self._lock:
            entry = self._objects.get(kind, {}).pop((namespace, name), None)
            if entry is not None:
                _discard(self._names.get(kind, {}), namespace, name)
                for uid in entry.controllers:
                    _discard(self._owned.get(kind, {}), uid, (namespace, name))

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._objects.get(kind, {}).get((namespace, name))
        return found.body() if found is not None else None

    def owned(self, kind: str, owner_uid: str) -> list[dict[str, Any]]:
        """Objects of ``kind`` whose controller is ``owner_uid``."""
        with self._lock:
            keys = self._owned.get(kind, {}).get(owner_uid, set())
            objects = self._objects.get(kind, {})
            found = [objects[k] for k in sorted(keys) if k in objects]
        return [entry.body() for entry in found]

    def items(
        self, kind: str, *, namespace: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Objects of ``kind`` (in ``namespace``, carrying ``labels``), by key; only the
        matching ones are parsed."""
        with self._lock:
            objects = self._objects.get(kind, {})
            if namespace is None:
                keys = sorted(objects)
            else:
                names = self._names.get(kind, {}).get(namespace, set())
                keys = [(namespace, name) for name in sorted(names)]
            found = [
                entry
                for entry in (objects[key] for key in keys)
                if not (labels and any(entry.labels.get(k) != v for k, v in labels.items()))
            ]
        return [entry.body() for entry in found]

    def keys(self, kind: str) -> list[Key]:
        with self._lock:
            return sorted(self._objects.get(kind, {}))

    def count(self, kind: str) -> int:
        with self._lock:
            return len(self._objects.get(kind, {}))


def _discard(index: dict[str, set[Any]], key: str, member: Any) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(member)
        if not members:
            del index[key]


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


def _controller_uids(body: Mapping[str, Any]) -> list[str]:
    refs = (body.get("metadata") or {}).get("ownerReferences") or []
    return [str(r.get("uid")) for r in refs if r.get("controller")]
