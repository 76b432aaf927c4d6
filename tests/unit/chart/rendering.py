"""Running helm on the chart and reading what it renders (shared by the unit and
integration chart tests: ``from unit.chart.rendering import ...``)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "modelyard"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
BIN_DIR = Path(os.environ.get("MODELYARD_CACHE", Path.home() / ".cache" / "modelyard")) / "bin"


def tool(name: str) -> str:
    """A cluster binary built by ``make tools``; a missing one fails the test loudly."""
    path = BIN_DIR / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make tools`", pytrace=False)
    return str(path)


def helm(
    *args: str, check: bool = True, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [tool("helm"), *args]
    if kubeconfig is not None:
        cmd += ["--kubeconfig", str(kubeconfig)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=180)
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}",
            pytrace=False,
        )
    return result


def template(*args: str, release: str = "my", namespace: str = "ml") -> str:
    return helm("template", release, str(CHART), "--namespace", namespace, *args).stdout


def render(*args: str, release: str = "my", namespace: str = "ml") -> list[dict[str, Any]]:
    """The objects ``helm template`` renders (the test hook pod included)."""
    text = template(*args, release=release, namespace=namespace)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a Pod, a workload or a CronJob."""
    if obj["kind"] == "Pod":
        return dict(obj["spec"])
    if obj["kind"] == "CronJob":
        return dict(obj["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return dict(obj["spec"]["template"]["spec"])


def workloads(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for o in objects:
        if o["kind"] in {"Pod", "Deployment", "CronJob", "Job", "StatefulSet", "DaemonSet"}:
            yield o


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """name -> value (or valueFrom) of a container's environment."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}
