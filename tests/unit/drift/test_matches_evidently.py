"""Our verdicts are Evidently's DataDriftPreset verdicts on the same data (real Evidently)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from modelyard.pipelines.drift import ColumnStatus, check_drift


@pytest.mark.parametrize(
    ("reference_rows", "current_rows", "drift"),
    [
        # > 1000 reference rows: Wasserstein for continuous columns, Jensen-Shannon otherwise.
        (5_000, 8_000, frozenset()),
        (5_000, 8_000, frozenset({"cont", "cat", "flag"})),
        (5_000, 3_000, frozenset({"skewed", "discrete", "code", "cat", "cont"})),
        # <= 1000 reference rows: K-S, chi-square and z-test p-values.
        (800, 2_000, frozenset()),
        (800, 2_000, frozenset({"cont", "discrete", "flag"})),
        (1_000, 300, frozenset({"skewed", "cat", "code"})),
    ],
)
def test_columns_match_evidently(
    make_frame: Callable[..., pd.DataFrame],
    evidently: Callable[..., object],
    reference_rows: int,
    current_rows: int,
    drift: frozenset[str],
) -> None:
    reference = make_frame(reference_rows, seed=11)
    current = make_frame(current_rows, seed=12, drift=drift)

    ours = check_drift(reference, current)
    oracle = evidently(reference, current)

    assert {c.column: c.method_label for c in ours.columns} == {
        name: c.method_label
        for name, c in oracle.columns.items()  # type: ignore[attr-defined]
    }
    for column in ours.columns:
        expected = oracle.columns[column.column]  # type: ignore[attr-defined]
        assert column.score == pytest.approx(expected.score, rel=1e-6, abs=1e-12), column.column
        assert column.drifted == expected.drifted, column.column
    assert set(ours.drifted_columns) == oracle.drifted_columns  # type: ignore[attr-defined]
    assert ours.share_of_drifted_columns == pytest.approx(oracle.share)  # type: ignore[attr-defined]
    assert ours.dataset_drift == oracle.dataset_drift  # type: ignore[attr-defined]
    assert drift <= set(ours.drifted_columns)


def test_missing_and_infinite_values_are_dropped_as_evidently_does(
    make_frame: Callable[..., pd.DataFrame], evidently: Callable[..., object]
) -> None:
    rng = np.random.default_rng(5)
    reference = make_frame(3_000, seed=1)
    current = make_frame(4_000, seed=2, drift=frozenset({"skewed"}))
    for frame in (reference, current):
        holes = rng.random(len(frame)) < 0.1
        frame.loc[holes, "cont"] = np.nan
        frame.loc[rng.random(len(frame)) < 0.01, "skewed"] = np.inf
        frame.loc[rng.random(len(frame)) < 0.05, "cat"] = None

    ours = check_drift(reference, current)
    oracle = evidently(reference, current)

    for column in ours.columns:
        expected = oracle.columns[column.column]  # type: ignore[attr-defined]
        assert column.method_label == expected.method_label
        assert column.score == pytest.approx(expected.score, rel=1e-6, abs=1e-12)
        assert column.drifted == expected.drifted
    assert next(c for c in ours.columns if c.column == "cont").current_rows < 4_000


def test_dataset_drift_follows_the_share_of_drifted_columns(
    make_frame: Callable[..., pd.DataFrame], evidently: Callable[..., object]
) -> None:
    reference = make_frame(5_000, seed=3)
    current = make_frame(5_000, seed=4, drift=frozenset({"cont", "skewed", "cat", "code"}))

    ours = check_drift(reference, current)
    oracle = evidently(reference, current)

    assert ours.number_of_columns == 7
    assert ours.number_of_drifted_columns == 4
    assert ours.dataset_drift is True
    assert oracle.dataset_drift is True  # type: ignore[attr-defined]
    assert all(c.status is ColumnStatus.CHECKED for c in ours.columns)
