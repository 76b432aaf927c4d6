"""The drift maths against its references: scipy's integral and K-S test, Evidently's method
choice; the same numbers whether a column was sorted in memory or on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy import stats  # type: ignore[import-untyped]

from modelyard.pipelines.drift import ColumnType
from modelyard.pipelines.drift._methods import (
    KS_EXACT_MAX_VALUES,
    choose_method,
    ks_p_value,
    ks_statistic,
    wasserstein_normed,
)
from modelyard.pipelines.drift._values import (
    MIN_MERGE_BLOCK_ROWS,
    VALUE_BYTES,
    SortedValues,
    ValueSink,
)


def sorted_values(
    values: np.ndarray, run: int | None = None, tmp: Path | None = None
) -> SortedValues:
    """The values as the check holds them: in memory, or (``run`` values at a time) sorted
    in runs on disk, merged in blocks of the smallest size (many merge rounds)."""
    merge_bytes = 3 * VALUE_BYTES * MIN_MERGE_BLOCK_ROWS * 4
    sink = ValueSink(run or max(1, values.size), merge_bytes, str(tmp) if tmp else None)
    for start in range(0, values.size, 1_000):
        sink.add(pa.array(values[start : start + 1_000]))
    return sink.finish()


def runs(values: np.ndarray) -> int:
    """A run size that puts the values in about seven runs on disk."""
    return max(1, (values.size - 1) // 7)


def samples(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(2, 30_000)), int(rng.integers(2, 40_000))
    if seed % 3 == 0:  # many ties
        return rng.integers(0, 7, n).astype(float), rng.integers(0, 9, m).astype(float)
    if seed % 3 == 1:
        return rng.normal(0, 2, n), rng.normal(rng.random(), 2, m)
    # Rounded: ties within and across the two samples, and blocks that end inside a run of
    # equal values.
    return rng.normal(0, 2, n).round(1), rng.normal(4 * rng.random() - 2, 1, m).round(2)


@pytest.mark.parametrize("seed", range(18))
def test_wasserstein_equals_scipys_integral(seed: int, tmp_path: Path) -> None:
    reference, current = samples(seed)
    expected = stats.wasserstein_distance(reference, current) / max(np.std(reference), 0.001)

    ref_run, cur_run = runs(reference), runs(current)
    in_memory = sorted_values(reference), sorted_values(current)
    # The current column on disk (the reference in memory), then both on disk.
    current_on_disk = sorted_values(reference), sorted_values(current, cur_run, tmp_path)
    both_on_disk = (
        sorted_values(reference, ref_run, tmp_path),
        sorted_values(current, cur_run, tmp_path),
    )

    for ref, cur in (in_memory, current_on_disk, both_on_disk):
        assert wasserstein_normed(ref, cur) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert current_on_disk[1].computation == "external_sort"
    assert both_on_disk[0].computation == "external_sort"


@pytest.mark.parametrize("seed", range(18))
def test_ks_statistic_and_p_value_are_scipys(seed: int, tmp_path: Path) -> None:
    reference, current = samples(seed)
    expected = stats.ks_2samp(reference, current)

    for ref, cur in (
        (sorted_values(reference), sorted_values(current)),
        (
            sorted_values(reference, runs(reference), tmp_path),
            sorted_values(current, runs(current), tmp_path),
        ),
    ):
        if max(reference.size, current.size) > KS_EXACT_MAX_VALUES:
            # Asymptotic p-value from the statistic; the exact method rounds the statistic.
            assert ks_statistic(ref, cur) == expected.statistic
        assert ks_p_value(ref, cur) == pytest.approx(expected.pvalue, rel=1e-12, abs=1e-300)


def test_runs_on_disk_merge_back_into_order_in_several_passes(tmp_path: Path) -> None:
    values = np.random.default_rng(3).normal(0, 1, 200_000).round(3)
    # 100 runs of 2,000 values, merge memory for 4 runs at a time: three merge passes.
    sink = ValueSink(2_000, 3 * VALUE_BYTES * MIN_MERGE_BLOCK_ROWS * 4, str(tmp_path))
    sink.add(pa.array(values))
    on_disk = sink.finish()

    assert on_disk.runs == 100
    np.testing.assert_array_equal(on_disk.array(), np.sort(values))
    assert on_disk.moments.std == pytest.approx(np.std(values), rel=1e-12)
    on_disk.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("reference_rows", [10, 1000, 1001, 50_000])
@pytest.mark.parametrize("distinct", [1, 2, 3, 5, 6, 40])
@pytest.mark.parametrize("column_type", [ColumnType.NUMERICAL, ColumnType.CATEGORICAL])
def test_method_choice_is_evidentlys(
    reference_rows: int, distinct: int, column_type: ColumnType
) -> None:
    from evidently.legacy.calculations.stattests.registry import _get_default_stattest
    from evidently.legacy.core import ColumnType as EvidentlyColumnType

    reference = pd.Series(np.arange(reference_rows) % distinct, dtype=float)
    current = pd.Series(np.arange(distinct), dtype=float)
    expected = _get_default_stattest(reference, current, EvidentlyColumnType(column_type.value))

    union = len(set(reference) | set(current))
    chosen = choose_method(column_type, reference_rows, union)

    assert (chosen.name, chosen.threshold) == (expected.name, expected.default_threshold)
