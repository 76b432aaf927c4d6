"""Fixtures for the chart on the real control plane: Pod Security "restricted"
namespaces, releases that are always uninstalled, and the MLflow server the chart runs,
started here from the chart's own command line."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.integration.chart.cluster_checks import ChartMlflow, label_restricted
from tests.support.servers import free_port, stop_process, subprocess_env, wait_http
from tests.unit.chart.rendering import helm, one, render


@pytest.fixture
def restricted_namespace(cluster: Any, namespace: str) -> str:
    """The test's namespace, enforcing Pod Security "restricted"."""
    label_restricted(cluster, namespace)
    return namespace


@pytest.fixture
def extra_namespaces(cluster: Any) -> Iterator[Callable[[int], list[str]]]:
    """More fresh namespaces (restricted), deleted at the end."""
    created: list[str] = []

    def make(count: int) -> list[str]:
        names = [f"t-{uuid.uuid4().hex[:10]}" for _ in range(count)]
        for name in names:
            cluster.run_kubectl("create", "namespace", name)
            label_restricted(cluster, name)
            created.append(name)
        return names

    yield make
    for name in created:
        cluster.run_kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def release(cluster: Any, restricted_namespace: str) -> Iterator[str]:
    """A release name; whatever the test leaves installed is uninstalled."""
    name = f"r{uuid.uuid4().hex[:6]}"
    yield name
    if (
        helm(
            "status", name, "-n", restricted_namespace, check=False, kubeconfig=cluster.kubeconfig
        ).returncode
        == 0
    ):
        helm(
            "uninstall",
            name,
            "-n",
            restricted_namespace,
            "--wait",
            "--timeout",
            "60s",
            check=False,
            kubeconfig=cluster.kubeconfig,
        )


# -------------------------------------------------------------- the chart's MLflow server
@pytest.fixture(scope="module")
def chart_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChartMlflow]:
    """`mlflow server` run exactly as the chart's Deployment runs it (release "my" in
    namespace "ml"), with the volume's path and the port moved to this machine; without
    its users (mlflow.auth.enabled=false): the registry with users, as the chart sets it
    up, is tested in tests/security and on the node (tests/e2e)."""
    root = tmp_path_factory.mktemp("chart-mlflow")
    deployment = one(
        render("--set", "mlflow.auth.enabled=false"), "Deployment", "my-modelyard-mlflow"
    )
    pod = deployment["spec"]["template"]["spec"]
    # Its init containers first, as the kubelet runs them: the schema migration.
    for init in pod.get("initContainers") or []:
        done = subprocess.run(
            [*init["command"], *(a.replace("/var/lib/mlflow", str(root)) for a in init["args"])],
            cwd=root,
            capture_output=True,
            text=True,
            env=subprocess_env(**{e["name"]: e["value"] for e in init["env"] if "value" in e}),
            check=False,
        )
        assert done.returncode == 0, f"init container {init['name']}: {done.stderr}"
    container = pod["containers"][0]
    port = free_port()
    args = []
    for arg in container["args"]:
        arg = arg.replace("/var/lib/mlflow", str(root))
        if arg.startswith("--port="):
            arg = f"--port={port}"
        elif arg.startswith("--host="):
            arg = "--host=127.0.0.1"
        elif arg.startswith("--workers="):
            arg = "--workers=1"
        args.append(arg)
    log = root / "mlflow.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*container["command"], *args],
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=subprocess_env(**{e["name"]: e["value"] for e in container["env"] if "value" in e}),
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", 120, proc, log)
        yield ChartMlflow(url=url, args=args)
    finally:
        stop_process(proc)
