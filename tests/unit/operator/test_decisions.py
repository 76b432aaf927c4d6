"""The operator's decisions for each registry outcome: the resolve and plan phases against
a real MLflow registry (SQLite in a temporary directory, in this process).

What is applied, what is left alone, which condition and reason, which Events and
registry tags: everything a reconcile would do, without a cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from modelyard.core.contracts import DriftTags, deployed_tag_key
from modelyard.operator.plan import Plan, TagChange, plan_reconcile
from modelyard.operator.resolve import Registries, Resolver, resolve_model
from modelyard.operator.resource import ModelDeploymentSpec
from modelyard.operator.settings import OperatorSettings

NS, NAME = "ml", "churn"


class Registry:
    """A real MLflow registry on SQLite, and what a test does to it."""

    def __init__(self, root: Path) -> None:
        from mlflow import MlflowClient

        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.artifacts = root / "artifacts"
        self.experiment = self.client.create_experiment(
            "decisions", artifact_location=self.artifacts.as_uri()
        )

    def version(self, model: str, source_date: str = "2026-11-01") -> int:
        """A new READY version whose run logged one training dataset."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        if not self.client.search_registered_models(f"name = '{model}'"):
            self.client.create_registered_model(model)
        run = self.client.create_run(self.experiment)
        dataset = Dataset(
            name=f"features/date={source_date}",
            digest="d1",
            source_type="local",
            source=f'{{"uri": "file:///lake/features/date={source_date}"}}',
        )
        self.client.log_inputs(
            run.info.run_id,
            datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])],
        )
        created = self.client.create_model_version(
            model, (self.artifacts / "m").as_uri(), run_id=run.info.run_id
        )
        return int(created.version)

    def alias(self, model: str, alias: str, version: int) -> None:
        self.client.set_registered_model_alias(model, alias, str(version))

    def tag(self, model: str, version: int, key: str, value: str) -> None:
        self.client.set_model_version_tag(model, str(version), key, value)

    def set_status(self, model: str, version: int, status: str) -> None:
        import sqlalchemy

        engine = sqlalchemy.create_engine(self.uri)
        with engine.begin() as connection:
            connection.execute(
                sqlalchemy.text(
                    "UPDATE model_versions SET status = :s WHERE name = :n AND version = :v"
                ),
                {"s": status, "n": model, "v": version},
            )
        engine.dispose()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    yield Registry(tmp_path)


def body(spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "modelyard.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": NS, "uid": "uid-1", "generation": 3},
        "spec": spec,
        "status": status or {},
    }


def decide(
    obj: dict[str, Any], registry_uri: str | None = None, **settings: Any
) -> tuple[Plan, Resolver]:
    ours = OperatorSettings(default_tracking_uri=registry_uri, resolve_interval=30, **settings)
    resolver = Resolver(Registries(client.ApiClient(), timeout=2.0), interval=30)
    spec = ModelDeploymentSpec.parse(obj["spec"])
    live = (obj.get("status") or {}).get("model") or {}
    resolution = resolve_model(resolver, spec, NS, live, ours.default_tracking_uri)
    return plan_reconcile(obj, spec, resolution, ours, now="2026-12-01T10:00:00Z"), resolver


def condition(plan: Plan, type_: str) -> dict[str, Any]:
    return next(c for c in plan.status["conditions"] if c["type"] == type_)


def applied(plan: Plan, kind: str) -> dict[str, Any]:
    [found] = [m for m in plan.apply if m["kind"] == kind]
    return found


