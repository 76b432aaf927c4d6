"""`helm install`, `upgrade` and `uninstall` on the real control plane, in a namespace
that enforces Pod Security "restricted". (No node: the tests look at the API objects.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.chart.cluster_checks import leftovers, wait_until_gone
from tests.unit.chart.rendering import CHART, helm

pytestmark = pytest.mark.integration


def get(cluster: Any, namespace: str, what: str) -> dict[str, Any]:
    out = cluster.run_kubectl("get", what, "-n", namespace, "-o", "json")
    return dict(json.loads(out.stdout))


def names(cluster: Any, namespace: str, kind: str, selector: str) -> set[str]:
    out = cluster.run_kubectl("get", kind, "-n", namespace, "-l", selector, "-o", "name")
    return set(out.stdout.split())


def operator_env(cluster: Any, namespace: str, release: str) -> dict[str, str]:
    deployment = get(cluster, namespace, f"deployment/{release}-modelyard-operator")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


def assert_no_pod_security_warnings(output: str) -> None:
    assert "would violate PodSecurity" not in output
    assert "PodSecurity" not in output


def assert_lease_permissions(cluster: Any, ns: str, release: str) -> None:
    """The operator's Lease (leader election) in its own namespace, and no other."""
    sa = f"system:serviceaccount:{ns}:{release}-modelyard-operator"
    lease = f"leases.coordination.k8s.io/{release}-modelyard-operator"
    for verb, resource, namespace, expected in (
        ("get", lease, ns, "yes"),
        ("update", lease, ns, "yes"),
        ("create", "leases.coordination.k8s.io", ns, "yes"),
        ("update", "leases.coordination.k8s.io/kube-scheduler", ns, "no"),
        ("delete", lease, ns, "no"),
        ("list", "leases.coordination.k8s.io", ns, "no"),
        ("update", lease, "kube-system", "no"),
        ("create", "leases.coordination.k8s.io", "kube-system", "no"),
    ):
        answer = cluster.run_kubectl(
            "auth", "can-i", verb, resource, "-n", namespace, "--as", sa, check=False
        )
        assert answer.stdout.strip() == expected, (verb, resource, namespace)


