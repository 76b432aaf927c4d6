"""The prediction log: every answered request's inputs and outputs, as Parquet.

Layout and columns are the contract in ``docs/contracts.md``::

    {base}/{model_name}/version={version}/date={YYYY-MM-DD}/{uuid}.parquet

Rows are buffered in memory (a request only appends to a list) and written by a
background thread on an interval, when the buffer fills, and on shutdown. A failing sink
never fails a request: the rows stay buffered for the next attempt, and every failure is
counted.

Memory is bounded in bytes (``max_buffered_bytes``, the rows waiting and those being
written together): beyond it the oldest rows are dropped, and a drop is never silent: it
is counted (``on_rows_dropped``, a metric), logged, and, once the sink takes writes
again, recorded in the log itself as a JSON line under ``{base}/_dropped/``, so that
``rows in the log + rows recorded as dropped == rows answered``. What a process cannot
write when it is killed (SIGKILL, OOM) is lost without a record: at most the rows of one
flush interval, plus any backlog of a sink that is down (docs/serving.md).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
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
#: What a buffered request costs beyond its arrays: the object, its dict and strings.
_ENTRY_OVERHEAD = 400
#: Drops are logged at most this often (one line with the count), not once per request.
_DROP_LOG_SECONDS = 10.0


def _array_bytes(array: Array) -> int:
    if array.dtype != object:
        return int(array.nbytes)
    return int(array.nbytes) + sum(sys.getsizeof(v) for v in array.ravel().tolist())


@dataclass(frozen=True)
class LoggedRequest:
    request_id: str
    timestamp: datetime  # UTC
    columns: dict[str, Array]
    predictions: Array
    n_rows: int
    #: How long the server took to answer it (ms), logged as ``_latency_ms``.
    latency_ms: float = 0.0

    @property
    def size(self) -> int:
        """Bytes this request holds while it is buffered (an estimate from below)."""
        arrays = sum(_array_bytes(a) for a in self.columns.values())
        return arrays + _array_bytes(self.predictions) + len(self.request_id) + _ENTRY_OVERHEAD


@dataclass
class _Buffered:
    entry: LoggedRequest
    size: int


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
    data[c.LOG_ROW_COLUMN] = pa.array(
        np.concatenate([np.arange(r.n_rows, dtype=np.int32) for r in requests])
    )
    data[c.LOG_LATENCY_COLUMN] = pa.array(
        [r.latency_ms for r in requests for _ in range(r.n_rows)], type=pa.float32()
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
        max_buffered_bytes: int = 128 * 1024 * 1024,
        on_write_failure: Callable[[], None] = lambda: None,
        on_rows_dropped: Callable[[int], None] = lambda n: None,
    ) -> None:
        import fsspec.core

        self.fs, self.base = fsspec.core.url_to_fs(base_url)
        self.model_name = model_name
        self.model_version = model_version
        self.flush_interval = flush_interval
        self.flush_rows = flush_rows
        self.max_buffered_bytes = max_buffered_bytes
        self._on_write_failure = on_write_failure
        self._on_rows_dropped = on_rows_dropped
        self._buffer: list[_Buffered] = []
        self._buffered_rows = 0
        #: Bytes held: the buffer plus the rows a flush is writing right now.
        self._held_bytes = 0
        self._lock = threading.Lock()
        # Serialises writers: the interval thread and a shutdown flush.
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # Drops not yet recorded in the log itself, and not yet logged as a line.
        self._unrecorded: list[dict[str, Any]] = []
        self._unlogged_drops = 0
        self._last_drop_log = 0.0
        #: Rows dropped since the start (what the metric counts).
        self.dropped_rows = 0

    @property
    def buffered_rows(self) -> int:
        return self._buffered_rows

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    def record(self, entry: LoggedRequest) -> None:
        """Called on the request path: append only, never raises for sink trouble. Over
        the byte bound the oldest waiting rows make room (counted, never silent)."""
        size = entry.size
        dropped: list[LoggedRequest] = []
        with self._lock:
            self._buffer.append(_Buffered(entry, size))
            self._buffered_rows += entry.n_rows
            self._held_bytes += size
            while self._held_bytes > self.max_buffered_bytes and self._buffer:
                oldest = self._buffer.pop(0)
                self._buffered_rows -= oldest.entry.n_rows
                self._held_bytes -= oldest.size
                dropped.append(oldest.entry)
            full = self._buffered_rows >= self.flush_rows
        if dropped:
            self._dropped(dropped, "the buffer was full (the sink is down or too slow)")
        if full:
            self._wake.set()

    def _dropped(self, entries: list[LoggedRequest], reason: str) -> None:
        rows = sum(e.n_rows for e in entries)
        record = {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "rows": rows,
            "requests": len(entries),
            "first": min(e.timestamp for e in entries).isoformat(),
            "last": max(e.timestamp for e in entries).isoformat(),
            "reason": reason,
        }
        with self._lock:
            self.dropped_rows += rows
            self._unlogged_drops += rows
            self._unrecorded.append(record)
            now = time.monotonic()
            log_now = now - self._last_drop_log >= _DROP_LOG_SECONDS
            if log_now:
                self._last_drop_log, count, self._unlogged_drops = now, self._unlogged_drops, 0
        self._on_rows_dropped(rows)
        if log_now:
            logger.error(
                "prediction log: dropped %d rows (%s); "
                "modelyard_prediction_log_rows_dropped_total counts them",
                count,
                reason,
            )

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

    def close(self, timeout: float = 15.0) -> None:
        """Stop the background thread and write everything still buffered, retrying a
        failing sink for up to ``timeout`` seconds; what is still unwritten then is
        dropped, counted and logged (the process is about to exit)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        deadline = time.monotonic() + timeout
        delay = 0.5
        while True:
            self.flush()
            if not self._buffer or time.monotonic() + delay > deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        with self._lock:
            left = [b.entry for b in self._buffer]
            self._buffer, self._buffered_rows, self._held_bytes = [], 0, 0
            self._last_drop_log = 0.0  # the last words: always logged
        if left:
            self._dropped(left, "the sink still failed when the server stopped")

    def flush(self) -> list[str]:
        """Write the buffered rows; returns the files written. Failures are counted."""
        with self._flush_lock:
            with self._lock:
                pending, self._buffer = self._buffer, []
                self._buffered_rows = 0
            if not pending:
                self._record_drops()
                return []
            # One file per day and column set (a model without a signature may see
            # requests with different columns).
            groups: dict[tuple[str, tuple[str, ...], int], list[_Buffered]] = {}
            for item in pending:
                entry = item.entry
                key = (f"{entry.timestamp:%Y-%m-%d}", tuple(entry.columns), entry.predictions.ndim)
                groups.setdefault(key, []).append(item)
            written: list[str] = []
            failed: list[_Buffered] = []
            for items in groups.values():
                entries = [item.entry for item in items]
                directory = partition_dir(
                    self.base, self.model_name, self.model_version, entries[0].timestamp
                )
                try:
                    table = build_table(entries, self.model_name, self.model_version)
                    written.append(write_parquet_atomically(self.fs, directory, table))
                except Exception as error:
                    logger.warning(
                        "prediction log: writing %d requests to %s failed (%s); kept for retry",
                        len(entries),
                        directory,
                        error,
                    )
                    self._on_write_failure()
                    failed.extend(items)
                else:
                    with self._lock:
                        self._held_bytes -= sum(item.size for item in items)
            if failed:
                self._requeue(failed)
            else:
                self._record_drops()
            return written

    def _requeue(self, failed: list[_Buffered]) -> None:
        # Still held: their bytes were never released, so the bound already counts them.
        with self._lock:
            self._buffer[:0] = failed
            self._buffered_rows += sum(item.entry.n_rows for item in failed)

    def _record_drops(self) -> None:
        """Write what was dropped into the log itself, now that the sink takes writes."""
        with self._lock:
            records, self._unrecorded = self._unrecorded, []
        if not records:
            return
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        path = f"{dropped_dir(self.base)}/{uuid.uuid4().hex}.jsonl"
        try:
            self.fs.makedirs(dropped_dir(self.base), exist_ok=True)
            with self.fs.open(path, "w") as stream:
                stream.write(text)
        except Exception as error:
            logger.warning("prediction log: could not record the dropped rows (%s)", error)
            with self._lock:
                self._unrecorded[:0] = records


def dropped_dir(base: str) -> str:
    """Where a prediction log records what it had to drop (``docs/contracts.md``)."""
    return f"{base.rstrip('/')}/{c.PREDICTION_LOG_DROPPED_DIR}"


def utc_now() -> datetime:
    return datetime.now(UTC)
