"""The operator's decisions for each registry outcome, approval and rollout state: the
resolve and plan phases against a real MLflow registry (SQLite in a temporary directory,
in this process), with what the watches would show given by hand.

What is applied, what is left alone, which condition and reason, which Events, registry
tags and answers to ModelApprovals: everything a reconcile would do, without a cluster.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from modelyard.core.contracts import ApprovalTags, DriftTags, deployed_tag_key
from modelyard.operator.approvals import Decision
from modelyard.operator.credentials import RegistryAccounts
from modelyard.operator.plan import Observed, Plan, TagChange, plan_reconcile
from modelyard.operator.resolve import Registries, RegistryPolicy, Resolver, resolve_model
from modelyard.operator.resource import ModelDeploymentSpec
from modelyard.operator.settings import OperatorSettings

NS, NAME = "ml", "churn"
NOW = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)
STAMP = "2026-12-01T10:00:00Z"


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

    def version(self, model: str = "churn", source_date: str = "2026-11-01") -> int:
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

    def alias(self, alias: str, version: int, model: str = "churn") -> None:
        self.client.set_registered_model_alias(model, alias, str(version))

    def tag(self, version: int, tags: dict[str, str], model: str = "churn") -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(model, str(version), key, value)

    def tags(self, version: int, model: str = "churn") -> dict[str, str]:
        return dict(self.client.get_model_version(model, str(version)).tags)

    def set_status(self, version: int, status: str, model: str = "churn") -> None:
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

    def write(self, plan: Plan) -> None:
        """Do what the apply phase does with the plan's tags."""
        for change in plan.tags:
            if change.value is None:
                self.client.delete_model_version_tag(change.model, str(change.version), change.key)
            else:
                self.client.set_model_version_tag(
                    change.model, str(change.version), change.key, change.value
                )


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


def serving(version: int, replicas: int = 1, ready: int | None = None) -> dict[str, Any]:
    """The server Deployment as the watch shows it, running ``version``."""
    ready = replicas if ready is None else ready
    return {
        "metadata": {"generation": 2},
        "spec": {
            "replicas": replicas,
            "template": {"metadata": {"annotations": {"modelyard.io/model-version": str(version)}}},
        },
        "status": {
            "observedGeneration": 2,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "availableReplicas": ready,
        },
    }


def crashing_pod(version: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "churn-abc",
            "annotations": {"modelyard.io/model-version": str(version)},
        },
        "status": {
            "containerStatuses": [
                {
                    "restartCount": 3,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"reason": "Error", "exitCode": 1}},
                }
            ]
        },
    }


