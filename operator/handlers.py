"""Kopf handlers: thin, typed, and all ending in :mod:`modelyard.operator.reconcile`.

Run with ``modelyard operator``, or in tests with
``kopf.testing.KopfRunner(["run", "-m", "modelyard.operator.handlers", ...])``.
"""

from __future__ import annotations

import logging
import os
from typing import Any, cast

import kopf
from kubernetes import client, config

from modelyard.operator.reconcile import (
    Operator,
    ReconcileFailed,
    reconcile,
    refresh_health,
    release,
)
from modelyard.operator.registry import RegistryError
from modelyard.operator.resource import GROUP, PLURAL, VERSION
from modelyard.operator.settings import OperatorSettings

# Read at import: the timer's interval is fixed when the handler is registered.
SETTINGS = OperatorSettings.from_env()
MANAGED_BY = {"app.kubernetes.io/managed-by": "modelyard"}

_operator: Operator | None = None


def _state() -> Operator:
    if _operator is None:
        raise kopf.TemporaryError("the operator is still starting", delay=1)
    return _operator


def _post_event(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    kopf.event(kopf.Body(cast(kopf.RawBody, body)), type=type_, reason=reason, message=message)


def _kube_api_client() -> client.ApiClient:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        # The client reads $KUBECONFIG once, at import; read it now.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    return client.ApiClient()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod, the service account; elsewhere, $KUBECONFIG (read now, not at import)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
def configure(*, settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
    global _operator
    # Our own names for what kopf keeps on the objects.
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # Silent watch streams are a known kopf failure: reconnect regularly.
    settings.watching.server_timeout = 120
    settings.watching.client_timeout = 150
    settings.watching.connect_timeout = 30
    settings.posting.level = logging.INFO
    settings.execution.max_workers = 8
    # MLflow's REST client retries for minutes by default; the operator has its own
    # retry loop and must notice an unreachable registry quickly.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    _operator = Operator(settings=SETTINGS, api_client=_kube_api_client(), post_event=_post_event)
    logger.info(
        "modelyard operator: resolve interval %ss, default registry %s, server image %s",
        SETTINGS.resolve_interval,
        SETTINGS.default_tracking_uri or "(none)",
        SETTINGS.server_image,
    )


def _run(namespace: str | None, name: str, retry: int) -> None:
    try:
        reconcile(_state(), str(namespace), name)
    except ReconcileFailed as e:
        if e.permanent:
            raise kopf.PermanentError(str(e)) from e
        # Back off: 15 s, 30 s, ... up to 5 minutes.
        raise kopf.TemporaryError(str(e), delay=min(300.0, e.delay * 2 ** min(retry, 5))) from e


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def on_change(*, namespace: str | None, name: str, retry: int, **_: Any) -> None:
    _run(namespace, name, retry)


@kopf.timer(
    GROUP,
    VERSION,
    PLURAL,
    interval=SETTINGS.resolve_interval,
    initial_delay=SETTINGS.resolve_interval,
)
def follow_registry(*, namespace: str | None, name: str, logger: kopf.Logger, **_: Any) -> None:
    """Re-resolve aliases and stages; roll out when they moved."""
    try:
        reconcile(_state(), str(namespace), name)
    except ReconcileFailed as e:
        # Conditions already say what is wrong; the next tick tries again.
        logger.warning("reconcile failed: %s", e)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED_BY)
def on_server_deployment(*, body: kopf.Body, namespace: str | None, type: str, **_: Any) -> None:
    """A server Deployment changed: Ready/Progressing follow its rollout at once."""
    if type == "DELETED":
        return
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == "ModelDeployment" and str(ref.get("apiVersion", "")).startswith(
            f"{GROUP}/"
        ):
            refresh_health(_state(), str(namespace), ref["name"], dict(body))


@kopf.on.delete(GROUP, VERSION, PLURAL)
def on_delete(*, body: kopf.Body, retry: int, logger: kopf.Logger, **_: Any) -> None:
    """Remove the registry tag; the children go with their owner references."""
    try:
        release(_state(), dict(body))
    except (RegistryError, ReconcileFailed) as e:
        if retry < 3:
            raise kopf.TemporaryError(f"could not remove the registry tag: {e}", delay=5) from e
        # Never block a deletion on an unreachable registry.
        logger.warning("giving up on removing the registry tag: %s", e)
