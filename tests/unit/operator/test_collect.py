"""The interval arithmetic of the metrics collector, on Prometheus text the way the model
server writes it (real servers' /metrics: tests/integration/serving/test_collect.py)."""

from __future__ import annotations

import math

import httpx
import pytest

from modelyard.operator.collect import (
    PodMetricsCollector,
    PrometheusCollector,
    Target,
    histogram_quantile,
    parse_sample,
    sample_delta,
)

BOUNDS = ("0.01", "0.1", "1.0", "+Inf")


def exposition(by_status: dict[str, tuple[int, tuple[int, ...]]]) -> str:
    """/metrics of one pod: per status, the request count and cumulative bucket counts."""
    lines = [
        "# HELP modelyard_requests_total Prediction requests answered.",
        "# TYPE modelyard_requests_total counter",
    ]
    labels = 'endpoint="/predict",model_name="m",model_version="1"'
    for status, (count, _) in by_status.items():
        lines.append(f'modelyard_requests_total{{{labels},status="{status}"}} {count}.0')
    lines += [
        "# HELP modelyard_request_duration_seconds Latency.",
        "# TYPE modelyard_request_duration_seconds histogram",
    ]
    for status, (count, buckets) in by_status.items():
        for le, n in zip(BOUNDS, buckets, strict=True):
            lines.append(
                f'modelyard_request_duration_seconds_bucket{{{labels},le="{le}",'
                f'status="{status}"}} {n}.0'
            )
        lines.append(
            f'modelyard_request_duration_seconds_count{{{labels},status="{status}"}} {count}.0'
        )
        lines.append(f'modelyard_request_duration_seconds_sum{{{labels},status="{status}"}} 1.0')
    lines += ["# TYPE bentoml_other counter", "bentoml_other_total 99.0", ""]
    return "\n".join(lines)


