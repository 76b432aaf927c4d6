"""Leader election through a ``coordination.k8s.io/v1`` Lease: of the operator's replicas
exactly one acts (runs the kopf handlers, the work queue, the scheduler), the others stand
by (docs/operations.md, "High availability").

kopf's own peering is not leader election: it pauses every operator of equal priority
while it sees another one, so two replicas would freeze each other. This elector follows
client-go's ``leaderelection`` package:

- a candidate takes the Lease when it does not exist, names nobody, or has not been
  renewed for ``lease_duration`` seconds *as measured on the candidate's own monotonic
  clock* since it last saw it change (no comparison of two machines' wall clocks);
- every write is a ``replace`` carrying the ``resourceVersion`` that was read, so of two
  candidates racing for the same Lease the API server lets exactly one through (409 for
  the other);
- the leader renews every ``retry_period``; if no renewal succeeds for ``renew_deadline``
  (shorter than the lease duration) it is no longer the leader, before any other replica
  may take over. :meth:`LeaderElector.is_leader` turns false at that instant, whatever the
  renewing thread is doing, and ``on_lost`` is called (the operator exits, and Kubernetes
  restarts it as a standby);
- stopping in an orderly way, the leader releases the Lease (no holder) so a standby takes
  over at its next attempt instead of waiting for the lease to run out.

The ``kubernetes`` client's ``kubernetes.leaderelection`` (37.x) was considered: its API
calls have no timeout (a hung renewal outlives the renew deadline while the leader still
believes it leads), it never releases the Lease, its lock uses the global client
configuration, and it does not say whether this process currently leads.
"""

from __future__ import annotations

import logging
import math
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

logger = logging.getLogger(__name__)

#: Where a pod finds its own namespace.
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def _micro_time(moment: datetime) -> str:
    """A Lease's MicroTime, always with six fractional digits."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def own_namespace(configured: str) -> str:
    """The namespace of the Lease: configured, else the pod's own, else ``default``."""
    if configured:
        return configured
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as found:
            return found.read().strip() or "default"
    except OSError:
        return "default"


def new_identity(pod_name: str = "") -> str:
    """``<pod name>_<random>``: unique per process, so a restarted container never
    mistakes the Lease its previous process held for its own."""
    return f"{pod_name or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