def model_uri(plan: Plan) -> str:
    container = applied(plan, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return str(next(e["value"] for e in container["env"] if e["name"] == "MODELYARD_MODEL_URI"))


ALIAS = {"model": {"name": "churn", "alias": "champion"}}


def test_an_alias_is_served_as_the_pinned_version_with_its_lineage(registry: Registry) -> None:
    v1 = registry.version("churn")
    registry.alias("churn", "champion", v1)

    plan, _ = decide(body(ALIAS), registry.uri)

    assert plan.failure is None
    assert model_uri(plan) == f"models:/churn/{v1}"
    assert {m["kind"] for m in plan.apply} == {"Deployment", "Service"}
    assert {(r.kind, r.name) for r in plan.delete} >= {
        ("HorizontalPodAutoscaler", NAME),
        ("PodDisruptionBudget", NAME),
    }
    assert plan.status["model"]["version"] == v1
    assert plan.status["model"]["datasets"][0]["source"] == "file:///lake/features/date=2026-11-01"
    assert plan.status["model"]["datasets"][0]["context"] == "training"
    assert condition(plan, "ModelResolved")["status"] == "True"
    assert [e.reason for e in plan.events] == ["RollingOut"]
    assert plan.tags == [TagChange("churn", v1, deployed_tag_key(NS, NAME), "2026-12-01T10:00:00Z")]


def test_an_unchanged_registry_means_no_event_no_tag_write_no_lineage_read(
    registry: Registry,
) -> None:
    v1 = registry.version("churn")
    registry.alias("churn", "champion", v1)
    first, _ = decide(body(ALIAS), registry.uri)
    registry.tag("churn", v1, deployed_tag_key(NS, NAME), "2026-12-01T10:00:00Z")

    second, resolver = decide(body(ALIAS, first.status), registry.uri)

    assert second.events == [] and second.tags == []
    assert resolver.calls == {"resolve": 1, "lineage": 0}
    assert second.apply == first.apply  # what kube.apply_owned then skips by its hash
    assert second.status["model"] == first.status["model"]


def test_a_moved_alias_rolls_out_and_moves_the_registry_tag(registry: Registry) -> None:
    v1, v2 = registry.version("churn"), registry.version("churn", "2026-11-02")
    registry.alias("churn", "champion", v1)
    first, _ = decide(body(ALIAS), registry.uri)
    registry.alias("churn", "champion", v2)

    plan, _ = decide(body(ALIAS, first.status), registry.uri)

    assert model_uri(plan) == f"models:/churn/{v2}"
    assert [h["version"] for h in plan.status["history"]] == [v2, v1]
    assert "moved from version 1 to 2" in plan.events[0].message
    key = deployed_tag_key(NS, NAME)
    assert plan.tags == [
        TagChange("churn", v1, key, None),
        TagChange("churn", v2, key, "2026-12-01T10:00:00Z"),
    ]


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"model": {"name": "nope", "alias": "champion"}}, "ModelNotFound"),
        ({"model": {"name": "churn", "alias": "missing"}}, "ModelNotFound"),
        ({"model": {"name": "churn", "version": 99}}, "ModelNotFound"),
        ({"model": {"name": "churn", "stage": "Production"}}, "ModelNotFound"),
    ],
)
def test_what_does_not_resolve_applies_nothing(
    registry: Registry, spec: dict[str, Any], reason: str
) -> None:
    registry.version("churn")
    plan, _ = decide(body(spec), registry.uri)
    assert plan.apply == [] and plan.delete == [] and plan.tags == [] and plan.events == []
    assert condition(plan, "ModelResolved")["reason"] == reason
    assert condition(plan, "Ready")["status"] == "False"  # nothing was ever live


def test_a_version_not_ready_is_never_served_and_the_live_one_stays(registry: Registry) -> None:
    v1, v2 = registry.version("churn"), registry.version("churn")
    registry.alias("churn", "champion", v1)
    first, _ = decide(body(ALIAS), registry.uri)
    registry.alias("churn", "champion", v2)
    registry.set_status("churn", v2, "PENDING_REGISTRATION")

    plan, _ = decide(body(ALIAS, first.status), registry.uri)

    assert plan.apply == [] and plan.tags == []
    assert condition(plan, "ModelResolved")["reason"] == "VersionNotReady"
    assert plan.status["model"]["version"] == v1  # still says what is live
    assert not any(
        c["type"] == "Ready" and c["reason"] == "VersionNotReady" for c in plan.status["conditions"]
    )


def test_an_unreachable_registry_applies_nothing() -> None:
    plan, _ = decide(body(ALIAS), "http://127.0.0.1:9")
    assert plan.apply == []
    assert condition(plan, "ModelResolved")["reason"] == "RegistryUnavailable"
    assert plan.failure is not None and not plan.failure.permanent


def test_no_registry_at_all_is_for_the_user_to_fix() -> None:
    plan, _ = decide(body(ALIAS), None)
    assert plan.failure is not None and plan.failure.permanent
    assert condition(plan, "ModelResolved")["reason"] == "NoRegistry"


def test_a_stage_serves_its_newest_version(registry: Registry) -> None:
    v1, v2 = registry.version("churn"), registry.version("churn")
    for v in (v1, v2):
        registry.client.transition_model_version_stage("churn", str(v), "Production")
    plan, _ = decide(body({"model": {"name": "churn", "stage": "Production"}}), registry.uri)
    assert model_uri(plan) == f"models:/churn/{v2}"


def test_drift_found_by_the_check_starts_one_retraining_job(registry: Registry) -> None:
    v1 = registry.version("churn")
    registry.alias("churn", "champion", v1)
    for key, value in {
        DriftTags.LAST_RUN_ID: "drift-run-1",
        DriftTags.LAST_CHECKED: "2026-12-01T09:00:00Z",
        DriftTags.LAST_STATUS: "ok",
        DriftTags.LAST_DATASET_DRIFT: "true",
        DriftTags.LAST_DRIFTED_COLUMNS: "age,plan",
        DriftTags.LAST_SHARE: "0.6",
    }.items():
        registry.tag("churn", v1, key, value)
    spec = {
        **ALIAS,
        "monitoring": {
            "predictionLog": "s3://lake/predictions",
            "drift": {"retrain": {"cronJobName": "train-churn"}},
        },
    }
    plan, _ = decide(body(spec), registry.uri)
    drift = condition(plan, "DataDrift")
    assert (drift["status"], drift["reason"]) == ("True", "DriftDetected")
    assert "age, plan" in drift["message"]
    assert plan.retrain is not None and plan.retrain.cron_job_name == "train-churn"
    assert any(m["kind"] == "CronJob" for m in plan.apply)
