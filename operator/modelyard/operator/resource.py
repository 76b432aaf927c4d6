"""The ModelDeployment spec as typed models, parsed once at the edge.

They mirror ``manifests/crds/modeldeployments.modelyard.io.yaml``; the API server has
already enforced the schema and the CEL rules, so parsing here only fails for objects
written before the CRD was installed or with validation turned off.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from modelyard.core import contracts as c
from modelyard.core.contracts import MEMORY_PATTERN, WINDOW_PATTERN
from modelyard.core.registry import ModelReference

GROUP = "modelyard.io"
VERSION = "v1alpha1"
PLURAL = "modeldeployments"
KIND = "ModelDeployment"
APPROVAL_PLURAL = "modelapprovals"
APPROVAL_KIND = "ModelApproval"


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


class ModelRef(_Model):
    """A registered model plus exactly one of version, alias or stage."""

    name: str = Field(min_length=1)
    version: int | None = Field(default=None, ge=1)
    alias: str | None = None
    stage: Literal["Staging", "Production", "Archived"] | None = None

    @model_validator(mode="after")
    def _exactly_one_reference(self) -> ModelRef:
        try:
            self.to_reference()
        except ValueError:
            raise ValueError("spec.model must set exactly one of version, alias or stage") from None
        return self

    @property
    def label(self) -> str:
        """How ``kubectl get md`` shows the reference: ``alias:champion``."""
        return self.to_reference().label

    @property
    def is_floating(self) -> bool:
        return self.to_reference().is_floating

    def to_reference(self) -> ModelReference:
        return ModelReference(self.name, self.version, self.alias, self.stage)


class SecretRef(_Model):
    name: str


class Registry(_Model):
    tracking_uri: str | None = Field(default=None, alias="trackingUri")
    credentials_secret_ref: SecretRef | None = Field(default=None, alias="credentialsSecretRef")


class Autoscaling(_Model):
    min_replicas: int = Field(default=1, ge=1, alias="minReplicas")
    max_replicas: int = Field(ge=1, alias="maxReplicas")
    target_cpu_utilization_percentage: int = Field(
        default=70, ge=1, le=100, alias="targetCPUUtilizationPercentage"
    )


class EnvVar(_Model):
    name: str
    value: str = ""


class ModelCacheSpec(_Model):
    """``spec.server.modelCache``: where the servers keep the version they serve."""

    enabled: bool = True
    url: str | None = Field(default=None, min_length=1)
    volume_claim: str | None = Field(default=None, min_length=1, alias="volumeClaim")
    secret_ref: SecretRef | None = Field(default=None, alias="secretRef")

    @model_validator(mode="after")
    def _one_place(self) -> ModelCacheSpec:
        if self.url is not None and self.volume_claim is not None:
            raise ValueError("spec.server.modelCache: set url or volumeClaim, not both")
        if self.enabled and self.url is None and self.volume_claim is None:
            raise ValueError("spec.server.modelCache: with enabled true, set url or volumeClaim")
        return self


class Server(_Model):
    image: str | None = None
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, alias="imagePullPolicy"
    )
    replicas: int | None = Field(default=None, ge=0)
    resources: dict[str, dict[str, int | str]] = Field(default_factory=dict)
    autoscaling: Autoscaling | None = None
    env: tuple[EnvVar, ...] = ()
    # Load formats that run code (docs/security.md).
    allow_pickle: bool = Field(default=False, alias="allowPickle")
    # None: the operator's default cache (MODELYARD_MODEL_CACHE*), if any.
    model_cache: ModelCacheSpec | None = Field(default=None, alias="modelCache")

    @property
    def desired_replicas(self) -> int:
        """Replicas for the Deployment when no HPA owns the count."""
        if self.autoscaling is not None:
            return self.autoscaling.min_replicas
        return 1 if self.replicas is None else self.replicas


class Approval(_Model):
    """Whether a person must approve a version before it goes live."""

    # None: Automatic, unless the namespace requires approval (its label).
    policy: Literal["Automatic", "Required"] | None = None
    # Only these users' decisions count (empty: whoever RBAC lets create ModelApprovals).
    approvers: tuple[str, ...] = ()
    # An unanswered pending version is rejected (reason Expired) after this long.
    expires_after: str | None = Field(default=None, alias="expiresAfter", pattern=WINDOW_PATTERN)


#: A pause or an interval: seconds, minutes or hours (``30s``, ``2m``, ``1h``).
DURATION_PATTERN = r"^[0-9]+[smh]$"
#: A latency: milliseconds too (``25ms``, ``1s``).
LATENCY_PATTERN = r"^[0-9]+(ms|s)$"
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def duration_seconds(text: str) -> float:
    """``2m`` -> 120.0, ``25ms`` -> 0.025 (the CRD's pattern has been enforced)."""
    unit = "ms" if text.endswith("ms") else text[-1]
    return int(text[: -len(unit)]) * _DURATION_UNITS[unit]


class CanaryStep(_Model):
    """One of ``spec.rollout.canary.steps``: a weight with its pause, or an approval."""

    weight: int | None = Field(default=None, ge=1, le=99)
    pause: str = Field(default="0s", pattern=DURATION_PATTERN)
    replicas: int | None = Field(default=None, ge=1)
    approval: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _weight_or_approval(self) -> CanaryStep:
        if (self.weight is None) == (self.approval is None):
            raise ValueError("a canary step is exactly one of {weight, pause} or {approval: {}}")
        return self

    @property
    def pause_seconds(self) -> float:
        return duration_seconds(self.pause)


class CanaryAnalysis(_Model):
    interval: str = Field(default="30s", pattern=DURATION_PATTERN)
    min_requests: int = Field(default=50, ge=1, alias="minRequests")
    max_error_rate_increase: float = Field(default=0.01, ge=0, le=1, alias="maxErrorRateIncrease")
    max_latency_ratio: float = Field(default=1.5, ge=1, alias="maxLatencyRatio")
    min_latency_increase: str = Field(
        default="25ms", pattern=LATENCY_PATTERN, alias="minLatencyIncrease"
    )
    failure_limit: int = Field(default=2, ge=1, alias="failureLimit")


class Canary(_Model):
    steps: tuple[CanaryStep, ...] = Field(min_length=1)
    analysis: CanaryAnalysis = Field(default_factory=CanaryAnalysis)

    @model_validator(mode="after")
    def _increasing(self) -> Canary:
        weights = [s.weight for s in self.steps if s.weight is not None]
        if not weights:
            raise ValueError("spec.rollout.canary.steps needs at least one weight step")
        if any(b <= a for a, b in zip(weights, weights[1:], strict=False)):
            raise ValueError("each canary weight must be greater than the one before")
        return self


class Shadow(_Model):
    """Mirror ``percent`` of the requests to another version of the model."""

    alias: str | None = Field(default=None, min_length=1)
    version: int | None = Field(default=None, ge=1)
    percent: int = Field(ge=1, le=100)
    # Its own size: a shadow serves no client, so it may be smaller than the live version.
    replicas: int | None = Field(default=None, ge=1, le=100)
    resources: dict[str, dict[str, int | str]] | None = None

    @model_validator(mode="after")
    def _one_reference(self) -> Shadow:
        if (self.alias is None) == (self.version is None):
            raise ValueError("spec.rollout.shadow must set exactly one of alias or version")
        return self


class Rollout(_Model):
    strategy: Literal["RollingUpdate", "Canary"] = "RollingUpdate"
    canary: Canary | None = None
    shadow: Shadow | None = None
    approval: Approval = Field(default_factory=Approval)
    # A new version whose pods are not all ready after this long is rolled back.
    progress_deadline_seconds: int = Field(default=600, ge=30, alias="progressDeadlineSeconds")

    @model_validator(mode="after")
    def _canary_iff_strategy(self) -> Rollout:
        if (self.strategy == "Canary") != (self.canary is not None):
            raise ValueError("spec.rollout.canary is required with strategy Canary and only then")
        return self


class DriftThresholds(_Model):
    # Evidently's dataset drift: at least this share of the feature columns drifted.
    drift_share: float = Field(default=0.5, ge=0.0, le=1.0, alias="driftShare")


class Retrain(_Model):
    """The training pipeline to run when drift is found: a CronJob in the namespace."""

    cron_job_name: str = Field(min_length=1, max_length=52, alias="cronJobName")


class DriftMemoryRequest(_Model):
    memory: str = Field(default=c.DRIFT_MEMORY_REQUEST, pattern=MEMORY_PATTERN)


class DriftMemoryLimit(_Model):
    memory: str = Field(default=c.DRIFT_MEMORY_LIMIT, pattern=MEMORY_PATTERN)


class DriftResources(_Model):
    """Memory of the drift CronJob's pod; the check's --memory-budget follows the limit."""

    requests: DriftMemoryRequest = Field(default_factory=DriftMemoryRequest)
    limits: DriftMemoryLimit = Field(default_factory=DriftMemoryLimit)

    @model_validator(mode="after")
    def _request_within_limit(self) -> DriftResources:
        limit = c.parse_memory(self.limits.memory)
        if limit < c.parse_memory(c.DRIFT_MEMORY_LIMIT_MIN):
            raise ValueError(f"limits.memory must be at least {c.DRIFT_MEMORY_LIMIT_MIN}")
        if c.parse_memory(self.requests.memory) > limit:
            raise ValueError("requests.memory must not exceed limits.memory")
        return self

    @property
    def memory_budget(self) -> str:
        """``modelyard drift check --memory-budget``: half the limit (contracts)."""
        return c.drift_memory_budget(self.limits.memory)


class DriftMonitoring(_Model):
    schedule: str = Field(default="0 * * * *", min_length=1)
    window: str = Field(default="24h", pattern=WINDOW_PATTERN)
    thresholds: DriftThresholds = Field(default_factory=DriftThresholds)
    prediction_log: str | None = Field(default=None, alias="predictionLog")
    retrain: Retrain | None = None
    resources: DriftResources = Field(default_factory=DriftResources)


class Monitoring(_Model):
    # Where the server logs its predictions; default: the operator's MODELYARD_PREDICTION_LOG.
    prediction_log: str | None = Field(default=None, alias="predictionLog")
    # The log's storage credentials (envFrom of the servers and the checks); default: the
    # operator's MODELYARD_PREDICTION_LOG_SECRET.
    prediction_log_secret_ref: SecretRef | None = Field(
        default=None, alias="predictionLogSecretRef"
    )
    drift: DriftMonitoring | None = None


class ModelDeploymentSpec(_Model):
    model: ModelRef
    registry: Registry = Field(default_factory=Registry)
    server: Server = Field(default_factory=Server)
    rollout: Rollout = Field(default_factory=Rollout)
    monitoring: Monitoring = Field(default_factory=Monitoring)

    @classmethod
    def parse(cls, spec: Any) -> ModelDeploymentSpec:
        """Raises :class:`SpecError` naming the fields to fix."""
        from pydantic import ValidationError

        try:
            return cls.model_validate(dict(spec))
        except ValidationError as error:
            problems = "; ".join(
                f"spec.{'.'.join(str(part) for part in e['loc'])}: {e['msg']}"
                for e in error.errors()
            )
            raise SpecError(f"the spec cannot be used: {problems}") from None


class SpecError(ValueError):
    """The spec does not parse (written before the CRD, or with validation off)."""


class ApprovalSpec(_Model):
    """A ModelApproval's spec: a person's decision about one version for one deployment."""

    model_deployment: str = Field(min_length=1, alias="modelDeployment")
    version: int = Field(ge=1)
    # The canary step this decision is for (an ``approval`` step); None: the rollout's start.
    step: int | None = Field(default=None, ge=0)
    decision: Literal["Approved", "Rejected"]
    approver: str = Field(min_length=1)
    comment: str = ""
