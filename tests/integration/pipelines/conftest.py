"""Real sources for the ingestion tests: an HTTP JSON API (PostgreSQL is the session's
``postgres`` fixture, tests/conftest.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest


# -------------------------------------------------------------------------- HTTP API
@dataclass
class JsonApi:
    url: str
    records: list[dict[str, Any]]
    requests: list[str]


def _api_records() -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for i in range(23):
        records.append(
            {
                "order_id": i,
                "customer": f"C{i % 5}",
                "amount": round(10 + i * 1.5, 2),
                "ordered_at": f"2026-03-0{1 + i % 3}T10:{i:02d}:00Z",
            }
        )
    # What real feeds send now and then: a text amount, a missing key field.
    records[7]["amount"] = "twelve"
    records[15]["customer"] = None
    return records


@pytest.fixture
def json_api() -> Iterator[JsonApi]:
    """A local HTTP server with the same 23 records behind three pagination styles:
    /orders?page=N&per_page=M, /orders-cursor?cursor=C, /orders-linked?offset=O."""
    records = _api_records()
    seen: list[str] = []
    page_size = 5

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

        def _send(self, body: dict[str, Any], status: int = 200) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            seen.append(self.path)
            parsed = urlparse(self.path)
            query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
            if parsed.path == "/orders":
                size = int(query.get("per_page", page_size))
                page = int(query.get("page", 1))
                chunk = records[(page - 1) * size : page * size]
                self._send({"data": {"orders": chunk}, "page": page})
            elif parsed.path == "/orders-cursor":
                start = int(query.get("cursor", 0))
                chunk = records[start : start + page_size]
                following = start + page_size if start + page_size < len(records) else None
                self._send({"items": chunk, "next_cursor": following})
            elif parsed.path == "/orders-linked":
                start = int(query.get("offset", 0))
                chunk = records[start : start + page_size]
                following = (
                    f"/orders-linked?offset={start + page_size}"
                    if start + page_size < len(records)
                    else None
                )
                self._send({"items": chunk, "links": {"next": following}})
            else:
                self._send({"error": "not found"}, status=404)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield JsonApi(
            url=f"http://127.0.0.1:{server.server_address[1]}", records=records, requests=seen
        )
    finally:
        server.shutdown()
        server.server_close()
