"""The Parquet data lake: ``{lake}/{dataset}/date=YYYY-MM-DD/part-N.parquet``.

``lake`` is a local path or any fsspec URL (``s3://bucket/lake``). Writes go to a
temporary name in the same directory and are then renamed, so a reader never sees half a
file, and the bytes depend only on the rows: re-running a partition rewrites the same file.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

QUARANTINE = "_quarantine"
_DATE_DIR = re.compile(r"date=(\d{4}-\d{2}-\d{2})$")
_PART_FILE = re.compile(r"/part-(\d+)\.parquet$")


def _part_number(path: str) -> int:
    match = _PART_FILE.search(path)
    return int(match.group(1)) if match else 0


@dataclass(frozen=True)
class Partition:
    """One date partition of a dataset."""

    lake: str
    dataset: str
    date: dt.date

    @property
    def url(self) -> str:
        return f"{self.lake.rstrip('/')}/{self.dataset}/date={self.date.isoformat()}"

    def part_url(self, part: int = 0) -> str:
        return f"{self.url}/part-{part}.parquet"


def _filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def write_parquet_atomic(frame: pd.DataFrame, url: str) -> None:
    """Write ``frame`` to ``url`` as Parquet: temporary file first, then rename."""
    fs, path = _filesystem(url)
    directory, _, name = path.rpartition("/")
    fs.makedirs(directory, exist_ok=True)
    temporary = f"{directory}/.{name}.{uuid.uuid4().hex}.tmp"
    table = pa.Table.from_pandas(frame, preserve_index=False)
    try:
        with fs.open(temporary, "wb") as handle:
            pq.write_table(table, handle, compression="zstd")
        fs.mv(temporary, path)
    finally:
        if fs.exists(temporary):
            fs.rm(temporary)


def remove_file(url: str) -> None:
    fs, path = _filesystem(url)
    if fs.exists(path):
        fs.rm(path)


def list_partitions(lake: str, dataset: str) -> list[Partition]:
    """The dataset's date partitions, oldest first (empty if the dataset does not exist)."""
    fs, path = _filesystem(f"{lake.rstrip('/')}/{dataset}")
    if not fs.exists(path):
        return []
    partitions = []
    for entry in fs.ls(path, detail=False):
        match = _DATE_DIR.search(str(entry).rstrip("/"))
        if match:
            partitions.append(Partition(lake, dataset, dt.date.fromisoformat(match.group(1))))
    return sorted(partitions, key=lambda p: p.date)


def select_partitions(
    lake: str,
    dataset: str,
    end: dt.date,
    days: int | None = None,
) -> list[Partition]:
    """Partitions dated ``end`` and the ``days - 1`` days before it (all up to ``end``
    when ``days`` is None)."""
    start = end - dt.timedelta(days=days - 1) if days else dt.date.min
    return [p for p in list_partitions(lake, dataset) if start <= p.date <= end]


def read_partition(partition: Partition) -> pd.DataFrame:
    """All part files of one partition, in part order, as one frame."""
    fs, path = _filesystem(partition.url)
    files = sorted(
        (str(f) for f in fs.ls(path, detail=False) if _PART_FILE.search(str(f))),
        key=_part_number,
    )
    frames = []
    for file in files:
        with fs.open(file, "rb") as handle:
            frames.append(pq.read_table(handle).to_pandas())
    if not frames:
        raise FileNotFoundError(f"partition {partition.url} has no parquet files")
    return pd.concat(frames, ignore_index=True)


def read_partitions(partitions: Iterable[Partition], date_column: str = "date") -> pd.DataFrame:
    """Several partitions as one frame, with a ``date`` column naming each row's partition."""
    frames = []
    for partition in partitions:
        frame = read_partition(partition)
        frame[date_column] = pd.Timestamp(partition.date)
        frames.append(frame)
    if not frames:
        raise FileNotFoundError("no partitions to read")
    return pd.concat(frames, ignore_index=True)
