"""The numbers a canary analysis judges: each variant's requests, server errors and p99
latency over one interval, from the model servers' own metrics.

Two sources give the same :class:`~modelyard.operator.analysis.VariantStats`:

- :class:`PodMetricsCollector` needs no metrics stack. Each call scrapes ``/metrics`` of
  every pod of every variant and returns what happened *since the previous call*. The
  counters only ever grow within one process, so the interval's numbers are per-pod
  differences of two scrapes, summed per variant:

  - a pod whose counters went down (or whose series vanished) restarted: its whole new
    value happened since the restart, so that is its delta;
  - a pod seen for the first time (after the first call) started during the interval:
    its whole value is its delta;
  - a pod that is gone is forgotten (what it answered since the previous scrape is
    lost with it: nothing can be read from a pod that no longer exists);
  - a pod that did not answer the scrape keeps its previous sample, so its next
    successful scrape still yields the right difference.

  The first call only records where the counters stand and returns zeros (an analysis
  judges that interval Inconclusive); so does the first call after an operator restart.
  p99 comes from the summed histogram bucket differences, interpolated within the
  bucket as Prometheus's ``histogram_quantile`` does.

- :class:`PrometheusCollector`, when the installation names a Prometheus that scrapes the
  servers, asks it the same questions in PromQL over the interval's window.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from modelyard.core import contracts as c
from modelyard.operator.analysis import VariantStats

_BUCKET = f"{c.REQUEST_DURATION_METRIC}_bucket"
#: One sample of one pod: its name and labels (sorted).
SeriesKey = tuple[str, tuple[tuple[str, str], ...]]
Sample = dict[SeriesKey, float]


@dataclass(frozen=True)
class Target:
    """One pod to scrape: which variant it serves, its identity and its metrics URL."""

    variant: str
    #: Stable for the pod's life (its name or uid); a restarted container keeps it.
    pod: str
    url: str


def parse_sample(text: str) -> Sample:
    """The request counter's and latency histogram buckets' series in one scrape."""
    sample: Sample = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in (c.REQUESTS_METRIC, _BUCKET):
                key = (s.name, tuple(sorted(s.labels.items())))
                sample[key] = sample.get(key, 0.0) + float(s.value)
    return sample


def sample_delta(previous: Sample | None, current: Sample) -> Sample:
    """What one pod did between two scrapes (``previous`` None: all of ``current``)."""
    if previous is None:
        return dict(current)
    restarted = any(current.get(key, -1.0) < value for key, value in previous.items())
    if restarted:
        return dict(current)
    return {key: value - previous.get(key, 0.0) for key, value in current.items()}


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The ``q`` quantile of cumulative bucket counts by upper bound (``le``), as
    Prometheus's ``histogram_quantile`` computes it; None without observations."""
    bounds = sorted(buckets)
    if not bounds or not math.isinf(bounds[-1]):
        return None
    counts: list[float] = []
    for bound in bounds:  # cumulative counts never decrease
        counts.append(max(buckets[bound], counts[-1] if counts else 0.0))
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    for i, (bound, count) in enumerate(zip(bounds, counts, strict=True)):
        if count >= rank:
            if math.isinf(bound):
                # In the open-ended bucket: the highest finite bound is all we know.
                return bounds[i - 1] if i > 0 else None
            lower = bounds[i - 1] if i > 0 else 0.0
            below = counts[i - 1] if i > 0 else 0.0
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
    return None  # pragma: no cover - the +Inf bucket holds the total


def variant_stats(deltas: Iterable[Sample]) -> VariantStats:
    """Requests, 5xx answers and p99 of the summed per-pod deltas of one variant."""
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    for delta in deltas:
        for (name, labels), value in delta.items():
            tags = dict(labels)
            if name == c.REQUESTS_METRIC:
                requests += value
                if tags.get("status", "").startswith("5"):
                    errors += value
            elif "le" in tags:
                le = float(tags["le"])
                buckets[le] = buckets.get(le, 0.0) + value
    return VariantStats(
        requests=round(requests),
        errors=round(errors),
        p99_seconds=histogram_quantile(0.99, buckets),
    )


def _http_get(url: str, timeout: float) -> str:
    response = httpx.get(url, timeout=timeout)
    response.raise_for_status()
    return response.text


