"""The approval gate against the real API server, its RBAC and admission policies, and
a real `mlflow server`: who may approve, who did, and what happens to the server.

Users are real: client certificates signed by the cluster's CA (alice holds only the
modelyard-approver role, bob only modelyard-editor). The ModelDeployments ask for zero
replicas: without a node no pod runs, and a version still goes live once its Deployment
is rolled out, which is what these tests follow.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from mlflow import MlflowClient
from typer.testing import CliRunner

from modelyard.cli import app
from modelyard.core.contracts import ApprovalTags
from tests.integration.operator.test_operator import Cluster
from tests.support.kube import condition, md_body, wait_for
from tests.support.operator import running_operator
from tests.support.users import User, make_user

pytestmark = pytest.mark.integration

GROUP, VERSION = "modelyard.io", "v1alpha1"


@pytest.fixture
def k8s(api_client: client.ApiClient, namespace: str) -> Cluster:
    return Cluster(api_client, namespace)


@pytest.fixture
def people(cluster: Any, namespace: str, approval_model: str, tmp_path: Path) -> tuple[User, User]:
    """alice may approve, bob may edit ModelDeployments, in the test's namespace."""
    alice = make_user(cluster, "alice", tmp_path / "users")
    bob = make_user(cluster, "bob", tmp_path / "users")
    for user, role in ((alice, "modelyard-approver"), (bob, "modelyard-editor")):
        cluster.run_kubectl(
            "-n", namespace, "create", "rolebinding", f"{user.name}-{role}",
            f"--clusterrole={approval_model}{role}", f"--user={user.name}",
        )  # fmt: skip
    return alice, bob


def approval_body(
    md: str, version: int, approver: str, decision: str = "Approved"
) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelApproval",
        "metadata": {"name": f"{md}-{uuid.uuid4().hex[:6]}"},
        "spec": {
            "modelDeployment": md,
            "version": version,
            "decision": decision,
            "approver": approver,
        },
    }


def create_approval(api: Any, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    created = client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "modelapprovals", body
    )
    return dict(created)


def approval_answer(k8s: Cluster, name: str) -> dict[str, Any]:
    def answered() -> dict[str, Any] | None:
        found = k8s.custom.get_namespaced_custom_object(
            GROUP, VERSION, k8s.ns, "modelapprovals", name
        )
        return dict(found["status"]) if (found.get("status") or {}).get("state") else None

    result: dict[str, Any] = wait_for(f"the operator's answer to {name}", answered, timeout=30)
    return result


def cli_as(user: User, *args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"KUBECONFIG": str(user.kubeconfig)})


def tags(mlflow_url: str, model: str, version: int) -> dict[str, str]:
    return dict(MlflowClient(mlflow_url).get_model_version(model, str(version)).tags)


def live(k8s: Cluster, name: str, version: int, timeout: float = 60) -> dict[str, Any]:
    return k8s.wait_md(
        name,
        f"version {version} live",
        lambda m: (m.get("status", {}).get("model") or {}).get("version") == version,
        timeout=timeout,
    )


