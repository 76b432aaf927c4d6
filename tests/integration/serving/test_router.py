"""The canary router as the operator renders it: the host's nginx in front of three real
model servers (stable, candidate, shadow), driven by keep-alive clients.

Shares are checked against the binomial distribution: over ``n`` requests a share ``p``
lies within 4 standard deviations, ``4 * sqrt(n p (1-p))``, except once in ~16,000 runs.
"""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pyarrow.parquet as pq
import pytest

from modelyard.core import contracts as c
from modelyard.operator.router import Backend, RouterPlan, render_nginx_conf
from tests.support.nginx import running_nginx
from tests.support.servers import ServerProcess, free_port, log_tail, stop_process, wait_http

if TYPE_CHECKING:
    from tests.integration.serving.conftest import Variants

pytestmark = pytest.mark.integration

ROW = {"x0": 0.5, "x1": -0.2, "x2": 0.1, "x3": 1.0}
REQUESTS = 2000
CLIENTS = 4


@dataclass(frozen=True)
class Answer:
    status: int
    version: str
    request_id: str
    seconds: float
    #: The router's word that a copy went to the shadow (X-Modelyard-Mirrored).
    mirrored: bool = False


def drive(url: str, n: int, clients: int = CLIENTS) -> list[Answer]:
    """``n`` predictions from ``clients`` concurrent clients, each on its own keep-alive
    connection (httpx reuses it for every request)."""

    def client(count: int) -> list[Answer]:
        answers = []
        with httpx.Client(base_url=url, timeout=30) as http:
            for _ in range(count):
                started = time.perf_counter()
                r = http.post(c.PREDICT_PATH, json=[ROW])
                answers.append(
                    Answer(
                        r.status_code,
                        r.headers.get("x-model-version", ""),
                        r.headers.get("x-request-id", ""),
                        time.perf_counter() - started,
                        r.headers.get("x-modelyard-mirrored") == "1",
                    )
                )
        return answers

    per_client = math.ceil(n / clients)
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client, per_client) for _ in range(clients)]
        return [a for f in futures for a in f.result()]


def assert_share(count: int, n: int, percent: int, what: str) -> None:
    p = percent / 100
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(count - n * p) <= 4 * sigma, (
        f"{what}: {count}/{n} = {count / n:.2%}, expected {percent}% +- {4 * sigma / n:.2%}"
    )


def p99(answers: list[Answer]) -> float:
    return statistics.quantiles([a.seconds for a in answers], n=100)[98]


def logged_request_ids(base: Path) -> set[str]:
    ids: set[str] = set()
    for path in base.rglob("*.parquet"):
        if not path.name.startswith("."):
            ids.update(pq.read_table(path, columns=[c.LOG_REQUEST_ID_COLUMN]).column(0).to_pylist())
    return ids


def wait_for_log(base: Path, wanted: set[str], timeout: float = 20) -> set[str]:
    """The ids of ``wanted`` that ``base``'s log holds once it stops growing."""
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline:
        now = logged_request_ids(base) & wanted
        if now and now == seen:
            return now
        seen = now
        time.sleep(1.5)
    return seen


def port_of(server: ServerProcess) -> int:
    return int(server.url.rsplit(":", 1)[1])


@contextmanager
def router(plan: RouterPlan, addresses: dict[str, str], tmp_path: Path) -> Iterator[ServerProcess]:
    """The plan's nginx configuration, exactly as rendered for the pod, but listening on
    a free local port and sending to the local servers instead of cluster Services."""
    port, hop = free_port(), free_port()
    while hop == port:  # two free ports, not one port twice
        hop = free_port()
    conf = render_nginx_conf(
        plan,
        address=lambda backend: addresses[backend.service],
        listen=f"127.0.0.1:{port}",
        mirror_hop_port=hop,
        tmp_dir=str(tmp_path / "nginx"),
    )
    with running_nginx(conf, tmp_path / "nginx", port, c.ROUTER_HEALTH_PATH) as server:
        yield server


