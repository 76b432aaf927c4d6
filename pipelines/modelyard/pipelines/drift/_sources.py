"""Where the drift check's data comes from: files, the prediction log, the model's lineage."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from modelyard.core import contracts as c
from modelyard.core.artifacts import artifact_location, download_version
from modelyard.core.model_safety import check_model_format
from modelyard.core.registry import (
    Credentials,
    ModelReference,
    ModelVersion,
    Registry,
    RegistryError,
    open_registry,
)
from modelyard.pipelines.drift._data import (
    DataSource,
    ParquetSource,
    TableSource,
    string_columns,
)

logger = logging.getLogger(__name__)

REFERENCE_MAX_ROWS = c.REFERENCE_MAX_ROWS
REFERENCE_ARTIFACT = c.REFERENCE_ARTIFACT
REFERENCE_SAMPLE_SEED = c.REFERENCE_SAMPLE_SEED


class DataSourceError(Exception):
    """The data to check cannot be read: missing file, unknown format, no lineage."""


def _is_csv(path: str) -> bool:
    name = path.lower()
    return name.endswith((".csv", ".csv.gz", ".csv.bz2", ".tsv"))


def _arrow_filesystem(fs: fsspec.AbstractFileSystem) -> pafs.FileSystem:
    if isinstance(fs, LocalFileSystem):
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def open_data(url: str) -> DataSource:
    """A Parquet or CSV file, or a directory of Parquet files, from a path or fsspec URL.

    Parquet is not read here: the check reads the columns it needs, a batch at a time, so
    a window larger than memory can be checked. CSV cannot be read by column; it is read
    whole (use Parquet for large data).
    """
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise DataSourceError(f"cannot open {url}: {exc}") from exc
    if not fs.exists(path):
        raise DataSourceError(f"{url}: no such file or directory")
    try:
        if fs.isdir(path):
            files = sorted(f for f in fs.find(path) if f.endswith(".parquet"))
            if not files:
                raise DataSourceError(f"{url}: a directory without .parquet files")
            return ParquetSource.open(files, _arrow_filesystem(fs))
        if _is_csv(path):
            with fs.open(path, "rb", compression="infer") as handle:
                parse = pa_csv.ParseOptions(delimiter="\t" if path.endswith(".tsv") else ",")
                return TableSource(pa_csv.read_csv(handle, parse_options=parse))
        return ParquetSource.open([path], _arrow_filesystem(fs))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataSourceError(f"cannot read {url}: {exc}") from exc


def read_table(url: str) -> pa.Table:
    """A Parquet or CSV file, or a directory of Parquet files, read whole into memory."""
    source = open_data(url)
    try:
        return source.to_table()
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataSourceError(f"cannot read {url}: {exc}") from exc


def read_parquet(path: str, fs: fsspec.AbstractFileSystem) -> pa.Table:
    """A Parquet file with its string columns dictionary-encoded.

    Parquet stores low-cardinality strings as dictionaries already; keeping them so avoids
    materialising every string (a million per column for a 1M-row window), and the check
    counts categories on the dictionary indices.
    """
    schema = pq.read_schema(path, filesystem=fs)
    return pq.read_table(path, filesystem=fs, read_dictionary=string_columns(schema))


def decode_dictionaries(table: pa.Table) -> pa.Table:
    """Plain value columns, as pandas and models expect them (not pandas categoricals)."""
    schema = pa.schema(
        [
            f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f
            for f in table.schema
        ]
    )
    return table.cast(schema) if schema != table.schema else table


def _concat(tables: list[pa.Table]) -> pa.Table:
    # Files written by different server versions may differ slightly (int vs float).
    return pa.concat_tables(tables, promote_options="permissive")


def _as_utc(moment: datetime | date) -> datetime:
    if not isinstance(moment, datetime):
        return datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def prediction_log_partitions(
    log_url: str, model_name: str, version: str, start: datetime | date, end: datetime | date
) -> list[str]:
    """The date partition directories that can hold rows logged in ``[start, end)``."""
    first, last = _as_utc(start), _as_utc(end)
    days = []
    day = first.date()
    while datetime(day.year, day.month, day.day, tzinfo=UTC) < last:
        days.append(day)
        day += timedelta(days=1)
    return [c.prediction_log_partition(log_url, model_name, version, d) for d in days]


def open_prediction_log(
    log_url: str, model_name: str, version: str, start: datetime | date, end: datetime | date
) -> DataSource:
    """The logged inputs and predictions of one model version for ``[start, end)`` (UTC),
    as a source the check streams: the window's files (layout in docs/contracts.md) are one
    dataset filtered on ``_timestamp``, never concatenated in memory. An empty window gives
    a source without rows (and without columns), which the check reports as ``no_data``.
    """
    try:
        return _open_prediction_log(log_url, model_name, version, start, end)
    except (pa.ArrowInvalid, OSError, ImportError, ValueError) as exc:
        raise DataSourceError(f"cannot read the prediction log at {log_url}: {exc}") from exc


def _open_prediction_log(
    log_url: str, model_name: str, version: str, start: datetime | date, end: datetime | date
) -> DataSource:
    first, last = _as_utc(start), _as_utc(end)
    fs, _ = fsspec.core.url_to_fs(log_url)
    files: list[str] = []
    for partition in prediction_log_partitions(log_url, model_name, version, first, last):
        _, path = fsspec.core.url_to_fs(partition)
        if fs.isdir(path):
            files.extend(sorted(fs.glob(f"{path}/*.parquet")))
    logger.info("%d prediction-log files for %s v%s", len(files), model_name, version)
    if not files:
        return TableSource(pa.table({}))
    source = ParquetSource.open(files, _arrow_filesystem(fs))
    if c.LOG_TIMESTAMP_COLUMN not in source.schema.names:
        return source
    stamp_type = source.schema.field(c.LOG_TIMESTAMP_COLUMN).type
    lower, upper = (first, last) if stamp_type.tz else (_naive(first), _naive(last))
    stamps = ds.field(c.LOG_TIMESTAMP_COLUMN)
    return source.where(
        (stamps >= pa.scalar(lower, type=stamp_type)) & (stamps < pa.scalar(upper, type=stamp_type))
    )


def _naive(moment: datetime) -> datetime:
    # Timestamps written without a time zone are UTC (docs/contracts.md).
    return moment.astimezone(UTC).replace(tzinfo=None)


def read_prediction_log(
    log_url: str, model_name: str, version: str, start: datetime | date, end: datetime | date
) -> pa.Table:
    """The window of ``open_prediction_log`` read into one table (for small windows).

    The ``_``-prefixed bookkeeping columns are dropped, ``prediction`` (or ``prediction_N``)
    is kept.
    """
    source = open_prediction_log(log_url, model_name, version, start, end)
    columns = [name for name in source.column_names if not name.startswith("_")]
    try:
        return source.select(columns) if columns else pa.table({})
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataSourceError(f"cannot read the prediction log at {log_url}: {exc}") from exc


@dataclass(frozen=True)
class Reference:
    """The training data of a model version, as its training run recorded it."""

    table: pa.Table
    source: str
    run_id: str


def registry_for(tracking_uri: str) -> Registry:
    """The registry, with the credentials of this process's environment (the pod's)."""
    return open_registry(tracking_uri, Credentials.from_mapping(os.environ))


def resolve_version(tracking_uri: str, model_name: str, version: str) -> ModelVersion:
    """A READY registry version by number or by alias (``champion``)."""
    ref = (
        ModelReference(model_name, version=int(version))
        if version.isdigit()
        else ModelReference(model_name, alias=version)
    )
    registry = registry_for(tracking_uri)
    try:
        return registry.resolve(ref)
    except RegistryError as exc:
        raise DataSourceError(str(exc)) from exc
    finally:
        registry.close()


def load_reference(tracking_uri: str, model_name: str, version: str) -> Reference:
    """The reference data of a registered model version.

    The training run's ``reference/data.parquet`` artifact (contracts.md) when it exists;
    otherwise the partitions the run logged as its training inputs, sampled down to
    200,000 rows with a fixed seed, as the training pipeline does.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    model_version = resolve_version(tracking_uri, model_name, version)
    run_id = model_version.run_id
    if not run_id:
        raise DataSourceError(
            f"model {model_name!r} version {version!r} has no source run: no lineage to read"
        )
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    with tempfile.TemporaryDirectory(prefix="modelyard-reference-") as tmp:
        try:
            local = client.download_artifacts(run_id, REFERENCE_ARTIFACT, tmp)
        except (MlflowException, OSError) as exc:
            logger.info("run %s has no %s (%s); using its inputs", run_id, REFERENCE_ARTIFACT, exc)
        else:
            table = read_parquet(local, fsspec.filesystem("file"))
            return Reference(table, f"runs:/{run_id}/{REFERENCE_ARTIFACT}", run_id)

    registry = registry_for(tracking_uri)
    try:
        lineage = registry.lineage(run_id)
    except RegistryError as exc:
        raise DataSourceError(str(exc)) from exc
    finally:
        registry.close()
    sources = [d.source for d in lineage if d.context in ("", c.TRAINING_CONTEXT) and d.source]
    if not sources:
        raise DataSourceError(
            f"run {run_id} of {model_name!r} version {version!r} has neither "
            f"{REFERENCE_ARTIFACT} nor training dataset inputs"
        )
    table = _concat([read_table(s) for s in sources])
    inputs = _model_input_names(tracking_uri, model_name, model_version.version)
    if inputs:
        # The partitions also hold the label and other columns the model never sees.
        table = table.select([col for col in table.column_names if col in inputs])
    if table.num_rows > REFERENCE_MAX_ROWS:
        import numpy as np

        rng = np.random.default_rng(REFERENCE_SAMPLE_SEED)
        rows = np.sort(rng.choice(table.num_rows, REFERENCE_MAX_ROWS, replace=False))
        table = table.take(pa.array(rows))
    return Reference(table, ", ".join(sources), run_id)