def test_a_person_approves_or_rejects_what_goes_live(
    k8s: Cluster,
    operator: Any,
    people: tuple[User, User],
    register_model: Callable[..., Any],
    mlflow_server: Any,
) -> None:
    alice, bob = people
    model = register_model(n=3)
    key = ApprovalTags.key(k8s.ns, "churn")
    k8s.create(
        "churn",
        {
            "model": {"name": model.name, "alias": "champion"},
            "registry": {"trackingUri": mlflow_server.url},
            "server": {"replicas": 0},
        },
    )
    live(k8s, "churn", 1)
    k8s.patch_spec("churn", {"rollout": {"approval": {"policy": "Required"}}})
    before = k8s.deployment("churn")

    # The alias moves: version 2 waits; the server Deployment is left exactly as it was.
    MlflowClient(mlflow_server.url).set_registered_model_alias(model.name, "champion", "2")
    md = k8s.wait_md(
        "churn",
        "version 2 pending",
        lambda m: (m["status"].get("pending") or {}).get("version") == 2,
    )
    said = condition(md, "Approved")
    assert (said["status"], said["reason"]) == ("False", "AwaitingApproval")
    assert f"modelyard approve churn -n {k8s.ns} --version 2" in said["message"]
    assert md["status"]["model"]["version"] == 1
    assert tags(mlflow_server.url, model.name, 2)[key] == "PendingApproval"
    wait_for(
        "the AwaitingApproval event",
        lambda: any("AwaitingApproval" in e for e in k8s.events("churn")),
    )
    after = k8s.deployment("churn")
    assert after.metadata.resource_version == before.metadata.resource_version
    assert after.spec == before.spec

    # bob may edit the deployment but not approve it: RBAC says no.
    with pytest.raises(ApiException) as refused:
        create_approval(bob.api_client(), k8s.ns, approval_body("churn", 2, "bob"))
    assert refused.value.status == 403
    # alice may approve, but only as herself: the admission policy says no.
    with pytest.raises(ApiException) as forged:
        create_approval(alice.api_client(), k8s.ns, approval_body("churn", 2, "carol"))
    assert forged.value.status in (403, 422)
    assert "spec.approver must be your own user name, alice" in forged.value.body
    assert k8s.deployment("churn").metadata.resource_version == before.metadata.resource_version

    # alice approves with the CLI: her name comes from the API server.
    result = cli_as(alice, "approve", "churn", "-n", k8s.ns, "--version", "2", "--comment", "ok")
    assert result.exit_code == 0, result.output
    assert "alice approves version 2" in result.output
    assert "Applied" in result.output
    md = live(k8s, "churn", 2)
    assert md["status"]["model"]["approvedBy"] == "alice"
    assert md["status"]["history"][0] == {
        **md["status"]["history"][0],
        "version": 2,
        "approvedBy": "alice",
    }
    assert k8s.env("churn")["MODELYARD_MODEL_URI"] == f"models:/{model.name}/2"
    recorded = tags(mlflow_server.url, model.name, 2)
    assert recorded[key] == "Approved"
    assert recorded[ApprovalTags.detail(k8s.ns, "churn", "by")] == "alice"
    assert recorded[ApprovalTags.detail(k8s.ns, "churn", "comment")] == "ok"

    # Version 3: alice rejects it; version 2 keeps serving, and 3 never rolls out.
    MlflowClient(mlflow_server.url).set_registered_model_alias(model.name, "champion", "3")
    k8s.wait_md(
        "churn",
        "version 3 pending",
        lambda m: (m["status"].get("pending") or {}).get("version") == 3,
    )
    serving = k8s.deployment("churn").metadata.resource_version
    result = cli_as(alice, "reject", "churn", "-n", k8s.ns, "--comment", "worse on March")
    assert result.exit_code == 0, result.output
    md = k8s.wait_md(
        "churn", "Rejected", lambda m: condition(m, "Approved").get("reason") == "Rejected"
    )
    assert "worse on March" in condition(md, "Approved")["message"]
    assert md["status"]["model"]["version"] == 2 and not md["status"].get("pending")
    assert tags(mlflow_server.url, model.name, 3)[key] == "Rejected"
    late = create_approval(alice.api_client(), k8s.ns, approval_body("churn", 3, "alice"))
    answer = approval_answer(k8s, late["metadata"]["name"])
    assert answer["state"] == "Ignored" and "rejected already" in answer["message"]
    assert k8s.deployment("churn").metadata.resource_version == serving
    assert k8s.env("churn")["MODELYARD_MODEL_URI"] == f"models:/{model.name}/2"


