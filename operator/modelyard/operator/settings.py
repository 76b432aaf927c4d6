"""Operator settings, from the environment (the chart sets them on the Deployment)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from modelyard.core import contracts as c


class OperatorSettings(BaseModel):
    """How the operator behaves; every field has an environment variable."""

    # A validation error never quotes the input (it holds MODELYARD_WEBHOOK_SECRET).
    model_config = ConfigDict(hide_input_in_errors=True)

    # MODELYARD_DEFAULT_TRACKING_URI: registry used when spec.registry.trackingUri is unset.
    default_tracking_uri: str | None = None
    # MODELYARD_ALLOWED_REGISTRIES: other registries ModelDeployments may name in
    # spec.registry.trackingUri, comma-separated (scheme://host[:port][/path prefix]). The
    # default registry is always allowed; nothing else is, so a spec cannot make the
    # operator send requests (and a Secret's credentials) to a host of its choosing.
    allowed_registries: str = ""
    # MODELYARD_SERVER_IMAGE: model server image when spec.server.image is unset.
    server_image: str = c.SERVER_IMAGE
    # MODELYARD_SERVER_IMAGE_PULL_POLICY
    server_image_pull_policy: str = "IfNotPresent"
    # MODELYARD_RESOLVE_INTERVAL: seconds between re-resolving aliases and stages.
    resolve_interval: float = Field(default=30.0, gt=0)
    # MODELYARD_CLUSTER_DOMAIN: for the in-cluster URL in status.url.
    cluster_domain: str = "cluster.local"
    # MODELYARD_ROUTER_IMAGE: the router (nginx) put in front of a ModelDeployment's
    # variants while it has a canary or a shadow.
    router_image: str = c.ROUTER_IMAGE
    # MODELYARD_ROUTER_IMAGE_PULL_POLICY
    router_image_pull_policy: str = "IfNotPresent"
    # MODELYARD_TOOLKIT_IMAGE: image with the `modelyard` CLI, for the drift CronJobs.
    toolkit_image: str = c.TOOLKIT_IMAGE
    # MODELYARD_PREDICTION_LOG: fsspec base URL the servers log predictions under.
    prediction_log: str | None = None
    # MODELYARD_PREDICTION_LOG_SECRET: name of a Secret, in each ModelDeployment's
    # namespace, whose keys become environment variables of its servers and checks (the
    # log's storage credentials) when spec.monitoring.predictionLogSecretRef is unset.
    prediction_log_secret: str = ""
    # MODELYARD_MODEL_CACHE: fsspec URL of the model cache the servers keep their version
    # in (docs/serving.md, "Model cache"), for ModelDeployments without
    # spec.server.modelCache; e.g. s3://bucket/model-cache.
    model_cache: str | None = None
    # MODELYARD_MODEL_CACHE_VOLUME_CLAIM: instead, the name of a PersistentVolumeClaim that
    # exists in each ModelDeployment's namespace, mounted into the servers as the cache.
    model_cache_volume_claim: str | None = None
    # MODELYARD_MODEL_CACHE_SECRET: a Secret (in each ModelDeployment's namespace; optional)
    # whose keys become the servers' environment, e.g. the s3:// cache's credentials.
    model_cache_secret: str | None = None
    # MODELYARD_RECONCILE_WORKERS: threads reconciling ModelDeployments at once (each reconcile is a
    # few blocking calls; a slow registry holds at most this many).
    reconcile_workers: int = Field(default=8, ge=1, le=64)
    # MODELYARD_REGISTRY_TIMEOUT: seconds a registry call may take.
    registry_timeout: float = Field(default=10.0, gt=0)
    # MODELYARD_API_TIMEOUT: seconds a Kubernetes API call may take.
    api_timeout: float = Field(default=30.0, gt=0)
    # MODELYARD_REGISTRY_CREDENTIALS: "namespace/name" of the Secret with the passwords of
    # the installation's registry users (docs/security.md); empty: the registry has none.
    registry_credentials: str = ""
    # MODELYARD_REGISTRY_CREDENTIALS_CREATE: create that Secret, with random passwords,
    # when it is missing.
    registry_credentials_create: bool = True
    # MODELYARD_LEFTOVER_TAGS: "namespace/name" of the ConfigMap (in the operator's own
    # namespace) recording the registry tags a deleted ModelDeployment left because its
    # registry could not be reached; a periodic sweep removes them later. Empty: nothing
    # is recorded, such tags stay.
    leftover_tags: str = ""
    # MODELYARD_LEFTOVER_SWEEP_INTERVAL: seconds between passes of that sweep.
    leftover_sweep_interval: float = Field(default=300.0, gt=0)
    # MODELYARD_NETWORK_POLICIES: render a NetworkPolicy beside each ModelDeployment's
    # servers, admitting only their own namespace and MODELYARD_SERVER_CLIENT_NAMESPACES.
    network_policies: bool = True
    # MODELYARD_SERVER_CLIENT_NAMESPACES: comma-separated namespaces whose pods may call
    # every model server (the installation's own namespace, Prometheus's, ...).
    server_client_namespaces: str = ""
    # MODELYARD_MANAGE_CRDS: at start, apply the CRDs this operator was built with to the
    # cluster's (only existing ones, only forward in version; docs/install.md): Helm never
    # upgrades a chart's CRDs.
    manage_crds: bool = False
    # MODELYARD_CANARY_SCALE_DOWN_DELAY: seconds an aborted canary keeps its pods at weight
    # 0 (finishing the requests it has) before they are removed.
    canary_scale_down_delay: float = Field(default=30.0, ge=0)
    # MODELYARD_PROMETHEUS_URL: a Prometheus that scrapes the model servers; the canary
    # analysis asks it (PromQL) instead of scraping the servers' pods itself.
    prometheus_url: str = ""
    # MODELYARD_PROMETHEUS_NAMESPACE_LABEL: the label Prometheus's scrape configuration
    # puts a pod's namespace in (the servers' own series carry model name and version).
    prometheus_namespace_label: str = "namespace"
    # MODELYARD_SHADOW_COMPARE_SCHEDULE: when the CronJob comparing a shadow's answers with
    # the live version's runs (``modelyard shadow compare``; a cron expression).
    shadow_compare_schedule: str = "*/10 * * * *"
    # MODELYARD_SHADOW_COMPARE_WINDOW: how far back each comparison looks (90m, 24h, 7d).
    shadow_compare_window: str = Field(default="1h", pattern=c.WINDOW_PATTERN)
    # MODELYARD_METRICS_PORT: port of the operator's Prometheus /metrics (0: not served).
    metrics_port: int = Field(default=8081, ge=0, le=65535)
    # MODELYARD_WEBHOOK_PORT: port of the receiver of MLflow registry webhooks
    # (POST /webhooks/mlflow; docs/operations.md). 0: no receiver, polling only.
    webhook_port: int = Field(default=0, ge=0, le=65535)
    # MODELYARD_WEBHOOK_SECRET: the secret shared with MLflow that signs each delivery
    # (from a Secret; required with a webhook port). Never printed.
    webhook_secret: SecretStr = SecretStr("")
    # MODELYARD_WEBHOOK_TOLERANCE: seconds a delivery's timestamp may be off the
    # operator's clock; older (replayed) or later ones are refused.
    webhook_tolerance: float = Field(default=300.0, gt=0)

    @model_validator(mode="after")
    def _one_model_cache(self) -> OperatorSettings:
        if self.model_cache and self.model_cache_volume_claim:
            raise ValueError(
                "set MODELYARD_MODEL_CACHE or MODELYARD_MODEL_CACHE_VOLUME_CLAIM, not both "
                "(a volume claim is mounted and is the cache)"
            )
        return self

    @model_validator(mode="after")
    def _webhook_needs_a_secret(self) -> OperatorSettings:
        if self.webhook_port and not self.webhook_secret.get_secret_value():
            raise ValueError(
                "MODELYARD_WEBHOOK_PORT is set but MODELYARD_WEBHOOK_SECRET is empty: the "
                "webhook receiver would accept anyone's deliveries. Set the secret from a "
                "Secret (chart: operator.webhook.secretName)"
            )
        return self

    # MODELYARD_LEADER_ELECTION: of the replicas of `modelyard operator`, only the holder of
    # a coordination.k8s.io Lease acts; the others stand by (docs/operations.md, "High
    # availability"). false: this process acts at once, alone (never run two that way).
    leader_election: bool = True
    # MODELYARD_LEADER_ELECTION_LEASE: the Lease's name (the chart: the operator's fullname).
    leader_election_lease: str = "modelyard-operator"
    # MODELYARD_LEADER_ELECTION_NAMESPACE: the Lease's namespace; empty: the pod's own
    # (its service account's), else "default".
    leader_election_namespace: str = ""
    # MODELYARD_LEADER_ELECTION_LEASE_DURATION: seconds a standby waits after the Lease
    # was last renewed before taking it (the longest handover after a leader dies).
    leader_election_lease_duration: float = Field(default=15.0, gt=0)
    # MODELYARD_LEADER_ELECTION_RENEW_DEADLINE: seconds the leader keeps acting without a
    # successful renewal; then it stops (exits) before a standby may take over.
    leader_election_renew_deadline: float = Field(default=10.0, gt=0)
    # MODELYARD_LEADER_ELECTION_RETRY_PERIOD: seconds between attempts to renew or take it.
    leader_election_retry_period: float = Field(default=2.0, gt=0)
    # MODELYARD_POD_NAME: this replica's name in the Lease's holderIdentity (the chart sets
    # the pod's name; default: the host name), followed by a random suffix per process.
    pod_name: str = ""
    # MODELYARD_POD_IP: this replica's address (the chart sets the pod's IP). With
    # webhooks on, the leader announces <pod IP>:<webhook port> on the Lease, and a
    # standby forwards the deliveries the Service sends it there.
    pod_ip: str = ""

    @model_validator(mode="after")
    def _leader_election_timing(self) -> OperatorSettings:
        retry = self.leader_election_retry_period
        deadline = self.leader_election_renew_deadline
        duration = self.leader_election_lease_duration
        if not retry < deadline < duration:
            raise ValueError(
                "MODELYARD_LEADER_ELECTION_RETRY_PERIOD < _RENEW_DEADLINE < _LEASE_DURATION "
                f"is needed, got {retry} < {deadline} < {duration}"
            )
        return self

    @property
    def client_namespaces(self) -> list[str]:
        return [x for x in self.server_client_namespaces.replace(",", " ").split() if x]

    @property
    def credentials_secret_ref(self) -> tuple[str, str] | None:
        return _ref("MODELYARD_REGISTRY_CREDENTIALS", self.registry_credentials)

    @property
    def leftover_tags_ref(self) -> tuple[str, str] | None:
        return _ref("MODELYARD_LEFTOVER_TAGS", self.leftover_tags)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if env is None else env
        values: dict[str, str] = {}
        for name in cls.model_fields:
            key = f"MODELYARD_{name.upper()}"
            if env.get(key):
                values[name] = env[key]
        return cls.model_validate(values)


def _ref(variable: str, value: str) -> tuple[str, str] | None:
    """A "namespace/name" setting; None when empty."""
    if not value:
        return None
    namespace, _, name = value.partition("/")
    if not namespace or not name:
        raise ValueError(f"{variable} must be namespace/name, got {value!r}")
    return namespace, name
