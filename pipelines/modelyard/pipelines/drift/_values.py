"""A numerical column's values, sorted: in memory when they fit, else sorted on disk.

The drift tests of a numerical column (Wasserstein distance, K-S statistic, discrete
value shares) need its values in order. :class:`ValueSink` collects the finite values of
one column batch by batch. When the column fits the memory it was given, the values go
into one array that is sorted in place; when it does not, the sink sorts what fits
(a *run*), writes it to a temporary file and starts the next one, and the sorted column
is then the merge of the runs, read back a block at a time (an external merge sort).
Either way the result is the same sorted sequence, so the tests computed from it are
exact; only where the values live differs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

FloatArray = npt.NDArray[np.float64]
VALUE_BYTES = 8
# Values per block when a sorted column is streamed into a test. Small on purpose: the
# temporaries of a block (64 KiB each) stay below malloc's mmap threshold and in cache;
# blocks of 256 KiB and more are mapped and unmapped each time, and that page faulting
# makes a test several times slower.
BLOCK_ROWS = 1 << 13
# The smallest block a run is read back in; more runs than the merge memory allows at this
# block size are merged in several passes.
MIN_MERGE_BLOCK_ROWS = 1 << 12


def finite_values(array: pa.Array | pa.ChunkedArray) -> FloatArray:
    """Non-missing, finite values as float64 (Evidently drops NaN and +-inf first)."""
    if array.null_count:
        array = pc.drop_null(array)
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    values = np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        values = values[finite]
    return values


@dataclass
class Moments:
    """Count, mean and sum of squared deviations, merged chunk by chunk (Chan et al.)."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values: FloatArray) -> None:
        for start in range(0, values.size, BLOCK_ROWS):
            chunk = values[start : start + BLOCK_ROWS]
            n = chunk.size
            mean = float(chunk.mean())
            m2 = float(np.sum(np.square(chunk - mean)))
            total = self.count + n
            delta = mean - self.mean
            self.mean += delta * n / total
            self.m2 += m2 + delta * delta * self.count * n / total
            self.count = total

    @property
    def std(self) -> float:
        """Population standard deviation (numpy's ``std``, ddof=0)."""
        return float(np.sqrt(self.m2 / self.count)) if self.count else 0.0


class SortedValues:
    """A column's finite values in ascending order, read as blocks."""

    size: int
    #: "in_memory" or "external_sort": how the values were sorted.
    computation: str
    runs: int = 0

    @property
    def moments(self) -> Moments:
        raise NotImplementedError

    def blocks(self) -> Iterator[FloatArray]:
        raise NotImplementedError

    def array(self) -> FloatArray:
        """All values in one array (only for columns known to be small)."""
        parts = list(self.blocks())
        return np.concatenate(parts) if parts else np.empty(0)

    def close(self) -> None:
        """Release the memory or files holding the values."""


class InMemory(SortedValues):
    computation = "in_memory"

    def __init__(self, values: FloatArray) -> None:
        self.values = values
        self.size = int(values.size)
        self._moments: Moments | None = None

    @property
    def moments(self) -> Moments:
        if self._moments is None:
            self._moments = Moments()
            self._moments.add(self.values)
        return self._moments

    def blocks(self) -> Iterator[FloatArray]:
        for start in range(0, self.size, BLOCK_ROWS):
            yield self.values[start : start + BLOCK_ROWS]

    def array(self) -> FloatArray:
        return self.values

    def close(self) -> None:
        self.values = np.empty(0)


class _RunReader:
    """One sorted run on disk, read a block at a time."""

    def __init__(self, path: Path, block_rows: int) -> None:
        self.handle = path.open("rb")
        self.block_rows = block_rows
        self.block = np.empty(0)
        self.refill()

    def refill(self) -> None:
        self.block = np.fromfile(self.handle, dtype=np.float64, count=self.block_rows)
        if not self.block.size:
            self.handle.close()


def merge_runs(paths: list[Path], block_rows: int) -> Iterator[FloatArray]:
    """The sorted runs merged into one ascending stream of blocks.

    Each round takes, from every run's current block, the values up to the smallest last
    value among those blocks: nothing still on disk can be smaller, so the values taken
    are the next ones of the merged order (they are sorted together, a block's worth).
    """
    readers = [_RunReader(p, block_rows) for p in paths]
    active = [r for r in readers if r.block.size]
    while active:
        if len(active) == 1:
            [reader] = active
            while reader.block.size:
                yield reader.block
                reader.refill()
            return
        limit = min(float(r.block[-1]) for r in active)
        parts = []
        for reader in active:
            cut = int(np.searchsorted(reader.block, limit, side="right"))
            if cut:
                parts.append(reader.block[:cut])
                reader.block = reader.block[cut:]
                if not reader.block.size:
                    reader.refill()
        merged = np.concatenate(parts)
        merged.sort()
        yield merged
        active = [r for r in active if r.block.size]


