"""Operator settings, from the environment (the chart sets them on the Deployment)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, Field

from modelyard._version import __version__


class OperatorSettings(BaseModel):
    """How the operator behaves; every field has an environment variable."""

    # MODELYARD_DEFAULT_TRACKING_URI: registry used when spec.registry.trackingUri is unset.
    default_tracking_uri: str | None = None
    # MODELYARD_SERVER_IMAGE: model server image when spec.server.image is unset.
    server_image: str = f"modelyard/server:{__version__}"
    # MODELYARD_SERVER_IMAGE_PULL_POLICY
    server_image_pull_policy: str = "IfNotPresent"
    # MODELYARD_RESOLVE_INTERVAL: seconds between re-resolving aliases and stages.
    resolve_interval: float = Field(default=30.0, gt=0)
    # MODELYARD_CLUSTER_DOMAIN: for the in-cluster URL in status.url.
    cluster_domain: str = "cluster.local"
    # MODELYARD_TOOLKIT_IMAGE: image with the `modelyard` CLI, for the drift CronJobs.
    toolkit_image: str = f"modelyard/modelyard:{__version__}"
    # MODELYARD_PREDICTION_LOG: fsspec base URL the servers log predictions under.
    prediction_log: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if env is None else env
        values: dict[str, str] = {}
        for name in cls.model_fields:
            key = f"MODELYARD_{name.upper()}"
            if env.get(key):
                values[name] = env[key]
        return cls.model_validate(values)
