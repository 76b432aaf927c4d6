"""The drift check as it was before its memory was bounded: each column read whole into
memory and tested on whole arrays (scipy's own ``wasserstein_distance`` and ``ks_2samp``,
numpy's ``unique``), the way the check computed before it streamed. The bounded check must
give the same numbers, whatever its budget."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats  # type: ignore[import-untyped]

from modelyard.pipelines.drift import ColumnType
from modelyard.pipelines.drift._methods import (
    DISCRETE_NUMERICAL_VALUES,
    chi_square_p_value,
    choose_method,
    jensen_shannon,
    z_test_p_value,
)


@dataclass(frozen=True)
class Expected:
    column_type: ColumnType
    method: str | None
    score: float | None
    drifted: bool


def column_type(column: pa.ChunkedArray) -> ColumnType:
    """Evidently's infer_column_type on the whole column, as pandas would see it."""
    dtype = column.type
    if pa.types.is_boolean(dtype):
        return ColumnType.CATEGORICAL
    if pa.types.is_floating(dtype):
        return ColumnType.NUMERICAL
    distinct = pc.count_distinct(column, mode="only_valid").as_py()
    if pa.types.is_integer(dtype):
        if column.null_count or distinct > 10:
            return ColumnType.NUMERICAL
        return ColumnType.CATEGORICAL
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        valid = len(column) - column.null_count
        return ColumnType.TEXT if distinct > valid * 0.5 else ColumnType.CATEGORICAL
    return ColumnType.UNKNOWN


def _finite(column: pa.ChunkedArray) -> np.ndarray:
    values = np.asarray(pc.drop_null(column).to_numpy(), dtype=np.float64)
    return values[np.isfinite(values)]


def _counts(values: pd.Series) -> dict[Hashable, int]:
    counted = values.dropna().value_counts()
    return {k: int(v) for k, v in counted.items() if not (isinstance(k, float) and np.isinf(k))}


def _counts_score(name: str, reference: dict[Hashable, int], current: dict[Hashable, int]) -> float:
    if name == "jensenshannon":
        return jensen_shannon(reference, current)
    if name == "chisquare":
        return chi_square_p_value(reference, current)
    return z_test_p_value(reference, current)


def whole_column_check(reference: pd.DataFrame, current: pd.DataFrame) -> dict[str, Expected]:
    """Each feature column of ``reference`` (also in ``current``) tested on whole arrays."""
    ref_table = pa.Table.from_pandas(reference, preserve_index=False)
    cur_table = pa.Table.from_pandas(current, preserve_index=False)
    results: dict[str, Expected] = {}
    for name in reference.columns:
        kind = column_type(ref_table.column(name))
        if kind is ColumnType.NUMERICAL:
            ref = _finite(ref_table.column(name))
            cur = _finite(cur_table.column(name))
            distinct = len(np.union1d(np.unique(ref), np.unique(cur)))
            if np.unique(ref).size > DISCRETE_NUMERICAL_VALUES:
                distinct = DISCRETE_NUMERICAL_VALUES + 1
            method = choose_method(kind, ref.size, distinct)
            if method.name == "wasserstein":
                score = stats.wasserstein_distance(ref, cur) / max(float(np.std(ref)), 0.001)
            elif method.name == "ks":
                score = float(stats.ks_2samp(ref, cur).pvalue)
            else:
                ref_counts = dict(zip(*np.unique(ref, return_counts=True), strict=True))
                cur_counts = dict(zip(*np.unique(cur, return_counts=True), strict=True))
                score = _counts_score(method.name, ref_counts, cur_counts)
        elif kind is ColumnType.CATEGORICAL:
            ref_counts = _counts(reference[name])
            cur_counts = _counts(current[name])
            method = choose_method(kind, sum(ref_counts.values()), len(ref_counts | cur_counts))
            score = _counts_score(method.name, ref_counts, cur_counts)
        else:
            results[name] = Expected(kind, None, None, False)
            continue
        results[name] = Expected(kind, method.name, float(score), method.is_drift(score))
    return results
