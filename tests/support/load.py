"""A keep-alive load client in a pod of the cluster that logs every request it sends.

``httpx.Client`` in a few threads (each one keep-alive connection) posts to a URL at a
steady rate and writes one line per request: when it was sent, how long it took, its
status (0 for a transport error, whose type stands in the version field), the
``X-Model-Version`` header, whether the body was the "bad" one, the thread, the
router's ``X-Modelyard-Mirrored`` and the request id it sent (``X-Request-ID``, which
the server logs in the prediction log's ``_request_id``). Once a second it can also
read a shadow's request counter from the shadow's own ``/metrics``.

Used by the canary tests (tests/e2e/test_canary.py) and the chaos suite
(tests/e2e/test_chaos.py).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

from tests.support.incluster import start_pod, wait_pod
from tests.support.kube import wait_for

CLIENT_SCRIPT = """
import os, random, sys, threading, time
import httpx
url, shadow_url, shadow_version = {url!r}, {shadow_url!r}, {shadow_version!r}
good, bad = {good!r}.encode(), {bad!r}.encode()
rate, threads, bad_share, longest = {rate}, {threads}, {bad_share}, {longest}
ids = {ids!r}
out = threading.Lock()
stop = threading.Event()
def emit(line):
    with out:
        sys.stdout.write(line + "\\n")
def worker(i):
    rng = random.Random(i)
    period = threads / rate
    start = time.monotonic() + i * period / threads
    k = 0
    headers = {{"Content-Type": "application/json"}}
    with httpx.Client(timeout=10, headers=headers) as client:
        while not stop.is_set():
            is_bad = rng.random() < bad_share
            request_id = "%s-%d-%d" % (ids, i, k) if ids else "-"
            extra = {{"X-Request-ID": request_id}} if ids else None
            sent = time.time()
            try:
                answer = client.post(url, content=bad if is_bad else good, headers=extra)
                status = answer.status_code
                version = answer.headers.get("x-model-version", "-")
                copied = answer.headers.get("x-modelyard-mirrored") == "1"
            except httpx.HTTPError as error:
                status, version, copied = 0, type(error).__name__, False
            emit("r %.3f %.4f %d %s %d %d %d %s"
                 % (sent, time.time() - sent, status, version, is_bad, i, copied, request_id))
            k += 1
            time.sleep(max(0.0, start + k * period - time.monotonic()))
def shadow_counter():
    # The shadow's own count of the requests it answered, and the seconds its answers
    # took (its /metrics, via its Service).
    def total(lines, prefix):
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in lines
            if line.startswith(prefix + "{{")
            and 'model_version="%s"' % shadow_version in line
        )
    with httpx.Client(timeout=2) as client:
        while not stop.is_set():
            started = time.time()
            try:
                lines = client.get(shadow_url).text.splitlines()
                answered = [line for line in lines if 'status="200"' in line]
                emit("m %.3f %.1f %.4f %.1f" % (
                    time.time(), total(lines, "modelyard_requests_total"),
                    total(answered, "modelyard_request_duration_seconds_sum"),
                    total(answered, "modelyard_request_duration_seconds_count"),
                ))
            except (httpx.HTTPError, ValueError, IndexError):
                pass
            time.sleep(max(0.0, started + 1.0 - time.time()))
workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
if shadow_url:
    workers.append(threading.Thread(target=shadow_counter))
for w in workers:
    w.start()
began = time.monotonic()
while not os.path.exists("/tmp/stop") and time.monotonic() - began < longest:
    time.sleep(0.2)
stop.set()
for w in workers:
    w.join()
