"""The model cache's settings reach the server pods (docs/serving.md, "Model cache"): the
operator-wide default (a volume claim and an optional Secret, as the chart sets them)
and a ModelDeployment's own ``spec.server.modelCache``, against a real API server and a
real `mlflow server`; the pods get a pinned ``models:/NAME/VERSION``, which is what the
cache is keyed by."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from modelyard.core.contracts import MODEL_CACHE_MOUNT
from tests.support.kube import ModelDeployments, wait_for
from tests.support.operator import running_operator

pytestmark = pytest.mark.integration


def server_container(apps: client.AppsV1Api, namespace: str, name: str) -> Any:
    return apps.read_namespaced_deployment(name, namespace).spec.template.spec.containers[0]


def test_the_operator_default_cache_is_mounted_into_the_servers(
    api_client: client.ApiClient,
    namespace: str,
    crd: Any,
    kubelet: Any,
    register_model: Callable[..., Any],
    mlflow_server: Any,
) -> None:
    model = register_model(n=1)
    mds = ModelDeployments(api_client, namespace)
    apps = client.AppsV1Api(api_client)
    with running_operator(
        namespace,
        MODELYARD_MODEL_CACHE_VOLUME_CLAIM="model-cache",
        MODELYARD_MODEL_CACHE_SECRET="model-cache-credentials",
    ):
        mds.create(
            "cached",
            {
                "model": {"name": model.name, "alias": "champion"},
                "registry": {"trackingUri": mlflow_server.url},
            },
        )
        dep = wait_for("the server Deployment", lambda: _deployment(apps, namespace, "cached"))
    pod = dep.spec.template.spec
    container = pod.containers[0]
    env = {e.name: e.value for e in container.env if e.value is not None}
    # The alias is resolved by the operator: the pod gets the version, the cache's key.
    assert env["MODELYARD_MODEL_URI"] == f"models:/{model.name}/1"
    assert env["MODELYARD_MODEL_CACHE"] == MODEL_CACHE_MOUNT
    volumes = {v.name: v for v in pod.volumes}
    assert volumes["model-cache"].persistent_volume_claim.claim_name == "model-cache"
    mounts = {m.name: m.mount_path for m in container.volume_mounts}
    assert mounts["model-cache"] == MODEL_CACHE_MOUNT
    [source] = container.env_from
    assert source.secret_ref.name == "model-cache-credentials"
    assert source.secret_ref.optional is True

    # The pod with the claim passes Pod Security "restricted" (a hostPath would not):
    # the API server's own admission judges the template, in an enforcing namespace.
    core = client.CoreV1Api(api_client)
    core.patch_namespace(
        namespace,
        {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}},
    )
    template = api_client.sanitize_for_serialization(dep.spec.template)
    core.create_namespaced_pod(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "cached-check"},
            "spec": template["spec"],
        },
        dry_run="All",
    )
    with_host_path = {
        **template["spec"],
        "volumes": [
            v if v["name"] != "model-cache" else {"name": v["name"], "hostPath": {"path": "/c"}}
            for v in template["spec"]["volumes"]
        ],
    }
    with pytest.raises(client.ApiException, match="hostPath"):
        core.create_namespaced_pod(
            namespace,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "host"},
                "spec": with_host_path,
            },
            dry_run="All",
        )


def test_a_deployment_chooses_its_own_cache_or_none(
    api_client: client.ApiClient,
    namespace: str,
    operator: Any,
    kubelet: Any,
    register_model: Callable[..., Any],
    mlflow_server: Any,
) -> None:
    model = register_model(n=1)
    mds = ModelDeployments(api_client, namespace)
    apps = client.AppsV1Api(api_client)
    mds.create(
        "own-cache",
        {
            "model": {"name": model.name, "version": 1},
            "registry": {"trackingUri": mlflow_server.url},
            "server": {
                "modelCache": {"url": "s3://models/cache", "secretRef": {"name": "s3-cache"}}
            },
        },
    )
    wait_for("the server Deployment", lambda: _deployment(apps, namespace, "own-cache"))
    container = server_container(apps, namespace, "own-cache")
    env = {e.name: e.value for e in container.env if e.value is not None}
    assert env["MODELYARD_MODEL_CACHE"] == "s3://models/cache"
    assert env["MODELYARD_MODEL_URI"] == f"models:/{model.name}/1"
    [source] = container.env_from
    assert (source.secret_ref.name, source.secret_ref.optional) == ("s3-cache", False)
    assert [m.name for m in container.volume_mounts] == ["tmp"]

    # Turned off: the next template has no cache (and the Secret is no longer read).
    mds.patch_spec("own-cache", {"server": {"modelCache": {"enabled": False, "url": None}}})

    def without_cache() -> Any:
        container = server_container(apps, namespace, "own-cache")
        names = {e.name for e in container.env}
        return container if "MODELYARD_MODEL_CACHE" not in names else None

    container = wait_for("the template without a cache", without_cache)
    assert not container.env_from


def _deployment(apps: client.AppsV1Api, namespace: str, name: str) -> Any:
    try:
        return apps.read_namespaced_deployment(name, namespace)
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
