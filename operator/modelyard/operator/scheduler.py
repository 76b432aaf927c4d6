"""One scheduler for all ModelDeployments, instead of a timer per resource.

Every resolve interval it asks the registry once per distinct reference that can move
(an alias or a stage; a pinned version whose deployment watches drift, since the drift
check reports through the version's tags; and a shadow's reference, which moves and gets
its comparison as a tag), shared by every ModelDeployment that
follows it, and queues only the ModelDeployments whose answer changed. An unchanged
registry costs one read per distinct reference and nothing else: no Kubernetes request,
no registry write. A registry webhook (:mod:`modelyard.operator.webhooks`) names a model
whose references are then re-resolved at once (``poke``), between passes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from modelyard.core.registry import ModelReference, ModelVersion, RegistryError
from modelyard.operator.reconcile import Key, Operator
from modelyard.operator.resolve import Outcome, RegistryTarget, registry_target
from modelyard.operator.resource import KIND, ModelDeploymentSpec, SpecError

logger = logging.getLogger(__name__)

Group = tuple[RegistryTarget, ModelReference]


def fingerprint(outcome: Outcome | None) -> tuple[Any, ...] | None:
    """What about an answer matters to a ModelDeployment."""
    if outcome is None:
        return None
    if isinstance(outcome, RegistryError):
        return ("error", outcome.reason, str(outcome))
    assert isinstance(outcome, ModelVersion)
    return (
        "version",
        outcome.name,
        outcome.version,
        outcome.run_id,
        outcome.status,
        tuple(sorted(outcome.tags.items())),
    )


def followed_references(op: Operator) -> dict[Group, list[Key]]:
    """The references worth asking about again, and who follows each."""
    groups: dict[Group, list[Key]] = defaultdict(list)
    for namespace, name in op.store.keys(KIND):
        body = op.store.get(KIND, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            continue
        try:
            spec = ModelDeploymentSpec.parse(body.get("spec") or {})
        except SpecError:
            continue
        target = registry_target(spec, namespace, op.policy)
        if not isinstance(target, RegistryTarget):
            continue
        ref = spec.model.to_reference()
        if ref.is_floating or spec.monitoring.drift is not None:
            groups[(target, ref)].append((namespace, name))  # a pinned version never moves
        shadow = spec.rollout.shadow
        if shadow is not None:
            # The shadow's alias moves, and its comparison arrives as a tag on it.
            shadow_ref = ModelReference(spec.model.name, shadow.version, shadow.alias, None)
            groups[(target, shadow_ref)].append((namespace, name))
    return groups


def condition_counts(op: Operator) -> dict[tuple[str, str], int]:
    """How many ModelDeployments have each (condition type, status)."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for namespace, name in op.store.keys(KIND):
        body = op.store.get(KIND, namespace, name) or {}
        for condition in (body.get("status") or {}).get("conditions") or []:
            counts[(str(condition.get("type")), str(condition.get("status")))] += 1
    return counts


class Periodic:
    """A pass (``tick``) every ``interval`` seconds on a thread of its own; a pass that
    fails is logged and the next one runs as planned."""

    name = "periodic"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ticks = 0

    def tick(self) -> int:
        raise NotImplementedError

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Exception:  # the loop must outlive any one bad pass
                logger.exception("%s pass failed", self.name)


class Scheduler(Periodic):
    """Re-resolves followed references every ``interval`` seconds on its own thread."""

    name = "scheduler"

    def __init__(
        self,
        op: Operator,
        enqueue: Callable[[Key], None],
        *,
        interval: float,
        parallelism: int = 4,
    ) -> None:
        super().__init__(interval)
        self.op = op
        self.enqueue = enqueue
        self.parallelism = parallelism
        self._wake = threading.Event()
        self._poke_lock = threading.Lock()
        self._poked: set[str] = set()
        #: Passes made for webhooks, between the periodic ones (read by tests).
        self.poked_passes = 0

    def poke(self, model: str) -> None:
        """Re-resolve the followed references to ``model`` now, on the scheduler's
        thread (the caller, a webhook, does not wait for the registry)."""
        with self._poke_lock:
            self._poked.add(model)
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        super().stop()

    def _run(self) -> None:
        due = time.monotonic() + self.interval
        while not self._stop.is_set():
            self._wake.wait(max(0.0, due - time.monotonic()))
            if self._stop.is_set():
                return
            self._wake.clear()
            with self._poke_lock:
                models, self._poked = self._poked, set()
            try:
                if time.monotonic() >= due:
                    due = time.monotonic() + self.interval
                    self.tick()  # every reference, the poked ones with them
                elif models:
                    self.tick(models)
            except Exception:  # the loop must outlive any one bad pass
                logger.exception("%s pass failed", self.name)

    def _count_conditions(self) -> None:
        gauge = self.op.metrics.resources
        counts = condition_counts(self.op)
        for type_ in ("Ready", "Progressing", "Degraded", "ModelResolved", "DataDrift"):
            for status in ("True", "False", "Unknown"):
                gauge.labels(type_, status).set(counts.get((type_, status), 0))

    def tick(self, models: set[str] | None = None) -> int:
        """One pass (over the references to ``models`` only, when given); returns how
        many ModelDeployments were queued."""
        assert self.op.resolver is not None
        resolver = self.op.resolver
        groups = followed_references(self.op)
        if models is not None:
            groups = {group: keys for group, keys in groups.items() if group[1].name in models}

        def refresh(group: Group) -> tuple[Group, bool]:
            target, ref = group
            before = fingerprint(resolver.cached(target, ref))
            after = fingerprint(resolver.resolve(target, ref, max_age=0))
            return group, before != after

        queued = 0
        with ThreadPoolExecutor(max_workers=self.parallelism) as pool:
            for group, changed in pool.map(refresh, list(groups)):
                if changed:
                    for key in groups[group]:
                        self.enqueue(key)
                        queued += 1
        if models is None:
            self.ticks += 1
            self.op.metrics.scheduler_passes.inc()
            self._count_conditions()
        else:
            self.poked_passes += 1
        if queued:
            logger.info("registry changes: %d ModelDeployment(s) to reconcile", queued)
        return queued