emit("done")
"""


@dataclasses.dataclass(frozen=True)
class Answer:
    sent: float
    seconds: float
    status: int
    version: str
    bad: bool
    #: The client thread (one keep-alive connection) that sent it.
    thread: int
    #: The router's word that a copy went to the shadow (X-Modelyard-Mirrored).
    mirrored: bool
    #: The X-Request-ID it sent ("-" for none).
    request_id: str = "-"


@dataclasses.dataclass
class ClientLog:
    answers: list[Answer]
    #: (time, the shadow's request count) read once a second.
    shadow: list[tuple[float, float]]
    #: (time, the seconds the shadow's answers took in all, how many) read with it.
    shadow_seconds: list[tuple[float, float, float]]

    def within(self, start: float, end: float) -> list[Answer]:
        return [a for a in self.answers if start <= a.sent <= end]

    def followers(self, start: float, end: float) -> tuple[list[float], list[float]]:
        """The seconds of the answers sent in [start, end] that followed, on the same
        connection, a request the router mirrored, and those that followed one it did
        not: nginx's ``mirror`` holds the next request on a keep-alive connection until
        the shadow has answered the copy, so that is where a slow shadow would show."""
        after_copy: list[float] = []
        after_plain: list[float] = []
        previous: dict[int, Answer] = {}
        for a in sorted(self.answers, key=lambda a: a.sent):
            before = previous.get(a.thread)
            previous[a.thread] = a
            if before is None or not start <= a.sent <= end:
                continue
            (after_copy if before.mirrored else after_plain).append(a.seconds)
        return after_copy, after_plain

    def shadow_mean_seconds(self, start: float, end: float) -> float:
        """The shadow's mean answer time over [start, end], from its own histogram."""
        readings = [(s, n) for t, s, n in self.shadow_seconds if start <= t <= end]
        assert len(readings) >= 2, self.shadow_seconds[-5:]
        (s0, n0), (s1, n1) = readings[0], readings[-1]
        assert n1 > n0, readings
        return (s1 - s0) / (n1 - n0)

    def failed(self) -> list[Answer]:
        return [a for a in self.answers if a.status != 200]

    def answered(self) -> list[Answer]:
        return [a for a in self.answers if a.status == 200]

    def rate(self) -> float:
        """Requests sent per second, first to last."""
        if len(self.answers) < 2:
            return 0.0
        return (len(self.answers) - 1) / (self.answers[-1].sent - self.answers[0].sent)


class Client:
    """The client pod: started, stopped, its log read."""

    def __init__(
        self,
        cluster: Any,
        ns: str,
        *,
        image: str,
        url: str,
        good: str,
        bad: str = "",
        rate: float,
        threads: int,
        bad_share: float = 0.0,
        shadow_url: str = "",
        shadow_version: int | None = None,
        request_ids: str = "",
        longest: int = 1200,
    ) -> None:
        self.cluster, self.ns = cluster, ns
        self.name = f"client-{uuid.uuid4().hex[:6]}"
        script = CLIENT_SCRIPT.format(
            url=url,
            shadow_url=shadow_url,
            shadow_version=str(shadow_version or ""),
            good=good,
            bad=bad or good,
            rate=rate,
            threads=threads,
            bad_share=bad_share,
            longest=longest,
            ids=request_ids,
        )
        start_pod(cluster, ns, image, script, name=self.name)
        wait_for("the client pod to run", lambda: self._phase() == "Running", timeout=180)
        time.sleep(3)  # its first requests answered

    def _phase(self) -> str:
        return str(
            self.cluster.run_kubectl(
                "-n", self.ns, "get", "pod", self.name, "-o", "jsonpath={.status.phase}",
                check=False,
            ).stdout
        )  # fmt: skip

    def stop(self) -> ClientLog:
        self.cluster.run_kubectl(
            "-n", self.ns, "exec", self.name, "--", "python3", "-c",
            "open('/tmp/stop', 'w').close()",
        )  # fmt: skip
        log = wait_pod(self.cluster, self.ns, self.name, timeout=120)
        answers, shadow, seconds = [], [], []
        for line in log.splitlines():
            parts = line.split()
            if parts[:1] == ["r"]:
                answers.append(
                    Answer(float(parts[1]), float(parts[2]), int(parts[3]), parts[4],
                           parts[5] == "1", int(parts[6]), parts[7] == "1", parts[8])
                )  # fmt: skip
            elif parts[:1] == ["m"]:
                shadow.append((float(parts[1]), float(parts[2])))
                seconds.append((float(parts[1]), float(parts[3]), float(parts[4])))
        assert log.rstrip().endswith("done"), log[-3000:]
        self.cluster.run_kubectl("-n", self.ns, "delete", "pod", self.name, "--wait=false")
        return ClientLog(answers, shadow, seconds)


def toolkit() -> str:
    """The toolkit image as hack/images.sh loads it into the node."""
    from modelyard._version import __version__

    return f"modelyard/toolkit:{__version__}"
