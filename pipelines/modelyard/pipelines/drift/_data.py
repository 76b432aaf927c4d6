"""The rows a drift check reads: an Arrow table in memory, or Parquet files read lazily.

A :class:`DataSource` hands out record batches of the columns asked for, so the check can
hold a few columns at a time instead of a whole table. Parquet files (one, a directory,
or the prediction log's many small files over a window) are a ``pyarrow.dataset``: only
the requested column chunks are read and decoded, a batch at a time, and the prediction
log's time filter is applied as the batches stream by.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs

# Batches in flight per scan: enough to keep Arrow's decoder threads busy, few enough to
# keep memory bounded (the default read-ahead holds hundreds of MB for a wide table).
BATCH_READAHEAD = 1
FRAGMENT_READAHEAD = 2
# A scan covers whole row groups, at least this many rows when they are small (many small
# files): fewer scans to start, and still a bound on what one holds.
MIN_SCAN_ROWS = 1 << 16
# Parquet files are not buffered whole before decoding (pre_buffer): that is the read
# pattern for object stores' latency, and it holds every row group of a column chunk range.
_SCAN_OPTIONS = ds.ParquetFragmentScanOptions(pre_buffer=False)


def string_columns(schema: pa.Schema) -> list[str]:
    return [
        f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
    ]


def parquet_format(dictionary_columns: Sequence[str]) -> ds.ParquetFileFormat:
    """Strings read dictionary-encoded, as Parquet stores them: categories are counted on
    small integer indices instead of materialising every string."""
    return ds.ParquetFileFormat(
        read_options=ds.ParquetReadOptions(dictionary_columns=set(dictionary_columns)),
        default_fragment_scan_options=_SCAN_OPTIONS,
    )


def _as_dictionaries(schema: pa.Schema) -> pa.Schema:
    return pa.schema(
        [
            f.with_type(pa.dictionary(pa.int32(), f.type))
            if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
            else f
            for f in schema
        ],
        metadata=schema.metadata,
    )


class DataSource:
    """Rows to check, read a few columns at a time."""

    schema: pa.Schema

    @property
    def column_names(self) -> list[str]:
        return list(self.schema.names)

    def count_rows(self) -> int:
        raise NotImplementedError

    def batches(self, columns: Sequence[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        """The rows in order, ``columns`` only, at most ``batch_rows`` per batch."""
        raise NotImplementedError

    def decode_rows(self) -> int:
        """The most rows the reader holds decoded at once for a column (a scan's row
        groups), whatever the batch size: the check counts it in its memory budget."""
        return 0

    def to_table(self) -> pa.Table:
        raise NotImplementedError

    def sample(self, columns: Sequence[str], rows: int, seed: int) -> pa.Table:
        """``rows`` rows drawn without replacement (fixed seed), in their original order;
        read batch by batch, so a sample of a large window costs the sample, not the window."""
        total = self.count_rows()
        if total <= rows:
            return self.select(columns)
        rng = np.random.default_rng(seed)
        wanted = np.sort(rng.choice(total, rows, replace=False))
        parts, offset = [], 0
        for batch in self.batches(columns, 65_536):
            lo, hi = np.searchsorted(wanted, [offset, offset + batch.num_rows])
            if hi > lo:
                parts.append(batch.take(pa.array(wanted[lo:hi] - offset)))
            offset += batch.num_rows
        schema = pa.schema([self.schema.field(c) for c in columns])
        return pa.Table.from_batches(parts, schema=schema)

    def select(self, columns: Sequence[str]) -> pa.Table:
        raise NotImplementedError


class TableSource(DataSource):
    """An Arrow table already in memory; batches are zero-copy slices of it."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.schema = table.schema

    def count_rows(self) -> int:
        return int(self.table.num_rows)

    def batches(self, columns: Sequence[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        yield from self.table.select(list(columns)).to_batches(max_chunksize=max(1, batch_rows))

    def to_table(self) -> pa.Table:
        return self.table

    def sample(self, columns: Sequence[str], rows: int, seed: int) -> pa.Table:
        table = self.table.select(list(columns))
        if table.num_rows <= rows:
            return table
        rng = np.random.default_rng(seed)
        return table.take(pa.array(np.sort(rng.choice(table.num_rows, rows, replace=False))))


@dataclass
class ParquetSource(DataSource):
    """Parquet files as one dataset: their schemas unified (a column that is int64 in old
    files and float64 in new ones is read as float64; a column a file lacks reads as
    null), optionally filtered (the prediction log's time window)."""

    dataset: ds.Dataset
    filter: ds.Expression | None = None
    largest_row_group: int = 0
    _rows: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.schema = self.dataset.schema

    @classmethod
    def open(
        cls, files: Sequence[str], filesystem: pa.fs.FileSystem | None = None
    ) -> ParquetSource:
        """``files`` as one dataset (each file's footer is read once, here)."""
        plain = ds.dataset(list(files), format="parquet", filesystem=filesystem)
        fragments = list(plain.get_fragments())
        unified = pa.unify_schemas(
            [f.physical_schema for f in fragments], promote_options="permissive"
        )
        largest = max((rg.num_rows for f in fragments for rg in f.row_groups), default=0)
        dataset = ds.dataset(
            list(files),
            format=parquet_format(string_columns(unified)),
            filesystem=filesystem,
            schema=_as_dictionaries(unified),
        )
        return cls(dataset, largest_row_group=largest)

    def where(self, expression: ds.Expression) -> ParquetSource:
        return ParquetSource(self.dataset, expression, self.largest_row_group)

    def count_rows(self) -> int:
        if self._rows is None:
            if self.filter is None:
                self._rows = int(self.dataset.count_rows())
            else:
                self._rows = int(self.dataset.count_rows(filter=self.filter))
        return int(self._rows)

    def batches(self, columns: Sequence[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        # One scan per unit of row groups, not one over the dataset: a scan reads ahead of
        # a slow consumer (a run being sorted, a CPU-starved pod) until Arrow's
        # back-pressure, which pauses at a gigabyte, so its memory grew with the window.
        for unit in self._scan_units():
            yield from unit.to_batches(
                columns=list(columns),
                filter=self.filter,
                batch_size=max(1, batch_rows),
                batch_readahead=BATCH_READAHEAD,
                fragment_readahead=FRAGMENT_READAHEAD,
            )

    def _scan_units(self) -> Iterator[ds.Dataset]:
        """The row groups in order, gathered into datasets of at most the largest row
        group's rows: many small files are still read ahead of each other, and what a
        scan holds stays within what the check's budget counts (``decode_rows``)."""
        unit: list[ds.Fragment] = []
        rows = 0
        for fragment in self.dataset.get_fragments(filter=self.filter):
            for group in fragment.row_groups:
                if unit and rows + group.num_rows > self.decode_rows():
                    yield self._dataset_of(unit)
                    unit, rows = [], 0
                unit.append(fragment.subset(row_group_ids=[group.id]))
                rows += group.num_rows
        if unit:
            yield self._dataset_of(unit)

    def _dataset_of(self, fragments: list[ds.Fragment]) -> ds.Dataset:
        return ds.FileSystemDataset(
            fragments,
            schema=self.dataset.schema,
            format=self.dataset.format,
            filesystem=self.dataset.filesystem,
        )

    def decode_rows(self) -> int:
        return max(self.largest_row_group, MIN_SCAN_ROWS)

    def to_table(self) -> pa.Table:
        return self.select(self.column_names)

    def select(self, columns: Sequence[str]) -> pa.Table:
        return self.dataset.to_table(columns=list(columns), filter=self.filter)


def as_source(data: DataSource | pa.Table | object) -> DataSource:
    """A DataSource from a source, an Arrow table or a pandas DataFrame."""
    if isinstance(data, DataSource):
        return data
    if isinstance(data, pa.Table):
        return TableSource(data)
    return TableSource(pa.Table.from_pandas(data, preserve_index=False))
