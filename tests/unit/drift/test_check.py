"""What the drift check finds, and what it says about data it cannot check."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from modelyard.pipelines.drift import CheckStatus, ColumnStatus, ColumnType, check_drift

FrameFactory = Callable[..., pd.DataFrame]


def test_injected_drift_is_found_in_exactly_those_columns(make_frame: FrameFactory) -> None:
    reference = make_frame(20_000, seed=1)
    current = make_frame(50_000, seed=2, drift=frozenset({"skewed", "cat"}))

    summary = check_drift(reference, current)

    assert summary.status is CheckStatus.OK
    assert summary.drifted_columns == ["skewed", "cat"]
    assert summary.dataset_drift is False
    assert summary.share_of_drifted_columns == pytest.approx(2 / 7)
    methods = {c.column: c.method for c in summary.columns}
    assert methods == {
        "cont": "wasserstein",
        "skewed": "wasserstein",
        "discrete": "jensenshannon",
        "cat": "jensenshannon",
        "code": "jensenshannon",
        "flag": "jensenshannon",
        "wide_int": "wasserstein",
    }
    types = {c.column: c.column_type for c in summary.columns}
    assert types["code"] is ColumnType.CATEGORICAL
    assert types["wide_int"] is ColumnType.NUMERICAL


# False positives. With more than 1000 reference rows Evidently's tests are distances with
# a 0.1 threshold; for samples of a few thousand rows from one distribution the distances
# are around 0.01-0.03, so no column of no seed may drift. With at most 1000 reference rows
# the K-S and z tests are two-sample p-value tests at alpha = 0.05: about 5% fire by design.
# (Evidently's chi-square there fires far more often; docs/drift.md gives the numbers.)
SEEDS = range(20)


def test_no_drift_between_samples_of_one_distribution(make_frame: FrameFactory) -> None:
    fired = []
    for seed in SEEDS:
        summary = check_drift(make_frame(5_000, seed=seed), make_frame(5_000, seed=1000 + seed))
        fired += summary.drifted_columns
        assert summary.dataset_drift is False
        assert summary.warnings == []
    assert fired == []


def test_small_reference_two_sample_tests_fire_at_about_alpha(make_frame: FrameFactory) -> None:
    tests = fired = 0
    for seed in SEEDS:
        summary = check_drift(make_frame(800, seed=seed), make_frame(3_000, seed=1000 + seed))
        assert "at most 1000 reference rows" in summary.warnings[0]
        for column in summary.columns:
            if column.method in ("ks", "z"):
                tests += 1
                fired += column.drifted
    # 80 tests at alpha 0.05: 4 expected; P(Binomial(80, 0.05) >= 12) < 0.001.
    assert tests == 80
    assert fired < 12


def test_an_empty_window_is_no_data_not_no_drift(make_frame: FrameFactory) -> None:
    reference = make_frame(2_000, seed=1)

    for current in (reference.iloc[0:0], pa.table({})):
        summary = check_drift(reference, current)
        assert summary.status is CheckStatus.NO_DATA
        assert summary.dataset_drift is None
        assert "no rows" in summary.message
        assert summary.columns == []


def test_an_empty_reference_is_no_data(make_frame: FrameFactory) -> None:
    summary = check_drift(make_frame(10, seed=1).iloc[0:0], make_frame(10, seed=2))
    assert summary.status is CheckStatus.NO_DATA
    assert "reference has no rows" in summary.message


def test_missing_and_extra_columns_are_a_schema_mismatch(make_frame: FrameFactory) -> None:
    reference = make_frame(3_000, seed=1)
    current = make_frame(3_000, seed=2, drift=frozenset({"cat"})).drop(columns=["flag"])
    current["surprise"] = 1.0

    summary = check_drift(reference, current)

    assert summary.status is CheckStatus.SCHEMA_MISMATCH
    assert summary.dataset_drift is None
    assert summary.missing_columns == ["flag"]
    assert summary.extra_columns == ["surprise"]
    assert "missing in the current data: flag" in summary.message
    assert "not in the reference: surprise" in summary.message
    # The comparable columns are still checked, so the drift that is there is still named.
    assert summary.drifted_columns == ["cat"]


def test_a_changed_type_is_a_schema_mismatch(make_frame: FrameFactory) -> None:
    reference = make_frame(3_000, seed=1)
    current = make_frame(3_000, seed=2)
    current["cont"] = current["cont"].map(lambda v: f"{v:.3f}")

    summary = check_drift(reference, current)

    assert summary.status is CheckStatus.SCHEMA_MISMATCH
    assert summary.type_mismatches == ["cont: number in the reference, string now"]
    assert "cont" not in {c.column for c in summary.columns}


def test_integers_logged_as_floats_are_still_comparable(make_frame: FrameFactory) -> None:
    reference = make_frame(3_000, seed=1)
    current = make_frame(3_000, seed=2)
    current["wide_int"] = current["wide_int"].astype("float64")

    summary = check_drift(reference, current)

    assert summary.status is CheckStatus.OK
    assert summary.dataset_drift is False


def test_a_column_that_stopped_arriving_counts_as_drifted(make_frame: FrameFactory) -> None:
    reference = make_frame(3_000, seed=1)
    current = make_frame(3_000, seed=2)
    current["cont"] = np.nan
    current["cat"] = None

    summary = check_drift(reference, current)

    by_name = {c.column: c for c in summary.columns}
    for name in ("cont", "cat"):
        assert by_name[name].status is ColumnStatus.EMPTY
        assert by_name[name].drifted is True
        assert by_name[name].reason == "no values in the current data, while the reference has some"
    assert summary.status is CheckStatus.OK
    assert set(summary.drifted_columns) == {"cont", "cat"}


def test_text_and_datetime_columns_are_skipped_with_a_reason(make_frame: FrameFactory) -> None:
    reference = make_frame(2_000, seed=1)
    current = make_frame(2_000, seed=2)
    for frame in (reference, current):
        frame["comment"] = [f"free text number {i}" for i in range(len(frame))]
        frame["seen_at"] = pd.Timestamp("2026-11-01")

    summary = check_drift(reference, current)

    by_name = {c.column: c for c in summary.columns}
    assert by_name["comment"].status is ColumnStatus.SKIPPED
    assert by_name["comment"].column_type is ColumnType.TEXT
    assert "text" in str(by_name["comment"].reason)
    assert by_name["seen_at"].status is ColumnStatus.SKIPPED
    assert summary.number_of_columns == 7


def test_metadata_columns_are_ignored(make_frame: FrameFactory) -> None:
    reference = make_frame(2_000, seed=1)
    current = make_frame(2_000, seed=2)
    current["_request_id"] = [f"r{i}" for i in range(len(current))]
    current["_model_version"] = "3"

    summary = check_drift(reference, current)

    assert summary.status is CheckStatus.OK
    assert summary.extra_columns == []


def test_prediction_is_compared_with_reference_predictions(make_frame: FrameFactory) -> None:
    reference = make_frame(5_000, seed=1)
    current = make_frame(5_000, seed=2)
    reference["prediction"] = reference["cont"] * 2
    current["prediction"] = current["cont"] * 2 + 1.0

    summary = check_drift(reference, current)

    assert summary.prediction_drift is True
    [prediction] = summary.predictions
    assert prediction.method == "wasserstein"
    assert prediction.reference_column is None
    assert summary.drifted_columns == ["prediction"]
    # Predictions are reported apart: they do not count towards the dataset drift share.
    assert summary.number_of_columns == 7
    assert summary.drift_found is True


def test_prediction_falls_back_to_the_reference_target(make_frame: FrameFactory) -> None:
    reference = make_frame(5_000, seed=1)
    current = make_frame(5_000, seed=2)
    reference["target"] = reference["flag"]
    current["prediction"] = current["flag"]

    summary = check_drift(reference, current)

    [prediction] = summary.predictions
    assert prediction.reference_column == "target"
    assert prediction.status is ColumnStatus.CHECKED
    assert summary.prediction_drift is False
    assert summary.status is CheckStatus.OK
    assert summary.missing_columns == []


def test_prediction_without_a_counterpart_is_skipped(make_frame: FrameFactory) -> None:
    reference = make_frame(2_000, seed=1)
    current = make_frame(2_000, seed=2)
    current["prediction"] = 1.0

    summary = check_drift(reference, current)

    [prediction] = summary.predictions
    assert prediction.status is ColumnStatus.SKIPPED
    assert "neither 'prediction' nor a target column" in str(prediction.reason)
    assert summary.prediction_drift is None
    assert summary.status is CheckStatus.OK


def test_arrow_tables_and_pandas_frames_give_the_same_summary(make_frame: FrameFactory) -> None:
    reference = make_frame(3_000, seed=1)
    current = make_frame(3_000, seed=2, drift=frozenset({"code"}))

    from_pandas = check_drift(reference, current)
    from_arrow = check_drift(pa.Table.from_pandas(reference), pa.Table.from_pandas(current))

    assert from_pandas == from_arrow


def test_parquet_files_read_as_dictionaries_give_the_same_summary(
    make_frame: FrameFactory, tmp_path: Path
) -> None:
    from modelyard.pipelines.drift import read_table

    reference = make_frame(3_000, seed=1)
    current = make_frame(3_000, seed=2, drift=frozenset({"cat"}))
    for frame in (reference, current):
        frame["comment"] = [f"free text number {i}" for i in range(len(frame))]
    reference.to_parquet(tmp_path / "reference.parquet", index=False)
    # A directory of files, each with its own string dictionaries.
    (tmp_path / "current").mkdir()
    current.iloc[:1_000].to_parquet(tmp_path / "current" / "a.parquet", index=False)
    current.iloc[1_000:].to_parquet(tmp_path / "current" / "b.parquet", index=False)

    from_files = check_drift(
        read_table(str(tmp_path / "reference.parquet")), read_table(str(tmp_path / "current"))
    )

    assert from_files == check_drift(reference, current)
    assert from_files.drifted_columns == ["cat"]
    comment = next(c for c in from_files.columns if c.column == "comment")
    assert comment.column_type is ColumnType.TEXT
