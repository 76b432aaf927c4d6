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
    # Reads decisions, answers them; never creates one.
    ("modelyard.io", "modelapprovals"): {"get", "list", "watch"},
    ("modelyard.io", "modelapprovals/status"): {"get", "patch"},
    ("", "pods"): {"get", "list", "watch"},
    **{
        (group, resource): {"get", "list", "watch", "create", "patch", "update", "delete"}
        for group, resource in [
            ("apps", "deployments"),
            ("", "services"),
            # The canary/shadow router's configuration.
            ("", "configmaps"),
            ("autoscaling", "horizontalpodautoscalers"),
            ("policy", "poddisruptionbudgets"),
            ("batch", "cronjobs"),
            ("batch", "jobs"),
        ]
    },
    # get: spec.registry.credentialsSecretRef; the rest: each ModelDeployment's
    # registry credentials Secrets, which it owns.
    ("", "secrets"): {"get", "create", "patch", "delete"},
    ("networking.k8s.io", "networkpolicies"): {
        "get",
        "list",
        "watch",
        "create",
        "patch",
        "update",
        "delete",
    },
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
}
# kopf observes CRDs and namespaces in both modes; namespaces' labels say whether
# approval is required there.
CLUSTER_READ = {
    # patch: its own two CRDs by name only (test_the_operator_patches_only_its_own_crds).
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch", "patch"},
    ("", "namespaces"): {"get", "list", "watch"},
}
#: The roles of the approval model (docs/approval.md): separate, neither includes the other.
EDITOR = {
    ("modelyard.io", "modeldeployments"): {
        "get", "list", "watch", "create", "update", "patch", "delete"
    },
    ("modelyard.io", "modelapprovals"): {"get", "list", "watch"},
}  # fmt: skip
APPROVER = {
    ("modelyard.io", "modelapprovals"): {"get", "list", "watch", "create"},
    ("modelyard.io", "modeldeployments"): {"get", "list", "watch"},
    ("authentication.k8s.io", "selfsubjectreviews"): {"create"},
}


def operator_role(objects: list[dict[str, Any]]) -> dict[str, Any]:
    [role] = [
        o
        for o in find(objects, "ClusterRole")
        if o["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
    ]
    return role


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
            # Names narrow only the verbs RBAC checks against one object's name: with
            # create, list, watch or deletecollection they would grant every object.
            if "resourceNames" in rule:
                assert set(rule["verbs"]) <= {"get", "patch", "update"}, (role, rule)


def test_the_operator_patches_only_its_own_crds() -> None:
    [patch] = [r for r in operator_role(render())["rules"] if "patch" in r["verbs"] and
               r["resources"] == ["customresourcedefinitions"]]  # fmt: skip
    assert patch["resourceNames"] == [
        "modeldeployments.modelyard.io",
        "modelapprovals.modelyard.io",
    ]
    assert patch["verbs"] == ["patch"]
    # Off, the operator may not change any CRD.
    role = operator_role(render("--set", "operator.manageCRDs=false"))
    assert permissions(role)[("apiextensions.k8s.io", "customresourcedefinitions")] == {
        "get", "list", "watch"
    }  # fmt: skip


def credentials_role(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "Role", "my-modelyard-operator-registry-credentials")


def test_the_operator_reads_one_secret_in_its_namespace_and_may_create_it() -> None:
    role = credentials_role(render())
    assert role["metadata"]["namespace"] == "ml"
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["my-modelyard-registry-credentials"],
            "verbs": ["get"],
        },
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
    ]
    # Bring your own Secret: the operator only reads it.
    role = credentials_role(render("--set", "mlflow.auth.existingSecret=ours"))
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["ours"], "verbs": ["get"]}
    ]
    # A registry without users: nothing to read.
    unauthenticated = render("--set", "mlflow.auth.enabled=false")
    assert "my-modelyard-operator-registry-credentials" not in {
        r["metadata"]["name"] for r in find(unauthenticated, "Role")
    }


#: The ConfigMap of registry tags deleted ModelDeployments left (docs/modeldeployment.md).
LEFTOVER_TAGS = "my-modelyard-operator-leftover-tags"