def test_install_upgrade_uninstall(cluster: Any, restricted_namespace: str, release: str) -> None:
    ns = restricted_namespace
    selector = f"app.kubernetes.io/instance={release}"
    installed = helm("install", release, str(CHART), "-n", ns, kubeconfig=cluster.kubeconfig)
    assert_no_pod_security_warnings(installed.stdout + installed.stderr)
    assert "STATUS: deployed" in installed.stdout
    # The NOTES tell a new user where to go next.
    assert f"kubectl -n {ns} port-forward svc/{release}-modelyard-mlflow 5000:5000" in (
        installed.stdout
    )
    assert "kubectl get md -A" in installed.stdout

    assert names(cluster, ns, "deployments", selector) == {
        f"deployment.apps/{release}-modelyard-operator",
        f"deployment.apps/{release}-modelyard-mlflow",
    }
    assert names(cluster, ns, "cronjobs", selector) == {
        f"cronjob.batch/{release}-modelyard-churn",
        f"cronjob.batch/{release}-modelyard-churn-tuned",
    }
    assert f"persistentvolumeclaim/{release}-modelyard-lake" in names(cluster, ns, "pvc", selector)
    env = operator_env(cluster, ns, release)
    assert env["MODELYARD_RESOLVE_INTERVAL"] == "30"
    assert env["MODELYARD_DEFAULT_TRACKING_URI"] == (
        f"http://{release}-modelyard-mlflow.{ns}.svc:5000"
    )
    # The Deployment controller made its pods: admitted under "restricted".
    pods = names(cluster, ns, "pods", selector)
    assert len(pods) == 3, pods  # two operator replicas (one acts), the registry
    assert names(cluster, ns, "poddisruptionbudgets", selector) == {
        f"poddisruptionbudget.policy/{release}-modelyard-operator"
    }
    # Cluster-wide: what the operator needs in every namespace, and nothing more.
    sa = f"system:serviceaccount:{ns}:{release}-modelyard-operator"
    for verb, resource, expected in (
        ("create", "deployments.apps", "yes"),
        ("delete", "horizontalpodautoscalers.autoscaling", "yes"),
        ("patch", "modeldeployments.modelyard.io/status", "yes"),
        ("get", "secrets", "yes"),
        ("list", "secrets", "no"),
        ("create", "pods", "no"),
        ("create", "modeldeployments.modelyard.io", "no"),
        ("delete", "namespaces", "no"),
        ("create", "clusterroles.rbac.authorization.k8s.io", "no"),
    ):
        answer = cluster.run_kubectl(
            "auth", "can-i", verb, resource, "-n", "default", "--as", sa, check=False
        )
        assert answer.stdout.strip() == expected, (verb, resource)
    assert_lease_permissions(cluster, ns, release)

    # The webhook receiver turned on, its shared secret from a Secret (docs/operations.md).
    cluster.run_kubectl(
        "create", "secret", "generic", "hook", "-n", ns,
        "--from-literal=secret=s3cret", "--from-literal=encryption-key=not-read-here",
    )  # fmt: skip
    upgraded = helm(
        "upgrade",
        release,
        str(CHART),
        "-n",
        ns,
        "--reuse-values",
        "--set",
        "operator.resolveInterval=5",
        "--set",
        "pipelines.enabled=false",
        "--set",
        "operator.webhook.enabled=true",
        "--set",
        "operator.webhook.secretName=hook",
        kubeconfig=cluster.kubeconfig,
    )
    assert_no_pod_security_warnings(upgraded.stdout + upgraded.stderr)
    assert operator_env(cluster, ns, release)["MODELYARD_RESOLVE_INTERVAL"] == "5"
    assert operator_env(cluster, ns, release)["MODELYARD_WEBHOOK_PORT"] == "8082"
    service = get(cluster, ns, f"service/{release}-modelyard-operator")
    assert {"name": "webhook", "port": 8082} in [
        {"name": p["name"], "port": p["port"]} for p in service["spec"]["ports"]
    ]
    assert f"{release}-modelyard-operator.{ns}.svc:8082/webhooks/mlflow" in upgraded.stdout
    # No pipelines left; MLflow's own configuration (its users) stays.
    assert names(cluster, ns, "cronjobs,configmaps", selector) == {
        f"configmap/{release}-modelyard-mlflow-auth"
    }
    # The lake's claim stays (keep policy): its data is not lost with the pipelines.
    assert names(cluster, ns, "pvc", selector) == {
        f"persistentvolumeclaim/{release}-modelyard-mlflow",
        f"persistentvolumeclaim/{release}-modelyard-lake",
    }
    # A typo in the values is refused and names the key; the release stays as it was.
    typo = helm(
        "upgrade",
        release,
        str(CHART),
        "-n",
        ns,
        "--reuse-values",
        "--set",
        "operator.resolveIntervall=1",
        check=False,
        kubeconfig=cluster.kubeconfig,
    )
    assert typo.returncode != 0
    assert "additional properties 'resolveIntervall' not allowed" in typo.stderr
    assert operator_env(cluster, ns, release)["MODELYARD_RESOLVE_INTERVAL"] == "5"

    claims = {
        f"persistentvolumeclaim/{release}-modelyard-mlflow",
        f"persistentvolumeclaim/{release}-modelyard-lake",
    }
    uids = claim_uids(cluster, ns, selector)
    assert set(uids) == claims  # the lake's too, kept when the upgrade disabled pipelines
    helm("uninstall", release, "-n", ns, "--wait", kubeconfig=cluster.kubeconfig)
    # The data is kept: the registry's and the lake's claims, the very same objects.
    assert claim_uids(cluster, ns, selector) == uids
    # A reinstall finds them (Helm adopts the kept claims of its own release).
    helm("install", release, str(CHART), "-n", ns, kubeconfig=cluster.kubeconfig)
    assert claim_uids(cluster, ns, selector) == uids
    helm("uninstall", release, "-n", ns, "--wait", kubeconfig=cluster.kubeconfig)
    # Deleting the data is a separate, deliberate step (docs/install.md).
    cluster.run_kubectl("-n", ns, "delete", "pvc", "-l", selector, "--wait=false")
    wait_until_gone(cluster, [ns], selector)
    # The CRD is kept (Helm never deletes CRDs: the models would go with it).
    cluster.run_kubectl("get", "crd", "modeldeployments.modelyard.io")


