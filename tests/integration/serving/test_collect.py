"""The canary analysis's numbers from real model servers' /metrics: scraped by the
operator's collector (with a server restart and a new pod), and the same numbers from a
real Prometheus (Debian's package, hack/deps.sh installs it) scraping the same servers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from modelyard.core import contracts as c
from modelyard.operator.collect import PodMetricsCollector, PrometheusCollector, Target
from tests.integration.serving.conftest import MODEL_NAME
from tests.support.prometheus import start_prometheus, wait_until_up
from tests.support.servers import ServerProcess

if TYPE_CHECKING:
    from tests.integration.serving.conftest import ServerUnderTest, Variants

pytestmark = pytest.mark.integration

ROW = {"x0": 0.5, "x1": -0.2, "x2": 0.1, "x3": 1.0}


def predict(url: str, n: int, body: object = None) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        for _ in range(n):
            if body is None:
                assert http.post(c.PREDICT_PATH, json=[ROW]).status_code == 200
            else:
                http.post(c.PREDICT_PATH, content=str(body).encode())


def metrics_url(server: ServerUnderTest) -> str:
    return server.url + c.METRICS_PATH


@pytest.mark.timeout(900)  # two server starts on a busy machine
def test_interval_numbers_from_real_servers_through_a_restart(
    start_modelyard_server: Callable[..., ServerUnderTest],
    variant_servers: Variants,
    tmp_path: Path,
) -> None:
    homes = iter(range(10))

    def start_pod() -> ServerUnderTest:
        # Each process its own BENTOML_HOME (where its metrics live), as each pod has.
        home = tmp_path / f"bentoml-{next(homes)}"
        return start_modelyard_server(MODELYARD_MODEL_VERSION="stable", BENTOML_HOME=str(home))

    stable_0 = start_pod()
    candidate = variant_servers.candidate
    collector = PodMetricsCollector()

    def collect(*stable: tuple[str, ServerUnderTest]) -> dict[str, tuple[int, int]]:
        targets = [Target("candidate", "candidate-0", metrics_url(candidate))]
        targets += [Target("stable", pod, metrics_url(server)) for pod, server in stable]
        result = collector.collect(targets, variants=["stable", "candidate"])
        assert result.unreachable == {}
        return {v: (s.requests, s.errors) for v, s in result.stats.items()}

    # The first collection is the baseline (the candidate served other tests before).
    assert collect(("stable-0", stable_0)) == {"stable": (0, 0), "candidate": (0, 0)}
    assert collect(("stable-0", stable_0)) == {"stable": (0, 0), "candidate": (0, 0)}

    predict(stable_0.url, 30)
    predict(stable_0.url, 5, body="{")  # 400s: answered requests, not server errors
    predict(candidate.url, 12)
    stats = collector.collect(
        [
            Target("stable", "stable-0", metrics_url(stable_0)),
            Target("candidate", "candidate-0", metrics_url(candidate)),
        ]
    ).stats
    assert (stats["stable"].requests, stats["stable"].errors) == (35, 0)
    assert (stats["candidate"].requests, stats["candidate"].errors) == (12, 0)
    for variant in ("stable", "candidate"):
        p99 = stats[variant].p99_seconds
        assert p99 is not None and 0 < p99 < 1.28, (variant, p99)

    # The pod restarts (a new process, counters from zero) under the same pod name.
    stable_0.server.stop()
    restarted = start_pod()
    predict(restarted.url, 7)
    assert collect(("stable-0", restarted))["stable"] == (7, 0)

    predict(restarted.url, 3)
    assert collect(("stable-0", restarted))["stable"] == (3, 0)
    # A pod that went away is no longer counted (new pods: tests/unit/operator).
    assert collect()["stable"] == (0, 0)


@pytest.fixture
def prometheus(variant_servers: Variants, tmp_path: Path) -> Iterator[ServerProcess]:
    """A real Prometheus scraping the stable and candidate servers twice a second."""
    # Every series exists before Prometheus's first scrape (increase() counts from there).
    for server in (variant_servers.stable, variant_servers.candidate):
        predict(server.url, 1)
    server = start_prometheus(
        [
            s.url.removeprefix("http://")
            for s in (variant_servers.stable, variant_servers.candidate)
        ],
        tmp_path,
        job="modelyard-servers",
        interval=0.5,
    )
    yield server
    server.stop()


def test_prometheus_gives_the_same_numbers_as_the_scrapes(
    variant_servers: Variants, prometheus: ServerProcess
) -> None:
    prom = PrometheusCollector(prometheus.url)
    wait_until_up(prom.query, "modelyard-servers", 2)
    window = 30.0
    started = time.monotonic()
    collector = PodMetricsCollector()
    targets = [
        Target("stable", "stable-0", metrics_url(variant_servers.stable)),
        Target("candidate", "candidate-0", metrics_url(variant_servers.candidate)),
    ]
    collector.collect(targets)
    time.sleep(window / 3)  # Prometheus's window reaches back to quiet samples
    predict(variant_servers.stable.url, 200)
    predict(variant_servers.candidate.url, 50)
    scraped = collector.collect(targets).stats
    time.sleep(2)  # a few scrapes after the last request
    assert time.monotonic() - started < window - 1, "the traffic must lie within the window"
    selectors = {
        version: {"model_name": MODEL_NAME, "model_version": version}
        for version in ("stable", "candidate")
    }
    queried = prom.collect(selectors, window).stats
    print(f"\nscraped: {scraped}\nPrometheus: {queried}")
    for variant, sent in (("stable", 200), ("candidate", 50)):
        assert scraped[variant].requests == sent
        assert scraped[variant].errors == queried[variant].errors == 0
        # increase() extrapolates to the window's ends: a few percent at most here.
        assert queried[variant].requests == pytest.approx(sent, rel=0.1)
        ours, theirs = scraped[variant].p99_seconds, queried[variant].p99_seconds
        assert ours is not None and theirs is not None
        assert theirs == pytest.approx(ours, rel=0.25), variant


def test_a_query_prometheus_refuses_is_a_clear_error(prometheus: ServerProcess) -> None:
    from modelyard.operator.collect import PrometheusError

    with pytest.raises(PrometheusError, match="Prometheus refused"):
        PrometheusCollector(prometheus.url).query("sum(")
