"""Adaptive batching: requests queued while the model runs share the next call."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from modelyard.serving.batching import BatchShed, ModelHung, PredictionBatcher
from modelyard.serving.payload import Array, ModelInput


def rows(*values: float) -> ModelInput:
    return ModelInput({"x": np.array(values, dtype=np.float64)}, len(values))


class SlowDouble:
    """A model that doubles x, takes ``seconds`` per call and records its batch sizes."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.batch_rows: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, columns: dict[str, Array]) -> Array:
        with self.lock:
            self.batch_rows.append(len(columns["x"]))
        time.sleep(self.seconds)
        if np.any(columns["x"] < 0):
            raise ValueError("x must not be negative")
        return columns["x"] * 2


def test_a_lone_request_is_predicted_at_once() -> None:
    model = SlowDouble()
    batcher = PredictionBatcher(model, ["x"])

    async def one() -> tuple[Array, float]:
        started = time.perf_counter()
        result = await batcher.predict(rows(1.0, 2.0))
        return result, time.perf_counter() - started

    result, elapsed = asyncio.run(one())
    assert result.tolist() == [2.0, 4.0]
    # No waiting for company (generous bound: CI machines are busy).
    assert elapsed < 0.5
    assert model.batch_rows == [2]


def test_requests_arriving_while_the_model_runs_share_one_call() -> None:
    model = SlowDouble(seconds=0.05)
    sizes: list[tuple[int, int]] = []
    batcher = PredictionBatcher(model, ["x"], on_batch=lambda n, r: sizes.append((n, r)))

    async def many() -> list[Array]:
        first = asyncio.ensure_future(batcher.predict(rows(0.5)))
        await asyncio.sleep(0.01)  # the first call is now running
        rest = [batcher.predict(rows(float(i), float(i))) for i in range(1, 11)]
        return [await first, *await asyncio.gather(*rest)]

    results = asyncio.run(many())
    assert results[0].tolist() == [1.0]
    assert [r.tolist() for r in results[1:]] == [[2.0 * i, 2.0 * i] for i in range(1, 11)]
    assert model.batch_rows == [1, 20]
    assert sizes == [(1, 1), (10, 20)]


def test_batches_respect_the_request_and_row_bounds() -> None:
    model = SlowDouble(seconds=0.02)
    batcher = PredictionBatcher(model, ["x"], max_batch_requests=4, max_batch_rows=6)

    async def many() -> None:
        first = asyncio.ensure_future(batcher.predict(rows(1.0)))
        await asyncio.sleep(0.005)
        await asyncio.gather(first, *(batcher.predict(rows(1.0, 1.0)) for _ in range(5)))

    asyncio.run(many())
    # 5 two-row requests after the first call: 3 fit under 6 rows, then the last 2.
    assert model.batch_rows == [1, 6, 4]


def test_one_bad_request_does_not_fail_its_neighbours() -> None:
    model = SlowDouble(seconds=0.02)
    batcher = PredictionBatcher(model, ["x"])

    async def mixed() -> list[Array | BaseException]:
        first = asyncio.ensure_future(batcher.predict(rows(1.0)))
        await asyncio.sleep(0.005)
        return await asyncio.gather(
            first,
            batcher.predict(rows(3.0)),
            batcher.predict(rows(-1.0)),
            batcher.predict(rows(4.0)),
            return_exceptions=True,
        )

    first, good, bad, other = asyncio.run(mixed())
    assert isinstance(good, np.ndarray) and good.tolist() == [6.0]
    assert isinstance(other, np.ndarray) and other.tolist() == [8.0]
    assert isinstance(bad, ValueError)
    with pytest.raises(ValueError, match="must not be negative"):
        raise bad


def test_requests_queued_behind_one_slow_call_are_answered_not_shed() -> None:
    """One model call longer than the latency budget is not overload: everything queued
    behind it fits in the next call (this used to refuse them all with 503)."""
    model = SlowDouble(seconds=0.1)
    batcher = PredictionBatcher(model, ["x"], max_latency_ms=30)

    async def behind_a_slow_call() -> list[Array | BaseException]:
        first = asyncio.ensure_future(batcher.predict(rows(1.0)))
        await asyncio.sleep(0.01)
        queued = [batcher.predict(rows(float(i))) for i in range(2, 6)]  # wait ~90 ms
        return await asyncio.gather(first, *queued, return_exceptions=True)

    results = asyncio.run(behind_a_slow_call())
    assert [r.tolist() for r in results if isinstance(r, np.ndarray)] == [
        [2.0], [4.0], [6.0], [8.0], [10.0]
    ]  # fmt: skip
    assert model.batch_rows == [1, 4]


def test_requests_a_full_call_passed_over_are_shed_past_the_latency_budget() -> None:
    model = SlowDouble(seconds=0.1)
    batcher = PredictionBatcher(model, ["x"], max_latency_ms=30, max_batch_requests=2)

    async def overload() -> list[Array | BaseException]:
        first = asyncio.ensure_future(batcher.predict(rows(1.0)))
        await asyncio.sleep(0.01)
        queued = [batcher.predict(rows(float(i))) for i in range(2, 6)]
        return await asyncio.gather(first, *queued, return_exceptions=True)

    first, second, third, fourth, fifth = asyncio.run(overload())
    # The second call takes two; the other two waited through it as well: overload.
    assert [first.tolist(), second.tolist(), third.tolist()] == [[2.0], [4.0], [6.0]]
    for late in (fourth, fifth):
        assert isinstance(late, BatchShed)
        assert "waited longer than 30 ms" in str(late)
    assert model.batch_rows == [1, 2]


def test_a_hung_model_call_fails_its_requests_and_the_worker_says_so() -> None:
    release = threading.Event()
    hung: list[ModelHung] = []

    def model(columns: dict[str, Array]) -> Array:
        if columns["x"][0] < 0:
            release.wait(10)  # a call that never comes back in time
        return columns["x"] * 2

    batcher = PredictionBatcher(model, ["x"], predict_timeout=0.2, on_hung=hung.append)

    async def scenario() -> list[Array | BaseException]:
        good = await batcher.predict(rows(1.0))
        stuck = asyncio.ensure_future(batcher.predict(rows(-1.0)))
        await asyncio.sleep(0.05)
        behind = asyncio.ensure_future(batcher.predict(rows(2.0)))
        results = await asyncio.gather(stuck, behind, return_exceptions=True)
        started = time.perf_counter()
        after = await asyncio.gather(batcher.predict(rows(3.0)), return_exceptions=True)
        assert time.perf_counter() - started < 0.1  # refused at once, not queued
        return [good, *results, *after]

    try:
        good, stuck, behind, after = asyncio.run(scenario())
    finally:
        release.set()
    assert isinstance(good, np.ndarray) and good.tolist() == [2.0]
    for failed in (stuck, behind, after):
        assert isinstance(failed, ModelHung), failed
        assert isinstance(failed, BatchShed)  # a 503, like overload
    assert "longer than 0.2 s" in str(stuck)
    assert batcher.hung is not None and hung == [batcher.hung]
