"""Kubernetes Events about ModelDeployments, posted from one background thread.

Kopf's ``kopf.event`` needs kopf's own task context; reconciles run on worker threads, so
Events are created through the API directly (the same ``v1`` Events ``kubectl describe``
shows). A reconcile only queues its Events: posting them inline made every worker wait
for one more write per Event. The poster's thread sends them in order; an Event that
cannot be posted is logged, never raised, as before.

While the work queue has new work waiting (:attr:`EventQueue.hold`), Events wait, up to
``MAX_HOLD`` seconds each: on a busy API server a burst's Events would otherwise take
turns with the writes that make the resources work. They keep the time they were
queued at (their timestamps).
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client

from modelyard.operator.rest import Rest

logger = logging.getLogger(__name__)

COMPONENT = "modelyard-operator"
#: The API caps an Event's message; a longer one is cut here rather than refused there.
MAX_MESSAGE = 1024
#: Events waiting to be posted at most; beyond, new ones are dropped (and logged).
MAX_QUEUED = 10_000
#: Seconds an Event waits at most while the operator has new work (``EventQueue.hold``).
MAX_HOLD = 30.0


def event_body(body: Mapping[str, Any], type_: str, reason: str, message: str) -> dict[str, Any]:
    """The ``v1`` Event about ``body``, as JSON."""
    meta = body.get("metadata") or {}
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{meta.get('name')}.{uuid.uuid4().hex[:16]}",
            "namespace": meta.get("namespace"),
        },
        "involvedObject": {
            "apiVersion": body.get("apiVersion"),
            "kind": body.get("kind"),
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


class EventQueue:
    """Queues Events (:meth:`post`, callable from any thread) and posts them from its own
    thread, in the order they were queued."""

    def __init__(self, api_client: client.ApiClient, timeout: float = 10.0) -> None:
        self.rest = Rest(api_client, timeout)
        #: True while Events should wait (the work queue has new work); None: never.
        self.hold: Callable[[], bool] | None = None
        self._closing = False
        self._queue: queue.Queue[tuple[float, dict[str, Any]] | None] = queue.Queue(MAX_QUEUED)
        self._thread = threading.Thread(target=self._run, name="events", daemon=True)
        self._thread.start()

    def post(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        event = event_body(body, type_, reason, message)
        try:
            self._queue.put_nowait((time.monotonic(), event))
        except queue.Full:
            logger.warning(
                "too many Events waiting: dropped %s about %s", reason, event["metadata"]["name"]
            )

    def _wait_while_held(self, queued: float) -> None:
        while (
            self.hold is not None
            and not self._closing
            and time.monotonic() - queued < MAX_HOLD
            and self.hold()
        ):
            time.sleep(0.2)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            queued, event = item
            self._wait_while_held(queued)
            meta = event["metadata"]
            try:
                self.rest.request(
                    "POST", self.rest.path("v1", "Event", str(meta["namespace"])), event
                )
            except Exception as error:  # a dead thread would post nothing more
                logger.warning(
                    "could not post event %s about %s: %s",
                    event["reason"],
                    event["involvedObject"]["name"],
                    error,
                )

    def close(self, timeout: float = 10.0) -> None:
        """Post what is queued (for up to ``timeout`` seconds), then stop."""
        self._closing = True
        self._queue.put(None)
        self._thread.join(timeout)
