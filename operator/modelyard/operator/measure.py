"""Taking a canary's analysis measurements: the side effect the planner's
:class:`~modelyard.operator.plan.Observed` ``measurement`` comes from.

One :class:`Analyses` lives in the :class:`~modelyard.operator.reconcile.Operator`. For
each canary in flight, keyed by (namespace, name, candidate version), it keeps one
collector and when it last measured. A reconcile asks :meth:`Analyses.measure`; at most
once per analysis interval, and only while the candidate answers its step's share of the
clients' requests (the router serves the desired weight), it collects each variant's
numbers over the interval and :func:`~modelyard.operator.analysis.judge`\\ s them:

- with no metrics stack, a :class:`~modelyard.operator.collect.PodMetricsCollector`
  scrapes the stable and candidate pods' ``/metrics`` (pod IP, the server's port). Its
  first scrape of a step only records where the counters stand (a baseline counts as
  nothing), so every measurement covers time at the step's weight only;
- when the installation names a Prometheus (``MODELYARD_PROMETHEUS_URL``), a
  :class:`~modelyard.operator.collect.PrometheusCollector` asks it for the interval's
  window, once a whole interval has passed at the step.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from modelyard.core import contracts as c
from modelyard.operator import canary
from modelyard.operator.analysis import Measurement, judge
from modelyard.operator.collect import (
    Collection,
    PodMetricsCollector,
    PrometheusCollector,
    PrometheusError,
    Target,
)
from modelyard.operator.conditions import parse_time
from modelyard.operator.resource import Canary

logger = logging.getLogger(__name__)

STABLE = "stable"
CANDIDATE = "candidate"
Key = tuple[str, str, int]


@dataclass
class _Run:
    """One canary's collector and its last scrape."""

    collector: PodMetricsCollector
    #: ``status.rollout.stepSince`` of the step the last scrape was taken at (None: the
    #: next scrape is a baseline).
    step_since: str | None = None
    last: dt.datetime | None = None
    #: When the next measurement is due (None: none is, the candidate has no traffic).
    due: dt.datetime | None = None


def metrics_targets(variant: str, pods: Iterable[Mapping[str, Any]]) -> list[Target]:
    """The running pods with an IP, as scrape targets of the servers' ``/metrics``."""
    targets = []
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        ip = status.get("podIP")
        if not ip or status.get("phase") != "Running" or meta.get("deletionTimestamp"):
            continue
        host = f"[{ip}]" if ":" in str(ip) else str(ip)
        url = f"http://{host}:{c.SERVER_PORT}{c.METRICS_PATH}"
        targets.append(Target(variant, str(meta.get("uid") or meta.get("name")), url))
    return targets


def measuring(rollout: Mapping[str, Any], router_weight: int | None) -> bool:
    """Whether the candidate answers its step's share now (a canary step has begun and
    the router serves the desired weight): only then do measurements count."""
    if rollout.get("strategy") != canary.CANARY or not rollout.get("stepSince"):
        return False
    if rollout.get("phase") not in (canary.PROGRESSING, canary.PAUSED):
        return False
    desired = int(rollout.get("desiredWeight") or 0)
    return desired > 0 and (router_weight is None or router_weight == desired)


