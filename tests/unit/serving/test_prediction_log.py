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
    )


def test_partition_path_follows_the_contract() -> None:
    assert (
        partition_dir("s3://bucket/log/", "fraud", "7", DAY_1)
        == "s3://bucket/log/fraud/version=7/date=2026-11-27"
    )


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
    log = PredictionLog(
        str(blocked),
        "m",
        "1",
        max_buffered_rows=3,
        on_write_failure=lambda: failures.append(1),
        on_rows_dropped=dropped.append,
    )
    log.record(entry("r1", DAY_1, [1.0, 2.0], [0, 1]))
    assert log.flush() == []
    assert failures == [1]
    assert log.buffered_rows == 2  # kept for the next attempt

    log.record(entry("r2", DAY_1, [3.0, 4.0], [1, 1]))
    log.flush()
    # Over the bound of 3 rows: the oldest request is dropped, and that is counted.
    assert failures == [1, 1]
    assert dropped == [2]
    assert log.buffered_rows == 2

    blocked.unlink()
    written = log.flush()
    assert len(written) == 1
    table = ds.dataset(str(blocked), format="parquet", partitioning="hive").to_table()
    assert table.column("_request_id").to_pylist() == ["r2", "r2"]


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
        ["other", "prediction", "_model_name", "_model_version", "_timestamp", "_request_id"],
        ["x", "city", "prediction", "_model_name", "_model_version", "_timestamp", "_request_id"],
    ]


def pq_columns(path: str) -> list[str]:
    import pyarrow.parquet as pq

    return list(pq.read_schema(path).names)