def local_addresses(variants: Variants) -> dict[str, str]:
    return {
        name: f"127.0.0.1:{port_of(server.server)}"
        for name, server in variants.by_version().items()
    }


def plan(**kw: object) -> RouterPlan:
    args: dict[str, object] = {
        "name": "churn",
        "namespace": "ml",
        "stable": Backend("stable"),
        "candidate": Backend("candidate"),
    }
    args.update(kw)
    return RouterPlan(**args)  # type: ignore[arg-type]


def test_ten_percent_to_the_candidate_and_twenty_percent_mirrored(
    variant_servers: Variants, tmp_path: Path
) -> None:
    with router(
        plan(candidate_weight=10, shadow=Backend("shadow"), shadow_percent=20),
        local_addresses(variant_servers),
        tmp_path,
    ) as nginx:
        answers = drive(nginx.url, REQUESTS)
    n = len(answers)
    assert n >= REQUESTS
    assert {a.status for a in answers} == {200}
    # No client ever gets the shadow's answer.
    assert {a.version for a in answers} == {"stable", "candidate"}
    candidate = sum(a.version == "candidate" for a in answers)
    assert_share(candidate, n, 10, "candidate share at weight 10")

    # The shadow got a copy of ~20% of the requests, under the very request id the
    # client got back and the answering variant logged.
    client_ids = {a.request_id for a in answers}
    assert len(client_ids) == n
    mirrored = wait_for_log(variant_servers.shadow.prediction_log, client_ids)
    shadow_log = logged_request_ids(variant_servers.shadow.prediction_log)
    assert mirrored, (
        f"the shadow logged none of the {n} ids ({len(shadow_log)} others):\n"
        + log_tail(variant_servers.shadow.server.log)
        + "\nnginx:\n"
        + log_tail(nginx.log)
    )
    assert_share(len(mirrored), n, 20, "mirrored share at 20%")
    # The router tells each client whether its request was mirrored, and it is right.
    assert {a.request_id for a in answers if a.mirrored} == mirrored
    answered = wait_for_log(variant_servers.stable.prediction_log, client_ids) | wait_for_log(
        variant_servers.candidate.prediction_log, client_ids
    )
    assert answered == client_ids
    print(
        f"\nweight 10: candidate {candidate}/{n} = {candidate / n:.2%};"
        f" shadow 20: mirrored {len(mirrored)}/{n} = {len(mirrored) / n:.2%}"
    )


def test_fifty_percent_to_the_candidate(variant_servers: Variants, tmp_path: Path) -> None:
    with router(plan(candidate_weight=50), local_addresses(variant_servers), tmp_path) as nginx:
        answers = drive(nginx.url, REQUESTS)
    n = len(answers)
    assert {a.status for a in answers} == {200}
    candidate = sum(a.version == "candidate" for a in answers)
    assert_share(candidate, n, 50, "candidate share at weight 50")
    print(f"\nweight 50: candidate {candidate}/{n} = {candidate / n:.2%}")


@pytest.mark.parametrize(("weight", "only"), [(0, "stable"), (100, "candidate")])
def test_the_ends_of_a_rollout_send_everything_to_one_version(
    variant_servers: Variants, tmp_path: Path, weight: int, only: str
) -> None:
    with router(plan(candidate_weight=weight), local_addresses(variant_servers), tmp_path) as nginx:
        answers = drive(nginx.url, 200)
    assert {(a.status, a.version) for a in answers} == {(200, only)}


def test_the_clients_request_id_reaches_every_variant(
    variant_servers: Variants, tmp_path: Path
) -> None:
    with (
        router(
            plan(candidate_weight=50, shadow=Backend("shadow"), shadow_percent=100),
            local_addresses(variant_servers),
            tmp_path,
        ) as nginx,
        httpx.Client(base_url=nginx.url, timeout=30) as http,
    ):
        ids = {f"client-{i}-{time.time_ns()}" for i in range(20)}
        for request_id in ids:
            r = http.post(c.PREDICT_PATH, json=[ROW], headers={"X-Request-ID": request_id})
            assert r.status_code == 200
            assert r.headers["x-request-id"] == request_id
            assert r.headers["x-modelyard-variant"] == r.headers["x-model-version"]
        assert http.get(c.ROUTER_HEALTH_PATH).text == "ok\n"
    assert wait_for_log(variant_servers.shadow.prediction_log, ids) == ids


