"""Applying and reading child objects: server-side apply, one field manager.

Server-side apply is "create if missing, else patch" done by the API server: a retry or
an operator restart that applies the same manifest changes nothing (the object keeps its
resourceVersion), and fields other managers own (an HPA's replica count) are left alone.
"""

from __future__ import annotations

import threading
from typing import Any

from kubernetes import client
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ConflictError, NotFoundError
from kubernetes.dynamic.resource import Resource

FIELD_MANAGER = "modelyard-operator"


class ChildConflict(Exception):
    """An object with the child's name exists and belongs to someone else."""


class Kube:
    """A thin, thread-safe wrapper over the dynamic client for the operator's children."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self._dynamic: DynamicClient | None = None
        self._resources: dict[tuple[str, str], Resource] = {}
        self._lock = threading.Lock()

    def resource(self, api_version: str, kind: str) -> Resource:
        with self._lock:
            if self._dynamic is None:
                self._dynamic = DynamicClient(self.api_client)
            key = (api_version, kind)
            if key not in self._resources:
                self._resources[key] = self._dynamic.resources.get(
                    api_version=api_version, kind=kind
                )
            return self._resources[key]

    def get(self, api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        res = self.resource(api_version, kind)
        try:
            obj = res.get(name=name, namespace=namespace)
        except NotFoundError:
            return None
        return dict(obj.to_dict())

    def apply_owned(self, manifest: dict[str, Any], owner_uid: str) -> dict[str, Any]:
        """Server-side apply ``manifest``; refuse to take over an object not ours."""
        meta = manifest["metadata"]
        api_version, kind = manifest["apiVersion"], manifest["kind"]
        existing = self.get(api_version, kind, meta["name"], meta["namespace"])
        if existing is not None and not _owned_by(existing, owner_uid):
            raise ChildConflict(
                f"{kind} {meta['namespace']}/{meta['name']} already exists and is not owned by "
                "this ModelDeployment; rename one of them or delete the old object"
            )
        res = self.resource(api_version, kind)
        applied = res.server_side_apply(
            body=manifest,
            namespace=meta["namespace"],
            field_manager=FIELD_MANAGER,
            force_conflicts=True,
        )
        return dict(applied.to_dict())

    def create(self, manifest: dict[str, Any]) -> bool:
        """Create ``manifest``; False when an object of that name exists already."""
        meta = manifest["metadata"]
        res = self.resource(manifest["apiVersion"], manifest["kind"])
        try:
            res.create(body=manifest, namespace=meta["namespace"])
        except ConflictError:
            return False
        return True

    def delete_owned(
        self, api_version: str, kind: str, name: str, namespace: str, owner_uid: str
    ) -> bool:
        """Delete the object if it exists and is ours; True when something was deleted."""
        existing = self.get(api_version, kind, name, namespace)
        if existing is None or not _owned_by(existing, owner_uid):
            return False
        try:
            self.resource(api_version, kind).delete(name=name, namespace=namespace)
        except NotFoundError:
            return False
        return True


def _owned_by(obj: dict[str, Any], owner_uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == owner_uid for ref in refs)
