"""The drift maths against its references: scipy's integral and Evidently's method choice."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats  # type: ignore[import-untyped]

from modelyard.pipelines.drift import ColumnType
from modelyard.pipelines.drift._methods import choose_method, wasserstein_normed


@pytest.mark.parametrize("seed", range(12))
def test_wasserstein_equals_scipys_integral(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(1, 4_000)), int(rng.integers(1, 6_000))
    if seed % 3 == 0:  # many ties
        reference = rng.integers(0, 7, n).astype(float)
        current = rng.integers(0, 9, m).astype(float)
    else:
        reference = rng.normal(0, 2, n)
        current = rng.normal(rng.random(), 2, m)
    expected = stats.wasserstein_distance(reference, current) / max(np.std(reference), 0.001)

    assert wasserstein_normed(np.sort(reference), np.sort(current)) == pytest.approx(
        expected, rel=1e-9, abs=1e-12
    )


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
