"""What the chart runs: the operator, MLflow, the pipelines and the `helm test` pod."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelyard._version import __version__ as V
from tests.unit.chart.rendering import (
    CHART,
    CI_VALUES,
    env_of,
    find,
    one,
    pod_spec,
    render,
    workloads,
)

OPERATOR = "my-modelyard-operator"
MLFLOW = "my-modelyard-mlflow"
MLFLOW_URL = "http://my-modelyard-mlflow.ml.svc:5000"


def container(obj: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """The workload's own container (the first), or the one named ``name``."""
    containers = pod_spec(obj)["containers"]
    if name is None:
        return dict(containers[0])
    [found] = [c for c in containers if c["name"] == name]
    return dict(found)


def args_of(obj: dict[str, Any]) -> dict[str, str]:
    """--name=value arguments of the container."""
    return dict(arg[2:].split("=", 1) for arg in container(obj)["args"] if "=" in arg)


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_every_pod_is_restricted(values: Path) -> None:
    """The Pod Security "restricted" profile, field by field (the integration tests also
    let the real admission controller judge)."""
    objects = list(workloads(render("--values", str(values))))
    assert objects
    for obj in objects:
        spec = pod_spec(obj)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 10001
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, obj["metadata"]["name"]
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["runAsNonRoot"] is True
            assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
            assert "resources" in c
        assert {"name": "tmp", "emptyDir": {}} in spec["volumes"]
        # Only the operator and the pipelines' orchestrators talk to the API server.
        talks = obj["metadata"]["name"] == OPERATOR or obj["kind"] == "CronJob"
        assert spec["automountServiceAccountToken"] is talks, obj["metadata"]["name"]


