"""Operator settings, from the environment (the chart sets them on the Deployment)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, Field

from modelyard.core import contracts as c


class OperatorSettings(BaseModel):
    """How the operator behaves; every field has an environment variable."""

    # MODELYARD_DEFAULT_TRACKING_URI: registry used when spec.registry.trackingUri is unset.
    default_tracking_uri: str | None = None
    # MODELYARD_SERVER_IMAGE: model server image when spec.server.image is unset.
    server_image: str = c.SERVER_IMAGE
    # MODELYARD_SERVER_IMAGE_PULL_POLICY
    server_image_pull_policy: str = "IfNotPresent"
    # MODELYARD_RESOLVE_INTERVAL: seconds between re-resolving aliases and stages.
    resolve_interval: float = Field(default=30.0, gt=0)
    # MODELYARD_CLUSTER_DOMAIN: for the in-cluster URL in status.url.
    cluster_domain: str = "cluster.local"
    # MODELYARD_TOOLKIT_IMAGE: image with the `modelyard` CLI, for the drift CronJobs.
    toolkit_image: str = c.TOOLKIT_IMAGE
    # MODELYARD_PREDICTION_LOG: fsspec base URL the servers log predictions under.
    prediction_log: str | None = None
    # MODELYARD_RECONCILE_WORKERS: threads reconciling ModelDeployments at once (each reconcile is a
    # few blocking calls; a slow registry holds at most this many).
    reconcile_workers: int = Field(default=4, ge=1, le=64)
    # MODELYARD_REGISTRY_TIMEOUT: seconds a registry call may take.
    registry_timeout: float = Field(default=10.0, gt=0)
    # MODELYARD_API_TIMEOUT: seconds a Kubernetes API call may take.
    api_timeout: float = Field(default=30.0, gt=0)
    # MODELYARD_METRICS_PORT: port of the operator's Prometheus /metrics (0: not served).
    metrics_port: int = Field(default=8081, ge=0, le=65535)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if env is None else env
        values: dict[str, str] = {}
        for name in cls.model_fields:
            key = f"MODELYARD_{name.upper()}"
            if env.get(key):
                values[name] = env[key]
        return cls.model_validate(values)
