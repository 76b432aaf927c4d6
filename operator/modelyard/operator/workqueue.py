"""A work queue of ModelDeployment keys, worked by a fixed pool of threads.

The semantics of client-go's workqueue, which every Kubernetes controller relies on:

- a key is queued at most once, however often it is added;
- a key is never worked by two threads at once; added while being worked, it runs again
  right after;
- a failed key comes back after a per-key exponential backoff; a key may also ask to be
  looked at again after some time (a rollout step's pause, a retry).

And two lanes, as controller-runtime's priority queue has: a key added as ``routine``
(a child's status moved: the Deployment controller counted replicas) waits while keys
with new work (a new or changed spec, a registry change, a command, a retry) are
queued. With a thousand new ModelDeployments, each one's children and first status come
before the refreshes their own children's events ask for, instead of between them.
A routine key added again as new work moves to the first lane.

The pool is sized on purpose (``MODELYARD_RECONCILE_WORKERS``): every reconcile is a few blocking
API and registry calls, so a handful of threads keep up with thousands of resources
while a slow registry can hold at most that many threads.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

K = TypeVar("K")

#: The lanes: new work first, then routine refreshes.
NEW, ROUTINE = 0, 1

#: Backoff after the first failure of a key, doubling up to MAX_BACKOFF.
BASE_BACKOFF = 1.0
MAX_BACKOFF = 300.0


class WorkQueue(Generic[K]):
    """Keys in, ``work(key)`` called on a worker thread; it returns seconds until the key
    should be worked again (or None) and raises to be retried with backoff."""

    def __init__(
        self,
        work: Callable[[K], float | None],
        *,
        workers: int = 4,
        name: str = "reconcile",
        on_error: Callable[[K, BaseException], None] | None = None,
    ) -> None:
        self._work = work
        self._workers = workers
        self._name = name
        self._on_error = on_error
        self._cond = threading.Condition()
        # Each lane in order; a key's entry in a lane it has left (moved up, or taken) is
        # stale and skipped: _queued says which lane holds a key now.
        self._lanes: tuple[deque[K], deque[K]] = (deque(), deque())
        self._queued: dict[K, int] = {}
        self._processing: set[K] = set()
        self._dirty: dict[K, int] = {}
        self._delayed: list[tuple[float, int, K]] = []
        self._sequence = 0
        self._failures: dict[K, int] = {}
        self._stopping = False
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ adding
    def add(self, key: K, *, routine: bool = False) -> None:
        """Queue ``key``: as new work, or ``routine`` (behind every key with new work)."""
        with self._cond:
            if self._stopping:
                return
            self._enqueue(key, ROUTINE if routine else NEW)

    def _enqueue(self, key: K, lane: int) -> None:
        """With the lock held."""
        if key in self._processing:
            self._dirty[key] = min(lane, self._dirty.get(key, lane))
            return
        now = self._queued.get(key)
        if now is None or lane < now:
            self._queued[key] = lane
            self._lanes[lane].append(key)
            self._cond.notify()

    def add_after(self, key: K, seconds: float) -> None:
        if seconds <= 0:
            self.add(key)
            return
        with self._cond:
            self._sequence += 1
            heapq.heappush(self._delayed, (time.monotonic() + seconds, self._sequence, key))
            self._cond.notify()

    def forget(self, key: K) -> None:
        """Reset the key's backoff (it succeeded, or it is gone)."""
        with self._cond:
            self._failures.pop(key, None)

    def backoff(self, key: K) -> float:
        with self._cond:
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
        return float(min(MAX_BACKOFF, BASE_BACKOFF * 2**failures))

    def __len__(self) -> int:
        with self._cond:
            return len(self._queued) + len(self._delayed)

    @property
    def new_work(self) -> int:
        """Keys with new work waiting (the first lane)."""
        with self._cond:
            return sum(1 for lane in self._queued.values() if lane == NEW)

    @property
    def busy(self) -> int:
        with self._cond:
            return len(self._processing)

    # ------------------------------------------------------------------ working
    def start(self) -> None:
        for i in range(self._workers):
            thread = threading.Thread(target=self._run, name=f"{self._name}-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _promote_due(self) -> float | None:
        """Move due delayed keys (a pause over, a retry) to the first lane; seconds until
        the next one is due."""
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, key = heapq.heappop(self._delayed)
            self._enqueue(key, NEW)
        return self._delayed[0][0] - now if self._delayed else None

    def _take(self) -> K | None:
        """With the lock held: the first key of the first lane that has one."""
        for number, lane in enumerate(self._lanes):
            while lane:
                key = lane.popleft()
                if self._queued.get(key) == number:
                    del self._queued[key]
                    self._processing.add(key)
                    return key
        return None

    def _next(self) -> K | None:
        with self._cond:
            while not self._stopping:
                wait = self._promote_due()
                key = self._take()
                if key is not None:
                    return key
                self._cond.wait(timeout=wait)
            return None

    def _done(self, key: K, again_after: float | None) -> None:
        with self._cond:
            self._processing.discard(key)
            lane = self._dirty.pop(key, None)
            if lane is not None:
                self._enqueue(key, lane)
        if again_after is not None:
            self.add_after(key, again_after)

    def _run(self) -> None:
        while True:
            key = self._next()
            if key is None:
                return
            again: float | None
            try:
                again = self._work(key)
            except Exception as error:  # one key's failure never stops a worker
                again = self.backoff(key)
                if self._on_error is not None:
                    self._on_error(key, error)
                else:
                    logger.exception("%s of %s failed; again in %.0fs", self._name, key, again)
            else:
                self.forget(key)
            self._done(key, again)
