"""Evidently's default drift tests, computed on numpy arrays and value counts.

The choice of test and each test's arithmetic follow Evidently 0.7.23
(``evidently.legacy.calculations.stattests``: ``registry._get_default_stattest`` and the
``wasserstein``, ``jensenshannon``, ``ks``, ``chisquare`` and ``z`` implementations), so that
the verdicts are Evidently's. What differs is only how the numbers are obtained: both
columns are sorted once (in memory or on disk, see ``_values``), and the distances are
computed by merging the two sorted sequences a block at a time, so the memory a test needs
beyond the sorted values is a few blocks, whatever the number of rows.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats  # type: ignore[import-untyped]
from scipy.spatial import distance  # type: ignore[import-untyped]

from modelyard.pipelines.drift._summary import ColumnType
from modelyard.pipelines.drift._values import BLOCK_ROWS, FloatArray, InMemory, SortedValues

BoolArray = npt.NDArray[np.bool_]

# Evidently switches from p-value tests to distances above this many reference values.
SMALL_REFERENCE_ROWS = 1000
# ... and treats numerical columns with at most this many distinct values as discrete.
DISCRETE_NUMERICAL_VALUES = 5
# scipy's ks_2samp (method "auto", what Evidently calls) computes the exact p-value up to
# this many values in the larger sample, and Smirnov's asymptotic one above it.
KS_EXACT_MAX_VALUES = 10_000


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


def _nonempty(blocks: Iterator[FloatArray]) -> FloatArray:
    for block in blocks:
        if block.size:
            return block
    return np.empty(0)


def merge_sorted(
    reference: Iterator[FloatArray], current: Iterator[FloatArray]
) -> Iterator[tuple[FloatArray, BoolArray]]:
    """Two ascending streams of blocks merged into one, a round at a time.

    Yields the next merged values and, for each, whether it came from ``current``. Each
    round takes the values of both blocks up to the smaller of their last values (the
    values after it, in either stream, are larger), so a round is at most two blocks.
    Among equal values the reference's come first, as ``searchsorted(side="right")``
    places them; tied values are zero-width steps of the distribution functions, so their
    order changes no distance.
    """
    ref, cur = _nonempty(reference), _nonempty(current)
    while ref.size or cur.size:
        if ref.size and cur.size:
            limit = min(ref[-1], cur[-1])
            take_ref = int(np.searchsorted(ref, limit, side="right"))
            take_cur = int(np.searchsorted(cur, limit, side="right"))
        else:
            take_ref, take_cur = ref.size, cur.size
        ref_part, cur_part = ref[:take_ref], cur[:take_cur]
        ref, cur = ref[take_ref:], cur[take_cur:]
        positions = np.searchsorted(ref_part, cur_part, side="right")
        positions += np.arange(take_cur)
        from_current = np.zeros(take_ref + take_cur, dtype=bool)
        from_current[positions] = True
        merged = np.empty(take_ref + take_cur, dtype=np.float64)
        merged[positions] = cur_part
        merged[~from_current] = ref_part
        yield merged, from_current
        if not ref.size:
            ref = _nonempty(reference)
        if not cur.size:
            cur = _nonempty(current)


def wasserstein_normed(reference: SortedValues, current: SortedValues) -> float:
    """First Wasserstein distance divided by the reference's standard deviation.

    Same value as ``scipy.stats.wasserstein_distance``: the integral of |F_ref - F_cur|
    over the merged sample points, a sum over the steps between consecutive points of the
    merged order of |F_ref - F_cur| there times the step's width.
    """
    norm = max(reference.moments.std, 0.001)
    if isinstance(reference, InMemory):
        return _integral_with_reference_in_memory(reference.values, current) / norm
    return _integral_by_merging(reference, current) / norm


def _integral_by_merging(reference: SortedValues, current: SortedValues) -> float:
    """The integral over the two sorted columns merged a block at a time: between two
    consecutive merged values the distribution functions are the running counts of the
    values seen on each side."""
    n, m = reference.size, current.size
    total = 0.0
    ref_seen = cur_seen = 0
    previous: float | None = None
    for merged, from_current in merge_sorted(reference.blocks(), current.blocks()):
        if previous is not None:
            total += abs(ref_seen / n - cur_seen / m) * (float(merged[0]) - previous)
        current_counts = cur_seen + np.cumsum(from_current[:-1])
        reference_counts = ref_seen + np.arange(1, merged.size) - (current_counts - cur_seen)
        gaps = np.abs(reference_counts / n - current_counts / m)
        total += float(np.dot(gaps, np.diff(merged)))
        from_cur = int(np.count_nonzero(from_current))
        cur_seen += from_cur
        ref_seen += merged.size - from_cur
        previous = float(merged[-1])
    return total


def _with_next(blocks: Iterator[FloatArray]) -> Iterator[tuple[FloatArray, float]]:
    """Each non-empty block with the value after it (inf after the last)."""
    block = _nonempty(blocks)
    while block.size:
        following = _nonempty(blocks)
        yield block, float(following[0]) if following.size else np.inf
        block = following


def _integral_with_reference_in_memory(reference: FloatArray, current: SortedValues) -> float:
    """The same integral when the reference is an array (the usual case: a training
    sample), with the current column streamed: each merged point starts one step, so the
    sum is over the steps starting at current values plus those starting at reference
    values, found by searching the reference values into each current block.

    In the merged order a reference value comes before equal current values (as in the
    merge above); equal values make steps of zero width.
    """
    n, m = reference.size, current.size
    total = 0.0
    first = 0  # index of the block's first value in the whole current column
    done = 0  # reference values whose steps are summed
    for block, following in _with_next(current.blocks()):
        k = block.size
        # The reference values up to the block's last value: each is followed by the
        # first current value not below it, which is in this block.
        upto = int(np.searchsorted(reference, block[-1], side="right"))
        below_counts = np.zeros(k, dtype=np.int64)
        for start in range(done, upto, BLOCK_ROWS):
            refs = reference[start : min(upto, start + BLOCK_ROWS)]
            below = np.searchsorted(block, refs, side="left")
            below_counts += np.bincount(below, minlength=k)[:k]
            total += _reference_steps(reference, start, refs, block[below], first + below, m)
        # Steps starting at current values: F_ref counts the reference values <= it,
        # F_cur = (j + 1) / m; the step ends at the next current or reference value.
        ref_counts = np.cumsum(below_counts) + done
        ends = np.empty(k)
        ends[:-1] = block[1:]
        ends[-1] = following
        has_next_ref = ref_counts < n
        np.minimum(ends, reference[np.minimum(ref_counts, n - 1)], out=ends, where=has_next_ref)
        widths = ends - block
        if not np.isfinite(ends[-1]):
            widths[-1] = 0.0  # the last value of both: F_ref = F_cur = 1 from there on
        levels = np.abs(ref_counts / n - np.arange(first + 1, first + k + 1) / m)
        total += float(np.dot(levels, widths))
        done = upto
        first += k
    # Reference values above every current value: F_cur = 1 from there on.
    for start in range(done, n, BLOCK_ROWS):
        refs = reference[start : start + BLOCK_ROWS]
        total += _reference_steps(
            reference, start, refs, np.full(refs.size, np.inf), np.full(refs.size, m), m
        )
    return total


def _reference_steps(
    reference: FloatArray,
    start: int,
    refs: FloatArray,
    next_current: FloatArray,
    current_below: npt.NDArray[np.int64],
    m: int,
) -> float:
    """The steps starting at ``refs`` (``reference[start:]``): F_ref = (i + 1) / n, F_cur
    the share of current values below; each ends at the next reference or current value."""
    n = reference.size
    index = np.arange(start, start + refs.size)
    ends = reference[np.minimum(index + 1, n - 1)]
    np.minimum(ends, next_current, out=ends)
    if index[-1] + 1 >= n:
        # The last reference value: the step ends at the next current value, if any.
        ends[-1] = next_current[-1] if np.isfinite(next_current[-1]) else refs[-1]
    levels = np.abs((index + 1) / n - current_below / m)
    return float(np.dot(levels, ends - refs))


def ks_statistic(reference: SortedValues, current: SortedValues) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: max |F_ref(x) - F_cur(x)| over the
    sample points, each distribution function counting every value <= x (as ks_2samp's
    ``searchsorted(side="right")``), from the sorted columns merged a block at a time."""
    n, m = reference.size, current.size
    statistic = 0.0
    ref_seen = cur_seen = 0
    # The last value of a round and its difference: final only if the next round does not
    # continue the run of equal values.
    pending: tuple[float, float] | None = None
    for merged, from_current in merge_sorted(reference.blocks(), current.blocks()):
        current_counts = cur_seen + np.cumsum(from_current)
        reference_counts = ref_seen + np.arange(1, merged.size + 1) - (current_counts - cur_seen)
        differences = np.abs(reference_counts / n - current_counts / m)
        if pending is not None and merged[0] != pending[0]:
            statistic = max(statistic, pending[1])
        ends = np.flatnonzero(merged[1:] != merged[:-1])
        if ends.size:
            statistic = max(statistic, float(differences[ends].max()))
        pending = (float(merged[-1]), float(differences[-1]))
        cur_seen = int(current_counts[-1])
        ref_seen = int(reference_counts[-1])
    if pending is not None:
        statistic = max(statistic, pending[1])
    return statistic


def ks_p_value(reference: SortedValues, current: SortedValues) -> float:
    """``scipy.stats.ks_2samp(reference, current).pvalue``, as Evidently computes it.

    Up to KS_EXACT_MAX_VALUES values a side (small: they are loaded) it is ks_2samp itself;
    above, ks_2samp uses Smirnov's asymptotic distribution of the statistic, which is
    computed here the same way from the streamed statistic.
    """
    n, m = reference.size, current.size
    if max(n, m) <= KS_EXACT_MAX_VALUES:
        return float(stats.ks_2samp(reference.array(), current.array())[1])
    statistic = ks_statistic(reference, current)
    larger, smaller = sorted([float(n), float(m)], reverse=True)
    effective = larger * smaller / (larger + smaller)
    return float(np.clip(stats.kstwo.sf(statistic, np.round(effective)), 0, 1))


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