def operator_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    container = one(objects, "Deployment", "my-modelyard-operator")["spec"]["template"]["spec"][
        "containers"
    ][0]
    return {e["name"]: e.get("value") for e in container["env"]}


def assert_bound_to_the_operator(objects: list[dict[str, Any]], role: str) -> None:
    """The Role ``role`` is granted to the operator's ServiceAccount, and only to it."""
    binding = one(objects, "RoleBinding", role)
    assert binding["roleRef"]["name"] == role
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "my-modelyard-operator", "namespace": "ml"}
    ]


def test_the_operator_keeps_its_leftover_tags_in_one_configmap_of_its_namespace() -> None:
    # Watching every namespace, the ClusterRole covers the ConfigMap: no Role of its own.
    objects = render("--set", "operator.leftoverSweepInterval=60")
    assert LEFTOVER_TAGS not in {r["metadata"]["name"] for r in find(objects, "Role")}
    assert operator_env(objects)["MODELYARD_LEFTOVER_TAGS"] == f"ml/{LEFTOVER_TAGS}"
    assert operator_env(objects)["MODELYARD_LEFTOVER_SWEEP_INTERVAL"] == "60"
    # Watching namespaces that leave its own out: read and patch that one, create it.
    objects = render("--set", "operator.watchNamespaces={team-a}")
    role = one(objects, "Role", LEFTOVER_TAGS)
    assert role["metadata"]["namespace"] == "ml"
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": [LEFTOVER_TAGS],
            "verbs": ["get", "patch"],
        },
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
    ]
    assert_bound_to_the_operator(objects, LEFTOVER_TAGS)
    # Watching its own namespace, that namespace's Role covers it.
    objects = render("--set", "operator.watchNamespaces={team-a,ml}")
    assert LEFTOVER_TAGS not in {r["metadata"]["name"] for r in find(objects, "Role")}


#: The Lease that decides which operator replica acts (docs/operations.md).
LEADER_ELECTION = "my-modelyard-operator-leader-election"


@pytest.mark.parametrize("mode", [(), ("--set", "operator.watchNamespaces={team-a}")])
def test_the_operator_may_hold_one_lease_in_its_namespace(mode: tuple[str, ...]) -> None:
    objects = render(*mode)
    role = one(objects, "Role", LEADER_ELECTION)
    assert role["metadata"]["namespace"] == "ml"
    assert role["rules"] == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["my-modelyard-operator"],
            "verbs": ["get", "update"],
        },
        # Kubernetes cannot limit create to a name.
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    ]
    assert_bound_to_the_operator(objects, LEADER_ELECTION)
    env = operator_env(objects)
    assert env["MODELYARD_LEADER_ELECTION"] == "true"
    assert env["MODELYARD_LEADER_ELECTION_LEASE"] == "my-modelyard-operator"
    assert env["MODELYARD_LEADER_ELECTION_NAMESPACE"] == "ml"
    # Nowhere else: no ClusterRole grants Leases.
    for cluster_role in find(objects, "ClusterRole"):
        assert ("coordination.k8s.io", "leases") not in permissions(cluster_role)


def test_the_lease_requests_go_to_the_leader_election_priority_level() -> None:
    schema = one(render(), "FlowSchema", "ml-my-modelyard-operator-leader-election")
    assert schema["spec"]["priorityLevelConfiguration"] == {"name": "leader-election"}
    assert schema["spec"]["rules"] == [
        {
            "subjects": [
                {
                    "kind": "ServiceAccount",
                    "serviceAccount": {"name": "my-modelyard-operator", "namespace": "ml"},
                }
            ],
            # The operator's Lease requests only, not its other work.
            "resourceRules": [
                {
                    "apiGroups": ["coordination.k8s.io"],
                    "resources": ["leases"],
                    "verbs": ["get", "create", "update"],
                    "namespaces": ["ml"],
                }
            ],
        }
    ]
    off = render("--set", "operator.leaderElection.flowSchema=false")
    assert find(off, "FlowSchema") == []