SLOW_SHADOW = """
import sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()

class Slow(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        with LOCK:  # one whole line per request: threads' prints would interleave
            sys.stdout.write(f"{self.headers.get('x-request-id')}\\n")
            sys.stdout.flush()
        time.sleep(float(sys.argv[2]))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer.request_queue_size = 1024
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Slow).serve_forever()
"""


@pytest.fixture
def slow_shadow(tmp_path: Path) -> Iterator[tuple[ServerProcess, float]]:
    """The one stand-in of these tests: a shadow that answers after ``delay`` seconds
    (the model server has no knob to be slow). It prints each request id it gets, as
    the request arrives."""
    delay = 2.0
    script = tmp_path / "slow_shadow.py"
    script.write_text(SLOW_SHADOW)
    port = free_port()
    log = tmp_path / "slow-shadow.log"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(port), str(delay)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/", 20, proc, log)
        yield ServerProcess(f"http://127.0.0.1:{port}", proc, log), delay
    finally:
        stop_process(proc)


def arrived(shadow: ServerProcess, request_ids: set[str]) -> int:
    """How many of ``request_ids`` the shadow has logged."""
    return len(set(shadow.log.read_text().split()) & request_ids)


def test_a_slow_shadow_does_not_slow_the_clients(
    variant_servers: Variants,
    slow_shadow: tuple[ServerProcess, float],
    tmp_path: Path,
) -> None:
    shadow, delay = slow_shadow
    addresses = {**local_addresses(variant_servers), "slow": f"127.0.0.1:{port_of(shadow)}"}
    n = 800
    with router(plan(candidate_weight=50), addresses, tmp_path / "plain") as nginx:
        drive(nginx.url, 100)  # warm up
        plain = drive(nginx.url, n)
    # Every request mirrored to a shadow that takes `delay` per answer: with nginx's
    # mirror pointed at it directly, each client would wait `delay` per request.
    with router(
        plan(candidate_weight=50, shadow=Backend("slow"), shadow_percent=100),
        addresses,
        tmp_path / "mirrored",
    ) as nginx:
        drive(nginx.url, 100)
        mirrored = drive(nginx.url, n)
        # Copies still queued for the slow shadow arrive after the clients are done
        # (nginx must stay up for them; the stand-in accepts them slowly under load, with
        # pauses of several seconds): wait for all of them, at most a minute.
        client_ids = {a.request_id for a in mirrored}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and arrived(shadow, client_ids) < n:
            time.sleep(1)
    assert {a.status for a in plain + mirrored} == {200}
    assert {a.version for a in mirrored} == {"stable", "candidate"}
    base, with_shadow = p99(plain), p99(mirrored)
    print(
        f"\nclients' p99: {base * 1000:.1f}ms without a shadow, {with_shadow * 1000:.1f}ms"
        f" mirroring every request to a shadow that answers in {delay * 1000:.0f}ms"
        f" (median {statistics.median(a.seconds for a in plain) * 1000:.1f}ms /"
        f" {statistics.median(a.seconds for a in mirrored) * 1000:.1f}ms)"
    )
    # A client that waited for the shadow would take `delay` (2 s) on every request. The
    # typical request is as fast as without a shadow; the tail, which on 2 shared cores
    # moves with the extra work of mirroring every request (CI saw 79 ms against 178 ms),
    # stays far below the shadow's answer time.
    base_median = statistics.median(a.seconds for a in plain)
    median = statistics.median(a.seconds for a in mirrored)
    assert median < max(2 * base_median, base_median + 0.05), "the clients wait for the shadow"
    assert with_shadow < delay / 4, "the clients' tail follows the shadow"
    # The shadow did get (and answer) the copies, under the clients' request ids.
    assert arrived(shadow, client_ids) >= 0.99 * n