def score_reference(
    reference: pa.Table, tracking_uri: str, model_name: str, version: str
) -> pa.Table:
    """The reference plus the model version's own predictions on it (``prediction``).

    Served predictions are then compared like for like: with what this very model
    predicted on its training data, not with labels it only approximates.
    """
    import mlflow.pyfunc
    import numpy as np
    from mlflow.models import Model

    registry = registry_for(tracking_uri)
    try:
        with tempfile.TemporaryDirectory(prefix="modelyard-score-") as tmp:
            local = download_version(registry, model_name, version, Path(tmp))
            check_model_format(
                Model.load(str(local)).flavors,
                allow_pickle=os.environ.get(c.ServerEnv.ALLOW_PICKLE, "").lower() == "true",
                model=f"model {model_name} version {version}",
            )
            model = mlflow.pyfunc.load_model(str(local))
    finally:
        registry.close()
    predictions = np.asarray(model.predict(decode_dictionaries(reference).to_pandas()))
    if predictions.ndim == 2 and predictions.shape[1] == 1:
        predictions = predictions[:, 0]
    if predictions.ndim == 1:
        return reference.append_column("prediction", pa.array(predictions))
    for i in range(predictions.shape[1]):
        reference = reference.append_column(f"prediction_{i}", pa.array(predictions[:, i]))
    return reference


def _model_input_names(tracking_uri: str, model_name: str, version: int) -> set[str]:
    """The input columns of the version's signature (its MLmodel file alone is read)."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    registry = registry_for(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="modelyard-mlmodel-") as tmp:
        try:
            source = artifact_location(
                tracking_uri, registry.get_version(model_name, version).source
            )
            path = download_artifacts(
                artifact_uri=f"{source.rstrip('/')}/MLmodel",
                dst_path=tmp,
                tracking_uri=tracking_uri,
            )
            signature = Model.load(path).signature
        except (MlflowException, OSError, RegistryError) as exc:
            logger.info("no model signature for %s v%s: %s", model_name, version, exc)
            return set()
        finally:
            registry.close()
    if signature is None or signature.inputs is None:
        return set()
    return {str(name) for name in signature.inputs.input_names()}
