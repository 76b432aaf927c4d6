"""Checks on the real cluster shared by the chart's integration tests."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

RESTRICTED = {
    f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")
}


def label_restricted(cluster: Any, name: str) -> None:
    cluster.run_kubectl(
        "label", "namespace", name, "--overwrite", *(f"{k}={v}" for k, v in RESTRICTED.items())
    )


def namespaced_kinds(cluster: Any) -> list[str]:
    out = cluster.run_kubectl("api-resources", "--verbs=list,delete", "--namespaced", "-o", "name")
    # Events are a record of what happened, not objects of the release.
    return [k for k in out.stdout.split() if k not in {"events", "events.events.k8s.io"}]


def leftovers(cluster: Any, namespaces: list[str], selector: str) -> list[str]:
    """Objects matching ``selector`` in ``namespaces``, plus cluster-scoped RBAC."""
    kinds = ",".join(namespaced_kinds(cluster))
    found = []
    for ns in namespaces:
        out = cluster.run_kubectl("get", kinds, "-n", ns, "-l", selector, "-o", "name")
        found += [f"{ns}/{line}" for line in out.stdout.split()]
    out = cluster.run_kubectl(
        "get", "clusterroles,clusterrolebindings", "-l", selector, "-o", "name"
    )
    return found + out.stdout.split()


def wait_until_gone(
    cluster: Any, namespaces: list[str], selector: str, timeout: float = 60
) -> None:
    """Garbage collection (ReplicaSets, Pods, EndpointSlices) takes a moment."""
    deadline = time.monotonic() + timeout
    while (left := leftovers(cluster, namespaces, selector)) and time.monotonic() < deadline:
        time.sleep(1)
    assert left == [], f"left behind: {left}"


def sa_kubeconfig(cluster: Any, namespace: str, service_account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as ``service_account`` (a bound token)."""
    token = cluster.run_kubectl(
        "create", "token", service_account, "-n", namespace, "--duration=1h"
    ).stdout.strip()
    server = cluster.run_kubectl(
        "config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}"
    ).stdout
    ca = cluster.run_kubectl(
        "config",
        "view",
        "--minify",
        "--raw",
        "-o",
        "jsonpath={.clusters[0].cluster.certificate-authority}",
    ).stdout
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: c, cluster: {{server: '{server}', certificate-authority: '{ca}'}}}}]\n"
        f"users: [{{name: sa, user: {{token: '{token}'}}}}]\n"
        "contexts: [{name: sa, context: {cluster: c, user: sa}}]\n"
        "current-context: sa\n"
    )
    return path


def kubectl(
    cluster: Any, *args: str, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """kubectl with stdin (``cluster.run_kubectl`` has none)."""
    result = subprocess.run(
        [cluster.kubectl, "--kubeconfig", str(cluster.kubeconfig), *args],
        input=input,
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
    )
    if check and result.returncode != 0:
        pytest.fail(f"kubectl {' '.join(args)}: {result.stderr}", pytrace=False)
    return result


class ChartMlflow:
    """The MLflow server the chart runs, started on this machine (fixture chart_mlflow)."""

    def __init__(self, url: str, args: list[str]) -> None:
        self.url = url
        self.args = args
