"""The prediction log: every answered request's inputs and outputs, as Parquet.

Layout and columns are the contract in ``docs/contracts.md``::

    {base}/{model_name}/version={version}/date={YYYY-MM-DD}/{uuid}.parquet

Rows are buffered in memory (a request only appends to a list) and written by a
background thread on an interval, when the buffer fills, and on shutdown. A failing sink
never fails a request: the rows stay buffered for the next attempt (up to a bound, beyond
which the oldest are dropped) and every failure is counted.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from modelyard.core import contracts as c
from modelyard.serving.payload import Array

logger = logging.getLogger(__name__)

TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class LoggedRequest:
    request_id: str
    timestamp: datetime  # UTC
    columns: dict[str, Array]
    predictions: Array
    n_rows: int


def partition_dir(base: str, model_name: str, model_version: str, day: datetime) -> str:
    return c.prediction_log_partition(base, model_name, model_version, day.date())


def prediction_columns(predictions: Array) -> dict[str, Array]:
    """``prediction``, or ``prediction_0``, ``prediction_1``, ... for multi-output models."""
    if predictions.ndim <= 1:
        return {"prediction": predictions}
    flat = predictions.reshape(predictions.shape[0], -1)
    return {f"prediction_{i}": flat[:, i] for i in range(flat.shape[1])}


def build_table(requests: Sequence[LoggedRequest], model_name: str, model_version: str) -> pa.Table:
    """One Arrow table for requests that share a partition (same model and date)."""
    input_names = list(requests[0].columns)
    output_names = list(prediction_columns(requests[0].predictions))
    data: dict[str, Any] = {}
    for name in input_names:
        data[name] = pa.array(np.concatenate([r.columns[name] for r in requests]))
    outputs = [prediction_columns(r.predictions) for r in requests]
    for name in output_names:
        data[name] = pa.array(np.concatenate([o[name] for o in outputs]))
    total = sum(r.n_rows for r in requests)
    data[c.LOG_MODEL_NAME_COLUMN] = pa.array([model_name] * total, type=pa.string())
    data[c.LOG_MODEL_VERSION_COLUMN] = pa.array([model_version] * total, type=pa.string())
    data[c.LOG_TIMESTAMP_COLUMN] = pa.array(
        [r.timestamp for r in requests for _ in range(r.n_rows)], type=TIMESTAMP_TYPE
    )
    data[c.LOG_REQUEST_ID_COLUMN] = pa.array(
        [r.request_id for r in requests for _ in range(r.n_rows)], type=pa.string()
    )
    return pa.table(data)


def write_parquet_atomically(fs: Any, directory: str, table: pa.Table) -> str:
    """Write ``table`` as a new file in ``directory`` and return its path.

    On a local or mounted filesystem the file is written under a hidden temporary name
    (readers such as pyarrow.dataset skip names starting with '.') and renamed, so a
    reader never sees half a file. Object stores publish a PUT atomically anyway.
    """
    from fsspec.implementations.local import LocalFileSystem

    name = f"{uuid.uuid4().hex}.parquet"
    final = f"{directory}/{name}"
    fs.makedirs(directory, exist_ok=True)
    if isinstance(fs, LocalFileSystem):
        temporary = f"{directory}/.{name}.tmp"
        try:
            pq.write_table(table, temporary)
            os.replace(temporary, final)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise
    else:
        with fs.open(final, "wb") as stream:
            pq.write_table(table, stream)
    return final


class PredictionLog:
    """Buffer of answered requests, flushed to Parquet under an fsspec URL."""

    def __init__(
        self,
        base_url: str,
        model_name: str,
        model_version: str,
        *,
        flush_interval: float = 10.0,
        flush_rows: int = 50_000,
        max_buffered_rows: int = 1_000_000,
        on_write_failure: Callable[[], None] = lambda: None,
        on_rows_dropped: Callable[[int], None] = lambda n: None,
    ) -> None:
        import fsspec.core

        self.fs, self.base = fsspec.core.url_to_fs(base_url)
        self.model_name = model_name
        self.model_version = model_version
        self.flush_interval = flush_interval
        self.flush_rows = flush_rows
        self.max_buffered_rows = max_buffered_rows
        self._on_write_failure = on_write_failure
        self._on_rows_dropped = on_rows_dropped
        self._buffer: list[LoggedRequest] = []
        self._buffered_rows = 0
        self._lock = threading.Lock()
        # Serialises writers: the interval thread and a shutdown flush.
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def buffered_rows(self) -> int:
        return self._buffered_rows

    def record(self, entry: LoggedRequest) -> None:
        """Called on the request path: append only, never raises for sink trouble."""
        with self._lock:
            self._buffer.append(entry)
            self._buffered_rows += entry.n_rows
            full = self._buffered_rows >= self.flush_rows
        if full:
            self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name="prediction-log-flusher", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            if self._stopping.is_set():
                break
            self.flush()

    def close(self) -> None:
        """Stop the background thread and write everything still buffered."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        self.flush()

    def flush(self) -> list[str]:
        """Write the buffered rows; returns the files written. Failures are counted."""
        with self._flush_lock:
            with self._lock:
                pending, self._buffer = self._buffer, []
                self._buffered_rows = 0
            if not pending:
                return []
            # One file per day and column set (a model without a signature may see
            # requests with different columns).
            groups: dict[tuple[str, tuple[str, ...], int], list[LoggedRequest]] = {}
            for entry in pending:
                key = (f"{entry.timestamp:%Y-%m-%d}", tuple(entry.columns), entry.predictions.ndim)
                groups.setdefault(key, []).append(entry)
            written: list[str] = []
            failed: list[LoggedRequest] = []
            for entries in groups.values():
                directory = partition_dir(
                    self.base, self.model_name, self.model_version, entries[0].timestamp
                )
                try:
                    table = build_table(entries, self.model_name, self.model_version)
                    written.append(write_parquet_atomically(self.fs, directory, table))
                except Exception:
                    logger.exception(
                        "prediction log: writing %d requests to %s failed; kept for retry",
                        len(entries),
                        directory,
                    )
                    self._on_write_failure()
                    failed.extend(entries)
            if failed:
                self._requeue(failed)
            return written

    def _requeue(self, failed: list[LoggedRequest]) -> None:
        with self._lock:
            self._buffer[:0] = failed
            self._buffered_rows += sum(e.n_rows for e in failed)
            dropped = 0
            while self._buffered_rows > self.max_buffered_rows and self._buffer:
                oldest = self._buffer.pop(0)
                self._buffered_rows -= oldest.n_rows
                dropped += oldest.n_rows
        if dropped:
            logger.error("prediction log: dropped %d rows the sink could not take", dropped)
            self._on_rows_dropped(dropped)


def utc_now() -> datetime:
    return datetime.now(UTC)