def test_approvals_that_match_nothing_pending_change_nothing_and_say_why(
    k8s: Cluster,
    operator: Any,
    people: tuple[User, User],
    register_model: Callable[..., Any],
    mlflow_server: Any,
) -> None:
    alice, _ = people
    model = register_model(n=2)
    k8s.create(
        "fraud",
        {
            "model": {"name": model.name, "alias": "champion"},
            "registry": {"trackingUri": mlflow_server.url},
            "server": {"replicas": 0},
            "rollout": {"approval": {"policy": "Required"}},
        },
    )
    k8s.wait_md(
        "fraud", "pending", lambda m: (m.get("status", {}).get("pending") or {}).get("version") == 1
    )
    assert not k8s.apps.list_namespaced_deployment(k8s.ns).items  # nothing was approved
    # The first place a person looks.
    shown = cli_as(alice, "status", "-n", k8s.ns)
    assert shown.exit_code == 0, shown.output
    row = next(line for line in shown.output.splitlines() if "fraud" in line)
    assert "alias:champion" in row and "1 since" in row and "AwaitingApproval" in row

    other = create_approval(alice.api_client(), k8s.ns, approval_body("fraud", 2, "alice"))
    nobody = create_approval(alice.api_client(), k8s.ns, approval_body("no-such-md", 1, "alice"))
    assert "is not pending" in approval_answer(k8s, other["metadata"]["name"])["message"]
    assert (
        "there is no ModelDeployment" in approval_answer(k8s, nobody["metadata"]["name"])["message"]
    )
    assert not k8s.apps.list_namespaced_deployment(k8s.ns).items

    # The CLI refuses a version that is not the pending one, before asking anything.
    result = cli_as(alice, "approve", "fraud", "-n", k8s.ns, "--version", "2")
    assert result.exit_code == 1 and "version 1 is pending" in result.output

    # Deleting a deployment with a pending version leaves no tag saying it is pending.
    key = ApprovalTags.key(k8s.ns, "fraud")
    assert tags(mlflow_server.url, model.name, 1)[key] == "PendingApproval"
    k8s.custom.delete_namespaced_custom_object(GROUP, VERSION, k8s.ns, "modeldeployments", "fraud")
    wait_for("the pending tag to go", lambda: key not in tags(mlflow_server.url, model.name, 1))


def test_a_namespace_that_requires_approval_refuses_automatic_and_holds_the_rest(
    k8s: Cluster,
    operator: Any,
    people: tuple[User, User],
    register_model: Callable[..., Any],
    mlflow_server: Any,
) -> None:
    model = register_model(n=1)
    k8s.core.patch_namespace(
        k8s.ns, {"metadata": {"labels": {"modelyard.io/approval": "required"}}}
    )
    spec = {
        "model": {"name": model.name, "alias": "champion"},
        "registry": {"trackingUri": mlflow_server.url},
        "server": {"replicas": 0},
    }
    automatic = md_body("auto", {**spec, "rollout": {"approval": {"policy": "Automatic"}}})

    def refused() -> str | None:
        # A server-side dry run goes through admission and persists nothing; the API
        # server sees the new label once its namespace cache has it.
        try:
            k8s.custom.create_namespaced_custom_object(
                GROUP, VERSION, k8s.ns, "modeldeployments", automatic, dry_run="All"
            )
        except ApiException as error:
            return str(json.loads(error.body)["message"])
        return None

    message = wait_for("the admission policy to refuse Automatic", refused, timeout=30)
    assert "this namespace requires approval" in message
    with pytest.raises(ApiException, match="spec.rollout.approval.policy cannot be Automatic"):
        k8s.custom.create_namespaced_custom_object(
            GROUP, VERSION, k8s.ns, "modeldeployments", automatic
        )
    # Without a policy the namespace decides: it waits.
    k8s.create("held", spec)
    md = k8s.wait_md(
        "held", "pending", lambda m: (m.get("status", {}).get("pending") or {}).get("version") == 1
    )
    assert condition(md, "Ready")["reason"] == "AwaitingApproval"


def test_an_operator_restart_while_a_version_waits_changes_nothing(
    k8s: Cluster,
    crd: Any,
    approval_model: str,
    register_model: Callable[..., Any],
    mlflow_server: Any,
) -> None:
    model = register_model(n=1)
    spec = {
        "model": {"name": model.name, "alias": "champion"},
        "registry": {"trackingUri": mlflow_server.url},
        "server": {"replicas": 0},
        "rollout": {"approval": {"policy": "Required"}},
    }
    with running_operator(k8s.ns):
        k8s.create("waits", spec)
        first = k8s.wait_md(
            "waits",
            "pending",
            lambda m: (m.get("status", {}).get("pending") or {}).get("version") == 1,
        )
    with running_operator(k8s.ns) as again:
        again.wait_metric("modelyard_operator_reconciles_total", 1)
        again.wait_metric("modelyard_operator_scheduler_passes_total", 2)
        assert again.metric("modelyard_operator_api_writes_total") == 0
    assert k8s.md("waits")["status"] == first["status"]