class Pods:
    """What each URL answers, changed by the test between collections."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}

    def fetch(self, url: str, timeout: float) -> str:
        if url not in self.pages:
            raise httpx.ConnectError(f"no pod at {url}")
        return self.pages[url]


def targets(*spec: tuple[str, str]) -> list[Target]:
    return [Target(variant, pod, f"http://{pod}/metrics") for variant, pod in spec]


def test_parse_keeps_only_the_request_counter_and_latency_buckets() -> None:
    sample = parse_sample(exposition({"200": (10, (2, 8, 10, 10))}))
    names = {name for name, _ in sample}
    assert names == {"modelyard_requests_total", "modelyard_request_duration_seconds_bucket"}
    assert len(sample) == 1 + len(BOUNDS)


def test_first_collection_is_a_baseline_then_deltas_are_per_interval() -> None:
    pods = Pods()
    collector = PodMetricsCollector(pods.fetch)
    pods.pages = {
        "http://s1/metrics": exposition({"200": (100, (50, 90, 100, 100))}),
        "http://c1/metrics": exposition({"200": (10, (5, 9, 10, 10))}),
    }
    spec = targets(("stable", "s1"), ("candidate", "c1"))
    first = collector.collect(spec)
    assert first.baseline
    assert first.stats["stable"].requests == 0 and first.stats["candidate"].requests == 0
    assert first.stats["stable"].p99_seconds is None

    pods.pages = {
        "http://s1/metrics": exposition(
            {"200": (190, (80, 170, 190, 190)), "503": (10, (10, 10, 10, 10))}
        ),
        "http://c1/metrics": exposition({"200": (30, (5, 9, 10, 30))}),
    }
    second = collector.collect(spec)
    assert not second.baseline
    stable, candidate = second.stats["stable"], second.stats["candidate"]
    # Stable: 90 more 200s and 10 new 503s.
    assert (stable.requests, stable.errors) == (100, 10)
    # Buckets of the interval: le=0.01: 30+10, 0.1: 80+10, 1: 90+10, +Inf: 100; the 99th
    # request is within (0.1, 1]: 0.1 + 0.9 * (99 - 90) / (100 - 90).
    assert stable.p99_seconds == pytest.approx(0.1 + 0.9 * 9 / 10)
    # Candidate: 20 requests, all above a second: the highest finite bound.
    assert (candidate.requests, candidate.errors, candidate.p99_seconds) == (20, 0, 1.0)


def test_a_restarted_pod_counts_its_new_value_and_new_pods_count_whole() -> None:
    pods = Pods()
    collector = PodMetricsCollector(pods.fetch)
    pods.pages = {"http://s1/metrics": exposition({"200": (500, (500, 500, 500, 500))})}
    collector.collect(targets(("stable", "s1")))
    # s1 restarted (its counter went down to 7) and s2 is new since the last collection.
    pods.pages = {
        "http://s1/metrics": exposition({"200": (7, (7, 7, 7, 7))}),
        "http://s2/metrics": exposition({"200": (40, (40, 40, 40, 40))}),
    }
    stats = collector.collect(targets(("stable", "s1"), ("stable", "s2"))).stats["stable"]
    assert stats.requests == 7 + 40
    # Then ordinary deltas again, from the restarted values.
    pods.pages = {
        "http://s1/metrics": exposition({"200": (10, (10, 10, 10, 10))}),
        "http://s2/metrics": exposition({"200": (45, (45, 45, 45, 45))}),
    }
    assert collector.collect(targets(("stable", "s1"), ("stable", "s2"))).stats[
        "stable"
    ].requests == (3 + 5)


def test_a_restart_whose_series_vanished_is_a_reset_too() -> None:
    before = parse_sample(exposition({"200": (50, (50, 50, 50, 50)), "500": (2, (2, 2, 2, 2))}))
    after = parse_sample(exposition({"200": (60, (60, 60, 60, 60))}))
    # The 500 series is gone: a new process, whose 60 requests all count.
    delta = sample_delta(before, after)
    assert sum(v for (n, _), v in delta.items() if n == "modelyard_requests_total") == 60


def test_pods_that_go_are_forgotten_and_unreachable_pods_keep_their_sample() -> None:
    pods = Pods()
    collector = PodMetricsCollector(pods.fetch)
    pods.pages = {
        "http://s1/metrics": exposition({"200": (10, (10, 10, 10, 10))}),
        "http://s2/metrics": exposition({"200": (20, (20, 20, 20, 20))}),
    }
    collector.collect(targets(("stable", "s1"), ("stable", "s2")))
    # s2 does not answer this time; s1 went on.
    del pods.pages["http://s2/metrics"]
    pods.pages["http://s1/metrics"] = exposition({"200": (15, (15, 15, 15, 15))})
    middle = collector.collect(targets(("stable", "s1"), ("stable", "s2")))
    assert middle.stats["stable"].requests == 5
    assert set(middle.unreachable) == {"s2"}
    # s2 answers again: the difference is from its last good scrape, not counted whole.
    pods.pages["http://s2/metrics"] = exposition({"200": (26, (26, 26, 26, 26))})
    later = collector.collect(targets(("stable", "s1"), ("stable", "s2")))
    assert later.stats["stable"].requests == 6
    # s1 is gone (scaled down): no target, no state; it comes back as a new pod.
    collector.collect(targets(("stable", "s2")))
    pods.pages["http://s1/metrics"] = exposition({"200": (3, (3, 3, 3, 3))})
    assert collector.collect(targets(("stable", "s1"), ("stable", "s2"))).stats[
        "stable"
    ].requests == (3 + 0)


def test_a_variant_without_pods_reads_zero() -> None:
    collector = PodMetricsCollector(Pods().fetch)
    stats = collector.collect([], variants=["stable", "candidate"]).stats
    assert stats["candidate"].requests == 0 and stats["candidate"].p99_seconds is None


def test_histogram_quantile_matches_prometheus_rules() -> None:
    inf = math.inf
    assert histogram_quantile(0.99, {0.1: 0, 1.0: 0, inf: 0}) is None
    assert histogram_quantile(0.5, {0.1: 10, 1.0: 10, inf: 10}) == pytest.approx(0.05)
    assert histogram_quantile(0.99, {0.1: 0, 1.0: 0, inf: 5}) == 1.0
    assert histogram_quantile(0.99, {0.1: 5}) is None  # no +Inf bucket: not a histogram
    # Non-monotonic input (from per-bucket differences) is made cumulative.
    assert histogram_quantile(0.5, {0.1: 4, 1.0: 3, inf: 8}) == pytest.approx(0.1)


def test_promql_selects_the_variant_and_quotes_label_values() -> None:
    queries = PrometheusCollector("http://prom:9090/").queries(
        {"model_version": "3", "namespace": 'a"b'}, 30
    )
    assert queries["requests"] == (
        'sum(increase(modelyard_requests_total{model_version="3",namespace="a\\"b"}[30s]))'
    )
    assert queries["errors"] == (
        "sum(increase(modelyard_requests_total"
        '{model_version="3",namespace="a\\"b",status=~"5.."}[30s]))'
    )
    assert queries["p99"] == (
        "histogram_quantile(0.99, sum by (le) (rate(modelyard_request_duration_seconds_bucket"
        '{model_version="3",namespace="a\\"b"}[30s])))'
    )
