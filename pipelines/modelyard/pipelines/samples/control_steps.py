"""Small steps that show (and test) the runner's behaviour: waiting, failing, retrying.

Each writes a marker file per call under ``marker_dir`` so that a run's effects can be
checked from outside the step's process.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from modelyard.pipelines.context import StepContext


def _mark(marker_dir: str, ctx: StepContext, what: str) -> Path:
    directory = Path(marker_dir)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = "" if ctx.partition_index is None else f"-{ctx.partition_index}"
    marker = directory / f"{ctx.step}{suffix}.{what}.{ctx.attempt}"
    marker.write_text(str(time.time()))
    return marker


def record(ctx: StepContext, marker_dir: str, seconds: float = 0.0) -> dict[str, Any]:
    """Succeed after ``seconds``, leaving a marker that says it ran."""
    _mark(marker_dir, ctx, "started")
    time.sleep(seconds)
    _mark(marker_dir, ctx, "done")
    return {"rows_written": 1, "partition": ctx.partition_index}


def hang(ctx: StepContext, marker_dir: str, seconds: float = 3600.0) -> None:
    """Sleep far past any sensible timeout (the runner must stop it).

    Writes its process id to ``{step}.pid``, so a test can check that it is gone.
    """
    _mark(marker_dir, ctx, "started").with_name(f"{ctx.step}.pid").write_text(str(os.getpid()))
    time.sleep(seconds)
    _mark(marker_dir, ctx, "done")


def fail(ctx: StepContext, marker_dir: str, message: str = "this step always fails") -> None:
    """Always raise."""
    _mark(marker_dir, ctx, "started")
    raise RuntimeError(message)


def flaky(ctx: StepContext, marker_dir: str, failures: int = 1) -> dict[str, Any]:
    """Fail the first ``failures`` attempts, then succeed."""
    _mark(marker_dir, ctx, "started")
    if ctx.attempt <= failures:
        raise RuntimeError(f"attempt {ctx.attempt} fails on purpose")
    return {"succeeded_on_attempt": ctx.attempt}


def large_result(ctx: StepContext, marker_dir: str, items: int = 5000) -> dict[str, Any]:
    """Return a result far larger than a pipe's buffer (e.g. thousands of partition URLs)."""
    _mark(marker_dir, ctx, "started")
    return {
        "partitions": [f"s3://lake/events/date=2026-01-01/part-{i}.parquet" for i in range(items)]
    }
