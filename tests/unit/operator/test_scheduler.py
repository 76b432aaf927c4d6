"""What the scheduler asks the registry about again, every resolve interval."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from modelyard.core.registry import ModelReference
from modelyard.operator.reconcile import Operator
from modelyard.operator.resource import KIND
from modelyard.operator.scheduler import followed_references
from modelyard.operator.settings import OperatorSettings

URI = "http://mlflow.example:5000"


def md(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"namespace": "team", "name": name, "resourceVersion": "1"}, "spec": spec}


def test_floating_references_and_shadows_are_followed_pinned_versions_are_not() -> None:
    op = Operator(
        settings=OperatorSettings(default_tracking_uri=URI),
        api_client=client.ApiClient(),
        post_event=lambda *_: None,
    )
    op.store.put(KIND, md("pinned", {"model": {"name": "churn", "version": 3}}))
    op.store.put(KIND, md("follows", {"model": {"name": "churn", "alias": "champion"}}))
    op.store.put(
        KIND,
        md(
            "shadowed",
            {
                "model": {"name": "churn", "version": 3},
                "rollout": {"shadow": {"alias": "challenger", "percent": 10}},
            },
        ),
    )

    followed = {ref: keys for (_, ref), keys in followed_references(op).items()}

    assert followed == {
        ModelReference("churn", alias="champion"): [("team", "follows")],
        # A pinned version with a shadow: the shadow's alias moves, and its comparison
        # arrives as a tag on the version it points to.
        ModelReference("churn", alias="challenger"): [("team", "shadowed")],
    }