def test_operator(default_objects: list[dict[str, Any]]) -> None:
    deployment = one(default_objects, "Deployment", OPERATOR)
    # Two replicas, one acts (the Lease's holder); an update replaces one pod at a time.
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    c = container(deployment)
    assert c["image"] == f"ghcr.io/modelyard/modelyard/operator:{V}"  # the published image
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert c["command"] == ["modelyard", "operator"]
    assert "--liveness=http://0.0.0.0:8080/healthz" in c["args"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    # A standby answers it too: Ready, so rollouts and the PodDisruptionBudget count it.
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    pdb = one(default_objects, "PodDisruptionBudget", OPERATOR)
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    pod_name = next(e for e in c["env"] if e["name"] == "MODELYARD_POD_NAME")
    assert pod_name["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert c["ports"] == [
        {"name": "health", "containerPort": 8080, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 8081, "protocol": "TCP"},
    ]
    assert deployment["spec"]["template"]["metadata"]["labels"]["modelyard.io/registry-client"] == (
        "true"
    )
    env = env_of(c)
    assert env["MODELYARD_DEFAULT_TRACKING_URI"] == MLFLOW_URL
    assert env["MODELYARD_SERVER_IMAGE"] == f"ghcr.io/modelyard/modelyard/server:{V}"
    assert env["MODELYARD_SERVER_IMAGE_PULL_POLICY"] == "IfNotPresent"
    assert env["MODELYARD_RESOLVE_INTERVAL"] == "30"
    assert env["MODELYARD_METRICS_PORT"] == "8081"
    assert env["MODELYARD_TOOLKIT_IMAGE"] == f"ghcr.io/modelyard/modelyard/toolkit:{V}"
    assert env["MODELYARD_ROUTER_IMAGE"] == f"ghcr.io/modelyard/modelyard/router:{V}"
    assert env["MODELYARD_ROUTER_IMAGE_PULL_POLICY"] == "IfNotPresent"
    # No Prometheus named: the canary analysis reads the servers' pods itself.
    assert "MODELYARD_PROMETHEUS_URL" not in env
    assert env["MODELYARD_PROMETHEUS_NAMESPACE_LABEL"] == "namespace"
    assert env["MODELYARD_SHADOW_COMPARE_SCHEDULE"] == "*/10 * * * *"
    assert env["MODELYARD_SHADOW_COMPARE_WINDOW"] == "1h"
    assert env["MODELYARD_LEADER_ELECTION_LEASE_DURATION"] == "15"
    assert env["MODELYARD_LEADER_ELECTION_RENEW_DEADLINE"] == "10"
    assert env["MODELYARD_LEADER_ELECTION_RETRY_PERIOD"] == "2"
    assert pod_spec(deployment)["serviceAccountName"] == OPERATOR
    service = one(default_objects, "Service", OPERATOR)
    assert service["spec"]["ports"][0]["port"] == 8080


def test_operator_settings_from_values() -> None:
    objects = render(
        "--set",
        "operator.resolveInterval=5",
        "--set",
        "operator.predictionLog=s3://logs/predictions",
        "--set",
        "image.server.tag=2.0.0",
        "--set",
        "operator.verbose=true",
        "--set",
        "operator.prometheus.url=http://prometheus.monitoring:9090",
        "--set",
        "operator.prometheus.namespaceLabel=kubernetes_namespace",
    )
    c = container(one(objects, "Deployment", OPERATOR))
    env = env_of(c)
    assert env["MODELYARD_PROMETHEUS_URL"] == "http://prometheus.monitoring:9090"
    assert env["MODELYARD_PROMETHEUS_NAMESPACE_LABEL"] == "kubernetes_namespace"
    assert env["MODELYARD_RESOLVE_INTERVAL"] == "5"
    assert env["MODELYARD_PREDICTION_LOG"] == "s3://logs/predictions"
    assert env["MODELYARD_SERVER_IMAGE"] == "ghcr.io/modelyard/modelyard/server:2.0.0"
    assert "--verbose" in c["args"]


def test_one_operator_replica_has_no_disruption_budget() -> None:
    objects = render("--set", "operator.replicas=1")
    assert one(objects, "Deployment", OPERATOR)["spec"]["replicas"] == 1
    assert not [o for o in objects if o["kind"] == "PodDisruptionBudget"]


def test_mlflow_embedded(default_objects: list[dict[str, Any]]) -> None:
    deployment = one(default_objects, "Deployment", MLFLOW)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    c = container(deployment)
    assert c["command"] == ["mlflow", "server"]
    args = args_of(deployment)
    assert args["backend-store-uri"] == "sqlite:////var/lib/mlflow/mlflow.db"
    assert args["artifacts-destination"] == "/var/lib/mlflow/artifacts"
    assert "--serve-artifacts" in c["args"]
    assert args["host"] == "0.0.0.0"
    assert args["port"] == "5000"
    hosts = args["allowed-hosts"].split(",")
    for name in (MLFLOW, f"{MLFLOW}.ml", f"{MLFLOW}.ml.svc", f"{MLFLOW}.ml.svc.cluster.local"):
        assert name in hosts
        assert f"{name}:5000" in hosts
    assert "localhost:*" in hosts
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert {"name": "data", "mountPath": "/var/lib/mlflow"} in c["volumeMounts"]
    claim = one(default_objects, "PersistentVolumeClaim", MLFLOW)
    assert "storageClassName" not in claim["spec"]  # the default StorageClass
    assert one(default_objects, "Service", MLFLOW)["spec"]["ports"][0]["port"] == 5000


def test_mlflow_postgres_and_s3_credentials_only_from_secrets() -> None:
    values = CHART / "ci" / "external-postgres-s3-values.yaml"
    objects = render("--values", str(values))
    deployment = one(objects, "Deployment", MLFLOW)
    args = args_of(deployment)
    assert args["backend-store-uri"] == "postgresql+psycopg://postgres.databases.svc:5432/mlflow"
    assert args["artifacts-destination"] == "s3://mlflow/artifacts"
    assert "mlflow.example.com" in args["allowed-hosts"].split(",")
    env = env_of(container(deployment))
    assert env["PGUSER"] == {"secretKeyRef": {"name": "mlflow-postgres", "key": "username"}}
    assert env["PGPASSWORD"] == {"secretKeyRef": {"name": "mlflow-postgres", "key": "password"}}
    assert env["PGSSLMODE"] == "require"
    assert env["AWS_ACCESS_KEY_ID"] == {
        "secretKeyRef": {"name": "mlflow-s3", "key": "AWS_ACCESS_KEY_ID"}
    }
    assert env["AWS_SECRET_ACCESS_KEY"] == {
        "secretKeyRef": {"name": "mlflow-s3", "key": "AWS_SECRET_ACCESS_KEY"}
    }
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio.storage.svc:9000"
    # Nothing local: no volume for MLflow.
    assert find(objects, "PersistentVolumeClaim", MLFLOW) == []
    assert all(v["name"] != "data" for v in pod_spec(deployment)["volumes"])
    assert find(objects, "Secret") == []


def test_the_study_storage_runs_beside_mlflow_where_the_registry_keeps_its_data(
    default_objects: list[dict[str, Any]],
) -> None:
    """pipelines.tuning.storage.proxy: Optuna's gRPC proxy in MLflow's pod, on its claim
    (SQLite) or on the registry's PostgreSQL server; the pipelines get its address. With
    your own database (existingSecret) there is no proxy and the URL comes from it."""
    deployment = one(default_objects, "Deployment", MLFLOW)
    proxy = container(deployment, "study-storage")
    assert proxy["command"] == ["modelyard", "pipeline", "study-storage"]
    assert proxy["args"] == ["--url=sqlite:////var/lib/mlflow/studies.db", "--port=50051"]
    assert {"name": "data", "mountPath": "/var/lib/mlflow"} in proxy["volumeMounts"]
    assert "readinessProbe" not in proxy  # the registry's readiness does not wait for it
    ports = one(default_objects, "Service", MLFLOW)["spec"]["ports"]
    assert {"name": "studies", "port": 50051, "targetPort": "studies", "protocol": "TCP"} in ports
    pipelines = [
        c
        for c in find(default_objects, "CronJob")
        if "modelyard.io/pipeline" in c["metadata"]["labels"]
    ]
    assert pipelines
    for cronjob in pipelines:
        env = env_of(container(cronjob))
        assert env["MODELYARD_STUDY_STORAGE"] == f"grpc://{MLFLOW}:50051"

    on_postgres = render("--values", str(CHART / "ci" / "external-postgres-s3-values.yaml"))
    proxy = container(one(on_postgres, "Deployment", MLFLOW), "study-storage")
    assert proxy["args"][0] == "--url=postgresql+psycopg://postgres.databases.svc:5432/optuna"
    assert env_of(proxy)["PGPASSWORD"] == {
        "secretKeyRef": {"name": "mlflow-postgres", "key": "password"}
    }
    assert "volumeMounts" not in proxy or all(m["name"] != "data" for m in proxy["volumeMounts"])

    own = render("--set", "pipelines.tuning.storage.existingSecret=optuna-url")
    names = [c["name"] for c in pod_spec(one(own, "Deployment", MLFLOW))["containers"]]
    assert names == ["mlflow"]
    assert [p["name"] for p in one(own, "Service", MLFLOW)["spec"]["ports"]] == ["http"]
    [cronjob, *_] = [
        c for c in find(own, "CronJob") if "modelyard.io/pipeline" in c["metadata"]["labels"]
    ]
    assert env_of(container(cronjob))["MODELYARD_STUDY_STORAGE"] == {
        "secretKeyRef": {"name": "optuna-url", "key": "url"}
    }


def test_highly_available_registry_and_model_cache() -> None:
    """PostgreSQL and S3 let MLflow run more than one replica (rolling, with a disruption
    budget); the model cache's settings reach the operator, which passes them on."""
    objects = render("--values", str(CHART / "ci" / "ha-registry-values.yaml"))
    deployment = one(objects, "Deployment", MLFLOW)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate"}
    budget = one(objects, "PodDisruptionBudget", MLFLOW)
    assert budget["spec"]["minAvailable"] == 1
    assert (
        budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    )
    env = env_of(container(one(objects, "Deployment", OPERATOR)))
    assert env["MODELYARD_MODEL_CACHE"] == "s3://models/model-cache"
    assert env["MODELYARD_MODEL_CACHE_SECRET"] == "model-cache-s3"
    assert "MODELYARD_MODEL_CACHE_VOLUME_CLAIM" not in env


def test_model_cache_on_a_volume_claim() -> None:
    objects = render("--set", "operator.modelCache.volumeClaim=model-cache")
    env = env_of(container(one(objects, "Deployment", OPERATOR)))
    assert env["MODELYARD_MODEL_CACHE_VOLUME_CLAIM"] == "model-cache"
    assert "MODELYARD_MODEL_CACHE" not in env


def test_no_model_cache_and_one_mlflow_by_default(default_objects: list[dict[str, Any]]) -> None:
    env = env_of(container(one(default_objects, "Deployment", OPERATOR)))
    assert not [name for name in env if name.startswith("MODELYARD_MODEL_CACHE")]
    assert find(default_objects, "PodDisruptionBudget", MLFLOW) == []


def test_samples_as_cronjobs(default_objects: list[dict[str, Any]]) -> None:
    samples = sorted((CHART / "files" / "pipelines").glob("*.yaml"))
    cronjobs = find(default_objects, "CronJob")
    assert len(cronjobs) == len(samples)
    for sample in samples:
        definition = yaml.safe_load(sample.read_text())
        name = definition["name"]
        cronjob = one(default_objects, "CronJob", f"my-modelyard-{name}")
        assert cronjob["spec"]["schedule"] == definition["schedule"]
        assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
        c = container(cronjob)
        assert c["command"] == ["modelyard", "pipeline", "run"]
        assert c["args"] == ["/etc/modelyard/pipeline.yaml"]
        env = env_of(c)
        assert env["MLFLOW_TRACKING_URI"] == MLFLOW_URL
        assert env["MODELYARD_LAKE"] == "/var/lib/modelyard/lake"
        assert {"name": "lake", "mountPath": "/var/lib/modelyard/lake"} in c["volumeMounts"]
        # The pod orchestrates (small); each step Job gets the pipeline's resources.
        assert env["MODELYARD_EXECUTOR"] == "kubernetes"
        assert json.loads(env["MODELYARD_STEP_RESOURCES"]) == definition["resources"]
        assert c["resources"] == {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"memory": "512Mi"},
        }
        config_map = one(default_objects, "ConfigMap", f"my-modelyard-{name}-pipeline")
        assert config_map["data"]["pipeline.yaml"] == sample.read_text().rstrip("\n")
        volumes = {v["name"]: v for v in pod_spec(cronjob)["volumes"]}
        assert volumes["pipeline"]["configMap"]["name"] == config_map["metadata"]["name"]
        assert volumes["lake"]["persistentVolumeClaim"]["claimName"] == "my-modelyard-lake"
    one(default_objects, "PersistentVolumeClaim", "my-modelyard-lake")


