"""The local control plane is a real, secured Kubernetes API server."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

pytestmark = pytest.mark.integration


def test_api_server_reports_the_pinned_version(api_client: client.ApiClient) -> None:
    info = client.VersionApi(api_client).get_code()
    assert info.git_version.startswith("v1.33.")


def test_crd_is_established_and_serves_resources(
    api_client: client.ApiClient, crd: Path, namespace: str
) -> None:
    ext = client.ApiextensionsV1Api(api_client)
    got = ext.read_custom_resource_definition("modeldeployments.modelyard.io")
    established = {c.type: c.status for c in got.status.conditions}
    assert established["Established"] == "True"
    assert got.spec.names.short_names == ["md"]

    custom = client.CustomObjectsApi(api_client)
    body: dict[str, Any] = {
        "apiVersion": "modelyard.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "churn"},
        "spec": {"model": {"name": "churn", "alias": "champion"}},
    }
    custom.create_namespaced_custom_object(
        "modelyard.io", "v1alpha1", namespace, "modeldeployments", body
    )
    read = custom.get_namespaced_custom_object(
        "modelyard.io", "v1alpha1", namespace, "modeldeployments", "churn"
    )
    assert read["spec"]["model"] == {"name": "churn", "alias": "champion"}
    # schema defaults
    assert read["spec"]["rollout"] == {"strategy": "RollingUpdate", "progressDeadlineSeconds": 600}


def _token_client(api_client: client.ApiClient, token: str) -> client.ApiClient:
    cfg = api_client.configuration
    sa_cfg = client.Configuration()
    sa_cfg.host = cfg.host
    sa_cfg.ssl_ca_cert = cfg.ssl_ca_cert
    sa_cfg.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(sa_cfg)


def test_rbac_denies_what_a_role_does_not_grant(
    api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    rbac = client.RbacAuthorizationV1Api(api_client)
    sa = f"reader-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_service_account(namespace, {"metadata": {"name": sa}})
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "configmap-reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "configmap-reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "configmap-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
        },
    )
    # A real, signed service-account token from the TokenRequest API.
    token = core.create_namespaced_service_account_token(
        sa, namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token

    with _token_client(api_client, token) as as_sa:
        sa_core = client.CoreV1Api(as_sa)
        allowed = sa_core.list_namespaced_config_map(namespace)
        assert any(cm.metadata.name == "kube-root-ca.crt" for cm in allowed.items)

        with pytest.raises(ApiException, match=r"\(403\)") as denied:
            sa_core.list_namespaced_secret(namespace)
        assert f"system:serviceaccount:{namespace}:{sa}" in str(denied.value.body)

        with pytest.raises(ApiException, match=r"\(403\)"):
            sa_core.list_namespaced_config_map("kube-system")

        with pytest.raises(ApiException, match=r"\(403\)"):
            sa_core.create_namespaced_config_map(namespace, {"metadata": {"name": "nope"}})


def test_anonymous_requests_are_rejected(api_client: client.ApiClient) -> None:
    cfg = api_client.configuration
    anon_cfg = client.Configuration()
    anon_cfg.host = cfg.host
    anon_cfg.ssl_ca_cert = cfg.ssl_ca_cert
    with (
        client.ApiClient(anon_cfg) as anon,
        pytest.raises(ApiException, match=r"\((401|403)\)"),
    ):
        client.CoreV1Api(anon).list_namespace()
