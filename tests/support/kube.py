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
        #: Their children: Deployments, ReplicaSets, Services, Pods, Events, Secrets.
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)

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


class KubeletStandIn:
    """Does the one thing a kubelet would do for this control-plane-only tier: a pod of
    the namespace that asks to run is reported Running and Ready (through the real pod
    status API), so Deployments roll out and versions go live. Containers never run here;
    the e2e tier, on a real node, runs them. Pods named in ``failing`` (by a substring of
    their image or model version env) are reported crash-looping instead."""

    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        import threading

        self.core = client.CoreV1Api(api_client)
        self.ns = namespace
        self.failing: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kubelet-stand-in", daemon=True)

    def __enter__(self) -> KubeletStandIn:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            try:
                for pod in self.core.list_namespaced_pod(self.ns).items:
                    self._report(pod)
            except client.exceptions.ApiException:
                continue

    def _report(self, pod: client.V1Pod) -> None:
        if pod.metadata.deletion_timestamp is not None:
            return
        if any(c.type == "Ready" for c in (pod.status.conditions or [])):
            return
        containers = pod.spec.containers
        env = " ".join(f"{e.name}={e.value}" for c in containers for e in (c.env or []))
        failing = any(marker in env or marker in containers[0].image for marker in self.failing)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        statuses = [
            {
                "name": c.name,
                "image": c.image,
                "imageID": "",
                "ready": not failing,
                "restartCount": 3 if failing else 0,
                "state": (
                    {"waiting": {"reason": "CrashLoopBackOff"}}
                    if failing
                    else {"running": {"startedAt": now}}
                ),
            }
            for c in containers
        ]
        ready = "False" if failing else "True"
        body = {
            "status": {
                "phase": "Running",
                "startTime": now,
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                    {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
                    {"type": "Ready", "status": ready, "lastTransitionTime": now},
                ],
                "containerStatuses": statuses,
            }
        }
        try:
            self.core.patch_namespaced_pod_status(pod.metadata.name, self.ns, body)
        except client.exceptions.ApiException as error:
            if error.status not in (404, 409, 422):
                raise
