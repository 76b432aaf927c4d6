"""A longest age for keep-alive connections: the server asks its clients to reconnect.

A Service's ClusterIP picks a pod when a connection opens; kube-proxy's connection
tracking keeps sending that connection's requests to the same pod for as long as it
lives, even after the Service stops selecting the pod. A keep-alive client that never
idles would therefore stay on the pods it first reached: new replicas (a scale-out)
would get none of its requests, and when a canary's router takes over the
ModelDeployment's Service (docs/modeldeployment.md, "Canary") the client would keep
calling the stable pods directly, so the candidate never saw its share of them.

:class:`ConnectionAge` answers the first request on a connection older than
``max_age`` seconds with ``Connection: close``: the client finishes that request as
usual and opens a new connection for its next one, which the Service places afresh
(gRPC's MAX_CONNECTION_AGE, Envoy's max_connection_duration). No request fails: the
close comes with an answer, not instead of one.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from modelyard.core import contracts as c

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Default seconds a keep-alive connection is used before the server closes it.
DEFAULT_MAX_AGE = c.DEFAULT_MAX_CONNECTION_AGE


class ConnectionAge:
    """ASGI middleware: ``Connection: close`` on the first answer on a connection older
    than ``max_age`` seconds (0: never). A connection is known by its peer's address and
    port, the only thing of it an ASGI scope carries; one seen last longer than ``4 *
    max_age`` ago is forgotten (its client closed it)."""

    def __init__(
        self,
        app: App,
        max_age: float = DEFAULT_MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.max_age = max_age
        self.clock = clock
        #: peer -> (when first seen, when last seen)
        self._seen: dict[tuple[Any, ...], tuple[float, float]] = {}
        self._swept = clock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        peer = scope.get("client")
        if scope.get("type") != "http" or self.max_age <= 0 or not peer:
            await self.app(scope, receive, send)
            return
        now = self.clock()
        self._sweep(now)
        key = tuple(peer)
        first, _ = self._seen.get(key, (now, now))
        if now - first < self.max_age:
            self._seen[key] = (first, now)
            await self.app(scope, receive, send)
            return
        self._seen.pop(key, None)  # the client's next connection starts afresh

        async def closing(message: Message) -> None:
            if message.get("type") == "http.response.start":
                headers = [
                    (name, value)
                    for name, value in message.get("headers") or []
                    if name.lower() != b"connection"
                ]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, closing)

    def _sweep(self, now: float) -> None:
        if now - self._swept < self.max_age:
            return
        self._swept = now
        stale = now - 4 * self.max_age
        for key in [k for k, (_, last) in self._seen.items() if last < stale]:
            del self._seen[key]