#: The pipelines' orchestrator, in its own namespace (tests/unit/chart/test_pipelines_contract.py).
PIPELINES = "my-modelyard-pipelines"


def operator_roles(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The operator's Roles of the watched namespaces (not the pipelines' Role, nor the
    one that reads the registry credentials in the release's namespace)."""
    others = {
        PIPELINES,
        "my-modelyard-operator-registry-credentials",
        LEFTOVER_TAGS,
        LEADER_ELECTION,
    }
    return [o for o in find(objects, kind) if o["metadata"]["name"] not in others]


def test_cluster_wide_mode() -> None:
    objects = render()
    assert operator_roles(objects, "Role") == []
    assert operator_roles(objects, "RoleBinding") == []
    role = operator_role(objects)
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
    roles = operator_roles(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert permissions(role) == NAMESPACED
    bindings = operator_roles(objects, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "my-modelyard-operator", "namespace": "ml"}
        ]
    # Cluster-wide, only the reads kopf needs.
    assert permissions(operator_role(objects)) == CLUSTER_READ
    container = one(objects, "Deployment", "my-modelyard-operator")["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert [a for a in container["args"] if a.startswith("--namespace")] == [
        "--namespace=team-a",
        "--namespace=team-b",
    ]


def test_cluster_scoped_names_include_the_namespace() -> None:
    first = operator_role(render(namespace="a"))["metadata"]["name"]
    second = operator_role(render(namespace="b"))["metadata"]["name"]
    assert first != second


def test_the_approval_roles_keep_approving_apart_from_editing() -> None:
    objects = render()
    editor = one(objects, "ClusterRole", "modelyard-editor")
    approver = one(objects, "ClusterRole", "modelyard-approver")
    assert permissions(editor) == EDITOR
    assert permissions(approver) == APPROVER
    # Anyone with the built-in edit role edits ModelDeployments; approving stays apart.
    assert editor["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert not any(
        k.startswith("rbac.authorization.k8s.io/aggregate") for k in approver["metadata"]["labels"]
    )
    prefixed = render("--set", "rbac.namePrefix=team-")
    assert one(prefixed, "ClusterRole", "team-modelyard-approver")


def test_the_admission_policies() -> None:
    objects = render()
    policies = {o["metadata"]["name"]: o for o in find(objects, "ValidatingAdmissionPolicy")}
    bindings = {
        o["spec"]["policyName"]: o["spec"]["validationActions"]
        for o in find(objects, "ValidatingAdmissionPolicyBinding")
    }
    assert bindings == {name: ["Deny"] for name in policies}
    approver = policies["modelyard-approver-is-requester"]["spec"]
    assert approver["validations"][0]["expression"] == (
        "object.spec.approver == request.userInfo.username"
    )
    required = policies["modelyard-approval-required"]["spec"]
    assert required["matchConstraints"]["namespaceSelector"] == {
        "matchLabels": {"modelyard.io/approval": "required"}
    }
    assert not find(render("--set", "admissionPolicies.enabled=false"), "ValidatingAdmissionPolicy")


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_no_credentials_are_rendered(values: Path) -> None:
    """`helm template`, `make manifests` and Argo CD output carry no password: the
    registry credentials Secret is made in the cluster, manifests only name it."""
    objects = render("--values", str(values))
    assert [o["metadata"]["name"] for o in find(objects, "Secret")] == []
    secret_env = [
        env
        for o in objects
        for container in _containers(o)
        for env in container.get("env", [])
        if "PASSWORD" in env["name"] or "SECRET_KEY" in env["name"]
    ]
    for env in secret_env:
        assert "value" not in env and "secretKeyRef" in env["valueFrom"], env
    if "external-mlflow" not in values.name:  # the chart's MLflow, with its users
        assert "MLFLOW_FLASK_SERVER_SECRET_KEY" in {e["name"] for e in secret_env}


def _containers(o: dict[str, Any]) -> list[dict[str, Any]]:
    spec = o.get("spec", {})
    for key in ("jobTemplate", "template"):
        if key in spec:
            spec = spec[key].get("spec", {})
    if "template" in spec:
        spec = spec["template"].get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]