def claim_uids(cluster: Any, ns: str, selector: str) -> dict[str, str]:
    out = cluster.run_kubectl(
        "-n",
        ns,
        "get",
        "pvc",
        "-l",
        selector,
        "-o",
        'jsonpath={range .items[*]}{.metadata.name}={.metadata.uid}{"\\n"}{end}',
    ).stdout
    return {
        f"persistentvolumeclaim/{line.split('=')[0]}": line.split("=")[1] for line in out.split()
    }


def test_namespaced_mode(
    cluster: Any,
    restricted_namespace: str,
    release: str,
    extra_namespaces: Callable[[int], list[str]],
) -> None:
    ns = restricted_namespace
    team_a, team_b = extra_namespaces(2)
    selector = f"app.kubernetes.io/instance={release}"
    installed = helm(
        "install",
        release,
        str(CHART),
        "-n",
        ns,
        "--set",
        f"operator.watchNamespaces={{{team_a},{team_b}}}",
        "--set",
        "pipelines.enabled=false",
        kubeconfig=cluster.kubeconfig,
    )
    assert_no_pod_security_warnings(installed.stdout + installed.stderr)
    assert f"the namespaces: {team_a}, {team_b}" in installed.stdout
    for watched in (team_a, team_b):
        assert names(cluster, watched, "roles,rolebindings", selector) == {
            f"role.rbac.authorization.k8s.io/{release}-modelyard-operator",
            f"rolebinding.rbac.authorization.k8s.io/{release}-modelyard-operator",
        }
    sa = f"system:serviceaccount:{ns}:{release}-modelyard-operator"
    # In its own namespace, only the reading of the registry credentials' Secret and the
    # ConfigMap of registry tags left by deletions (docs/modeldeployment.md).
    assert names(cluster, ns, "roles,rolebindings", selector) == {
        f"role.rbac.authorization.k8s.io/{release}-modelyard-operator-registry-credentials",
        f"rolebinding.rbac.authorization.k8s.io/{release}-modelyard-operator-registry-credentials",
        f"role.rbac.authorization.k8s.io/{release}-modelyard-operator-leftover-tags",
        f"rolebinding.rbac.authorization.k8s.io/{release}-modelyard-operator-leftover-tags",
        f"role.rbac.authorization.k8s.io/{release}-modelyard-operator-leader-election",
        f"rolebinding.rbac.authorization.k8s.io/{release}-modelyard-operator-leader-election",
    }
    assert_lease_permissions(cluster, ns, release)
    leftover = f"configmaps/{release}-modelyard-operator-leftover-tags"
    for verb, resource, expected in (
        ("patch", leftover, "yes"),
        ("patch", f"configmaps/{release}-modelyard-operator-other", "no"),
        ("delete", leftover, "no"),
    ):
        answer = cluster.run_kubectl(
            "auth", "can-i", verb, resource, "-n", ns, "--as", sa, check=False
        )
        assert answer.stdout.strip() == expected, (verb, resource)
    # The service account may manage servers in the watched namespaces only.
    for namespace, expected in ((team_a, "yes"), (team_b, "yes"), (ns, "no"), ("default", "no")):
        answer = cluster.run_kubectl(
            "auth", "can-i", "create", "deployments.apps", "-n", namespace, "--as", sa, check=False
        )
        assert answer.stdout.strip() == expected, namespace
    for verb, resource in (("list", "secrets"), ("get", "secrets"), ("delete", "namespaces")):
        answer = cluster.run_kubectl("auth", "can-i", verb, resource, "-A", "--as", sa, check=False)
        assert answer.stdout.strip() == "no", (verb, resource)

    helm("uninstall", release, "-n", ns, "--wait", kubeconfig=cluster.kubeconfig)
    # The registry's claim is kept (docs/install.md); everything else goes.
    assert set(claim_uids(cluster, ns, selector)) == {
        f"persistentvolumeclaim/{release}-modelyard-mlflow"
    }
    cluster.run_kubectl("-n", ns, "delete", "pvc", "-l", selector, "--wait=false")
    wait_until_gone(cluster, [ns, team_a, team_b], selector)
    assert leftovers(cluster, [ns, team_a, team_b], selector) == []
