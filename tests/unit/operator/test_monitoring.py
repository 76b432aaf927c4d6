"""Drift monitoring without a cluster: the CronJob, the spec, the episode logic."""

from __future__ import annotations

from typing import Any

import pytest

from modelyard.core.registry import ModelVersion
from modelyard.operator.children import ServerPlan, build_server_deployment
from modelyard.operator.monitoring import (
    DriftResult,
    assess,
    build_drift_cronjob,
    build_retrain_job,
    drift_cronjob_name,
    retrain_job_name,
)
from modelyard.operator.resource import DriftMonitoring, ModelDeploymentSpec, Retrain, SpecError

BASE: dict[str, Any] = {"model": {"name": "churn", "alias": "champion"}}


def plan(spec: dict[str, Any], version: int = 7, **kw: Any) -> ServerPlan:
    return ServerPlan(
        name="churn",
        namespace="ml",
        spec=ModelDeploymentSpec.parse(spec),
        model=ModelVersion("churn", version, "r1", "x", "READY"),
        tracking_uri="http://mlflow:5000",
        image="modelyard/server:1",
        image_pull_policy="IfNotPresent",
        **kw,
    )


def drift_spec(**drift: Any) -> dict[str, Any]:
    return {**BASE, "monitoring": {"drift": drift}}


def cronjob(spec: dict[str, Any], version: int = 7) -> dict[str, Any]:
    ref = spec.get("registry", {}).get("credentialsSecretRef")
    p = plan(spec, version, drift_credentials_secret=ref["name"] if ref else None)
    drift = p.spec.monitoring.drift
    assert drift is not None
    return build_drift_cronjob(
        p,
        drift,
        prediction_log="s3://lake/predictions",
        image="modelyard/toolkit:1",
        image_pull_policy="IfNotPresent",
    )


def test_spec_defaults_and_validation() -> None:
    drift = ModelDeploymentSpec.parse(drift_spec()).monitoring.drift
    assert drift is not None
    assert (drift.schedule, drift.window, drift.thresholds.drift_share) == ("0 * * * *", "24h", 0.5)
    assert drift.retrain is None
    assert ModelDeploymentSpec.parse(BASE).monitoring.drift is None
    with pytest.raises(SpecError, match=r"spec\.monitoring\.drift\.window"):
        ModelDeploymentSpec.parse(drift_spec(window="1 week"))
    with pytest.raises(SpecError, match=r"spec\.monitoring\.drift\.thresholds\.driftShare"):
        ModelDeploymentSpec.parse(drift_spec(thresholds={"driftShare": 1.5}))


