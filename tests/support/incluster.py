"""Doing things from inside the cluster and from the host, as a user would: one-shot pods,
`kubectl port-forward`, helm."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

# The Helm release name the e2e tests install.
E2E_RELEASE = "e2e"

RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def run_pod(
    cluster: Any,
    namespace: str,
    image: str,
    script: str,
    *,
    timeout: float = 300,
    name: str | None = None,
    env: dict[str, str] | None = None,
    registry_user: str | None = None,
    labels: dict[str, str] | None = None,
) -> str:
    """Run ``python3 -c script`` in a one-shot restricted pod; return its output.
    Fails the test with the pod's log when the script fails."""
    name = name or f"run-{uuid.uuid4().hex[:8]}"
    start_pod(
        cluster, namespace, image, script,
        name=name, env=env, registry_user=registry_user, labels=labels,
    )  # fmt: skip
    return wait_pod(cluster, namespace, name, timeout=timeout)


def registry_credentials_secret(release: str = E2E_RELEASE) -> str:
    """The chart's registry credentials Secret (docs/security.md)."""
    return f"{release}-modelyard-registry-credentials"


def registry_password(cluster: Any, namespace: str, user: str) -> str:
    """``user``'s registry password, read from the Secret as an administrator would."""
    from modelyard.core.contracts import RegistryUsers

    out = cluster.run_kubectl(
        "-n",
        namespace,
        "get",
        "secret",
        registry_credentials_secret(),
        "-o",
        f"jsonpath={{.data.{RegistryUsers.password_key(user)}}}",
    )
    return base64.b64decode(out.stdout).decode()


def start_pod(
    cluster: Any,
    namespace: str,
    image: str,
    script: str,
    *,
    name: str,
    env: dict[str, str] | None = None,
    registry_user: str | None = None,
    labels: dict[str, str] | None = None,
) -> None:
    """A one-shot restricted pod running ``python3 -c script``. With ``registry_user``,
    it is one of the toolkit's registry clients: labelled so MLflow's NetworkPolicy
    admits it, logged in as that user with the password from the credentials Secret."""
    from modelyard.core.contracts import LABEL_REGISTRY_CLIENT, RegistryUsers

    pod_labels = {"app.kubernetes.io/part-of": "modelyard-e2e", **(labels or {})}
    credentials: list[dict[str, Any]] = []
    if registry_user is not None:
        pod_labels[LABEL_REGISTRY_CLIENT] = "true"
        credentials = RegistryUsers.env(registry_credentials_secret(), registry_user)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": pod_labels},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": RESTRICTED_POD,
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python3", "-c", script],
                    "env": [
                        {"name": "HOME", "value": "/tmp"},
                        *({"name": k, "value": v} for k, v in (env or {}).items()),
                        *credentials,
                    ],
                    "securityContext": RESTRICTED_CONTAINER,
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }
    subprocess.run(
        [
            cluster.kubectl,
            "--kubeconfig",
            str(cluster.kubeconfig),
            "-n",
            namespace,
            "apply",
            "-f",
            "-",
        ],
        input=json.dumps(pod),
        text=True,
        check=True,
        capture_output=True,
    )


def wait_pod(cluster: Any, namespace: str, name: str, *, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    phase = ""
    while time.monotonic() < deadline:
        phase = cluster.run_kubectl(
            "-n", namespace, "get", "pod", name, "-o", "jsonpath={.status.phase}", check=False
        ).stdout
        if phase in ("Succeeded", "Failed"):
            break
        time.sleep(1)
    logs = cluster.run_kubectl("-n", namespace, "logs", name, check=False)
    if phase != "Succeeded":
        described = cluster.run_kubectl("-n", namespace, "describe", "pod", name, check=False)
        pytest.fail(
            f"pod {name} ended {phase or 'not at all'} within {timeout}s:\n{logs.stdout}"
            f"{logs.stderr}\n{described.stdout[-3000:]}",
            pytrace=False,
        )
    return str(logs.stdout)


@contextmanager
def port_forward(cluster: Any, namespace: str, target: str, port: int) -> Iterator[int]:
    """``kubectl port-forward`` to a Service; yields the local port."""
    proc = subprocess.Popen(
        [
            cluster.kubectl,
            "--kubeconfig",
            str(cluster.kubeconfig),
            "-n",
            namespace,
            "port-forward",
            target,
            f":{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not found:
            proc.kill()
            pytest.fail(f"port-forward to {target} failed: {line}{proc.stdout.read()}")
        yield int(found.group(1))
    finally:
        proc.terminate()
        proc.wait(10)
