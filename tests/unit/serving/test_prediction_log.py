"""The prediction log: buffering, partition paths, columns, atomic files, failing sinks."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from modelyard.serving.prediction_log import (
    LoggedRequest,
    PredictionLog,
    dropped_dir,
    partition_dir,
    prediction_columns,
)

DAY_1 = datetime(2026, 11, 27, 23, 59, 59, 123456, tzinfo=UTC)
DAY_2 = datetime(2026, 11, 28, 0, 0, 1, tzinfo=UTC)


def entry(request_id: str, at: datetime, xs: list[float], preds: list[int]) -> LoggedRequest:
    return LoggedRequest(
        request_id=request_id,
        timestamp=at,
        columns={"x": np.array(xs), "city": np.array(["a"] * len(xs), dtype=object)},
        predictions=np.array(preds),
        n_rows=len(xs),
        latency_ms=2.5,
    )


def test_partition_path_follows_the_contract() -> None:
    assert (
        partition_dir("s3://bucket/log/", "fraud", "7", DAY_1)
        == "s3://bucket/log/fraud/version=7/date=2026-11-27"
    )
    assert dropped_dir("s3://bucket/log/") == "s3://bucket/log/_dropped"


def test_multi_output_predictions_get_numbered_columns() -> None:
    assert list(prediction_columns(np.array([1, 2]))) == ["prediction"]
    two = prediction_columns(np.array([[0.1, 0.9], [0.8, 0.2]]))
    assert list(two) == ["prediction_0", "prediction_1"]
    assert two["prediction_1"].tolist() == [0.9, 0.2]


def test_rows_are_buffered_until_flush_then_written_by_day(tmp_path: Path) -> None:
    log = PredictionLog(str(tmp_path), "fraud", "3", flush_interval=3600)
    log.record(entry("r1", DAY_1, [1.0, 2.0], [0, 1]))
    log.record(entry("r2", DAY_2, [3.0], [1]))
    assert log.buffered_rows == 3
    assert not list(tmp_path.rglob("*.parquet"))

    written = log.flush()

    assert log.buffered_rows == 0
    assert sorted(str(Path(p).parent.relative_to(tmp_path)) for p in written) == [
        "fraud/version=3/date=2026-11-27",
        "fraud/version=3/date=2026-11-28",
    ]
    # No temporary files are left next to the data.
    assert sorted(p.suffix for p in tmp_path.rglob("*") if p.is_file()) == [".parquet"] * 2
    table = ds.dataset(str(tmp_path), format="parquet", partitioning="hive").to_table()
    rows = table.sort_by("x").to_pylist()
    assert [r["_request_id"] for r in rows] == ["r1", "r1", "r2"]
    assert [r["prediction"] for r in rows] == [0, 1, 1]
    # The key that joins two versions' answers to one mirrored request, and its latency.
    assert [(r["_request_id"], r["_row"]) for r in rows] == [("r1", 0), ("r1", 1), ("r2", 0)]
    assert {r["_latency_ms"] for r in rows} == {2.5}
    assert {r["_model_name"] for r in rows} == {"fraud"}
    assert {r["_model_version"] for r in rows} == {"3"}
    assert rows[0]["_timestamp"] == DAY_1
    assert table.schema.field("_timestamp").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("_model_version").type == pa.string()
    assert log.flush() == []  # nothing new, no empty files


def test_a_full_buffer_wakes_the_flusher(tmp_path: Path) -> None:
    log = PredictionLog(str(tmp_path), "m", "1", flush_interval=3600, flush_rows=2)
    log.start()
    try:
        log.record(entry("r1", DAY_1, [1.0, 2.0], [0, 1]))
        for _ in range(100):
            if list(tmp_path.rglob("*.parquet")):
                break
            import time

            time.sleep(0.05)
        assert len(list(tmp_path.rglob("*.parquet"))) == 1
    finally:
        log.close()


def test_close_writes_what_is_left(tmp_path: Path) -> None:
    log = PredictionLog(str(tmp_path), "m", "1", flush_interval=3600)
    log.start()
    log.record(entry("last", DAY_2, [5.0], [1]))
    log.close()
    table = ds.dataset(str(tmp_path), format="parquet", partitioning="hive").to_table()
    assert table.column("_request_id").to_pylist() == ["last"]


def test_a_failing_sink_is_counted_keeps_rows_and_recovers(tmp_path: Path) -> None:
    blocked = tmp_path / "sink"
    blocked.write_text("a file where the log's directory should be")
    failures: list[int] = []
    dropped: list[int] = []
    one = entry("r1", DAY_1, [1.0, 2.0], [0, 1]).size
    log = PredictionLog(
        str(blocked),
        "m",
        "1",
        max_buffered_bytes=int(one * 1.5),
        on_write_failure=lambda: failures.append(1),
        on_rows_dropped=dropped.append,
    )
    log.record(entry("r1", DAY_1, [1.0, 2.0], [0, 1]))
    assert log.flush() == []
    assert failures == [1]
    assert log.buffered_rows == 2  # kept for the next attempt
    assert log.held_bytes == one

    log.record(entry("r2", DAY_1, [3.0, 4.0], [1, 1]))
    # Over the bound at once, not after the next failed flush: the oldest request goes.
    assert dropped == [2]
    assert log.buffered_rows == 2
    assert log.held_bytes == one
    log.flush()
    assert failures == [1, 1]

    blocked.unlink()
    written = log.flush()
    assert len(written) == 1
    table = ds.dataset(str(blocked / "m"), format="parquet", partitioning="hive").to_table()
    assert table.column("_request_id").to_pylist() == ["r2", "r2"]
    # The drop is in the log itself too, once the sink takes writes again.
    assert dropped_records(blocked) == [2]
    assert log.held_bytes == 0


def dropped_records(base: Path) -> list[int]:
    import json

    return [
        json.loads(line)["rows"]
        for path in sorted((base / "_dropped").glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]


def test_the_byte_bound_holds_while_the_sink_is_down(tmp_path: Path) -> None:
    """The bound used to be checked only after a failed flush, and in rows: with the sink
    down a server grew until it was OOM-killed and lost every buffered row."""
    blocked = tmp_path / "sink"
    blocked.write_text("not a directory")
    bound = 64 * 1024
    dropped: list[int] = []
    log = PredictionLog(
        str(blocked), "m", "1", max_buffered_bytes=bound, on_rows_dropped=dropped.append
    )
    answered = 0
    for i in range(2000):
        log.record(entry(f"r{i}", DAY_1, [float(i)] * 10, [1] * 10))
        answered += 10
        if i % 100 == 0:
            log.flush()  # fails: the rows stay, within the bound
        assert log.held_bytes <= bound
    assert sum(dropped) == log.dropped_rows > 0
    assert log.buffered_rows + log.dropped_rows == answered

    blocked.unlink()
    log.close()
    table = ds.dataset(str(blocked / "m"), format="parquet", partitioning="hive").to_table()
    # Nothing silently lost: written + recorded as dropped == answered.
    assert table.num_rows + sum(dropped_records(blocked)) == answered
    ids = table.column("_request_id").to_pylist()
    assert ids[-1] == "r1999"  # the newest rows are kept, the oldest dropped


def test_rows_the_sink_never_took_are_dropped_and_said_at_close(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "sink"
    blocked.write_text("not a directory")
    dropped: list[int] = []
    log = PredictionLog(str(blocked), "m", "1", on_rows_dropped=dropped.append)
    log.record(entry("r1", DAY_1, [1.0, 2.0], [0, 1]))
    log.close(timeout=0.2)
    assert dropped == [2]
    assert "dropped 2 rows (the sink still failed when the server stopped)" in caplog.text


def test_unknown_protocol_fails_at_start_not_per_request() -> None:
    with pytest.raises(ValueError, match="nosuchfs"):
        PredictionLog("nosuchfs://x/y", "m", "1")


def test_requests_with_different_columns_go_to_separate_files(tmp_path: Path) -> None:
    # A model without a signature accepts any columns.
    log = PredictionLog(str(tmp_path), "m", "1")
    log.record(entry("a", DAY_1, [1.0], [0]))
    log.record(LoggedRequest("b", DAY_1, {"other": np.array([7])}, np.array([1]), n_rows=1))
    written = log.flush()
    assert len(written) == 2
    assert sorted(pq_columns(p) for p in written) == [
        ["other", "prediction", *BOOKKEEPING],
        ["x", "city", "prediction", *BOOKKEEPING],
    ]


BOOKKEEPING = ["_model_name", "_model_version", "_timestamp", "_request_id", "_row", "_latency_ms"]


def pq_columns(path: str) -> list[str]:
    import pyarrow.parquet as pq

    return list(pq.read_schema(path).names)
