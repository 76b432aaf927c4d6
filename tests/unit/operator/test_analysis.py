"""The canary verdict on one interval's numbers."""

from __future__ import annotations

import datetime as dt

from modelyard.operator.analysis import (
    FAILED,
    INCONCLUSIVE,
    SUCCESSFUL,
    Criteria,
    VariantStats,
    failed_too_often,
    judge,
)

AT = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
CRITERIA = Criteria(min_requests=50, max_error_rate_increase=0.01, max_latency_ratio=1.5)


def test_a_canary_with_too_little_traffic_is_inconclusive_not_failed() -> None:
    m = judge(CRITERIA, VariantStats(500, 0, 0.01), VariantStats(10, 10, 5.0), AT)
    assert m.phase == INCONCLUSIVE
    assert "candidate answered 10 < 50 requests" in m.message


def test_more_errors_than_the_stable_fail_the_interval() -> None:
    m = judge(CRITERIA, VariantStats(1000, 5, 0.02), VariantStats(100, 3, 0.02), AT)
    assert m.phase == FAILED
    assert "error rate 3.00% vs stable 0.50%" in m.message


def test_an_error_rate_within_the_allowed_increase_passes() -> None:
    m = judge(CRITERIA, VariantStats(1000, 5, 0.02), VariantStats(100, 1, 0.02), AT)
    assert m.phase == SUCCESSFUL


def test_a_slow_candidate_fails_on_its_p99_ratio() -> None:
    m = judge(CRITERIA, VariantStats(1000, 0, 0.020), VariantStats(100, 0, 0.100), AT)
    assert m.phase == FAILED
    assert "p99 100ms vs stable 20ms (x5.00 > x1.5, +80ms > +25ms)" in m.message


def test_a_p99_many_times_the_stable_but_few_milliseconds_more_passes() -> None:
    """17 ms against 59 ms (x3.5) over one interval is noise on a loaded node, not a
    slower model: the increase must also exceed minLatencyIncrease (25 ms by default)."""
    m = judge(CRITERIA, VariantStats(300, 0, 0.004), VariantStats(300, 0, 0.020), AT)
    assert m.phase == SUCCESSFUL, m.message
    strict = Criteria(max_latency_ratio=1.5, min_latency_increase_seconds=0.0)
    m = judge(strict, VariantStats(300, 0, 0.004), VariantStats(300, 0, 0.020), AT)
    assert m.phase == FAILED
    assert "(x5.00 > x1.5, +16ms > +0ms)" in m.message


def test_a_large_increase_within_the_ratio_passes() -> None:
    """Both bounds must be exceeded: +200 ms on a 1 s p99 is within x1.5."""
    m = judge(CRITERIA, VariantStats(300, 0, 1.0), VariantStats(300, 0, 1.2), AT)
    assert m.phase == SUCCESSFUL, m.message


def test_the_measurement_reaches_status_with_its_numbers() -> None:
    m = judge(CRITERIA, VariantStats(1000, 0, 0.02), VariantStats(100, 0, 0.021), AT)
    assert m.to_status() == {
        "phase": SUCCESSFUL,
        "at": "2026-12-01T12:00:00Z",
        "stable": {"requests": 1000, "errors": 0, "errorRate": 0.0, "p99Seconds": 0.02},
        "candidate": {"requests": 100, "errors": 0, "errorRate": 0.0, "p99Seconds": 0.021},
        "message": m.message,
    }


def test_rollback_after_failure_limit_failed_measurements() -> None:
    bad = judge(CRITERIA, VariantStats(1000, 0, 0.02), VariantStats(100, 50, 0.02), AT)
    good = judge(CRITERIA, VariantStats(1000, 0, 0.02), VariantStats(100, 0, 0.02), AT)
    assert not failed_too_often([bad, good], CRITERIA)
    assert failed_too_often([bad, good, bad], CRITERIA)