@dataclass
class Analyses:
    """Every canary's measurements in one operator process (module docstring)."""

    prometheus_url: str = ""
    #: The label the installation's Prometheus puts the pod's namespace in ("": none).
    prometheus_namespace_label: str = "namespace"
    #: Reads a ``/metrics`` URL (tests may give servers of their own).
    fetch: Callable[[str, float], str] | None = None
    _runs: dict[Key, _Run] = field(default_factory=dict)
    _prometheus: PrometheusCollector | None = None
    #: The reconcile workers share the table (each ModelDeployment is one worker's).
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.prometheus_url:
            self._prometheus = PrometheusCollector(self.prometheus_url)

    def forget(self, namespace: str, name: str, keep: int | None = None) -> None:
        """Drop the collectors of ``namespace/name``'s canaries (but version ``keep``'s)."""
        with self._lock:
            for key in [k for k in self._runs if k[:2] == (namespace, name) and k[2] != keep]:
                del self._runs[key]

    def measure(
        self,
        namespace: str,
        name: str,
        spec: Canary | None,
        rollout: Mapping[str, Any],
        live: Mapping[str, Any],
        stable_pods: Iterable[Mapping[str, Any]],
        canary_pods: Iterable[Mapping[str, Any]],
        router_weight: int | None,
        now: dt.datetime,
    ) -> Measurement | None:
        """This interval's measurement of the canary ``rollout`` records, when one is due."""
        version = rollout.get("version")
        if spec is None or rollout.get("strategy") != canary.CANARY or version is None:
            self.forget(namespace, name)
            return None
        key = (namespace, name, int(version))
        self.forget(namespace, name, keep=key[2])
        with self._lock:
            run = self._runs.setdefault(key, _Run(PodMetricsCollector(**self._fetch())))
        if not measuring(rollout, router_weight):
            run.step_since = run.due = None  # no traffic: the next scrape starts over
            return None
        criteria = canary.criteria(spec)
        interval = dt.timedelta(seconds=criteria.interval_seconds)
        step_since = str(rollout["stepSince"])
        same_step = run.step_since == step_since
        if same_step and run.last is not None and now - run.last < interval:
            run.due = run.last + interval
            return None
        collection = self._collect(
            run, namespace, live, rollout, stable_pods, canary_pods, step_since, now, interval
        )
        if collection is None:
            run.due = _parse(step_since, now) + interval
            return None
        run.step_since, run.last, run.due = step_since, now, now + interval
        if collection.baseline or (self._prometheus is None and not same_step):
            return None  # where the counters stand at the step's start: counts as nothing
        if collection.unreachable:
            logger.info(
                "%s/%s: pods not scraped: %s", namespace, name, "; ".join(collection.unreachable)
            )
        return judge(criteria, collection.stats[STABLE], collection.stats[CANDIDATE], now)

    def due_in(self, namespace: str, name: str, now: dt.datetime) -> float | None:
        """Seconds until ``namespace/name``'s canary's next measurement is due (so the
        reconcile comes back for it, whatever else wakes it up meanwhile), or None."""
        with self._lock:
            dues = [r.due for k, r in self._runs.items() if k[:2] == (namespace, name) and r.due]
        if not dues:
            return None
        return max(0.5, (min(dues) - now).total_seconds())

    def _fetch(self) -> dict[str, Any]:
        return {"fetch": self.fetch} if self.fetch is not None else {}

    def _collect(
        self,
        run: _Run,
        namespace: str,
        live: Mapping[str, Any],
        rollout: Mapping[str, Any],
        stable_pods: Iterable[Mapping[str, Any]],
        canary_pods: Iterable[Mapping[str, Any]],
        step_since: str,
        now: dt.datetime,
        interval: dt.timedelta,
    ) -> Collection | None:
        if self._prometheus is None:
            targets = metrics_targets(STABLE, stable_pods) + metrics_targets(CANDIDATE, canary_pods)
            return run.collector.collect(targets, variants=(STABLE, CANDIDATE))
        # Prometheus looks back a whole interval: only once one has passed at the step.
        if now - _parse(step_since, now) < interval:
            return None
        selectors = {
            STABLE: self._selector(namespace, live.get("name"), live.get("version")),
            CANDIDATE: self._selector(namespace, rollout.get("name"), rollout.get("version")),
        }
        try:
            found = self._prometheus.collect(selectors, interval.total_seconds())
        except PrometheusError as error:
            logger.warning("%s: no measurement: %s", namespace, error)
            return None
        # Every Prometheus window is a whole one: none is a baseline.
        return Collection(found.stats, found.unreachable, baseline=False)

    def _selector(self, namespace: str, model: Any, version: Any) -> dict[str, str]:
        selector = {"model_name": str(model), "model_version": str(version)}
        if self.prometheus_namespace_label:
            selector[self.prometheus_namespace_label] = namespace
        return selector


def _parse(moment: str, default: dt.datetime) -> dt.datetime:
    return parse_time(moment) or default
