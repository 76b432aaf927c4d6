"""Evidently's default drift tests, computed on numpy arrays and value counts.

The choice of test and each test's arithmetic follow Evidently 0.7.23
(``evidently.legacy.calculations.stattests``: ``registry._get_default_stattest`` and the
``wasserstein``, ``jensenshannon``, ``ks``, ``chisquare`` and ``z`` implementations), so that
the verdicts are Evidently's. What differs is only how the numbers are obtained: the
reference is sorted once, and the current data is read as columns, not pandas Series.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats  # type: ignore[import-untyped]
from scipy.spatial import distance  # type: ignore[import-untyped]

from modelyard.pipelines.drift._summary import ColumnType

FloatArray = npt.NDArray[np.float64]

# Evidently switches from p-value tests to distances above this many reference values.
SMALL_REFERENCE_ROWS = 1000
# ... and treats numerical columns with at most this many distinct values as discrete.
DISCRETE_NUMERICAL_VALUES = 5


@dataclass(frozen=True)
class DriftMethod:
    name: str
    label: str
    threshold: float
    # "distance": drift if score >= threshold; "p_value": drift if score < threshold
    # (Evidently's K-S test alone uses <=).
    score_kind: str

    def is_drift(self, score: float) -> bool:
        if self.score_kind == "distance":
            return bool(score >= self.threshold)
        if self.name == "ks":
            return bool(score <= self.threshold)
        return bool(score < self.threshold)


WASSERSTEIN = DriftMethod("wasserstein", "Wasserstein distance (normed)", 0.1, "distance")
JENSEN_SHANNON = DriftMethod("jensenshannon", "Jensen-Shannon distance", 0.1, "distance")
KS = DriftMethod("ks", "K-S p_value", 0.05, "p_value")
CHI_SQUARE = DriftMethod("chisquare", "chi-square p_value", 0.05, "p_value")
Z_TEST = DriftMethod("z", "Z-test p_value", 0.05, "p_value")


def choose_method(
    column_type: ColumnType, reference_rows: int, distinct_values: int
) -> DriftMethod:
    """Evidently's default stattest for a column.

    ``reference_rows`` counts the reference's non-missing values; ``distinct_values`` the
    distinct values of reference and current together.
    """
    if column_type is ColumnType.NUMERICAL:
        if reference_rows <= SMALL_REFERENCE_ROWS:
            if distinct_values <= DISCRETE_NUMERICAL_VALUES:
                return CHI_SQUARE if distinct_values > 2 else Z_TEST
            return KS
        return JENSEN_SHANNON if distinct_values <= DISCRETE_NUMERICAL_VALUES else WASSERSTEIN
    if column_type is ColumnType.CATEGORICAL:
        if reference_rows <= SMALL_REFERENCE_ROWS:
            return CHI_SQUARE if distinct_values > 2 else Z_TEST
        return JENSEN_SHANNON
    raise ValueError(f"no drift method for {column_type.name.lower()} columns")


def wasserstein_normed(reference_sorted: FloatArray, current_sorted: FloatArray) -> float:
    """First Wasserstein distance divided by the reference's standard deviation.

    Same value as ``scipy.stats.wasserstein_distance`` (the integral of |F_ref - F_cur|
    over the merged sample points), but from arrays that are already sorted: one
    ``searchsorted`` places the current values among the reference's, and the two CDFs
    are running counts over that merge. Tied values make zero-width steps, so the order
    among ties does not change the integral.
    """
    norm = max(float(np.std(reference_sorted)), 0.001)
    n, m = reference_sorted.size, current_sorted.size
    positions = np.searchsorted(reference_sorted, current_sorted, side="right")
    positions += np.arange(m)
    from_current = np.zeros(n + m, dtype=bool)
    from_current[positions] = True
    merged = np.empty(n + m, dtype=np.float64)
    merged[positions] = current_sorted
    merged[~from_current] = reference_sorted
    current_seen = np.cumsum(from_current[:-1])
    reference_seen = np.arange(1, n + m) - current_seen
    gaps = np.abs(reference_seen / n - current_seen / m)
    return float(np.dot(gaps, np.diff(merged))) / norm


def ks_p_value(reference: FloatArray, current: FloatArray) -> float:
    return float(stats.ks_2samp(reference, current)[1])


def _aligned(
    reference_counts: Mapping[Hashable, int], current_counts: Mapping[Hashable, int]
) -> tuple[list[Hashable], FloatArray, FloatArray]:
    keys = list(set(reference_counts) | set(current_counts))
    ref = np.array([reference_counts.get(k, 0) for k in keys], dtype=np.float64)
    cur = np.array([current_counts.get(k, 0) for k in keys], dtype=np.float64)
    return keys, ref, cur


def jensen_shannon(
    reference_counts: Mapping[Hashable, int], current_counts: Mapping[Hashable, int]
) -> float:
    """Jensen-Shannon distance (natural log) of the two value distributions."""
    _, ref, cur = _aligned(reference_counts, current_counts)
    return float(distance.jensenshannon(ref / ref.sum(), cur / cur.sum()))


def chi_square_p_value(
    reference_counts: Mapping[Hashable, int], current_counts: Mapping[Hashable, int]
) -> float:
    """Pearson's chi-square test of the current counts against the reference shares."""
    _, ref, cur = _aligned(reference_counts, current_counts)
    expected = ref * (cur.sum() / ref.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(stats.chisquare(cur, expected)[1])


def _sort_key(value: Hashable) -> tuple[int, object]:
    # Evidently sorts the keys; mixed types would not sort, so order by type name first.
    return (0, value) if isinstance(value, int | float | str) else (1, repr(value))


def z_test_p_value(
    reference_counts: Mapping[Hashable, int], current_counts: Mapping[Hashable, int]
) -> float:
    """Two-proportion z-test on the share of the first (sorted) value, as Evidently does."""
    if (
        len(reference_counts) == 1
        and len(current_counts) == 1
        and next(iter(reference_counts)) == next(iter(current_counts))
    ):
        return 1.0
    keys = set(reference_counts) | set(current_counts)
    try:
        first = sorted(keys)[0]  # type: ignore[type-var]
    except TypeError:
        first = sorted(keys, key=_sort_key)[0]
    n1 = float(sum(reference_counts.values()))
    n2 = float(sum(current_counts.values()))
    p1 = (n1 - reference_counts.get(first, 0)) / n1
    p2 = (n2 - current_counts.get(first, 0)) / n2
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    return float(2 * (1 - stats.norm.cdf(np.abs(z))))
