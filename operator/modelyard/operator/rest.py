"""The operator's requests to the API server as plain JSON: dicts in, dicts out.

The ``kubernetes`` package's generated API classes (``CoreV1Api``, ``AppsV1Api``, the
dynamic client) import and validate hundreds of generated models: using them costs about
90 MiB of fixed memory and a conversion of every answer into model objects and back. The
operator only sends manifests it built as dicts and keeps what it reads as dicts, so its
hot path goes through this thin layer over the package's ``ApiClient`` (its
configuration, authentication and connection pool) instead. Errors are the package's
``ApiException`` (``status``, ``reason``, ``body``), as the generated classes raise them.
"""

from __future__ import annotations

import json
import threading
from typing import Any
from urllib.parse import quote

from kubernetes import client
from kubernetes.client.exceptions import ApiException

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"  # JSON is YAML: the body is sent as JSON

#: The kinds the operator writes or reads, by (apiVersion, kind): their resource names.
#: Others are looked up once through discovery.
KNOWN_PLURALS: dict[tuple[str, str], str] = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Secret"): "secrets",
    ("v1", "Service"): "services",
    ("v1", "Event"): "events",
    ("apps/v1", "Deployment"): "deployments",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("batch/v1", "CronJob"): "cronjobs",
    ("batch/v1", "Job"): "jobs",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
}


class Rest:
    """JSON requests through ``api_client`` (its host, credentials and pool)."""

    def __init__(self, api_client: client.ApiClient, timeout: float) -> None:
        self.api_client = api_client
        self.timeout = timeout
        self._plurals = dict(KNOWN_PLURALS)
        self._lock = threading.Lock()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: list[tuple[str, str]] | None = None,
        content_type: str = JSON,
    ) -> dict[str, Any]:
        """The answer's JSON; raises ``ApiException`` for anything but a 2xx."""
        headers = {"Accept": JSON}
        if body is not None:
            headers["Content-Type"] = content_type
        api = self.api_client
        # The body is already JSON-ready: no model serialization on the way out (the
        # package's REST client encodes it, for JSON and apply-patch YAML alike).
        verb, url, headers, _, _ = api.param_serialize(
            method, path, query_params=query, header_params=headers, auth_settings=["BearerToken"]
        )
        response = api.call_api(verb, url, headers, body, _request_timeout=self.timeout)
        response.read()
        if not 200 <= int(response.status) < 300:
            raise ApiException(http_resp=response)
        found: Any = json.loads(response.data) if response.data else {}
        return found if isinstance(found, dict) else {}

    def path(self, api_version: str, kind: str, namespace: str, name: str = "") -> str:
        """``/api[s]/.../namespaces/NS/PLURAL[/NAME]`` of a namespaced object."""
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        tail = f"/{quote(name, safe='')}" if name else ""
        return (
            f"{base}/namespaces/{quote(namespace, safe='')}/{self.plural(api_version, kind)}{tail}"
        )

    def know(self, api_version: str, kind: str, plural: str) -> None:
        """Name a kind's resource (a custom resource's plural) without discovery."""
        with self._lock:
            self._plurals[(api_version, kind)] = plural

    def plural(self, api_version: str, kind: str) -> str:
        with self._lock:
            found = self._plurals.get((api_version, kind))
        if found is not None:
            return found
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        listing = self.request("GET", base)
        for resource in listing.get("resources") or []:
            if resource.get("kind") == kind and "/" not in str(resource.get("name")):
                with self._lock:
                    self._plurals[(api_version, kind)] = str(resource["name"])
                return str(resource["name"])
        raise ApiException(status=404, reason=f"no resource of kind {kind} in {api_version}")

    # ------------------------------------------------------------------ verbs
    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return self.request("GET", self.path(api_version, kind, namespace, name))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def apply(self, manifest: dict[str, Any], manager: str) -> dict[str, Any]:
        """Server-side apply ``manifest`` as ``manager``, taking over conflicting fields."""
        meta = manifest["metadata"]
        return self.request(
            "PATCH",
            self.path(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"]),
            manifest,
            query=[("fieldManager", manager), ("force", "true")],
            content_type=APPLY_PATCH,
        )

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        return self.request(
            "POST", self.path(manifest["apiVersion"], manifest["kind"], meta["namespace"]), manifest
        )

    def merge_patch(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        name: str,
        patch: dict[str, Any],
        *,
        subresource: str = "",
    ) -> dict[str, Any]:
        path = self.path(api_version, kind, namespace, name)
        if subresource:
            path += f"/{subresource}"
        return self.request("PATCH", path, patch, content_type=MERGE_PATCH)

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete; False when it was gone already."""
        try:
            self.request("DELETE", self.path(api_version, kind, namespace, name))
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True
