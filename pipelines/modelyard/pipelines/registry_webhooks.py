"""Register the operator's webhook in an MLflow registry (``modelyard registry webhook``).

MLflow's webhooks are registry-wide: one webhook carries the alias, tag and version
events of every model to the operator, which re-resolves the ModelDeployments following
the model an event names (docs/operations.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from modelyard.core.contracts import RegistryWebhook

#: The webhook's name in MLflow; registering again with the same name updates it.
DEFAULT_NAME = "modelyard-operator"


class WebhookError(Exception):
    """The webhook could not be registered; the message says why."""


@dataclass(frozen=True)
class Registered:
    webhook_id: str
    name: str
    url: str
    events: tuple[str, ...]
    created: bool


def register_webhook(
    tracking_uri: str, url: str, secret: str, name: str = DEFAULT_NAME
) -> Registered:
    """Create the webhook ``name`` (or update the one of that name: URL, events, secret,
    active) with MLflow's client and the caller's credentials (an admin's: MLflow lets
    only admins manage webhooks)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if not secret:
        raise WebhookError("the shared secret is empty: unsigned deliveries are refused")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    events = list(RegistryWebhook.EVENTS)
    try:
        existing = None
        token = None
        while existing is None:
            page = client.list_webhooks(max_results=100, page_token=token)
            existing = next((w for w in page if w.name == name), None)
            token = page.token
            if not token:
                break
        if existing is None:
            hook = client.create_webhook(
                name=name,
                url=url,
                events=events,  # type: ignore[arg-type]
                description="modelyard: re-resolve the ModelDeployments following a model",
                secret=secret,
            )
        else:
            hook = client.update_webhook(
                existing.webhook_id,
                url=url,
                events=events,  # type: ignore[arg-type]
                secret=secret,
                status="ACTIVE",
            )
    except MlflowException as error:
        raise WebhookError(
            f"{error.error_code}: {error.message} (webhooks need MLflow 3.3+, an admin user, "
            "and on the MLflow server MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https for an "
            "http:// URL and MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true for a cluster address)"
        ) from None
    return Registered(
        hook.webhook_id,
        hook.name,
        hook.url,
        tuple(str(e) for e in hook.events),
        created=existing is None,
    )