@dataclass
class Collection:
    """One interval's numbers per variant, and the pods that could not be scraped."""

    stats: dict[str, VariantStats]
    unreachable: dict[str, str] = field(default_factory=dict)
    #: True on the first call: it only recorded where the counters stand.
    baseline: bool = False


class PodMetricsCollector:
    """Scrapes the variants' pods and returns per-interval numbers (module docstring).

    Keep one per rollout and call :meth:`collect` once per analysis interval.
    """

    def __init__(
        self, fetch: Callable[[str, float], str] = _http_get, timeout: float = 5.0
    ) -> None:
        self._fetch = fetch
        self._timeout = timeout
        self._last: dict[str, Sample] = {}
        self._primed = False

    def collect(self, targets: Iterable[Target], variants: Iterable[str] = ()) -> Collection:
        """The numbers since the previous call, for each variant named by a target (and
        each of ``variants``, with zeros when it has no pod)."""
        deltas: dict[str, list[Sample]] = {v: [] for v in variants}
        unreachable: dict[str, str] = {}
        seen: dict[str, Sample] = {}
        for target in targets:
            deltas.setdefault(target.variant, [])
            key = f"{target.variant}/{target.pod}"
            try:
                current = parse_sample(self._fetch(target.url, self._timeout))
            except (httpx.HTTPError, ValueError) as exc:
                unreachable[target.pod] = f"{target.url}: {exc}"
                if key in self._last:
                    seen[key] = self._last[key]
                continue
            previous = self._last.get(key)
            if previous is None and not self._primed:
                previous = current  # the baseline: nothing happened "since"
            deltas[target.variant].append(sample_delta(previous, current))
            seen[key] = current
        baseline = not self._primed
        self._last = seen
        self._primed = True
        stats = {variant: variant_stats(samples) for variant, samples in deltas.items()}
        return Collection(stats, unreachable, baseline)


def _promql_selector(labels: Mapping[str, str], extra: str = "") -> str:
    def quoted(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    parts = [f'{name}="{quoted(value)}"' for name, value in sorted(labels.items())]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}"


class PrometheusError(RuntimeError):
    """Prometheus could not answer a query."""


class PrometheusCollector:
    """The same numbers from a Prometheus that scrapes the servers, by PromQL.

    A variant is a label selector on the servers' series: ``model_name`` and
    ``model_version`` are on every one of them; add what the installation's scrape
    configuration attaches (e.g. ``namespace``) to tell ModelDeployments apart.
    """

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def queries(self, selector: Mapping[str, str], window_seconds: float) -> dict[str, str]:
        window = f"{max(1, round(window_seconds))}s"
        total = c.REQUESTS_METRIC
        server_errors = _promql_selector(selector, 'status=~"5.."')
        return {
            "requests": f"sum(increase({total}{_promql_selector(selector)}[{window}]))",
            "errors": f"sum(increase({total}{server_errors}[{window}]))",
            "p99": f"histogram_quantile(0.99, sum by (le) (rate({_BUCKET}"
            f"{_promql_selector(selector)}[{window}])))",
        }

    def query(self, promql: str) -> float | None:
        """The single value of an instant query; None when it has none (or NaN)."""
        try:
            response = httpx.get(
                f"{self.url}/api/v1/query", params={"query": promql}, timeout=self.timeout
            )
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise PrometheusError(f"querying {self.url} failed: {exc}") from exc
        if body.get("status") != "success":
            raise PrometheusError(
                f"Prometheus refused {promql!r}: {body.get('error', response.text[:200])}"
            )
        result = body["data"]["result"]
        if not result:
            return None
        value = float(result[0]["value"][1])
        return None if math.isnan(value) else value

    def variant_stats(self, selector: Mapping[str, str], window_seconds: float) -> VariantStats:
        values = {k: self.query(q) for k, q in self.queries(selector, window_seconds).items()}
        return VariantStats(
            requests=round(values["requests"] or 0.0),
            errors=round(values["errors"] or 0.0),
            p99_seconds=values["p99"],
        )

    def collect(
        self, selectors: Mapping[str, Mapping[str, str]], window_seconds: float
    ) -> Collection:
        return Collection({v: self.variant_stats(s, window_seconds) for v, s in selectors.items()})
