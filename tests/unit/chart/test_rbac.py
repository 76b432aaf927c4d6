"""The operator's permissions: what it needs, no wildcards, in both modes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.unit.chart.rendering import CI_VALUES, find, one, render

RBAC_KINDS = {"Role", "ClusterRole"}

NAMESPACED = {
    ("modelyard.io", "modeldeployments"): {"get", "list", "watch", "patch", "update"},
    ("modelyard.io", "modeldeployments/status"): {"get", "patch", "update"},
    **{
        (group, resource): {"get", "list", "watch", "create", "patch", "update", "delete"}
        for group, resource in [
            ("apps", "deployments"),
            ("", "services"),
            ("autoscaling", "horizontalpodautoscalers"),
            ("policy", "poddisruptionbudgets"),
            ("batch", "cronjobs"),
            ("batch", "jobs"),
        ]
    },
    ("", "secrets"): {"get"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
}
# kopf observes CRDs and namespaces in both modes.
CLUSTER_READ = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
    ("", "namespaces"): {"list", "watch"},
}


def permissions(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_no_wildcards(values: Path) -> None:
    roles = [o for o in render("--values", str(values)) if o["kind"] in RBAC_KINDS]
    assert roles
    for role in roles:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert not any("*" in item for item in rule.get(field, [])), (role, rule)
            assert "nonResourceURLs" not in rule
            assert "resourceNames" not in rule


def test_cluster_wide_mode() -> None:
    objects = render()
    assert find(objects, "Role") == []
    assert find(objects, "RoleBinding") == []
    role = one(objects, "ClusterRole")
    assert permissions(role) == {**NAMESPACED, **CLUSTER_READ}
    binding = one(objects, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "my-modelyard-operator", "namespace": "ml"}
    ]
    container = one(objects, "Deployment", "my-modelyard-operator")["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert not [arg for arg in container["args"] if arg.startswith("--namespace")]


def test_namespaced_mode() -> None:
    objects = render("--set", "operator.watchNamespaces={team-a,team-b}")
    roles = find(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert permissions(role) == NAMESPACED
    bindings = find(objects, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "my-modelyard-operator", "namespace": "ml"}
        ]
    # Cluster-wide, only the reads kopf needs.
    assert permissions(one(objects, "ClusterRole")) == CLUSTER_READ
    container = one(objects, "Deployment", "my-modelyard-operator")["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert [a for a in container["args"] if a.startswith("--namespace")] == [
        "--namespace=team-a",
        "--namespace=team-b",
    ]


def test_cluster_scoped_names_include_the_namespace() -> None:
    first = one(render(namespace="a"), "ClusterRole")["metadata"]["name"]
    second = one(render(namespace="b"), "ClusterRole")["metadata"]["name"]
    assert first != second
