"""The drift check: compare a current window of data with the reference, column by column.

Memory is bounded by a budget, not by the rows. The columns to test are planned into
groups whose values fit the budget; each group is one pass over its columns (reference,
then current), and the groups run in parallel lanes that share the budget. A numerical
column's values are sorted in memory when the column fits; when a single column does not,
its values are sorted on disk (``_values``). Category counts are streamed. Either way the
tests see the same sorted values and counts, so the results are exact.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from modelyard.core import contracts as c
from modelyard.pipelines.drift._data import BATCH_READAHEAD, DataSource, as_source
from modelyard.pipelines.drift._methods import (
    DISCRETE_NUMERICAL_VALUES,
    JENSEN_SHANNON,
    KS,
    SMALL_REFERENCE_ROWS,
    WASSERSTEIN,
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
    Computation,
    DriftSummary,
)
from modelyard.pipelines.drift._values import (
    BLOCK_ROWS,
    VALUE_BYTES,
    SortedValues,
    ValueSink,
    sorted_counts,
)

logger = logging.getLogger(__name__)

PREDICTION_COLUMN = re.compile(r"^prediction(_\d+)?$")
# Evidently: an integer column with at most this many distinct values is categorical.
INTEGER_CARDINALITY_LIMIT = 10
DEFAULT_DRIFT_SHARE = 0.5
DEFAULT_TARGET_COLUMN = "target"
DEFAULT_MEMORY_BUDGET = c.parse_memory(c.DRIFT_MEMORY_BUDGET)
MIN_MEMORY_BUDGET = c.parse_memory(c.DRIFT_MEMORY_BUDGET_MIN)
# What testing one column needs besides its sorted values: the merge rounds of two blocks.
TEST_WORKSPACE = 2 * BLOCK_ROWS * 48
# Batch sizes a pass reads: at most this many rows, and at most 1/8 of its memory.
MAX_BATCH_ROWS = 65_536
MIN_BATCH_ROWS = 1_024
# Bytes a row of a column takes in a batch when it has no fixed width (strings).
VARIABLE_WIDTH = 16

Frame: TypeAlias = pa.Table | pd.DataFrame | DataSource


def as_arrow_table(data: pa.Table | pd.DataFrame) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    return pa.Table.from_pandas(data, preserve_index=False)


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


def add_value_counts(counts: dict[Hashable, int], array: pa.Array | pa.ChunkedArray) -> None:
    """Add the non-missing values of ``array`` to ``counts``.

    Chunk by chunk: dictionary chunks (one per Parquet file or batch) may have different
    dictionaries, and the merge is over distinct values only.
    """
    chunks = array.chunks if isinstance(array, pa.ChunkedArray) else [array]
    for chunk in chunks:
        if chunk.null_count:
            chunk = pc.drop_null(chunk)
        if not len(chunk):
            continue
        found = pc.value_counts(chunk)
        values = found.field("values").to_pylist()
        numbers = found.field("counts").to_pylist()
        for value, number in zip(values, numbers, strict=True):
            if isinstance(value, float) and not np.isfinite(value):
                continue
            counts[value] = counts.get(value, 0) + int(number)


class TypeEvidence:
    """What Evidently's ``infer_column_type`` looks at, gathered batch by batch: missing
    values and, where the rule needs it, the distinct values (their counts, which a
    categorical column's test needs anyway). Counting stops once the answer is known."""

    def __init__(self, dtype: pa.DataType, rows: int) -> None:
        self.dtype = dtype
        self.nulls = 0
        self.length = 0
        value_type = _value_type(dtype)
        self.limit: int | None = None
        self.counts: dict[Hashable, int] | None = None
        if pa.types.is_dictionary(dtype) or pa.types.is_boolean(dtype):
            self.counts = {}
        elif pa.types.is_integer(value_type):
            self.counts, self.limit = {}, INTEGER_CARDINALITY_LIMIT
        elif pa.types.is_string(value_type) or pa.types.is_large_string(value_type):
            # More distinct values than half the rows: text, whatever else is read.
            self.counts, self.limit = {}, max(1, rows // 2)
        self.overflowed = False

    def add(self, array: pa.Array | pa.ChunkedArray) -> None:
        self.length += len(array)
        self.nulls += array.null_count
        if self.counts is None:
            return
        add_value_counts(self.counts, array)
        if self.limit is not None and len(self.counts) > self.limit:
            self.counts, self.overflowed = None, True

    def column_type(self) -> ColumnType:
        """Evidently's ``infer_column_type``, applied to an Arrow column as pandas sees it."""
        dtype = self.dtype
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
            if self.nulls > 0 or self.overflowed:
                return ColumnType.NUMERICAL
            return ColumnType.CATEGORICAL
        if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
            if self.overflowed or len(self.counts or {}) > (self.length - self.nulls) * 0.5:
                return ColumnType.TEXT
            return ColumnType.CATEGORICAL
        if pa.types.is_temporal(dtype):
            return ColumnType.DATETIME
        return ColumnType.UNKNOWN


def infer_column_type(column: pa.ChunkedArray | pa.Array) -> ColumnType:
    evidence = TypeEvidence(column.type, len(column))
    evidence.add(column)
    return evidence.column_type()


def _may_be_numerical(dtype: pa.DataType) -> bool:
    """Whether a column of this type can get a numerical test (needs its sorted values)."""
    if pa.types.is_dictionary(dtype):
        return False
    return bool(
        pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_decimal(dtype)
    )


def _is_tested(dtype: pa.DataType) -> bool:
    """Whether a column of this type can be numerical or categorical at all."""
    return physical_kind(dtype) in ("number", "boolean", "string")


@dataclass
class ReferenceColumn:
    """What the check needs from one reference column."""

    name: str
    column_type: ColumnType
    kind: str
    rows: int = 0
    values: SortedValues | None = None
    counts: dict[Hashable, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class ColumnTest:
    """One test: a current column (the reported name) against a reference column."""

    name: str
    reference: str


@dataclass(frozen=True)
class SideMemory:
    """How one side of a test holds its values: in memory up to ``capacity`` values, or
    sorted on disk in runs of ``capacity`` values merged with ``merge_bytes``."""

    capacity: int
    external: bool = False
    merge_bytes: int = 0


@dataclass
class Group:
    """Tests whose columns are read in one pass (reference, then current)."""

    tests: list[ColumnTest]
    budget: int
    batch_rows: int
    memory: dict[tuple[str, str], SideMemory] = field(default_factory=dict)


def _width(dtype: pa.DataType) -> int:
    try:
        return max(1, int(dtype.bit_width) // 8)
    except ValueError:
        return VARIABLE_WIDTH


class Planner:
    """Splits the tests into groups whose values fit the memory budget."""

    def __init__(self, reference: DataSource, current: DataSource, budget: int, lanes: int) -> None:
        self.sources = {"reference": reference, "current": current}
        self.rows = {side: source.count_rows() for side, source in self.sources.items()}
        self.budget = budget
        self.lanes = lanes

    def _columns(self, test: ColumnTest) -> dict[str, str]:
        return {"reference": test.reference, "current": test.name}

    def _numerical(self, test: ColumnTest) -> bool:
        dtype = self.sources["reference"].schema.field(test.reference).type
        return _may_be_numerical(dtype)

    def values_bytes(self, test: ColumnTest) -> int:
        """Bytes of both sides' values held at once when the test is done in memory."""
        if not self._numerical(test):
            return 0
        return VALUE_BYTES * (self.rows["reference"] + self.rows["current"])

    def read_bytes(self, tests: Sequence[ColumnTest], batch_rows: int) -> int:
        """What reading a group's columns holds besides the values: the batches in flight
        and the row group being decoded; the larger of the two sides (read in turn)."""
        largest = 0
        for side, source in self.sources.items():
            columns = {self._columns(t)[side] for t in tests}
            width = sum(_width(source.schema.field(col).type) for col in columns)
            held = width * (batch_rows * (BATCH_READAHEAD + 2) + 2 * source.decode_rows())
            largest = max(largest, held)
        return largest

    def batch_rows(self, tests: Sequence[ColumnTest], budget: int) -> int:
        width = max(
            sum(_width(s.schema.field(self._columns(t)[side]).type) for t in tests)
            for side, s in self.sources.items()
        )
        rows = budget // 8 // max(1, width * (BATCH_READAHEAD + 2))
        return int(min(MAX_BATCH_ROWS, max(MIN_BATCH_ROWS, rows)))

    def cost(self, tests: Sequence[ColumnTest], budget: int) -> int:
        rows = self.batch_rows(tests, budget)
        values = sum(self.values_bytes(t) for t in tests)
        return values + self.read_bytes(tests, rows) + TEST_WORKSPACE

    def plan(self, tests: Sequence[ColumnTest]) -> tuple[list[list[Group]], list[Group]]:
        """Lanes of in-memory groups (run in parallel, each with its share of the budget),
        then the tests that need the whole budget or more, one at a time."""
        lanes = max(1, min(self.lanes, len(tests)))
        share = self.budget // lanes
        alone = [t for t in tests if self.cost([t], share) > share]
        together = [t for t in tests if t not in alone]
        groups: list[list[ColumnTest]] = []
        for test in together:
            if groups and self.cost([*groups[-1], test], share) <= share:
                groups[-1].append(test)
            else:
                groups.append([test])
        planned = [self._in_memory(g, share) for g in groups]
        lanes_of_groups: list[list[Group]] = [planned[i::lanes] for i in range(lanes)]
        return [lane for lane in lanes_of_groups if lane], [self._alone(t) for t in alone]

    def _in_memory(self, tests: list[ColumnTest], budget: int) -> Group:
        group = Group(tests, budget, self.batch_rows(tests, budget))
        for test in tests:
            for side, column in self._columns(test).items():
                group.memory[(side, column)] = SideMemory(self.rows[side])
        return group

    def _alone(self, test: ColumnTest) -> Group:
        """One test with the whole budget: in memory if it fits, else the larger side (or
        both) sorted on disk."""
        group = Group([test], self.budget, self.batch_rows([test], self.budget))
        if self.cost([test], self.budget) <= self.budget:
            return self._in_memory([test], self.budget)
        room = max(
            self.budget - self.read_bytes([test], group.batch_rows) - TEST_WORKSPACE,
            self.budget // 4,
        )
        sides = sorted(self._columns(test).items(), key=lambda kv: self.rows[kv[0]])
        (small_side, small_col), (large_side, large_col) = sides
        small_bytes = VALUE_BYTES * self.rows[small_side]
        if small_bytes <= room // 2:
            group.memory[(small_side, small_col)] = SideMemory(self.rows[small_side])
            rest = room - small_bytes
            group.memory[(large_side, large_col)] = SideMemory(
                max(1, rest // VALUE_BYTES), external=True, merge_bytes=rest
            )
        else:
            half = room // 2
            for side, column in sides:
                group.memory[(side, column)] = SideMemory(
                    max(1, half // VALUE_BYTES), external=True, merge_bytes=half
                )
        return group


# ---------------------------------------------------------------------------- running it


@dataclass
class _Collected:
    """One side of one column after a pass."""

    evidence: TypeEvidence
    values: SortedValues | None = None


def _read(
    source: DataSource,
    columns: dict[str, tuple[pa.DataType, SideMemory | None, bool]],
    batch_rows: int,
    spill_dir: str | None,
) -> dict[str, _Collected]:
    """One pass over ``columns``: type evidence and counts for each, the sorted values of
    those given a SideMemory; ``(dtype, memory, want_counts)`` per column."""
    rows = source.count_rows()
    evidence = {name: TypeEvidence(dtype, rows) for name, (dtype, _, _) in columns.items()}
    for name, (_, _, want_counts) in columns.items():
        if not want_counts:
            evidence[name].counts, evidence[name].limit = None, None
    sinks = {
        name: ValueSink(memory.capacity, memory.merge_bytes, spill_dir)
        for name, (_, memory, _) in columns.items()
        if memory is not None
    }
    names = list(columns)
    if names:
        for batch in source.batches(names, batch_rows):
            for name in names:
                array = batch.column(name)
                evidence[name].add(array)
                sink = sinks.get(name)
                if sink is not None:
                    sink.add(array)
    return {
        name: _Collected(evidence[name], sinks[name].finish() if name in sinks else None)
        for name in names
    }


class Runner:
    """Runs planned groups: reads their columns and tests them."""

    def __init__(
        self, reference: DataSource, current: DataSource, spill_dir: str | None = None
    ) -> None:
        self.reference = reference
        self.current = current
        self.spill_dir = spill_dir

    def run(self, group: Group) -> list[ColumnDrift]:
        ref_columns: dict[str, tuple[pa.DataType, SideMemory | None, bool]] = {}
        for test in group.tests:
            dtype = self.reference.schema.field(test.reference).type
            if not _is_tested(dtype):
                continue
            memory = group.memory.get(("reference", test.reference))
            ref_columns[test.reference] = (
                dtype,
                memory if _may_be_numerical(dtype) else None,
                True,
            )
        ref = _read(self.reference, ref_columns, group.batch_rows, self.spill_dir)
        profiles = {name: _profile(name, self.reference, got) for name, got in ref.items()}

        cur_columns: dict[str, tuple[pa.DataType, SideMemory | None, bool]] = {}
        for test in group.tests:
            profile = profiles.get(test.reference)
            if profile is None or profile.rows == 0:
                continue
            dtype = self.current.schema.field(test.name).type
            numerical = profile.column_type is ColumnType.NUMERICAL
            categorical = profile.column_type is ColumnType.CATEGORICAL
            if numerical or categorical:
                cur_columns[test.name] = (
                    dtype,
                    group.memory.get(("current", test.name)) if numerical else None,
                    categorical,
                )
        cur = _read(self.current, cur_columns, group.batch_rows, self.spill_dir)
        results = []
        for test in group.tests:
            profile = profiles.get(test.reference) or _unprofiled(test, self.reference)
            results.append(_test_column(profile, cur.get(test.name), test.name))
        for collected in [*ref.values(), *cur.values()]:
            if collected.values is not None:
                collected.values.close()
        return results


def _profile(name: str, source: DataSource, collected: _Collected) -> ReferenceColumn:
    evidence = collected.evidence
    column_type = evidence.column_type()
    profile = ReferenceColumn(name, column_type, physical_kind(source.schema.field(name).type))
    if column_type is ColumnType.NUMERICAL:
        assert collected.values is not None
        profile.values = collected.values
        profile.rows = collected.values.size
        profile.counts = sorted_counts(collected.values, DISCRETE_NUMERICAL_VALUES) or {}
    elif column_type is ColumnType.CATEGORICAL:
        profile.counts = evidence.counts or {}
        profile.rows = sum(profile.counts.values())
        if collected.values is not None:
            collected.values.close()
    else:
        profile.rows = evidence.length - evidence.nulls
    return profile


def _unprofiled(test: ColumnTest, source: DataSource) -> ReferenceColumn:
    """A reference column of a type no test applies to (datetime, nested, null)."""
    dtype = source.schema.field(test.reference).type
    column_type = ColumnType.DATETIME if pa.types.is_temporal(dtype) else ColumnType.UNKNOWN
    return ReferenceColumn(test.reference, column_type, physical_kind(dtype))


def _computation(*values: SortedValues | None) -> Computation:
    if any(v is not None and v.computation == Computation.EXTERNAL_SORT for v in values):
        return Computation.EXTERNAL_SORT
    return Computation.IN_MEMORY


def _test_column(reference: ReferenceColumn, current: _Collected | None, name: str) -> ColumnDrift:
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
    assert current is not None

    if reference.column_type is ColumnType.NUMERICAL:
        assert reference.values is not None and current.values is not None
        values = current.values
        result.current_rows = values.size
        result.computation = _computation(reference.values, values)
        if values.size == 0:
            return _empty(result)
        current_counts = (
            sorted_counts(values, DISCRETE_NUMERICAL_VALUES, frozenset(reference.counts))
            if reference.counts
            else None
        )
        distinct = (
            len(set(reference.counts) | set(current_counts))
            if current_counts is not None
            # The reference alone, or with the current values, has more than
            # DISCRETE_NUMERICAL_VALUES distinct values.
            else DISCRETE_NUMERICAL_VALUES + 1
        )
        method = choose_method(reference.column_type, reference.rows, distinct)
        if method is WASSERSTEIN:
            score = wasserstein_normed(reference.values, values)
        elif method is KS:
            score = ks_p_value(reference.values, values)
        else:
            assert current_counts is not None
            score = _counts_test(method.name, reference.counts, current_counts)
    else:
        counts = current.evidence.counts or {}
        result.current_rows = sum(counts.values())
        result.computation = Computation.COUNTS
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


def _column_type(source: DataSource, column: str) -> ColumnType:
    """Evidently's type of one column, read as a stream (for columns no test reads)."""
    dtype = source.schema.field(column).type
    evidence = TypeEvidence(dtype, source.count_rows())
    for batch in source.batches([column], MAX_BATCH_ROWS):
        evidence.add(batch.column(column))
    return evidence.column_type()


# ---------------------------------------------------------------------------- the check


def _features(names: Sequence[str]) -> list[str]:
    # `_`-prefixed columns are the prediction log's bookkeeping (contracts.md), not data.
    return [name for name in names if not name.startswith("_")]


def check_drift(
    reference: Frame,
    current: Frame,
    *,
    target_column: str | None = DEFAULT_TARGET_COLUMN,
    drift_share: float = DEFAULT_DRIFT_SHARE,
    max_workers: int = 2,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    spill_dir: str | None = None,
) -> DriftSummary:
    """Test every feature column of ``current`` against ``reference`` for drift.

    Each column gets Evidently's default test for its type and size (DataDriftPreset
    semantics); the dataset drifts when at least ``drift_share`` of the feature columns do.
    Columns starting with ``_`` are ignored on both sides. ``prediction`` columns of the
    current data are compared with the reference's column of the same name, or else with
    ``target_column`` (the labels the model learnt from), and reported apart from the
    features. A reference ``target_column`` absent from the current data is not a missing
    feature.

    ``reference`` and ``current`` are pandas DataFrames, Arrow tables or DataSources
    (``open_data``, ``open_prediction_log``: Parquet read a few columns at a time). The
    data held at once stays within ``memory_budget`` bytes, using ``max_workers`` threads:
    columns that do not fit are sorted on disk (under ``spill_dir``), with the same result.
    """
    ref_source = as_source(reference)
    cur_source = as_source(current)
    ref_names = _features(ref_source.column_names)
    cur_names = _features(cur_source.column_names)
    ref_rows = ref_source.count_rows() if ref_names else 0
    cur_rows = cur_source.count_rows() if cur_names else 0
    base: dict[str, Any] = {
        "drift_share": drift_share,
        "reference_rows": ref_rows,
        "current_rows": cur_rows,
        "memory_budget": memory_budget,
    }

    if ref_rows == 0:
        return DriftSummary(
            status=CheckStatus.NO_DATA,
            message="the reference has no rows: nothing to compare with",
            dataset_drift=None,
            **base,
        )
    if cur_rows == 0:
        return DriftSummary(
            status=CheckStatus.NO_DATA,
            message="the current data has no rows (empty window?): nothing was checked",
            dataset_drift=None,
            **base,
        )

    prediction_columns = [col for col in cur_names if PREDICTION_COLUMN.match(col)]
    ref_set, cur_set = set(ref_names), set(cur_names)
    excluded = {col for col in ref_names if PREDICTION_COLUMN.match(col)}
    if target_column and target_column in ref_set and target_column not in cur_set:
        excluded.add(target_column)
    features = [col for col in ref_names if col not in excluded]

    def kind(source: DataSource, name: str) -> str:
        return physical_kind(source.schema.field(name).type)

    missing = [col for col in features if col not in cur_set]
    extra = [col for col in cur_names if col not in ref_set and col not in prediction_columns]
    mismatched: list[str] = []
    comparable: list[str] = []
    for name in features:
        if name not in cur_set:
            continue
        ref_kind, cur_kind = kind(ref_source, name), kind(cur_source, name)
        if ref_kind != cur_kind and "null" not in (ref_kind, cur_kind):
            mismatched.append(f"{name}: {ref_kind} in the reference, {cur_kind} now")
        else:
            comparable.append(name)

    tests = [ColumnTest(name, name) for name in comparable]
    prediction_results: dict[str, ColumnDrift] = {}
    for name in prediction_columns:
        if name in ref_set:
            counterpart = name
        elif name == "prediction" and target_column and target_column in ref_set:
            # Without the model's predictions on the reference, the training labels are the
            # distribution a well-fitted model's predictions should follow (label shift).
            counterpart = target_column
        else:
            prediction_results[name] = ColumnDrift(
                column=name,
                column_type=_column_type(cur_source, name),
                status=ColumnStatus.SKIPPED,
                reason=(
                    f"the reference has neither {name!r} nor a target column "
                    f"({target_column!r}) to compare the predictions with"
                ),
            )
            continue
        ref_kind, cur_kind = kind(ref_source, counterpart), kind(cur_source, name)
        if ref_kind != cur_kind and "null" not in (ref_kind, cur_kind):
            prediction_results[name] = ColumnDrift(
                column=name,
                column_type=_column_type(ref_source, counterpart),
                reference_column=counterpart if counterpart != name else None,
                status=ColumnStatus.SKIPPED,
                reason=f"{counterpart} is {ref_kind} in the reference, {name} is {cur_kind}",
            )
            continue
        tests.append(ColumnTest(name, counterpart))

    lanes, alone = Planner(ref_source, cur_source, memory_budget, max_workers).plan(tests)
    runner = Runner(ref_source, cur_source, spill_dir)
    done: dict[ColumnTest, ColumnDrift] = {}

    def run_lane(groups: list[Group]) -> None:
        for group in groups:
            done.update(zip(group.tests, runner.run(group), strict=True))

    if len(lanes) > 1:
        with ThreadPoolExecutor(max_workers=len(lanes)) as pool:
            list(pool.map(run_lane, lanes))
    else:
        for lane in lanes:
            run_lane(lane)
    run_lane(alone)
    passes = sum(len(lane) for lane in lanes) + len(alone)

    columns = [done[ColumnTest(name, name)] for name in comparable]
    for test in tests:
        if test.name in prediction_columns:
            prediction_results[test.name] = done[test]
    predictions = [prediction_results[name] for name in prediction_columns]

    tested = [col for col in columns if col.status is not ColumnStatus.SKIPPED]
    drifted = [col.column for col in tested if col.drifted]
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
    if ref_rows <= SMALL_REFERENCE_ROWS:
        warnings.append(
            f"at most {SMALL_REFERENCE_ROWS} reference rows: Evidently's p-value tests apply, "
            "and its chi-square test treats the reference shares as exact, so it reports "
            "drift far more often than 5% of the time on unchanged data; use a larger reference"
        )
    on_disk = [
        col.column
        for col in [*columns, *predictions]
        if col.computation is Computation.EXTERNAL_SORT
    ]
    if on_disk:
        warnings.append(
            f"sorted on disk (external sort), the column not fitting the memory budget of "
            f"{c.format_memory(memory_budget)}: {', '.join(on_disk)}; the result is exact, "
            "a larger --memory-budget makes it faster"
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
        passes=passes,
        **base,
    )
