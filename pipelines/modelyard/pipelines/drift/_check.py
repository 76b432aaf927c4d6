"""The drift check: compare a current window of data with the reference, column by column."""

from __future__ import annotations

import logging
import re
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeAlias

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from modelyard.pipelines.drift._methods import (
    DISCRETE_NUMERICAL_VALUES,
    JENSEN_SHANNON,
    KS,
    SMALL_REFERENCE_ROWS,
    WASSERSTEIN,
    FloatArray,
    chi_square_p_value,
    choose_method,
    jensen_shannon,
    ks_p_value,
    wasserstein_normed,
    z_test_p_value,
)
from modelyard.pipelines.drift._summary import (
    CheckStatus,
    ColumnDrift,
    ColumnStatus,
    ColumnType,
    DriftSummary,
)

logger = logging.getLogger(__name__)

PREDICTION_COLUMN = re.compile(r"^prediction(_\d+)?$")
# Evidently: an integer column with at most this many distinct values is categorical.
INTEGER_CARDINALITY_LIMIT = 10
DEFAULT_DRIFT_SHARE = 0.5
DEFAULT_TARGET_COLUMN = "target"

Frame: TypeAlias = pa.Table | pd.DataFrame


def as_arrow_table(data: Frame) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    return pa.Table.from_pandas(data, preserve_index=False)


def _without_metadata(table: pa.Table) -> pa.Table:
    # `_`-prefixed columns are the prediction log's bookkeeping (contracts.md), not data.
    return table.select([name for name in table.column_names if not name.startswith("_")])


def _value_type(dtype: pa.DataType) -> pa.DataType:
    return dtype.value_type if pa.types.is_dictionary(dtype) else dtype


def physical_kind(dtype: pa.DataType) -> str:
    """The kind of values a column holds; two columns of different kinds cannot be compared."""
    dtype = _value_type(dtype)
    if pa.types.is_null(dtype):
        return "null"
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        return "number"
    if pa.types.is_boolean(dtype):
        return "boolean"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "string"
    if pa.types.is_temporal(dtype):
        return "datetime"
    return str(dtype)


def _distinct_count(column: pa.ChunkedArray) -> int:
    if pa.types.is_dictionary(column.type):
        return len(_value_counts(column))
    return int(pc.count_distinct(column, mode="only_valid").as_py())


def infer_column_type(column: pa.ChunkedArray) -> ColumnType:
    """Evidently's ``infer_column_type``, applied to an Arrow column as pandas would see it."""
    dtype = column.type
    if pa.types.is_dictionary(dtype) and physical_kind(dtype) != "string":
        return ColumnType.CATEGORICAL  # pandas "category"
    if pa.types.is_boolean(dtype):
        return ColumnType.CATEGORICAL
    # Dictionary-encoded strings are how Parquet stores them; pandas reads them as strings.
    dtype = _value_type(dtype)
    if pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        return ColumnType.NUMERICAL
    if pa.types.is_integer(dtype):
        # pandas turns an integer column with missing values into float64.
        if column.null_count > 0:
            return ColumnType.NUMERICAL
        if _distinct_count(column) <= INTEGER_CARDINALITY_LIMIT:
            return ColumnType.CATEGORICAL
        return ColumnType.NUMERICAL
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        valid = len(column) - column.null_count
        if _distinct_count(column) > valid * 0.5:
            return ColumnType.TEXT
        return ColumnType.CATEGORICAL
    if pa.types.is_temporal(dtype):
        return ColumnType.DATETIME
    return ColumnType.UNKNOWN