class LeaderElector:
    """Takes and keeps one Lease for this process; see the module's description."""

    def __init__(
        self,
        api: client.CoordinationV1Api,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_lost: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        annotations: dict[str, str] | None = None,
    ) -> None:
        if not 0 < retry_period < renew_deadline < lease_duration:
            raise ValueError(
                "leader election needs retry period < renew deadline < lease duration, got "
                f"{retry_period}s, {renew_deadline}s, {lease_duration}s"
            )
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.on_lost = on_lost
        #: Written on the Lease while this process holds it (e.g. where it takes webhook
        #: deliveries, for the standbys to forward them to).
        self.annotations = dict(annotations or {})
        self._clock = clock
        self._lock = threading.Lock()
        #: When the request of the last successful write was sent (monotonic), if leading.
        self._renewed_at: float | None = None
        #: (holder, renewTime, resourceVersion) as last read, and when it was first seen.
        self._observed: tuple[str, str, str] | None = None
        self._observed_at = 0.0
        #: The Lease's annotations as last read (the holder's, see ``annotations``).
        self._observed_annotations: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: What this process last wrote to the Lease and the resourceVersion the API server
        #: answered: a renewal is then a single write, without reading the Lease first.
        self._written: tuple[dict[str, Any], str] | None = None

    @property
    def lease(self) -> str:
        return f"{self.namespace}/{self.name}"

    # ------------------------------------------------------------------ state
    def is_leader(self) -> bool:
        """Whether this process may act now: its last successful renewal was sent less
        than ``renew_deadline`` seconds ago."""
        with self._lock:
            renewed = self._renewed_at
        return renewed is not None and self._clock() - renewed < self.renew_deadline

    @property
    def holder(self) -> str:
        """The holder the Lease named when last read ("" for none)."""
        with self._lock:
            return self._observed[0] if self._observed else ""

    def holder_annotation(self, key: str) -> str | None:
        """What another holder of the Lease, alive when last read, announced under ``key``
        (None while this process leads, or when nobody holds the Lease)."""
        with self._lock:
            observed, at = self._observed, self._observed_at
            value = self._observed_annotations.get(key)
        if observed is None or not observed[0] or observed[0] == self.identity:
            return None
        if self._clock() - at >= self.lease_duration:
            return None  # the holder stopped renewing: it may be gone
        return value

    # ------------------------------------------------------------------ one attempt
    def try_acquire_or_renew(self, timeout: float | None = None) -> bool:
        """One attempt at taking or renewing the Lease; True when this process holds it."""
        timeout = self.retry_period if timeout is None else max(timeout, 0.1)
        sent = self._clock()
        now = _micro_time(datetime.now(UTC))
        if self._renew_blind(now, sent, timeout):
            return True
        try:
            lease = self.api.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=timeout
            )
        except ApiException as error:
            if error.status != 404:
                logger.warning(
                    "cannot read the Lease %s: %s %s", self.lease, error.status, error.reason
                )
                return False
            return self._create(now, sent, timeout)
        except Exception as error:  # connection refused, timeout: try again later
            logger.warning("cannot read the Lease %s: %s", self.lease, error)
            return False
        spec = lease.spec or client.V1LeaseSpec()
        meta = lease.metadata or client.V1ObjectMeta()
        holder = spec.holder_identity or ""
        seen = (holder, str(spec.renew_time), str(meta.resource_version))
        with self._lock:
            self._observed_annotations = dict(meta.annotations or {})
            if seen != self._observed:
                if self._observed is None or self._observed[0] != holder:
                    logger.info("the Lease %s is held by %s", self.lease, holder or "nobody")
                self._observed, self._observed_at = seen, sent
            observed_at = self._observed_at
        # Honour the longer of our duration and the one the holder announced.
        duration = max(self.lease_duration, float(spec.lease_duration_seconds or 0))
        if holder and holder != self.identity and sent - observed_at < duration:
            return False
        transitions = int(spec.lease_transitions or 0)
        body = self._body(
            acquire_time=(
                now
                if holder != self.identity or spec.acquire_time is None
                else _micro_time(spec.acquire_time)
            ),
            renew_time=now,
            transitions=transitions + 1 if holder and holder != self.identity else transitions,
            resource_version=meta.resource_version,
            labels=meta.labels,
        )
        if not self._replace(body, timeout):
            return False
        self._won(sent, holder)
        return True

    def _replace(self, body: Any, timeout: float) -> bool:
        """Write the Lease (on the resourceVersion ``body`` carries); remember what was
        written for the next renewal."""
        try:
            written = self.api.replace_namespaced_lease(
                self.name, self.namespace, body, _request_timeout=timeout
            )
        except ApiException as error:
            level = logging.DEBUG if error.status == 409 else logging.WARNING
            logger.log(
                level, "could not write the Lease %s: %s %s", self.lease, error.status, error.reason
            )
            return False
        except Exception as error:
            logger.warning("could not write the Lease %s: %s", self.lease, error)
            return False
        version = written.metadata.resource_version if written.metadata is not None else None
        with self._lock:
            self._written = (body, str(version)) if version else None
        return True

    def _renew_blind(self, now: str, sent: float, timeout: float) -> bool:
        """While leading, renew with one write on the resourceVersion of our own last
        write (client-go reads first; on a loaded API server that doubles the time a
        renewal takes). Anyone else's write since makes it fail (409): then the Lease is
        read as usual."""
        with self._lock:
            written = self._written if self._renewed_at is not None else None
        if written is None:
            return False
        last, version = written
        body = {
            **last,
            "metadata": {**last["metadata"], "resourceVersion": version},
            "spec": {**last["spec"], "renewTime": now},
        }
        with self._lock:
            self._written = None  # used once: a failure reads the Lease next time
        if not self._replace(body, timeout):
            return False
        self._won(sent, self.identity)
        return True

    def _body(
        self,
        *,
        acquire_time: str,
        renew_time: str,
        transitions: int,
        resource_version: str | None = None,
        labels: dict[str, str] | None = None,
        holder: bool = True,
    ) -> Any:
        """The Lease as JSON (MicroTimes with six digits, which the API server needs)."""
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if resource_version:
            metadata["resourceVersion"] = resource_version
        if labels:
            metadata["labels"] = labels
        if holder and self.annotations:
            metadata["annotations"] = dict(self.annotations)
        spec: dict[str, Any] = {
            "leaseDurationSeconds": math.ceil(self.lease_duration) if holder else 1,
            "acquireTime": acquire_time,
            "renewTime": renew_time,
            "leaseTransitions": transitions,
        }
        if holder:
            spec["holderIdentity"] = self.identity
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": spec,
        }

    def _create(self, now: str, sent: float, timeout: float) -> bool:
        body = self._body(acquire_time=now, renew_time=now, transitions=0)
        try:
            self.api.create_namespaced_lease(self.namespace, body, _request_timeout=timeout)
        except ApiException as error:
            level = logging.DEBUG if error.status == 409 else logging.WARNING
            logger.log(
                level,
                "could not create the Lease %s: %s %s",
                self.lease,
                error.status,
                error.reason,
            )
            return False
        except Exception as error:
            logger.warning("could not create the Lease %s: %s", self.lease, error)
            return False
        self._won(sent, "")
        return True

    def _won(self, sent: float, previous: str) -> None:
        with self._lock:
            first = self._renewed_at is None
            self._renewed_at = sent
        if first:
            logger.info(
                "%s leads: took the Lease %s%s",
                self.identity,
                self.lease,
                f" from {previous}" if previous and previous != self.identity else "",
            )

    # ------------------------------------------------------------------ loops
    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Stand by until this process holds the Lease (True) or ``stop`` is set."""
        stop = stop or threading.Event()
        logger.info("%s stands by for the Lease %s", self.identity, self.lease)
        while not stop.is_set():
            if self.try_acquire_or_renew(self.renew_deadline / 2):
                return True
            # client-go's jitter: candidates do not knock in step.
            stop.wait(self.retry_period * (1 + 0.2 * random.random()))
        return False

    def start_renewing(self) -> None:
        """Renew the Lease every ``retry_period`` on a thread of its own."""
        if not self.is_leader():
            raise RuntimeError("start_renewing needs the Lease: call acquire() first")
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew, name="leader-election", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.retry_period):
            with self._lock:
                renewed = self._renewed_at
            remaining = (renewed or 0.0) + self.renew_deadline - self._clock()
            if renewed is not None and remaining > 0:
                # No request may outlast the deadline: (connect, read) share what is left.
                if self.try_acquire_or_renew(remaining / 2):
                    continue
                with self._lock:
                    renewed = self._renewed_at
                if (renewed or 0.0) + self.renew_deadline > self._clock():
                    continue
            if self._stop.is_set():
                return
            self._lose()
            return

    def _lose(self) -> None:
        with self._lock:
            self._renewed_at = None
            self._written = None
        logger.error(
            "%s lost the Lease %s: no renewal for %ss; it stops acting",
            self.identity,
            self.lease,
            self.renew_deadline,
        )
        if self.on_lost is not None:
            self.on_lost()

    def stop_renewing(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.renew_deadline)
            self._thread = None

    def release(self) -> bool:
        """Give the Lease up (orderly shutdown, after the work stopped): no holder, so a
        standby takes it at its next attempt. True when released."""
        self.stop_renewing()
        if not self.is_leader():
            return False
        with self._lock:
            self._renewed_at = None
            self._written = None
        try:
            lease = self.api.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self.retry_period
            )
            spec = lease.spec or client.V1LeaseSpec()
            meta = lease.metadata or client.V1ObjectMeta()
            if spec.holder_identity != self.identity:
                return False
            now = _micro_time(datetime.now(UTC))
            body = self._body(
                acquire_time=now,
                renew_time=now,
                transitions=int(spec.lease_transitions or 0),
                resource_version=meta.resource_version,
                labels=meta.labels,
                holder=False,
            )
            self.api.replace_namespaced_lease(
                self.name, self.namespace, body, _request_timeout=self.retry_period
            )
        except Exception as error:  # the Lease then runs out by itself
            logger.warning("could not release the Lease %s: %s", self.lease, error)
            return False
        logger.info("%s released the Lease %s", self.identity, self.lease)
        return True


#: This process's elector, when ``modelyard operator`` runs with leader election.
_current: LeaderElector | None = None


def set_current(elector: LeaderElector | None) -> None:
    global _current
    _current = elector


def current() -> LeaderElector | None:
    return _current


def is_leader() -> bool:
    """Whether this process may act (for code outside the kopf handlers, e.g. an HTTP
    endpoint every replica serves): always True when no election runs."""
    return _current is None or _current.is_leader()
