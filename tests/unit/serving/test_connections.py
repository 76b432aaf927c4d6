"""The servers' longest keep-alive connection age (modelyard.serving.connections)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from modelyard.serving.connections import ConnectionAge
from modelyard.serving.settings import SettingsError, max_connection_age


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _answer(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1")]})
    await send({"type": "http.response.body", "body": b"ok"})


def call(app: ConnectionAge, peer: tuple[str, int] | None, kind: str = "http") -> list[Any]:
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(app({"type": kind, "client": peer}, receive, send))
    return sent


def closes(sent: list[Any]) -> bool:
    return (b"connection", b"close") in sent[0]["headers"]


def test_a_connection_older_than_the_limit_is_closed_with_an_answer() -> None:
    clock = Clock()
    app = ConnectionAge(_answer, max_age=10, clock=clock)
    peer = ("10.0.0.5", 40000)
    assert not closes(call(app, peer))
    clock.now = 9.9
    assert not closes(call(app, peer))
    clock.now = 10.0
    sent = call(app, peer)
    # The answer itself goes out whole, with its own headers, and asks to reconnect.
    assert closes(sent) and (b"x-a", b"1") in sent[0]["headers"]
    assert sent[1] == {"type": "http.response.body", "body": b"ok"}
    # The client's next connection (same address and port, possibly) starts afresh.
    clock.now = 10.5
    assert not closes(call(app, peer))


def test_each_connection_has_its_own_age() -> None:
    clock = Clock()
    app = ConnectionAge(_answer, max_age=10, clock=clock)
    call(app, ("10.0.0.5", 40000))
    clock.now = 8
    call(app, ("10.0.0.5", 40001))
    clock.now = 12
    assert closes(call(app, ("10.0.0.5", 40000)))
    assert not closes(call(app, ("10.0.0.5", 40001)))


def test_off_with_zero_and_for_other_scopes() -> None:
    clock = Clock()
    off = ConnectionAge(_answer, max_age=0, clock=clock)
    call(off, ("10.0.0.5", 40000))
    clock.now = 1000
    assert not closes(call(off, ("10.0.0.5", 40000)))
    on = ConnectionAge(_answer, max_age=1, clock=clock)
    assert not closes(call(on, None))  # no peer known: left alone


def test_connections_the_clients_closed_are_forgotten() -> None:
    clock = Clock()
    app = ConnectionAge(_answer, max_age=10, clock=clock)
    for port in range(100):
        call(app, ("10.0.0.5", port))
    clock.now = 100
    call(app, ("10.0.0.6", 1))
    assert len(app._seen) == 1


def test_the_age_comes_from_the_environment_and_a_bad_one_is_named() -> None:
    assert max_connection_age({}) == 10.0
    assert max_connection_age({"MODELYARD_MAX_CONNECTION_AGE": "0"}) == 0.0
    assert max_connection_age({"MODELYARD_MAX_CONNECTION_AGE": "2.5"}) == 2.5
    for bad in ("-1", "soon", "nan"):
        with pytest.raises(SettingsError, match="MODELYARD_MAX_CONNECTION_AGE"):
            max_connection_age({"MODELYARD_MAX_CONNECTION_AGE": bad})