def approval(
    decision: str = "Approved",
    version: int = 1,
    approver: str = "alice",
    created: dt.datetime = NOW,
    comment: str = "looks good",
    name: str = "a1",
) -> Decision:
    found = Decision.from_body(
        {
            "metadata": {
                "name": name,
                "namespace": NS,
                "creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
            "spec": {
                "modelDeployment": NAME,
                "version": version,
                "decision": decision,
                "approver": approver,
                "comment": comment,
            },
        }
    )
    assert found is not None
    return found


def decide(
    obj: dict[str, Any],
    registry_uri: str | None = None,
    *,
    deployment: dict[str, Any] | None = None,
    pods: tuple[dict[str, Any], ...] = (),
    decisions: tuple[Decision, ...] = (),
    labels: dict[str, str] | None = None,
    now: dt.datetime = NOW,
    accounts: RegistryAccounts | None = None,
    prediction_log: str | None = None,
    prediction_log_secret: str = "",
) -> tuple[Plan, Resolver]:
    ours = OperatorSettings(
        default_tracking_uri=registry_uri,
        resolve_interval=30,
        prediction_log=prediction_log,
        prediction_log_secret=prediction_log_secret,
    )
    resolver = Resolver(Registries(client.ApiClient(), timeout=2.0), interval=30)
    spec = ModelDeploymentSpec.parse(obj["spec"])
    live = (obj.get("status") or {}).get("model") or {}
    resolution = resolve_model(resolver, spec, NS, live, RegistryPolicy(ours.default_tracking_uri))
    observed = Observed(
        namespace_labels=labels or {},
        decisions=decisions,
        deployment=deployment,
        pods=pods,
        now=now,
        accounts=accounts,
    )
    return plan_reconcile(obj, spec, resolution, ours, observed), resolver


def condition(plan: Plan, type_: str) -> dict[str, Any]:
    return next(c for c in plan.status["conditions"] if c["type"] == type_)


def applied(plan: Plan, kind: str) -> dict[str, Any]:
    [found] = [m for m in plan.apply if m["kind"] == kind]
    return found


def served(plan: Plan) -> str:
    container = applied(plan, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return str(next(e["value"] for e in container["env"] if e["name"] == "MODELYARD_MODEL_URI"))


def reasons(plan: Plan) -> list[str]:
    return [e.reason for e in plan.events]


def live(registry: Registry, spec: dict[str, Any], version: int) -> dict[str, Any]:
    """The status of a deployment whose ``version`` went live (rolled out, then Ready)."""
    first, _ = decide(body(spec), registry.uri)
    done, _ = decide(body(spec, first.status), registry.uri, deployment=serving(version))
    registry.write(done)
    assert done.status["model"]["version"] == version
    return done.status


ALIAS = {"model": {"name": "churn", "alias": "champion"}}
REQUIRED = {**ALIAS, "rollout": {"approval": {"policy": "Required"}}}


# --------------------------------------------------------------- resolving and rolling out
def test_an_alias_rolls_out_the_pinned_version_and_it_goes_live_once_ready(
    registry: Registry,
) -> None:
    v1 = registry.version()
    registry.alias("champion", v1)

    plan, _ = decide(body(ALIAS), registry.uri)
    assert plan.failure is None
    assert served(plan) == f"models:/churn/{v1}"
    assert {m["kind"] for m in plan.apply} == {"Deployment", "Service", "NetworkPolicy"}
    assert plan.status["model"] is None  # not live until it serves
    assert plan.status["rollout"]["version"] == v1
    assert plan.status["rollout"]["datasets"][0]["source"] == (
        "file:///lake/features/date=2026-11-01"
    )
    assert condition(plan, "ModelResolved")["status"] == "True"
    assert condition(plan, "Approved")["reason"] == "NotRequired"
    assert reasons(plan) == ["RollingOut"]
    assert plan.tags == []  # nothing is deployed yet

    done, _ = decide(body(ALIAS, plan.status), registry.uri, deployment=serving(v1))
    assert done.status["model"]["version"] == v1
    assert done.status["model"]["datasets"][0]["context"] == "training"
    assert done.status["rollout"] is None
    assert [h["version"] for h in done.status["history"]] == [v1]
    assert reasons(done) == ["Live"]
    assert done.tags == [TagChange("churn", v1, deployed_tag_key(NS, NAME), STAMP)]


def test_an_unchanged_registry_means_no_event_no_tag_write_no_lineage_read(
    registry: Registry,
) -> None:
    v1 = registry.version()
    registry.alias("champion", v1)
    status = live(registry, ALIAS, v1)

    again, resolver = decide(body(ALIAS, status), registry.uri, deployment=serving(v1))

    assert again.events == [] and again.tags == [] and again.answers == []
    assert resolver.calls == {"resolve": 1, "lineage": 0}
    assert again.status["model"] == status["model"]
    assert served(again) == f"models:/churn/{v1}"  # what kube.apply_owned then skips


def test_a_moved_alias_rolls_out_while_the_live_version_serves(registry: Registry) -> None:
    v1, v2 = registry.version(), registry.version(source_date="2026-11-02")
    registry.alias("champion", v1)
    status = live(registry, ALIAS, v1)
    registry.alias("champion", v2)

    rolling, _ = decide(body(ALIAS, status), registry.uri, deployment=serving(v1))
    assert served(rolling) == f"models:/churn/{v2}"
    assert rolling.status["model"]["version"] == v1  # LIVE stays until v2 serves
    assert "moved from version 1 to 2" in rolling.events[0].message

    done, _ = decide(body(ALIAS, rolling.status), registry.uri, deployment=serving(v2))
    assert done.status["model"]["version"] == v2
    assert [h["version"] for h in done.status["history"]] == [v2, v1]
    key = deployed_tag_key(NS, NAME)
    assert done.tags == [
        TagChange("churn", v1, key, None),
        TagChange("churn", v2, key, STAMP),
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
    registry.version()
    plan, _ = decide(body(spec), registry.uri)
    assert plan.apply == [] and plan.delete == [] and plan.tags == [] and plan.events == []
    assert condition(plan, "ModelResolved")["reason"] == reason
    assert condition(plan, "Ready")["status"] == "False"  # nothing was ever live


def test_a_version_not_ready_is_never_served_and_the_live_one_stays(registry: Registry) -> None:
    v1, v2 = registry.version(), registry.version()
    registry.alias("champion", v1)
    status = live(registry, ALIAS, v1)
    registry.alias("champion", v2)
    registry.set_status(v2, "PENDING_REGISTRATION")

    plan, _ = decide(body(ALIAS, status), registry.uri)

    assert plan.apply == [] and plan.tags == []
    assert condition(plan, "ModelResolved")["reason"] == "VersionNotReady"
    assert plan.status["model"]["version"] == v1  # still says what is live
    assert all(
        c["reason"] != "VersionNotReady" for c in plan.status["conditions"] if c["type"] == "Ready"
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
    v1, v2 = registry.version(), registry.version()
    for v in (v1, v2):
        registry.client.transition_model_version_stage("churn", str(v), "Production")
    plan, _ = decide(body({"model": {"name": "churn", "stage": "Production"}}), registry.uri)
    assert served(plan) == f"models:/churn/{v2}"


# --------------------------------------------------------------- failed rollouts
def test_a_crashing_candidate_is_rolled_back_and_not_tried_again(registry: Registry) -> None:
    v1, v2 = registry.version(), registry.version()
    registry.alias("champion", v1)
    status = live(registry, ALIAS, v1)
    registry.alias("champion", v2)
    rolling, _ = decide(body(ALIAS, status), registry.uri, deployment=serving(v1))

    failed, _ = decide(
        body(ALIAS, rolling.status),
        registry.uri,
        deployment=serving(v2, ready=0),
        pods=(crashing_pod(v2),),
    )
    assert served(failed) == f"models:/churn/{v1}"  # back to what was live
    assert failed.status["model"]["version"] == v1 and failed.status["rollout"] is None
    assert failed.degraded is not None and failed.degraded[0] == "RolloutFailed"
    assert "restarted 3 times" in failed.degraded[1]
    assert reasons(failed) == ["RolledBack"]
    registry.write(failed)
    assert registry.tags(v2)[ApprovalTags.key(NS, NAME)] == "Rejected"
    assert registry.tags(v2)[ApprovalTags.detail(NS, NAME, "reason")] == "RolloutFailed"

    # The reference still resolves to v2: it is not tried again.
    again, _ = decide(body(ALIAS, failed.status), registry.uri, deployment=serving(v1))
    assert served(again) == f"models:/churn/{v1}"
    assert condition(again, "Approved")["reason"] == "Rejected"
    assert again.events == [] and again.tags == []


def refusing_pod(version: int) -> dict[str, Any]:
    """A server pod that refused its model (its termination message, as the server
    writes it)."""
    message = (
        "UnsafeModelFormat: model churn version 2 is a scikit-learn model saved with "
        "cloudpickle, which runs code when loaded; ... spec.server.allowPickle: true ..."
    )
    return {
        "metadata": {
            "name": "churn-def",
            "annotations": {"modelyard.io/model-version": str(version)},
        },
        "status": {
            "containerStatuses": [
                {
                    "restartCount": 0,
                    "state": {"terminated": {"reason": "Error", "exitCode": 1, "message": message}},
                }
            ]
        },
    }


def test_an_unsafe_model_is_refused_at_once_and_the_live_version_keeps_serving(
    registry: Registry,
) -> None:
    v1, v2 = registry.version(), registry.version()
    registry.alias("champion", v1)
    status = live(registry, ALIAS, v1)
    registry.alias("champion", v2)
    rolling, _ = decide(body(ALIAS, status), registry.uri, deployment=serving(v1))
    failed, _ = decide(
        body(ALIAS, rolling.status),
        registry.uri,
        deployment=serving(v2, ready=0),
        pods=(refusing_pod(v2),),
    )
    assert served(failed) == f"models:/churn/{v1}"
    assert failed.degraded is not None and failed.degraded[0] == "UnsafeModelFormat"
    assert "saved with cloudpickle" in failed.degraded[1]
    registry.write(failed)
    assert registry.tags(v2)[ApprovalTags.detail(NS, NAME, "reason")] == "UnsafeModelFormat"
    # The next reconciles, while the alias still points at it: still reported, not retried.
    after, _ = decide(body(ALIAS, failed.status), registry.uri, deployment=serving(v1))
    assert served(after) == f"models:/churn/{v1}"
    assert after.degraded is not None and after.degraded[0] == "UnsafeModelFormat"
    # Moved back to the live version: nothing is wrong any more.
    registry.alias("champion", v1)
    steady, _ = decide(body(ALIAS, after.status), registry.uri, deployment=serving(v1))
    assert steady.degraded is None


def test_allow_pickle_reaches_the_server(registry: Registry) -> None:
    v1 = registry.version()
    spec = {"model": {"name": "churn", "version": v1}, "server": {"allowPickle": True}}
    plan, _ = decide(body(spec), registry.uri)
    container = applied(plan, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "MODELYARD_ALLOW_PICKLE", "value": "true"} in container["env"]


def test_a_candidate_never_ready_fails_at_its_progress_deadline(registry: Registry) -> None:
    v1, v2 = registry.version(), registry.version()
    registry.alias("champion", v1)
    spec = {**ALIAS, "rollout": {"progressDeadlineSeconds": 60}}
    status = live(registry, spec, v1)
    registry.alias("champion", v2)
    rolling, _ = decide(body(spec, status), registry.uri, deployment=serving(v1))

    later = NOW + dt.timedelta(seconds=61)
    failed, _ = decide(
        body(spec, rolling.status), registry.uri, deployment=serving(v2, ready=0), now=later
    )
    assert failed.degraded is not None and "within 60s" in failed.degraded[1]
    assert served(failed) == f"models:/churn/{v1}"


# --------------------------------------------------------------- the approval gate
def test_required_approval_holds_a_new_deployment_with_nothing_served(registry: Registry) -> None:
    v1 = registry.version()
    registry.alias("champion", v1)

    plan, _ = decide(body(REQUIRED), registry.uri)

    assert plan.apply == [] and not plan.serves
    assert plan.status["pending"] == {
        "version": v1,
        "runId": plan.status["pending"]["runId"],
        "reference": "alias:champion",
        "since": STAMP,
    }
    said = condition(plan, "Approved")
    assert (said["status"], said["reason"]) == ("False", "AwaitingApproval")
    assert f"modelyard approve churn -n ml --version {v1}" in said["message"]
    assert reasons(plan) == ["AwaitingApproval"]
    assert plan.tags == [TagChange("churn", v1, ApprovalTags.key(NS, NAME), "PendingApproval")]


def test_a_moved_alias_waits_for_approval_and_the_server_is_left_alone(
    registry: Registry,
) -> None:
    v1, v2 = registry.version(), registry.version()
    registry.alias("champion", v1)
    status = live(registry, ALIAS, v1)  # went live before approval was required
    registry.alias("champion", v2)

    plan, _ = decide(body(REQUIRED, status), registry.uri, deployment=serving(v1))

    assert served(plan) == f"models:/churn/{v1}"  # the same manifest as before
    assert plan.status["pending"]["version"] == v2
    assert plan.status["model"]["version"] == v1
    registry.write(plan)
    assert registry.tags(v2)[ApprovalTags.key(NS, NAME)] == "PendingApproval"

    # The next pass finds it still pending: no second Event, no tag write.
    again, _ = decide(body(REQUIRED, plan.status), registry.uri, deployment=serving(v1))
    assert again.events == [] and again.tags == []
    assert again.status["pending"] == plan.status["pending"]


def test_an_approval_starts_the_rollout_and_the_registry_records_it(registry: Registry) -> None:
    v1 = registry.version()
    registry.alias("champion", v1)
    pending, _ = decide(body(REQUIRED), registry.uri)

    decision = approval(version=v1, created=NOW + dt.timedelta(seconds=5))
    later = NOW + dt.timedelta(seconds=6)
    plan, _ = decide(body(REQUIRED, pending.status), registry.uri, decisions=(decision,), now=later)

    assert served(plan) == f"models:/churn/{v1}"
    assert plan.status["pending"] is None and plan.status["rollout"]["approvedBy"] == "alice"
    assert reasons(plan) == ["Approved", "RollingOut"]
    assert [(a.decision.name, a.state) for a in plan.answers] == [("a1", "Applied")]
    registry.write(plan)
    tags = registry.tags(v1)
    assert tags[ApprovalTags.key(NS, NAME)] == "Approved"
    assert tags[ApprovalTags.detail(NS, NAME, "by")] == "alice"
    assert tags[ApprovalTags.detail(NS, NAME, "comment")] == "looks good"

    done, _ = decide(
        body(REQUIRED, plan.status),
        registry.uri,
        deployment=serving(v1),
        decisions=(decision,),
        now=later,
    )
    assert done.status["model"]["approvedBy"] == "alice"
    assert done.status["history"][0]["approvedBy"] == "alice"
    assert condition(done, "Approved")["status"] == "True"


def test_a_rejection_keeps_the_live_version_and_is_final_for_that_version(
    registry: Registry,
) -> None:
    v1, v2 = registry.version(), registry.version()
    registry.alias("champion", v1)
    status = live(registry, ALIAS, v1)
    registry.alias("champion", v2)
    pending, _ = decide(body(REQUIRED, status), registry.uri, deployment=serving(v1))

    no = approval("Rejected", v2, "bob", NOW + dt.timedelta(seconds=1), "worse on March")
    plan, _ = decide(
        body(REQUIRED, pending.status), registry.uri, deployment=serving(v1), decisions=(no,)
    )
    assert served(plan) == f"models:/churn/{v1}"
    said = condition(plan, "Approved")
    assert (said["status"], said["reason"]) == ("False", "Rejected")
    assert "bob" in said["message"] and "worse on March" in said["message"]
    assert reasons(plan) == ["Rejected"]
    registry.write(plan)
    assert registry.tags(v2)[ApprovalTags.key(NS, NAME)] == "Rejected"

    # A later approval of the same version changes nothing.
    yes = approval("Approved", v2, "alice", NOW + dt.timedelta(seconds=9), name="a2")
    answered = dataclasses.replace(no, answered=True)
    again, _ = decide(
        body(REQUIRED, plan.status), registry.uri, deployment=serving(v1), decisions=(answered, yes)
    )
    assert served(again) == f"models:/churn/{v1}"
    assert [(a.decision.name, a.state) for a in again.answers] == [("a2", "Ignored")]


def test_stale_and_foreign_approvals_change_nothing_and_say_why(registry: Registry) -> None:
    v1, v2 = registry.version(), registry.version()
    registry.alias("champion", v2)
    pending, _ = decide(body(REQUIRED), registry.uri)
    spec_with_approvers = {
        **ALIAS,
        "rollout": {"approval": {"policy": "Required", "approvers": ["alice"]}},
    }
    stale = approval(version=v2, created=NOW - dt.timedelta(hours=1), name="stale")
    other = approval(version=v1, created=NOW + dt.timedelta(seconds=1), name="other")
    stranger = approval(
        version=v2, approver="mallory", created=NOW + dt.timedelta(seconds=1), name="stranger"
    )

    plan, _ = decide(
        body(spec_with_approvers, pending.status),
        registry.uri,
        decisions=(stale, other, stranger),
    )

    assert not plan.serves and plan.status["pending"]["version"] == v2
    answers = {a.decision.name: (a.state, a.message) for a in plan.answers}
    assert answers["stale"][0] == "Ignored" and "stale" in answers["stale"][1]
    assert answers["other"][0] == "Ignored" and "is not pending" in answers["other"][1]
    assert (
        answers["stranger"][0] == "Ignored" and "not among the approvers" in answers["stranger"][1]
    )


def test_the_namespace_label_requires_approval_whatever_the_spec_says(
    registry: Registry,
) -> None:
    v1 = registry.version()
    registry.alias("champion", v1)
    automatic = {**ALIAS, "rollout": {"approval": {"policy": "Automatic"}}}
    plan, _ = decide(body(automatic), registry.uri, labels={"modelyard.io/approval": "required"})
    assert not plan.serves
    assert condition(plan, "Approved")["reason"] == "AwaitingApproval"


def test_an_unanswered_version_expires(registry: Registry) -> None:
    v1 = registry.version()
    registry.alias("champion", v1)
    spec = {**ALIAS, "rollout": {"approval": {"policy": "Required", "expiresAfter": "1h"}}}
    pending, _ = decide(body(spec), registry.uri)

    plan, _ = decide(body(spec, pending.status), registry.uri, now=NOW + dt.timedelta(hours=2))
    said = condition(plan, "Approved")
    assert (said["status"], said["reason"]) == ("False", "Expired")
    assert reasons(plan) == ["Expired"]
    registry.write(plan)
    assert registry.tags(v1)[ApprovalTags.detail(NS, NAME, "reason")] == "Expired"


def test_a_registry_tag_saying_approved_approves_nothing(registry: Registry) -> None:
    """Registry write access must not be a way around the gate."""
    v1 = registry.version()
    registry.alias("champion", v1)
    registry.tag(v1, {ApprovalTags.key(NS, NAME): "Approved"})
    plan, _ = decide(body(REQUIRED), registry.uri)
    assert not plan.serves and plan.status["pending"]["version"] == v1


# --------------------------------------------------------------- drift
def test_drift_found_by_the_check_starts_one_retraining_job(registry: Registry) -> None:
    v1 = registry.version()
    registry.alias("champion", v1)
    spec = {
        **ALIAS,
        "monitoring": {
            "predictionLog": "s3://lake/predictions",
            "drift": {"retrain": {"cronJobName": "train-churn"}},
        },
    }
    status = live(registry, spec, v1)

    def found_drift(deployment: tuple[str, str] | None) -> None:
        registry.tag(
            v1,
            {
                DriftTags.keyed(key, deployment): value
                for key, value in {
                    DriftTags.LAST_CHECKED: "2026-12-01T09:00:00Z",
                    DriftTags.LAST_STATUS: "ok",
                    DriftTags.LAST_DATASET_DRIFT: "true",
                    DriftTags.LAST_DRIFTED_COLUMNS: "age,plan",
                    DriftTags.LAST_SHARE: "0.6",
                    DriftTags.LAST_RUN_ID: "drift-run-1",
                }.items()
            },
        )

    # Another deployment of the same version (staging) drifted, or a check by hand: not ours.
    found_drift(("staging", NAME))
    found_drift(None)
    quiet, _ = decide(body(spec, status), registry.uri, deployment=serving(v1))
    assert condition(quiet, "DataDrift")["status"] != "True"
    assert quiet.retrain is None
    found_drift((NS, NAME))
    plan, _ = decide(body(spec, status), registry.uri, deployment=serving(v1))
    drift = condition(plan, "DataDrift")
    assert (drift["status"], drift["reason"]) == ("True", "DriftDetected")
    assert "age, plan" in drift["message"]
    assert plan.retrain is not None and plan.retrain.cron_job_name == "train-churn"
    assert any(m["kind"] == "CronJob" for m in plan.apply)


def test_the_operator_wide_prediction_log_is_split_per_deployment(registry: Registry) -> None:
    v1 = registry.version()
    registry.alias("champion", v1)
    spec = {**ALIAS, "monitoring": {"drift": {"schedule": "0 * * * *"}}}
    status = live(registry, spec, v1)
    plan, _ = decide(
        body(spec, status),
        registry.uri,
        deployment=serving(v1),
        prediction_log="s3://lake/predictions/",
    )
    container = applied(plan, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    # Two deployments serving one version never share a partition, nor check each other's.
    assert env["MODELYARD_PREDICTION_LOG"] == f"s3://lake/predictions/{NS}/{NAME}"
    drift = applied(plan, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    args = drift["containers"][0]["args"]
    assert args[args.index("--prediction-log") + 1] == f"s3://lake/predictions/{NS}/{NAME}"
    assert args[args.index("--deployment") + 1] == f"{NS}/{NAME}"
    # A log the spec names is used as it is.
    own = {**ALIAS, "monitoring": {"predictionLog": "file:///mine"}}
    plan, _ = decide(body(own), registry.uri, prediction_log="s3://lake/predictions")
    container = applied(plan, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"]: e.get("value") for e in container["env"]}[
        "MODELYARD_PREDICTION_LOG"
    ] == "file:///mine"


def _env_from(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    spec = manifest["spec"]
    template = (
        spec["jobTemplate"]["spec"]["template"] if "jobTemplate" in spec else spec["template"]
    )
    return list(template["spec"]["containers"][0].get("envFrom", []))


def test_the_prediction_log_secret_reaches_the_servers_and_the_drift_check(
    registry: Registry,
) -> None:
    v1 = registry.version()
    registry.alias("champion", v1)
    monitoring = {"predictionLog": "s3://logs/p", "drift": {"schedule": "0 * * * *"}}
    spec = {**ALIAS, "monitoring": {**monitoring, "predictionLogSecretRef": {"name": "logs-s3"}}}
    status = live(registry, spec, v1)
    plan, _ = decide(
        body(spec, status), registry.uri, deployment=serving(v1), prediction_log_secret="all-s3"
    )
    wanted = [{"secretRef": {"name": "logs-s3"}}]  # the spec's wins over the operator's
    assert _env_from(applied(plan, "Deployment")) == wanted
    assert _env_from(applied(plan, "CronJob")) == wanted
    # Without one in the spec: the operator's (MODELYARD_PREDICTION_LOG_SECRET); neither: none.
    spec = {**ALIAS, "monitoring": monitoring}
    plan, _ = decide(
        body(spec, status), registry.uri, deployment=serving(v1), prediction_log_secret="all-s3"
    )
    assert _env_from(applied(plan, "Deployment")) == [{"secretRef": {"name": "all-s3"}}]
    plan, _ = decide(body(spec, status), registry.uri, deployment=serving(v1))
    assert _env_from(applied(plan, "Deployment")) == []
    assert _env_from(applied(plan, "CronJob")) == []


# --------------------------------------------------------------- registry credentials
ACCOUNTS = RegistryAccounts(
    {
        "modelyard-operator": "op-password-1234",
        "modelyard-pipelines": "pl-password-1234",
        "modelyard-server": "sv-password-1234",
        "modelyard-drift": "dr-password-1234",
    }
)


def _env_sources(manifest: dict[str, Any]) -> dict[str, str]:
    """Credential env of a pod template: variable -> the Secret it comes from."""
    spec = manifest["spec"]
    template = (
        spec["jobTemplate"]["spec"]["template"] if "jobTemplate" in spec else spec["template"]
    )
    return {
        e["name"]: e["valueFrom"]["secretKeyRef"]["name"]
        for e in template["spec"]["containers"][0]["env"]
        if "valueFrom" in e
    }


def test_servers_and_drift_get_their_own_registry_users_beside_the_deployment(
    registry: Registry,
) -> None:
    v1 = registry.version()
    registry.alias("champion", v1)
    spec = {
        **ALIAS,
        "monitoring": {"predictionLog": "file:///log", "drift": {"schedule": "0 * * * *"}},
    }
    first, _ = decide(body(spec), registry.uri, accounts=ACCOUNTS)
    done, _ = decide(
        body(spec, first.status), registry.uri, deployment=serving(v1), accounts=ACCOUNTS
    )
    secrets = {m["metadata"]["name"]: m for m in done.apply if m["kind"] == "Secret"}
    assert set(secrets) == {"churn-registry", "churn-drift-registry"}

    def user_of(secret: dict[str, Any]) -> tuple[str, str]:
        import base64

        data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        return data["MLFLOW_TRACKING_USERNAME"], data["MLFLOW_TRACKING_PASSWORD"]

    assert user_of(secrets["churn-registry"]) == ("modelyard-server", "sv-password-1234")
    assert user_of(secrets["churn-drift-registry"]) == ("modelyard-drift", "dr-password-1234")
    assert set(_env_sources(applied(done, "Deployment")).values()) == {"churn-registry"}
    assert set(_env_sources(applied(done, "CronJob")).values()) == {"churn-drift-registry"}
    # No password in any other child.
    others = [m for m in done.apply if m["kind"] != "Secret"]
    assert "password-1234" not in str(others)


def test_without_registry_users_no_credentials_are_given(registry: Registry) -> None:
    v1 = registry.version()
    registry.alias("champion", v1)
    plan, _ = decide(body(ALIAS), registry.uri)
    assert not [m for m in plan.apply if m["kind"] == "Secret"]
    assert _env_sources(applied(plan, "Deployment")) == {}


def test_the_servers_accept_only_their_namespace_and_the_allowed_ones(
    registry: Registry,
) -> None:
    v1 = registry.version()
    registry.alias("champion", v1)
    plan, _ = decide(body(ALIAS), registry.uri)
    policy = applied(plan, "NetworkPolicy")
    assert policy["spec"]["podSelector"] == applied(plan, "Deployment")["spec"]["selector"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [rule] = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {}}]
    assert rule["ports"] == [{"port": 3000, "protocol": "TCP"}]
