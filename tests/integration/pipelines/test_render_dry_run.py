"""What `modelyard pipeline render` prints is accepted by a real API server (server-side
dry run), and its pods pass the Pod Security "restricted" profile when enforced."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
CHURN = REPO / "pipelines" / "samples" / "churn.yaml"
MODELYARD = str(Path(sys.executable).parent / "modelyard")


def _render(*args: str) -> dict[str, dict[str, Any]]:
    """The rendered objects by kind (each kind is there once)."""
    completed = subprocess.run(
        [MODELYARD, "pipeline", "render", str(CHURN), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    objects = list(yaml.safe_load_all(completed.stdout))
    by_kind = {o["kind"]: o for o in objects}
    assert len(by_kind) == len(objects)
    return by_kind


def _enforce_restricted(core: client.CoreV1Api, namespace: str) -> None:
    core.patch_namespace(
        namespace,
        {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}},
    )
    # Pod admission needs the namespace's default ServiceAccount (made by a controller).
    deadline = time.monotonic() + 60
    while True:
        try:
            core.read_namespaced_service_account("default", namespace)
            return
        except client.exceptions.ApiException as error:
            if error.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _dry_run_pod(
    core: client.CoreV1Api, namespace: str, name: str, pod_spec: dict[str, Any]
) -> None:
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": pod_spec}
    core.create_namespaced_pod(namespace, body, dry_run="All")


def test_cronjob_and_configmap_are_accepted(api_client: Any, namespace: str) -> None:
    core, batch = client.CoreV1Api(api_client), client.BatchV1Api(api_client)
    rbac = client.RbacAuthorizationV1Api(api_client)
    rendered = _render(
        "--namespace", namespace, "--tracking-uri", "http://mlflow:5000", "--lake-pvc", "lake"
    )
    assert set(rendered) == {"ConfigMap", "ServiceAccount", "Role", "RoleBinding", "CronJob"}
    config_map, cronjob = rendered["ConfigMap"], rendered["CronJob"]
    # The orchestrating pod's identity: Jobs and their pods in its namespace, no more.
    # (created for real: pod admission looks the pod's ServiceAccount up)
    account = core.create_namespaced_service_account(namespace, rendered["ServiceAccount"])
    role = rbac.create_namespaced_role(namespace, rendered["Role"], dry_run="All")
    assert {(r.api_groups[0], r.resources[0]) for r in role.rules} == {
        ("batch", "jobs"),
        ("", "pods"),
    }
    assert all("*" not in r.verbs for r in role.rules)
    binding = rbac.create_namespaced_role_binding(namespace, rendered["RoleBinding"], dry_run="All")
    assert binding.role_ref.name == role.metadata.name
    assert [s.name for s in binding.subjects] == [account.metadata.name]
    pod_spec = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == account.metadata.name
    created_map = core.create_namespaced_config_map(namespace, config_map, dry_run="All")
    assert created_map.data["pipeline.yaml"] == CHURN.read_text()
    created = batch.create_namespaced_cron_job(namespace, cronjob, dry_run="All")
    assert created.spec.schedule == "30 2 * * *"
    assert created.spec.concurrency_policy == "Forbid"
    job = created.spec.job_template.spec
    assert (job.backoff_limit, job.active_deadline_seconds, job.ttl_seconds_after_finished) == (
        1,
        1920,
        86400,
    )
    # Dry run persists nothing.
    assert batch.list_namespaced_cron_job(namespace).items == []
    assert rbac.list_namespaced_role(namespace).items == []

    _enforce_restricted(core, namespace)
    _dry_run_pod(
        core, namespace, "churn-pod", cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    )


def test_indexed_job_is_accepted(api_client: Any, namespace: str) -> None:
    core, batch = client.CoreV1Api(api_client), client.BatchV1Api(api_client)
    job = _render("--namespace", namespace, "--job", "ingest-usage", "--date", "2026-03-10")["Job"]
    created = batch.create_namespaced_job(namespace, job, dry_run="All")
    assert created.spec.completion_mode == "Indexed"
    assert (created.spec.completions, created.spec.parallelism) == (2, 2)
    # The step's 2 attempts: one retry per partition index.
    assert created.spec.backoff_limit_per_index == 1
    container = created.spec.template.spec.containers[0]
    assert container.args == ["/etc/modelyard/pipeline.yaml", "--step", "ingest-usage"]
    _enforce_restricted(core, namespace)
    _dry_run_pod(core, namespace, "ingest-pod", job["spec"]["template"]["spec"])


def test_restricted_profile_is_really_enforced(api_client: Any, namespace: str) -> None:
    """The check above means something: a pod that runs as root is refused."""
    core = client.CoreV1Api(api_client)
    rendered = _render("--namespace", namespace)
    core.create_namespaced_service_account(namespace, rendered["ServiceAccount"])
    cronjob = rendered["CronJob"]
    pod_spec = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    pod_spec["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    _enforce_restricted(core, namespace)
    with pytest.raises(client.exceptions.ApiException, match="allowPrivilegeEscalation"):
        _dry_run_pod(core, namespace, "bad-pod", pod_spec)
