"""Small helpers for tests against the real API server (importable: tests/ is on the
pytest pythonpath)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client


def md_body(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "modelyard.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": spec,
    }


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 30, interval: float = 0.5) -> Any:
    """Poll ``fn`` until it returns something truthy; fail with the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except client.exceptions.ApiException as e:
            if e.status != 404:
                raise
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return {}


GROUP, VERSION, PLURAL = "modelyard.io", "v1alpha1", "modeldeployments"


class ModelDeployments:
    """ModelDeployments of one namespace, through the API, as a user sees them."""

    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        self.ns = namespace
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)

    def create(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, md_body(name, spec)
        )

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, name, {"spec": spec}
        )

    def md(self, name: str) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name))

    def wait_md(
        self, name: str, what: str, pred: Callable[[dict[str, Any]], Any], timeout: float = 30
    ) -> dict[str, Any]:
        """Wait until the ModelDeployment satisfies ``pred``; return it."""

        def check() -> dict[str, Any] | None:
            md = self.md(name)
            return md if pred(md) else None

        result: dict[str, Any] = wait_for(what, check, timeout=timeout)
        return result
