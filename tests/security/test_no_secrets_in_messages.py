"""No secret reaches a message (docs/security.md, "credentials in logs"): a password
planted in the tracking URI, in an HTTP source's URL and in its headers appears in no
line `modelyard pipeline run` prints, in no file it writes, and a `next` link to another
host receives none of the source's credentials."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

PLANTED = "planted-s3cret-7f1c"
RECORDS = [{"id": i, "amount": float(i)} for i in range(6)]
CREDENTIAL_HEADERS = {
    "Authorization": f"Bearer {PLANTED}",
    "Cookie": f"session={PLANTED}",
    "X-Api-Key": PLANTED,
}


@dataclass
class Api:
    """A local JSON API on its own address; ``seen`` holds (path, headers) of every
    request that reached it."""

    url: str
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)


def _serve(host: str, pages: dict[str, tuple[int, Any]], api: Api) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            api.seen.append((self.path, dict(self.headers.items())))
            status, body = pages.get(self.path.split("?")[0], (404, {"error": "no such page"}))
            data = json.dumps(body(api) if callable(body) else body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer((host, 0), Handler)
    api.url = f"http://{host}:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def apis() -> Iterator[tuple[Api, Api]]:
    """The source (127.0.0.1), whose first page links to a second page on another host
    (127.0.0.2, another loopback address: another origin)."""
    first, other = Api(""), Api("")
    servers = [
        _serve(
            "127.0.0.1",
            {
                "/items": (200, lambda _: {"items": RECORDS[:3], "next": f"{other.url}/items"}),
                "/fail": (500, {"error": "boom"}),
            },
            first,
        ),
        _serve("127.0.0.2", {"/items": (200, {"items": RECORDS[3:], "next": None})}, other),
    ]
    try:
        yield first, other
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def _step(name: str, url: str) -> dict[str, Any]:
    return {
        "name": name,
        "function": "modelyard.pipelines.ingest:ingest_http",
        "timeout_seconds": 60,
        "parameters": {
            "dataset": name,
            "url": url,
            "records_path": "items",
            "pagination": {"style": "next_url", "next_field": "next"},
            "headers": CREDENTIAL_HEADERS,
            "schema": {
                "columns": [
                    {"name": "id", "type": "integer", "nullable": False},
                    {"name": "amount", "type": "float", "nullable": False},
                ]
            },
        },
    }


def test_planted_passwords_appear_in_no_output_and_no_other_host(
    apis: tuple[Api, Api], tmp_path: Path
) -> None:
    first, other = apis
    pipeline = tmp_path / "leak.yaml"
    pipeline.write_text(
        yaml.safe_dump(
            {
                "name": "leak",
                "steps": [
                    _step("paged", f"{first.url}/items?access_token={PLANTED}"),
                    _step("failing", f"{first.url}/fail?access_token={PLANTED}"),
                ],
            }
        )
    )
    summary = tmp_path / "summary.json"
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "modelyard"),
            "pipeline",
            "run",
            str(pipeline),
            "--home",
            str(tmp_path / "home"),
            "--tracking-uri",
            f"http://modelyard:{PLANTED}@127.0.0.1:9/",
            "--summary-json",
            str(summary),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    output = run.stdout + run.stderr
    flat = "".join(output.split())  # rich folds long lines
    # The run did what it says: one step read both pages, the other failed on the 500,
    # and both the failure and the tracking URI are reported...
    assert run.returncode == 1, output
    report = json.loads(summary.read_text())
    assert report["steps"]["paged"]["status"] == "succeeded", output
    assert report["steps"]["paged"]["result"]["pages"] == 2
    assert report["steps"]["failing"]["status"] == "failed"
    assert "500" in report["steps"]["failing"]["error"]
    assert "127.0.0.1:9/" in flat and "/fail?access_token=***" in flat
    # ...without the secret, wherever it was planted.
    assert PLANTED not in flat
    assert PLANTED not in summary.read_text()
    # The source's own host got the credentials; the other host none of them.
    assert first.seen and all(h.get("Authorization") == f"Bearer {PLANTED}" for _, h in first.seen)
    assert [path for path, _ in other.seen] == ["/items"]
    leaked = {
        k
        for _, headers in other.seen
        for k in headers
        if k.lower() in {"authorization", "cookie", "x-api-key"}
    }
    assert leaked == set()
