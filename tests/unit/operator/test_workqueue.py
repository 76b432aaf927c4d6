"""The work queue's order: new work before routine refreshes, each key once."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from modelyard.operator.workqueue import WorkQueue


class Recorder:
    """One worker; the first key it gets holds it until :meth:`release`, so the test can
    queue the rest while it is busy."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.gate = threading.Event()
        self.started = threading.Event()
        self.done = threading.Event()
        self.expected = 0
        self.queue: WorkQueue[str] = WorkQueue(self.work, workers=1)

    def work(self, key: str) -> None:
        self.started.set()
        self.gate.wait(10)
        self.order.append(key)
        if len(self.order) >= self.expected:
            self.done.set()

    def run(self, expected: int) -> list[str]:
        self.expected = expected
        self.gate.set()
        assert self.done.wait(10), f"worked {self.order}, expected {expected} keys"
        return self.order


@pytest.fixture
def rec() -> Iterator[Recorder]:
    recorder = Recorder()
    recorder.queue.start()
    recorder.queue.add("busy")
    assert recorder.started.wait(10)
    yield recorder
    recorder.queue.stop(5)


def test_routine_keys_wait_behind_new_work(rec: Recorder) -> None:
    rec.queue.add("refresh-1", routine=True)
    rec.queue.add("refresh-2", routine=True)
    rec.queue.add("new-1")
    rec.queue.add("new-2")
    assert rec.queue.new_work == 2
    assert len(rec.queue) == 4
    assert rec.run(5) == ["busy", "new-1", "new-2", "refresh-1", "refresh-2"]


def test_a_routine_key_added_as_new_work_moves_up_and_runs_once(rec: Recorder) -> None:
    rec.queue.add("a", routine=True)
    rec.queue.add("b", routine=True)
    rec.queue.add("b")
    rec.queue.add("b", routine=True)  # already queued as new work: stays there
    assert rec.run(3) == ["busy", "b", "a"]
    assert len(rec.queue) == 0


def test_a_key_added_while_it_is_worked_runs_again_after_in_its_lane(rec: Recorder) -> None:
    rec.queue.add("busy", routine=True)
    rec.queue.add("other", routine=True)
    rec.queue.add("busy")  # new work for the key being worked: it comes back first
    assert rec.run(3) == ["busy", "busy", "other"]
