"""The API server rejects invalid Canary and shadow specs, saying what to fix, and
defaults and explains the rest."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.kube import md_body, wait_for

pytestmark = pytest.mark.integration

MODEL = {"name": "churn", "alias": "champion"}


def canary(steps: list[Any], **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "rollout": {"strategy": "Canary", "canary": {"steps": steps, **extra}}}


INVALID: list[tuple[str, dict[str, Any], str]] = [
    (
        "Canary without canary",
        {"model": MODEL, "rollout": {"strategy": "Canary"}},
        "spec.rollout.canary is required with strategy Canary and allowed only with it",
    ),
    (
        "canary with RollingUpdate",
        {"model": MODEL, "rollout": {"canary": {"steps": [{"weight": 10}]}}},
        "spec.rollout.canary is required with strategy Canary and allowed only with it",
    ),
    (
        "unknown strategy",
        {"model": MODEL, "rollout": {"strategy": "BlueGreen"}},
        'supported values: "RollingUpdate", "Canary"',
    ),
    ("weight 0", canary([{"weight": 0}]), "should be greater than or equal to 1"),
    ("weight 100", canary([{"weight": 100}]), "should be less than or equal to 99"),
    (
        "weights not increasing",
        canary([{"weight": 50}, {"weight": 10}]),
        "each weight must be greater than the one of the step before (e.g. 10, 50, 90)",
    ),
    (
        "a weight repeated across an approval",
        canary([{"weight": 20}, {"approval": {}}, {"weight": 20}]),
        "each weight must be greater than the one of the step before",
    ),
    (
        "a step with weight and approval",
        canary([{"weight": 20, "approval": {}}]),
        "is exactly one of {weight, pause, replicas} or {approval: {}}",
    ),
    (
        "an empty step",
        canary([{}]),
        "is exactly one of {weight, pause, replicas} or {approval: {}}",
    ),
    (
        "only approval steps",
        canary([{"approval": {}}]),
        "spec.rollout.canary.steps needs at least one weight step",
    ),
    (
        "approval with a pause",
        canary([{"weight": 10}, {"approval": {}, "pause": "1m"}]),
        "an approval step takes no pause or replicas",
    ),
    ("pause without unit", canary([{"weight": 10, "pause": "30"}]), "pause in body should match"),
    ("pause in days", canary([{"weight": 10, "pause": "1d"}]), "pause in body should match"),
    (
        "interval zero",
        canary([{"weight": 10}], analysis={"interval": "0s"}),
        "spec.rollout.canary.analysis.interval must be longer than 0",
    ),
    (
        "latency ratio below 1",
        canary([{"weight": 10}], analysis={"maxLatencyRatio": 0.5}),
        "maxLatencyRatio in body should be greater than or equal to 1",
    ),
    (
        "latency increase without unit",
        canary([{"weight": 10}], analysis={"minLatencyIncrease": "25"}),
        "minLatencyIncrease in body should match",
    ),
    (
        "shadow with alias and version",
        {"model": MODEL, "rollout": {"shadow": {"alias": "c", "version": 2, "percent": 5}}},
        "spec.rollout.shadow must set exactly one of alias or version",
    ),
    (
        "shadow without reference",
        {"model": MODEL, "rollout": {"shadow": {"percent": 5}}},
        "spec.rollout.shadow must set exactly one of alias or version",
    ),
    (
        "shadow percent 0",
        {"model": MODEL, "rollout": {"shadow": {"alias": "c", "percent": 0}}},
        "percent in body should be greater than or equal to 1",
    ),
]


@pytest.mark.parametrize(("case", "spec", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_canary_is_rejected_with_its_message(
    api_client: client.ApiClient, crd: Any, namespace: str, case: str, spec: Any, message: str
) -> None:
    custom = client.CustomObjectsApi(api_client)
    with pytest.raises(ApiException, match=r"\((400|422)\)") as rejected:
        custom.create_namespaced_custom_object(
            "modelyard.io",
            "v1alpha1",
            namespace,
            "modeldeployments",
            md_body("bad", spec),
            field_validation="Strict",
        )
    said = json.loads(rejected.value.body)["message"]
    assert message in said, said


def test_canary_defaults(api_client: client.ApiClient, crd: Any, namespace: str) -> None:
    spec = canary([{"weight": 10, "pause": "2m"}, {"approval": {}}, {"weight": 50}])
    spec["rollout"]["shadow"] = {"alias": "challenger", "percent": 20}
    created = client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        "modelyard.io",
        "v1alpha1",
        namespace,
        "modeldeployments",
        md_body("churn", spec),
        field_validation="Strict",
    )
    rollout = created["spec"]["rollout"]
    assert rollout["canary"] == {
        "steps": [{"weight": 10, "pause": "2m"}, {"approval": {}}, {"weight": 50}],
        "analysis": {
            "interval": "30s",
            "minRequests": 50,
            "maxErrorRateIncrease": 0.01,
            "maxLatencyRatio": 1.5,
            "minLatencyIncrease": "25ms",
            "failureLimit": 2,
        },
    }
    assert rollout["shadow"] == {"alias": "challenger", "percent": 20}


def test_kubectl_explain_teaches_canary(cluster: Any, crd: Any) -> None:
    explained = wait_for(
        "kubectl explain",
        lambda: (
            (
                r := cluster.run_kubectl("explain", "md.spec.rollout.canary.steps", check=False)
            ).returncode
            == 0
            and r
        ),
    )
    out = explained.stdout
    assert "A weight step sends that percentage of the requests" in out
    for field in ("weight", "pause", "replicas", "approval"):
        assert field in out