def test_a_definition_named_as_a_sample_replaces_it() -> None:
    sample = CHART / "files" / "pipelines" / "churn-tuned.yaml"
    objects = render(
        "--set-file",
        f"pipelines.definitions.churn-tuned.definition={sample}",
        "--set",
        "pipelines.definitions.churn-tuned.schedule=30 2 * * *",
        "--set",
        "pipelines.definitions.churn-tuned.suspend=true",
    )
    tuned = one(objects, "CronJob", "my-modelyard-churn-tuned")
    assert (tuned["spec"]["schedule"], tuned["spec"]["suspend"]) == ("30 2 * * *", True)
    # The other sample stays as shipped.
    assert one(objects, "CronJob", "my-modelyard-churn")["spec"]["suspend"] is False


def test_no_pipelines() -> None:
    objects = render("--values", str(CHART / "ci" / "no-pipelines-values.yaml"))
    assert find(objects, "CronJob") == []
    # Only MLflow's own configuration (its users, docs/security.md); no pipeline files.
    assert [cm["metadata"]["name"] for cm in find(objects, "ConfigMap")] == [
        "my-modelyard-mlflow-auth"
    ]
    assert find(objects, "PersistentVolumeClaim", "my-modelyard-lake") == []


def test_own_pipelines() -> None:
    objects = render("--values", str(CHART / "ci" / "custom-pipelines-values.yaml"))
    fraud = one(objects, "CronJob", "my-modelyard-fraud")
    assert fraud["spec"]["schedule"] == "15 1 * * *"
    assert fraud["spec"]["timeZone"] == "Europe/Berlin"
    assert fraud["spec"]["suspend"] is True
    assert fraud["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] == 900 + 120
    c = container(fraud)
    assert c["image"] == "registry.example.com/modelyard/toolkit:0.2.0"  # the tag the values pin
    assert c["imagePullPolicy"] == "Always"
    assert env_of(c)["MODELYARD_LAKE"] == "s3://lake-bucket/modelyard"
    assert c["envFrom"] == [{"secretRef": {"name": "pipeline-credentials"}}]
    assert pod_spec(fraud)["imagePullSecrets"] == [{"name": "regcred"}]
    in_image = one(objects, "CronJob", "my-modelyard-churn-in-image")
    c = container(in_image)
    assert c["args"] == ["/opt/pipelines/churn.yaml", "--skip=generate"]
    assert json.loads(env_of(c)["MODELYARD_STEP_RESOURCES"]) == {
        "requests": {"cpu": "1", "memory": "2Gi"}
    }
    assert {v["name"] for v in pod_spec(in_image)["volumes"]} == {"tmp"}
    assert [
        cm["metadata"]["name"]
        for cm in find(objects, "ConfigMap")
        if "pipeline" in cm["metadata"]["name"]
    ] == ["my-modelyard-fraud-pipeline"]
    assert find(objects, "PersistentVolumeClaim", "my-modelyard-lake") == []
    # A file only in the image: the chart cannot read its timeout, yet the run has one.
    assert in_image["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] == 21600


@pytest.mark.parametrize(
    "values", [None, "custom-pipelines-values.yaml", "external-mlflow-values.yaml"]
)
def test_every_pipeline_run_has_deadlines(values: str | None) -> None:
    """With concurrencyPolicy Forbid one hung run blocks every later one, unless each run
    has a deadline (and a missed start gives up instead of piling up)."""
    objects = render(*(["--values", str(CHART / "ci" / values)] if values else []))
    cronjobs = find(objects, "CronJob")
    assert cronjobs
    for cronjob in cronjobs:
        spec = cronjob["spec"]
        assert spec["concurrencyPolicy"] == "Forbid"
        assert spec["startingDeadlineSeconds"] == 600
        deadline = spec["jobTemplate"]["spec"]["activeDeadlineSeconds"]
        assert isinstance(deadline, int) and 120 < deadline <= 86400, cronjob["metadata"]


def test_external_mlflow() -> None:
    objects = render("--values", str(CHART / "ci" / "external-mlflow-values.yaml"))
    assert find(objects, "Deployment", MLFLOW) == []
    assert find(objects, "PersistentVolumeClaim", MLFLOW) == []
    env = env_of(container(one(objects, "Deployment", OPERATOR)))
    assert env["MODELYARD_DEFAULT_TRACKING_URI"] == "https://mlflow.example.com"
    for cronjob in find(objects, "CronJob"):
        assert env_of(container(cronjob))["MLFLOW_TRACKING_URI"] == "https://mlflow.example.com"
    test_pod = one(objects, "Pod")
    assert "MLFLOW_URL" not in env_of(container(test_pod))


def test_helm_test_pod(default_objects: list[dict[str, Any]]) -> None:
    pod = one(default_objects, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    env = env_of(container(pod))
    assert env["OPERATOR_URL"] == "http://my-modelyard-operator.ml.svc:8080/healthz"
    assert env["MLFLOW_URL"] == f"{MLFLOW_URL}/health"


def test_labels(default_objects: list[dict[str, Any]]) -> None:
    for obj in default_objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "modelyard"
        assert labels["app.kubernetes.io/instance"] == "my"
        assert labels["app.kubernetes.io/version"] == V
        assert labels["app.kubernetes.io/part-of"] == "modelyard"
        assert labels["app.kubernetes.io/component"]


def test_images_come_from_the_registry_value() -> None:
    def images(*args: str) -> set[str]:
        objects = render(*args)
        return {
            c["image"]
            for o in objects
            if o["kind"] in ("Deployment", "CronJob")
            for c in container_list(o)
        }

    assert images() == {
        f"ghcr.io/modelyard/modelyard/operator:{V}",
        f"ghcr.io/modelyard/modelyard/toolkit:{V}",
    }
    # The node's own images (make demo, the e2e tests): the bare names.
    assert images("--set", "image.registry=") == {
        f"modelyard/operator:{V}",
        f"modelyard/toolkit:{V}",
    }
    # A repository that names its registry is used as it is.
    assert f"mirror.example.com:5000/ml/toolkit:{V}" in images(
        "--set", "image.toolkit.repository=mirror.example.com:5000/ml/toolkit"
    )


def container_list(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj["spec"]
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod = spec["template"]["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]