class OnDisk(SortedValues):
    """Sorted runs in temporary files, merged when read."""

    computation = "external_sort"

    def __init__(
        self,
        directory: tempfile.TemporaryDirectory[str],
        runs: list[Path],
        size: int,
        moments: Moments,
        merge_bytes: int,
    ) -> None:
        self.directory = directory
        self.paths = runs
        self.size = size
        self._moments = moments
        self.runs = len(runs)
        self.merge_bytes = merge_bytes

    @property
    def moments(self) -> Moments:
        return self._moments

    def _block_rows(self, runs: int) -> int:
        # The run blocks plus the merged block (at most one block per run) and the sort.
        return self.merge_bytes // (3 * VALUE_BYTES * max(1, runs))

    def _reduce_runs(self) -> None:
        """Merge groups of runs until one pass can read them all in blocks big enough."""
        fan_in = max(2, self.merge_bytes // (3 * VALUE_BYTES * MIN_MERGE_BLOCK_ROWS))
        generation = 0
        while len(self.paths) > fan_in:
            generation += 1
            merged_paths = []
            for number, start in enumerate(range(0, len(self.paths), fan_in)):
                group = self.paths[start : start + fan_in]
                out = Path(self.directory.name) / f"merge-{generation}-{number}.f64"
                with out.open("wb") as handle:
                    for block in merge_runs(group, self._block_rows(len(group))):
                        block.tofile(handle)
                for path in group:
                    path.unlink()
                merged_paths.append(out)
            self.paths = merged_paths

    def blocks(self) -> Iterator[FloatArray]:
        self._reduce_runs()
        for merged in merge_runs(self.paths, max(1, self._block_rows(len(self.paths)))):
            # A merge round yields up to a block per run; the tests get BLOCK_ROWS at a time,
            # so their temporaries stay a few blocks whatever the merge memory.
            for start in range(0, merged.size, BLOCK_ROWS):
                yield merged[start : start + BLOCK_ROWS]

    def close(self) -> None:
        self.directory.cleanup()


@dataclass
class ValueSink:
    """Collects one numerical column's finite values, batch by batch.

    ``capacity`` values are held in memory (an upper bound of the column's rows when it
    fits, else the run size); past it, full runs are sorted and written to disk.
    """

    capacity: int
    merge_bytes: int = 0
    spill_dir: str | None = None
    moments: Moments = field(default_factory=Moments)
    _buffer: FloatArray | None = None
    _filled: int = 0
    _size: int = 0
    _runs: list[Path] = field(default_factory=list)
    _directory: tempfile.TemporaryDirectory[str] | None = None

    def add(self, array: pa.Array | pa.ChunkedArray) -> None:
        values = finite_values(array)
        while values.size:
            if self._buffer is None:
                # np.empty: pages are only committed as values are written.
                self._buffer = np.empty(max(1, self.capacity), dtype=np.float64)
            room = self._buffer.size - self._filled
            if room == 0:
                self._spill()
                continue
            take = values[:room]
            self._buffer[self._filled : self._filled + take.size] = take
            self._filled += take.size
            self._size += take.size
            values = values[room:]

    def _spill(self) -> None:
        assert self._buffer is not None
        run = self._buffer[: self._filled]
        run.sort()
        self.moments.add(run)
        if self._directory is None:
            self._directory = tempfile.TemporaryDirectory(
                prefix="modelyard-drift-sort-", dir=self.spill_dir
            )
        path = Path(self._directory.name) / f"run-{len(self._runs)}.f64"
        with path.open("wb") as handle:
            run.tofile(handle)
        self._runs.append(path)
        self._filled = 0

    def finish(self) -> SortedValues:
        if not self._runs:
            values = self._buffer[: self._filled] if self._buffer is not None else np.empty(0)
            values.sort()
            self._buffer = None
            return InMemory(values)
        if self._filled:
            self._spill()
        self._buffer = None
        assert self._directory is not None
        return OnDisk(self._directory, self._runs, self._size, self.moments, self.merge_bytes)


def sorted_counts(
    values: SortedValues, limit: int, seen: frozenset[Hashable] = frozenset()
) -> dict[Hashable, int] | None:
    """How often each value occurs, if ``seen`` and these values together are at most
    ``limit`` distinct values; else None, as soon as that is known."""
    counts: dict[Hashable, int] = {}
    for block in values.blocks():
        if not block.size:
            continue
        starts = np.flatnonzero(np.concatenate(([True], block[1:] != block[:-1])))
        if starts.size > limit:
            return None
        sizes = np.diff(np.append(starts, block.size))
        for value, size in zip(block[starts].tolist(), sizes.tolist(), strict=True):
            counts[value] = counts.get(value, 0) + int(size)
        if len(seen | counts.keys()) > limit:
            return None
    return counts
