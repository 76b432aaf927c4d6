"""Kubernetes Events about ModelDeployments, posted from the operator's worker threads.

Kopf's ``kopf.event`` needs kopf's own task context; reconciles run on worker threads, so
Events are created with the API client directly (the same ``v1`` Events ``kubectl
describe`` shows).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

logger = logging.getLogger(__name__)

COMPONENT = "modelyard-operator"
#: The API caps an Event's message; a longer one is cut here rather than refused there.
MAX_MESSAGE = 1024


def post_event(
    api_client: client.ApiClient, body: Mapping[str, Any], type_: str, reason: str, message: str
) -> None:
    """Post an Event about ``body``; a failure to post is logged, never raised."""
    meta = body.get("metadata") or {}
    now = dt.datetime.now(dt.UTC)
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(
            name=f"{meta.get('name')}.{uuid.uuid4().hex[:16]}",
            namespace=meta.get("namespace"),
        ),
        involved_object=client.V1ObjectReference(
            api_version=body.get("apiVersion"),
            kind=body.get("kind"),
            name=meta.get("name"),
            namespace=meta.get("namespace"),
            uid=meta.get("uid"),
            resource_version=meta.get("resourceVersion"),
        ),
        type=type_,
        reason=reason,
        message=message[:MAX_MESSAGE],
        source=client.V1EventSource(component=COMPONENT),
        reporting_component=COMPONENT,
        reporting_instance=COMPONENT,
        first_timestamp=now,
        last_timestamp=now,
        count=1,
    )
    try:
        client.CoreV1Api(api_client).create_namespaced_event(
            str(meta.get("namespace")), event, _request_timeout=10
        )
    except (ApiException, OSError) as error:
        logger.warning("could not post event %s about %s: %s", reason, meta.get("name"), error)
