"""The model server's configuration, read once from the environment.

The names are the contract in ``docs/contracts.md``; the operator sets them on the pod and
``modelyard serve`` sets them from its options.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, Field, ValidationError

from modelyard.core.contracts import ServerEnv


class SettingsError(ValueError):
    """The environment does not describe a server that can start."""


class ServerSettings(BaseModel, frozen=True):
    model_uri: str = Field(min_length=1)
    model_name: str | None = None
    model_version: str | None = None
    prediction_log: str | None = None
    # fsspec URL of the model cache: a start while the registry is down loads from there.
    model_cache: str | None = None
    # Seconds between prediction-log flushes; rows are also flushed when the buffer fills.
    log_flush_interval: float = Field(default=10.0, gt=0)
    log_flush_rows: int = Field(default=50_000, gt=0)
    # Bytes of rows kept in memory (waiting and being written) while the sink is slow or
    # down; beyond, the oldest are dropped, counted, logged and recorded in the log.
    log_max_buffered_bytes: int = Field(default=128 * 1024 * 1024, gt=0)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    # Adaptive batching: at most this many requests in one model call, and requests that
    # would wait longer than max_latency_ms are refused with 503 instead of queueing forever.
    max_batch_requests: int = Field(default=256, gt=0)
    max_latency_ms: int = Field(default=1000, gt=0)
    # Load models whose format runs code (pickle, cloudpickle): docs/security.md.
    allow_pickle: bool = False
    # Requests being answered at once, and the bytes of their bodies; beyond: 503 with
    # Retry-After (one request is always taken, whatever its size).
    max_concurrent_requests: int = Field(default=256, gt=0)
    max_inflight_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    # Seconds a model call may take; past it the server fails liveness and is restarted.
    predict_timeout: float = Field(default=60.0, gt=0)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerSettings:
        env = os.environ if environ is None else environ
        if not env.get(ServerEnv.MODEL_URI):
            raise SettingsError(
                f"{ServerEnv.MODEL_URI} is not set: give the model to serve as "
                "models:/NAME/VERSION, runs:/RUN_ID/PATH or a local path"
            )
        fields = {
            "model_uri": ServerEnv.MODEL_URI,
            "model_name": ServerEnv.MODEL_NAME,
            "model_version": ServerEnv.MODEL_VERSION,
            "prediction_log": ServerEnv.PREDICTION_LOG,
            "model_cache": ServerEnv.MODEL_CACHE,
            "log_flush_interval": ServerEnv.LOG_FLUSH_INTERVAL,
            "log_flush_rows": ServerEnv.LOG_FLUSH_ROWS,
            "log_max_buffered_bytes": ServerEnv.LOG_MAX_BUFFERED_BYTES,
            "max_body_bytes": ServerEnv.MAX_BODY_BYTES,
            "max_batch_requests": ServerEnv.MAX_BATCH_REQUESTS,
            "max_latency_ms": ServerEnv.MAX_LATENCY_MS,
            "allow_pickle": ServerEnv.ALLOW_PICKLE,
            "max_concurrent_requests": ServerEnv.MAX_CONCURRENT_REQUESTS,
            "max_inflight_bytes": ServerEnv.MAX_INFLIGHT_BYTES,
            "predict_timeout": ServerEnv.PREDICT_TIMEOUT,
        }
        values = {field: env[var] for field, var in fields.items() if env.get(var)}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise SettingsError(f"invalid model server settings: {exc}") from exc


def max_connection_age(environ: Mapping[str, str] | None = None) -> float:
    """``MODELYARD_MAX_CONNECTION_AGE``: seconds a keep-alive connection is used before
    the server closes it (0: never; :mod:`modelyard.serving.connections`). Read apart
    from :class:`ServerSettings` because the middleware is set up when the service
    class is defined, before any model is known."""
    from modelyard.serving.connections import DEFAULT_MAX_AGE

    env = os.environ if environ is None else environ
    raw = env.get(ServerEnv.MAX_CONNECTION_AGE, "")
    if not raw:
        return DEFAULT_MAX_AGE
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise SettingsError(
            f"{ServerEnv.MAX_CONNECTION_AGE} must be a number of seconds >= 0 (0: never), "
            f"got {raw!r}"
        )
    return value
