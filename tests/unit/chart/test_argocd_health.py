"""The Argo CD health check (docs/gitops/argocd-health.lua), run by a real Lua 5.4 (the
Debian package lua5.4) on ModelDeployments in the states the operator writes."""

from __future__ import annotations

import re
import shutil
import subprocess
import textwrap
from typing import Any

import pytest

from tests.unit.chart.rendering import REPO

HEALTH_LUA = REPO / "docs" / "gitops" / "argocd-health.lua"


def lua_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        return (
            "{"
            + ", ".join(f"[{lua_literal(k)}] = {lua_literal(v)}" for k, v in value.items())
            + "}"
        )
    raise TypeError(value)


def health(obj: dict[str, Any]) -> tuple[str, str]:
    lua = shutil.which("lua5.4") or shutil.which("lua")
    if lua is None:
        pytest.fail("no Lua interpreter: apt-get install lua5.4", pytrace=False)
    program = (
        f"obj = {lua_literal(obj)}\n"
        f"local hs = assert(loadfile({lua_literal(str(HEALTH_LUA))}))()\n"
        'io.write(hs.status, "\\n", hs.message or "")\n'
    )
    out = subprocess.run([lua, "-"], input=program, capture_output=True, text=True, check=True)
    status, _, message = out.stdout.partition("\n")
    return status, message


def md(*conditions: tuple[str, str, str, str], generation: int = 2, observed: int = 2) -> dict:
    return {
        "apiVersion": "modelyard.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "churn", "generation": generation},
        "spec": {"model": {"name": "churn", "alias": "champion"}},
        "status": {
            "observedGeneration": observed,
            "conditions": [
                {"type": t, "status": s, "reason": r, "message": m} for t, s, r, m in conditions
            ],
        },
    }


RESOLVED = ("ModelResolved", "True", "Resolved", "alias champion -> version 3")


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (
            md(RESOLVED, ("Ready", "True", "Available", "version 3 is serving")),
            ("Healthy", "version 3 is serving"),
        ),
        (
            md(
                RESOLVED,
                ("Ready", "False", "RollingOut", "1 of 2 pods run version 3"),
                ("Progressing", "True", "RollingOut", "rolling out version 3"),
            ),
            ("Progressing", "rolling out version 3"),
        ),
        (
            md(
                RESOLVED,
                ("Ready", "False", "RollingOut", "0 of 2 pods ready"),
                ("Degraded", "True", "ProgressDeadlineExceeded", "pods not ready in 10 minutes"),
            ),
            ("Degraded", "pods not ready in 10 minutes"),
        ),
        (
            md(
                ("ModelResolved", "False", "ModelNotFound", "alias champion of churn not found"),
                ("Ready", "False", "ModelNotFound", "alias champion of churn not found"),
            ),
            ("Degraded", "alias champion of churn not found"),
        ),
        # The registry is down but the last version keeps serving: still worth a look.
        (
            md(
                ("ModelResolved", "False", "RegistryUnavailable", "registry unavailable"),
                ("Ready", "True", "Available", "version 3 is serving"),
            ),
            ("Degraded", "registry unavailable"),
        ),
        (
            md(("Ready", "True", "Available", "version 3 is serving"), observed=1),
            ("Progressing", "Waiting for the operator to observe generation 2"),
        ),
        # A new version waits for a person while version 3 keeps serving: paused.
        (
            md(
                RESOLVED,
                ("Ready", "True", "Serving", "version 3 is serving"),
                ("Approved", "False", "AwaitingApproval", "version 4 awaits approval"),
            ),
            ("Suspended", "version 4 awaits approval"),
        ),
        # A rejected version is a decision, not a failure: version 3 serves, healthy.
        (
            md(
                RESOLVED,
                ("Ready", "True", "Serving", "version 3 is serving"),
                ("Approved", "False", "Rejected", "version 4 was rejected by bob"),
            ),
            ("Healthy", "version 3 is serving"),
        ),
        (md(), ("Progressing", "Waiting for the operator")),
        (
            {"apiVersion": "modelyard.io/v1alpha1", "kind": "ModelDeployment", "metadata": {}},
            ("Progressing", "Waiting for the operator"),
        ),
    ],
    ids=[
        "ready",
        "rolling-out",
        "degraded",
        "model-not-found",
        "registry-down-while-serving",
        "stale-status",
        "awaiting-approval",
        "rejected-version",
        "no-conditions",
        "no-status",
    ],
)
def test_health(obj: dict[str, Any], expected: tuple[str, str]) -> None:
    assert health(obj) == expected


def test_docs_show_the_tested_script() -> None:
    doc = (REPO / "docs" / "gitops.md").read_text()
    block = re.search(
        r"resource\.customizations\.health\.modelyard\.io_ModelDeployment: \|\n(.*?)```",
        doc,
        re.S,
    )
    assert block, "docs/gitops.md has no argocd-cm block with the health check"
    assert textwrap.dedent(block.group(1)) == HEALTH_LUA.read_text()