def _finite_values(column: pa.ChunkedArray) -> FloatArray:
    """Non-missing, finite values as float64 (Evidently drops NaN and +-inf first)."""
    if column.null_count:
        column = pc.drop_null(column)
    values = np.asarray(column.to_numpy(), dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        values = values[finite]
    return values


def _value_counts(column: pa.ChunkedArray) -> dict[Hashable, int]:
    # Chunk by chunk: dictionary chunks (one per Parquet file) may have different
    # dictionaries, and the merge below is over distinct values only.
    result: dict[Hashable, int] = {}
    for chunk in column.chunks:
        if chunk.null_count:
            chunk = pc.drop_null(chunk)
        counts = pc.value_counts(chunk)
        values = counts.field("values").to_pylist()
        numbers = counts.field("counts").to_pylist()
        for value, number in zip(values, numbers, strict=True):
            if isinstance(value, float) and not np.isfinite(value):
                continue
            result[value] = result.get(value, 0) + int(number)
    return result


def _sorted_counts(sorted_values: FloatArray) -> dict[Hashable, int]:
    distinct, counts = np.unique(sorted_values, return_counts=True)
    return {float(v): int(c) for v, c in zip(distinct.tolist(), counts.tolist(), strict=True)}


@dataclass
class ReferenceColumn:
    """What the check needs from one reference column, computed once."""

    name: str
    column_type: ColumnType
    kind: str
    rows: int = 0
    sorted_values: FloatArray | None = None
    counts: dict[Hashable, int] = field(default_factory=dict)


def profile_reference_column(name: str, column: pa.ChunkedArray) -> ReferenceColumn:
    column_type = infer_column_type(column)
    profile = ReferenceColumn(name, column_type, physical_kind(column.type))
    if column_type is ColumnType.NUMERICAL:
        values = np.sort(_finite_values(column))
        profile.sorted_values = values
        profile.rows = int(values.size)
        if values.size and np.count_nonzero(np.diff(values)) + 1 <= DISCRETE_NUMERICAL_VALUES:
            profile.counts = _sorted_counts(values)
    elif column_type is ColumnType.CATEGORICAL:
        profile.counts = _value_counts(column)
        profile.rows = sum(profile.counts.values())
    else:
        profile.rows = len(column) - column.null_count
    return profile


def _test_column(
    reference: ReferenceColumn, current: pa.ChunkedArray, name: str | None = None
) -> ColumnDrift:
    name = name or reference.name
    result = ColumnDrift(
        column=name,
        column_type=reference.column_type,
        reference_column=reference.name if reference.name != name else None,
        reference_rows=reference.rows,
    )
    if reference.column_type not in (ColumnType.NUMERICAL, ColumnType.CATEGORICAL):
        result.status = ColumnStatus.SKIPPED
        result.reason = (
            f"{reference.column_type.name.lower()} column: Evidently's DataDriftPreset "
            "tests numerical and categorical columns"
            + (
                " (text columns with a domain classifier, not done here)"
                if reference.column_type is ColumnType.TEXT
                else ""
            )
        )
        return result
    if reference.rows == 0:
        result.status = ColumnStatus.SKIPPED
        result.reason = "the reference has no values in this column"
        return result

    if reference.column_type is ColumnType.NUMERICAL:
        assert reference.sorted_values is not None
        values = np.sort(_finite_values(current))
        result.current_rows = int(values.size)
        if values.size == 0:
            return _empty(result)
        distinct = _numerical_distinct(reference, values)
        method = choose_method(reference.column_type, reference.rows, distinct)
        if method is WASSERSTEIN:
            score = wasserstein_normed(reference.sorted_values, values)
        elif method is KS:
            score = ks_p_value(reference.sorted_values, values)
        else:
            score = _counts_test(
                method.name, _sorted_counts(reference.sorted_values), _sorted_counts(values)
            )
    else:
        counts = _value_counts(current)
        result.current_rows = sum(counts.values())
        if result.current_rows == 0:
            return _empty(result)
        distinct = len(set(reference.counts) | set(counts))
        method = choose_method(reference.column_type, reference.rows, distinct)
        score = _counts_test(method.name, reference.counts, counts)

    result.method = method.name
    result.method_label = method.label
    result.threshold = method.threshold
    result.score = score
    result.drifted = method.is_drift(score)
    return result


def _numerical_distinct(reference: ReferenceColumn, current_sorted: FloatArray) -> int:
    if not reference.counts:
        # The reference alone has more than DISCRETE_NUMERICAL_VALUES distinct values.
        return DISCRETE_NUMERICAL_VALUES + 1
    current_distinct = np.unique(current_sorted)
    return len(set(reference.counts) | set(current_distinct.tolist()))


def _counts_test(
    method_name: str, reference: dict[Hashable, int], current: dict[Hashable, int]
) -> float:
    if method_name == JENSEN_SHANNON.name:
        return jensen_shannon(reference, current)
    if method_name == "chisquare":
        return chi_square_p_value(reference, current)
    return z_test_p_value(reference, current)


def _empty(result: ColumnDrift) -> ColumnDrift:
    result.status = ColumnStatus.EMPTY
    result.drifted = True
    result.reason = "no values in the current data, while the reference has some"
    return result


def check_drift(
    reference: Frame,
    current: Frame,
    *,
    target_column: str | None = DEFAULT_TARGET_COLUMN,
    drift_share: float = DEFAULT_DRIFT_SHARE,
    max_workers: int = 2,
) -> DriftSummary:
    """Test every feature column of ``current`` against ``reference`` for drift.

    Each column gets Evidently's default test for its type and size (DataDriftPreset
    semantics); the dataset drifts when at least ``drift_share`` of the feature columns do.
    Columns starting with ``_`` are ignored on both sides. ``prediction`` columns of the
    current data are compared with the reference's column of the same name, or else with
    ``target_column`` (the labels the model learnt from), and reported apart from the
    features. A reference ``target_column`` absent from the current data is not a missing
    feature.
    """
    ref = _without_metadata(as_arrow_table(reference))
    cur = _without_metadata(as_arrow_table(current))
    base = {
        "drift_share": drift_share,
        "reference_rows": ref.num_rows,
        "current_rows": cur.num_rows,
    }

    if ref.num_rows == 0:
        return DriftSummary(
            status=CheckStatus.NO_DATA,
            message="the reference has no rows: nothing to compare with",
            dataset_drift=None,
            **base,
        )
    if cur.num_rows == 0:
        return DriftSummary(
            status=CheckStatus.NO_DATA,
            message="the current data has no rows (empty window?): nothing was checked",
            dataset_drift=None,
            **base,
        )

    prediction_columns = [c for c in cur.column_names if PREDICTION_COLUMN.match(c)]
    ref_names = set(ref.column_names)
    cur_names = set(cur.column_names)
    excluded = {c for c in ref.column_names if PREDICTION_COLUMN.match(c)}
    if target_column and target_column in ref_names and target_column not in cur_names:
        excluded.add(target_column)
    features = [c for c in ref.column_names if c not in excluded]

    missing = [c for c in features if c not in cur_names]
    extra = [c for c in cur.column_names if c not in ref_names and c not in prediction_columns]
    mismatched: list[str] = []
    comparable: list[str] = []
    for name in features:
        if name not in cur_names:
            continue
        ref_kind = physical_kind(ref.schema.field(name).type)
        cur_kind = physical_kind(cur.schema.field(name).type)
        if ref_kind != cur_kind and "null" not in (ref_kind, cur_kind):
            mismatched.append(f"{name}: {ref_kind} in the reference, {cur_kind} now")
        else:
            comparable.append(name)

    def run(name: str) -> ColumnDrift:
        return _test_column(profile_reference_column(name, ref.column(name)), cur.column(name))

    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        columns = list(pool.map(run, comparable))
    predictions = [_test_prediction(p, ref, cur, target_column) for p in prediction_columns]

    tested = [c for c in columns if c.status is not ColumnStatus.SKIPPED]
    drifted = [c.column for c in tested if c.drifted]
    share = len(drifted) / len(tested) if tested else None
    checked_predictions = [p for p in predictions if p.status is not ColumnStatus.SKIPPED]
    prediction_drift = any(p.drifted for p in checked_predictions) if checked_predictions else None

    problems = []
    if missing:
        problems.append(f"missing in the current data: {', '.join(missing)}")
    if extra:
        problems.append(f"not in the reference: {', '.join(extra)}")
    if mismatched:
        problems.append(f"changed type: {'; '.join(mismatched)}")

    status = CheckStatus.OK
    if problems:
        status = CheckStatus.SCHEMA_MISMATCH
        message = (
            "the current data does not match the reference ("
            + "; ".join(problems)
            + f"); the {len(tested)} comparable columns were checked, no dataset verdict"
        )
    elif share is None:
        status = CheckStatus.NO_DATA
        message = "no feature column could be tested (see each column's reason)"
    else:
        message = (
            f"{len(drifted)} of {len(tested)} feature columns drifted "
            f"(share {share:.2f}, dataset drift at >= {drift_share:g})"
        )
        if prediction_drift is not None:
            message += "; prediction drift" if prediction_drift else "; predictions stable"

    warnings = []
    if ref.num_rows <= SMALL_REFERENCE_ROWS:
        warnings.append(
            f"at most {SMALL_REFERENCE_ROWS} reference rows: Evidently's p-value tests apply, "
            "and its chi-square test treats the reference shares as exact, so it reports "
            "drift far more often than 5% of the time on unchanged data; use a larger reference"
        )

    logger.info("drift check: %s: %s", status.value, message)
    return DriftSummary(
        status=status,
        warnings=warnings,
        message=message,
        dataset_drift=(share >= drift_share)
        if status is CheckStatus.OK and share is not None
        else None,
        share_of_drifted_columns=share,
        number_of_columns=len(tested),
        number_of_drifted_columns=len(drifted),
        drifted_columns=drifted + [p.column for p in checked_predictions if p.drifted],
        prediction_drift=prediction_drift,
        columns=columns,
        predictions=predictions,
        missing_columns=missing,
        extra_columns=extra,
        type_mismatches=mismatched,
        **base,
    )


def _test_prediction(
    name: str, ref: pa.Table, cur: pa.Table, target_column: str | None
) -> ColumnDrift:
    if name in ref.column_names:
        counterpart = name
    elif name == "prediction" and target_column and target_column in ref.column_names:
        # Without the model's predictions on the reference, the training labels are the
        # distribution a well-fitted model's predictions should follow (label/prior shift).
        counterpart = target_column
    else:
        return ColumnDrift(
            column=name,
            column_type=infer_column_type(cur.column(name)),
            status=ColumnStatus.SKIPPED,
            reason=(
                f"the reference has neither {name!r} nor a target column "
                f"({target_column!r}) to compare the predictions with"
            ),
        )
    ref_kind = physical_kind(ref.schema.field(counterpart).type)
    cur_kind = physical_kind(cur.schema.field(name).type)
    if ref_kind != cur_kind and "null" not in (ref_kind, cur_kind):
        return ColumnDrift(
            column=name,
            column_type=infer_column_type(ref.column(counterpart)),
            reference_column=counterpart if counterpart != name else None,
            status=ColumnStatus.SKIPPED,
            reason=f"{counterpart} is {ref_kind} in the reference, {name} is {cur_kind}",
        )
    return _test_column(
        profile_reference_column(counterpart, ref.column(counterpart)), cur.column(name), name
    )
