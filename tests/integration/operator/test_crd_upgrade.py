"""The operator upgrades its CRDs at start (operator.manageCRDs), against the real API
server: an older definition is replaced, a current one is left alone, a newer one (an
operator of a later version applied it) is never taken back, a missing one is not
created."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from modelyard.operator.crds import DIGEST_ANNOTATION, VERSION_ANNOTATION, embedded, ensure_crds


def widget_crd(group: str, description: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "properties": {"spec": {"type": "object"}},
                        }
                    },
                }
            ],
        },
    }


@pytest.fixture
def group(api_client: Any) -> Iterator[str]:
    name = f"t{uuid.uuid4().hex[:6]}.crdtest.modelyard.io"
    yield name
    try:
        client.ApiextensionsV1Api(api_client).delete_custom_resource_definition(f"widgets.{name}")
    except client.ApiException as error:
        assert error.status == 404


def description(api_client: Any, name: str) -> tuple[str, dict[str, str]]:
    live = client.ApiextensionsV1Api(api_client).read_custom_resource_definition(name)
    schema = api_client.sanitize_for_serialization(live.spec.versions[0].schema)
    return schema["openAPIV3Schema"]["description"], dict(live.metadata.annotations or {})


def test_older_crds_are_upgraded_newer_ones_kept(api_client: Any, group: str) -> None:
    api = client.ApiextensionsV1Api(api_client)
    name = f"widgets.{group}"
    new = [(widget_crd(group, "release 2"), "digest-2")]
    # Not installed: the operator creates nothing (it may only patch its CRDs by name).
    [missing] = ensure_crds(api_client, "0.2.0", new)
    assert missing.action == "missing"
    # Installed by an older release (the chart's crds/, which Helm never upgrades).
    old = widget_crd(group, "release 1")
    api.create_custom_resource_definition(old)
    [applied] = ensure_crds(api_client, "0.2.0", new)
    assert applied.action == "applied"
    said, annotations = description(api_client, name)
    assert said == "release 2"
    assert annotations[VERSION_ANNOTATION] == "0.2.0"
    assert annotations[DIGEST_ANNOTATION] == "digest-2"
    # Restarts of the same operator change nothing.
    assert ensure_crds(api_client, "0.2.0", new)[0].action == "current"
    # An operator of a later release applied its schema: an old replica leaves it alone.
    newer = [(widget_crd(group, "release 3"), "digest-3")]
    assert ensure_crds(api_client, "0.3.0", newer)[0].action == "applied"
    [kept] = ensure_crds(api_client, "0.2.0", new)
    assert kept.action == "newer"
    assert description(api_client, name)[0] == "release 3"


def test_the_operator_s_own_crds_apply_as_manifests_has_them(api_client: Any, crd: Any) -> None:
    outcomes = ensure_crds(api_client)
    assert {o.name for o in outcomes} == {
        "modeldeployments.modelyard.io",
        "modelapprovals.modelyard.io",
    }
    assert {o.action for o in outcomes} <= {"applied", "current"}
    for definition, digest in embedded():
        live = client.ApiextensionsV1Api(api_client).read_custom_resource_definition(
            definition["metadata"]["name"]
        )
        assert (live.metadata.annotations or {})[DIGEST_ANNOTATION] == digest
        wanted = copy.deepcopy(definition["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
        got = api_client.sanitize_for_serialization(live.spec.versions[0].schema)
        assert got["openAPIV3Schema"]["properties"].keys() == wanted["properties"].keys()
