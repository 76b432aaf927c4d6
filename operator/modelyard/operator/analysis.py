"""Canary analysis: is the candidate worse than the stable version, from their own numbers?

Each analysis interval yields one :class:`Measurement` (as an Argo AnalysisRun does):
the requests each variant answered in the interval, how many of them were server errors,
and each variant's p99 latency. The judgment compares the candidate with the stable
version *measured over the same interval*, so a load change moves both:

- **Inconclusive** when either variant answered fewer than ``min_requests`` requests
  (a canary with too little traffic is held, never failed: there is nothing to judge);
- **Failed** when the candidate's error rate exceeds the stable's by more than
  ``max_error_rate_increase``, or its p99 exceeds ``max_latency_ratio`` times the
  stable's *and* the stable's by more than ``min_latency_increase_seconds`` (the p99 of
  one interval's few hundred requests to a model answering in milliseconds moves by
  tens of them from noise alone; 17 ms against 59 ms says nothing about the model);
- **Successful** otherwise.

Where the numbers come from (the servers' ``/metrics``, or a Prometheus) is the
collector's business; this module only judges them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

SUCCESSFUL = "Successful"
FAILED = "Failed"
INCONCLUSIVE = "Inconclusive"


@dataclass(frozen=True)
class Criteria:
    """``spec.rollout.canary.analysis``."""

    interval_seconds: float = 30.0
    min_requests: int = 50
    max_error_rate_increase: float = 0.01
    max_latency_ratio: float = 1.5
    failure_limit: int = 2
    min_latency_increase_seconds: float = 0.025


@dataclass(frozen=True)
class VariantStats:
    """What one variant answered during one interval."""

    requests: int
    errors: int
    p99_seconds: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def describe(self) -> str:
        p99 = f"{self.p99_seconds * 1000:.0f}ms" if self.p99_seconds is not None else "n/a"
        return f"{self.requests} requests, {self.error_rate:.1%} errors, p99 {p99}"

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "requests": self.requests,
            "errors": self.errors,
            "errorRate": round(self.error_rate, 6),
        }
        if self.p99_seconds is not None:
            out["p99Seconds"] = round(self.p99_seconds, 6)
        return out


@dataclass(frozen=True)
class Measurement:
    """One interval's verdict, with the numbers it rests on."""

    phase: str
    at: dt.datetime
    stable: VariantStats
    candidate: VariantStats
    message: str

    def to_status(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "at": self.at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "stable": self.stable.to_status(),
            "candidate": self.candidate.to_status(),
            "message": self.message,
        }


def judge(
    criteria: Criteria, stable: VariantStats, candidate: VariantStats, at: dt.datetime
) -> Measurement:
    """The verdict on one interval's numbers (see the module's docstring)."""

    def measured(phase: str, message: str) -> Measurement:
        return Measurement(phase, at, stable, candidate, message)

    quiet = [
        f"{name} answered {stats.requests} < {criteria.min_requests} requests"
        for name, stats in (("candidate", candidate), ("stable", stable))
        if stats.requests < criteria.min_requests
    ]
    if quiet:
        return measured(INCONCLUSIVE, "; ".join(quiet))
    failures = []
    increase = candidate.error_rate - stable.error_rate
    if increase > criteria.max_error_rate_increase:
        failures.append(
            f"error rate {candidate.error_rate:.2%} vs stable {stable.error_rate:.2%}"
            f" (+{increase:.2%} > +{criteria.max_error_rate_increase:.2%})"
        )
    if candidate.p99_seconds is not None and stable.p99_seconds is not None:
        # A stable p99 of zero (below the first histogram bucket) counts as one millisecond.
        ratio = candidate.p99_seconds / max(stable.p99_seconds, 0.001)
        slower = candidate.p99_seconds - stable.p99_seconds
        if ratio > criteria.max_latency_ratio and slower > criteria.min_latency_increase_seconds:
            failures.append(
                f"p99 {candidate.p99_seconds * 1000:.0f}ms vs stable"
                f" {stable.p99_seconds * 1000:.0f}ms"
                f" (x{ratio:.2f} > x{criteria.max_latency_ratio:g},"
                f" +{slower * 1000:.0f}ms > +{criteria.min_latency_increase_seconds * 1000:g}ms)"
            )
    if failures:
        return measured(FAILED, "; ".join(failures))
    return measured(SUCCESSFUL, f"candidate {candidate.describe()}; stable {stable.describe()}")


def failed_too_often(measurements: list[Measurement], criteria: Criteria) -> bool:
    """Whether the rollout must be rolled back: ``failure_limit`` failed measurements."""
    return sum(m.phase == FAILED for m in measurements) >= criteria.failure_limit