def test_drift_cronjob_checks_the_live_version_restricted_and_without_a_token() -> None:
    spec = drift_spec(schedule="*/30 * * * *", window="7d", thresholds={"driftShare": 0.3}) | {
        "registry": {"credentialsSecretRef": {"name": "mlflow-creds"}}
    }
    cj = cronjob(spec)
    assert cj["kind"] == "CronJob" and cj["metadata"]["name"] == "churn-drift"
    assert cj["spec"]["schedule"] == "*/30 * * * *"
    assert cj["spec"]["concurrencyPolicy"] == "Forbid"
    job = cj["spec"]["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == "modelyard/toolkit:1"
    assert container["command"] == ["modelyard"]
    args = container["args"]
    assert args[:2] == ["drift", "check"]
    opts = dict(zip(args[2::2], args[3::2], strict=False))
    assert opts["--model"] == "churn" and opts["--version"] == "7"
    assert opts["--prediction-log"] == "s3://lake/predictions"
    assert opts["--window"] == "7d" and opts["--drift-share"] == "0.3"
    assert "--log-to-mlflow" in args and "--json" in args
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow:5000"
    assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-creds"
    # Pod Security "restricted", no API token: the job only talks to MLflow.
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert pod["restartPolicy"] == "Never"
    # Bad input and "not checked" are not retried; the verdict itself never fails the Job.
    [rule] = job["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [2, 4]
    assert opts["--fail-on"] == "never"


def test_drift_pod_memory_comes_from_the_spec_and_the_budget_from_its_limit() -> None:
    def resources_and_budget(spec: dict[str, Any]) -> tuple[dict[str, Any], str]:
        [container] = cronjob(spec)["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        args = container["args"]
        return container["resources"], args[args.index("--memory-budget") + 1]

    assert resources_and_budget(drift_spec()) == (
        {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
        "1Gi",
    )
    raised = drift_spec(resources={"requests": {"memory": "3Gi"}, "limits": {"memory": "6Gi"}})
    assert resources_and_budget(raised) == (
        {"requests": {"cpu": "250m", "memory": "3Gi"}, "limits": {"memory": "6Gi"}},
        "3Gi",
    )
    assert resources_and_budget(drift_spec(resources={"limits": {"memory": "1500M"}}))[1] == "715Mi"
    with pytest.raises(SpecError, match=r"at least 512Mi"):
        ModelDeploymentSpec.parse(drift_spec(resources={"limits": {"memory": "256Mi"}}))
    with pytest.raises(SpecError, match=r"must not exceed limits\.memory"):
        ModelDeploymentSpec.parse(
            drift_spec(resources={"requests": {"memory": "3Gi"}, "limits": {"memory": "2Gi"}})
        )


def test_drift_pods_are_never_selected_by_the_server_service() -> None:
    cj = cronjob(drift_spec())
    pod_labels = cj["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    selector = build_server_deployment(plan(drift_spec()))["spec"]["selector"]["matchLabels"]
    assert not all(pod_labels.get(k) == v for k, v in selector.items())


def test_drift_cronjob_follows_the_live_version() -> None:
    before = cronjob(drift_spec(), version=7)["spec"]["jobTemplate"]["spec"]["template"]
    after = cronjob(drift_spec(), version=8)["spec"]["jobTemplate"]["spec"]["template"]
    assert "7" in before["spec"]["containers"][0]["args"]
    assert "8" in after["spec"]["containers"][0]["args"]
    assert after["metadata"]["annotations"]["modelyard.io/model-version"] == "8"


def test_cronjob_name_fits_the_52_character_limit() -> None:
    assert drift_cronjob_name("churn") == "churn-drift"
    long = drift_cronjob_name("x" * 52)
    assert len(long) <= 52 and long.endswith("-drift")
    assert long != drift_cronjob_name("x" * 51 + "y")


def test_server_logs_predictions_where_the_spec_says() -> None:
    p = plan({**BASE, "monitoring": {"predictionLog": "s3://lake/p"}}, prediction_log="s3://lake/p")
    env = {
        e["name"]: e
        for e in build_server_deployment(p)["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["MODELYARD_PREDICTION_LOG"]["value"] == "s3://lake/p"


def tags(run: str, **kw: str) -> dict[str, str]:
    base = {
        "modelyard.drift.last_run_id": run,
        "modelyard.drift.last_checked": "2026-11-28T10:00:00Z",
        "modelyard.drift.last_status": "ok",
        "modelyard.drift.last_dataset_drift": "true",
        "modelyard.drift.last_prediction_drift": "false",
        "modelyard.drift.last_drifted_columns": "amount,tenure",
        "modelyard.drift.last_share_of_drifted_columns": "0.666667",
        "modelyard.drift.last_message": "2 of 3 columns drifted",
    }
    return base | {f"modelyard.drift.last_{k}": v for k, v in kw.items()}


DRIFT = DriftMonitoring.model_validate({"retrain": {"cronJobName": "train-churn"}})


def test_no_check_yet_is_pending_not_no_drift() -> None:
    assert DriftResult.from_tags({"other": "x"}) is None
    a = assess(None, None, 7, DRIFT)
    assert (a.condition_status, a.reason, a.start_retrain) == (None, "Pending", False)


def test_drift_starts_an_episode_and_one_retrain() -> None:
    result = DriftResult.from_tags(tags("run1"))
    assert result is not None and result.drift_found
    a = assess(result, None, 7, DRIFT)
    assert (a.condition_status, a.reason) == (True, "DriftDetected")
    assert "amount, tenure" in a.message
    assert a.status["driftedColumns"] == ["amount", "tenure"]
    assert a.status["share"] == pytest.approx(0.666667)
    assert a.status["reportUri"] == "runs:/run1/drift/report.html"
    assert a.status["episode"] == {"runId": "run1", "startedAt": "2026-11-28T10:00:00Z"}
    assert a.start_retrain

    # The Job was started and recorded: later checks of the same episode start none.
    recorded = {**a.status, "retrainJob": "train-churn-abc"}
    again = assess(DriftResult.from_tags(tags("run2")), recorded, 7, DRIFT)
    assert again.status["episode"]["runId"] == "run1"
    assert again.status["retrainJob"] == "train-churn-abc"
    assert not again.start_retrain


def test_not_checked_neither_starts_nor_ends_an_episode() -> None:
    in_episode = {"version": 7, "episode": {"runId": "run1"}, "retrainJob": "j"}
    r = DriftResult.from_tags(
        tags("run2", status="no_data", dataset_drift="none", message="the window has no rows")
    )
    a = assess(r, in_episode, 7, DRIFT)
    assert (a.condition_status, a.reason) == (None, "NotChecked")
    assert "no_data" in a.message and "the window has no rows" in a.message
    assert a.status["episode"] == {"runId": "run1"} and not a.start_retrain
    fresh = assess(r, None, 7, DRIFT)
    assert "episode" not in fresh.status and not fresh.start_retrain


def test_no_drift_ends_the_episode_and_a_new_version_starts_afresh() -> None:
    in_episode = {"version": 7, "episode": {"runId": "run1"}, "retrainJob": "j"}
    calm = DriftResult.from_tags(tags("run3", dataset_drift="false", drifted_columns=""))
    a = assess(calm, in_episode, 7, DRIFT)
    assert (a.condition_status, a.reason) == (False, "NoDrift")
    assert "episode" not in a.status and "retrainJob" not in a.status
    # Drift again after the calm check: a new episode, a new Job.
    again = assess(DriftResult.from_tags(tags("run4")), a.status, 7, DRIFT)
    assert again.status["episode"]["runId"] == "run4" and again.start_retrain
    # Another version went live: its drift is a new episode.
    other = assess(DriftResult.from_tags(tags("run5")), in_episode, 8, DRIFT)
    assert other.status["episode"]["runId"] == "run5" and other.start_retrain


def test_without_retrain_no_job_is_due() -> None:
    a = assess(DriftResult.from_tags(tags("run1")), None, 7, DriftMonitoring())
    assert a.reason == "DriftDetected" and not a.start_retrain


def test_retrain_job_comes_from_the_cronjob_template_once_per_episode() -> None:
    cron = {
        "metadata": {"name": "train-churn", "namespace": "ml", "uid": "u-1"},
        "spec": {
            "suspend": True,
            "jobTemplate": {
                "metadata": {"labels": {"app": "train"}},
                "spec": {"backoffLimit": 0, "template": {"spec": {"containers": []}}},
            },
        },
    }
    retrain = Retrain.model_validate({"cronJobName": "train-churn"})
    name = retrain_job_name(retrain, "md-uid", "run1")
    assert name == retrain_job_name(retrain, "md-uid", "run1")
    assert name != retrain_job_name(retrain, "md-uid", "run9")
    assert name.startswith("train-churn-") and len(name) <= 63
    job = build_retrain_job(cron, name, "churn", "run1")
    assert job["kind"] == "Job" and job["metadata"]["name"] == name
    assert job["spec"] == cron["spec"]["jobTemplate"]["spec"]  # type: ignore[index]
    assert job["metadata"]["labels"]["app"] == "train"
    assert job["metadata"]["annotations"]["modelyard.io/drift-run-id"] == "run1"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-1"
