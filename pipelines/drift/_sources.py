"""Where the drift check's data comes from: files, the prediction log, the model's lineage."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

# contracts.md: the training run logs at most this many rows as reference/data.parquet.
REFERENCE_MAX_ROWS = 200_000
REFERENCE_ARTIFACT = "reference/data.parquet"
REFERENCE_SAMPLE_SEED = 0


class DataSourceError(Exception):
    """The data to check cannot be read: missing file, unknown format, no lineage."""


def _is_csv(path: str) -> bool:
    name = path.lower()
    return name.endswith((".csv", ".csv.gz", ".csv.bz2", ".tsv"))


def read_table(url: str) -> pa.Table:
    """Read a Parquet or CSV file, or a directory of Parquet files, from a path or fsspec URL."""
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
            return _concat([read_parquet(f, fs) for f in files])
        if _is_csv(path):
            with fs.open(path, "rb", compression="infer") as handle:
                parse = pa_csv.ParseOptions(delimiter="\t" if path.endswith(".tsv") else ",")
                return pa_csv.read_csv(handle, parse_options=parse)
        return read_parquet(path, fs)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataSourceError(f"cannot read {url}: {exc}") from exc


def read_parquet(path: str, fs: fsspec.AbstractFileSystem) -> pa.Table:
    """A Parquet file with its string columns dictionary-encoded.

    Parquet stores low-cardinality strings as dictionaries already; keeping them so avoids
    materialising every string (a million per column for a 1M-row window), and the check
    counts categories on the dictionary indices.
    """
    schema = pq.read_schema(path, filesystem=fs)
    strings = [
        f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
    ]
    return pq.read_table(path, filesystem=fs, read_dictionary=strings)


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
    base = log_url.rstrip("/")
    return [f"{base}/{model_name}/version={version}/date={d.isoformat()}" for d in days]


def read_prediction_log(
    log_url: str, model_name: str, version: str, start: datetime | date, end: datetime | date
) -> pa.Table:
    """The logged inputs and predictions of one model version for ``[start, end)`` (UTC).

    Layout and columns as in docs/contracts.md; the ``_``-prefixed bookkeeping columns are
    dropped, ``prediction`` (or ``prediction_N``) is kept. An empty window gives a table
    without rows (and without columns), which the check reports as ``no_data``.
    """
    try:
        return _read_prediction_log(log_url, model_name, version, start, end)
    except (pa.ArrowInvalid, OSError, ImportError, ValueError) as exc:
        raise DataSourceError(f"cannot read the prediction log at {log_url}: {exc}") from exc


def _read_prediction_log(
    log_url: str, model_name: str, version: str, start: datetime | date, end: datetime | date
) -> pa.Table:
    first, last = _as_utc(start), _as_utc(end)
    fs, _ = fsspec.core.url_to_fs(log_url)
    tables = []
    for partition in prediction_log_partitions(log_url, model_name, version, first, last):
        _, path = fsspec.core.url_to_fs(partition)
        if not fs.isdir(path):
            continue
        for file in sorted(fs.glob(f"{path}/*.parquet")):
            table = read_parquet(file, fs)
            if "_timestamp" in table.column_names:
                stamps = table.column("_timestamp")
                if stamps.type.tz is None:
                    stamps = stamps.cast(pa.timestamp(stamps.type.unit, tz="UTC"))
                lower = pa.scalar(first, type=stamps.type)
                upper = pa.scalar(last, type=stamps.type)
                keep = pc.and_(pc.greater_equal(stamps, lower), pc.less(stamps, upper))
                table = table.filter(keep)
            tables.append(table)
    logger.info("read %d prediction-log files for %s v%s", len(tables), model_name, version)
    if not tables:
        return pa.table({})
    table = _concat(tables)
    return table.select([c for c in table.column_names if not c.startswith("_")])


@dataclass(frozen=True)
class Reference:
    """The training data of a model version, as its training run recorded it."""

    table: pa.Table
    source: str
    run_id: str


def resolve_model_version(client: object, model_name: str, version: str) -> object:
    """A registry version by number or by alias (``champion``)."""
    if version.isdigit():
        return client.get_model_version(model_name, version)  # type: ignore[attr-defined]
    return client.get_model_version_by_alias(model_name, version)  # type: ignore[attr-defined]


def load_reference(tracking_uri: str, model_name: str, version: str) -> Reference:
    """The reference data of a registered model version.

    The training run's ``reference/data.parquet`` artifact (contracts.md) when it exists;
    otherwise the partitions the run logged as its training inputs, sampled down to
    200,000 rows with a fixed seed, as the training pipeline does.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        model_version = resolve_model_version(client, model_name, version)
    except MlflowException as exc:
        raise DataSourceError(f"model {model_name!r} version {version!r}: {exc.message}") from exc
    run_id = str(model_version.run_id or "")  # type: ignore[attr-defined]
    if not run_id:
        raise DataSourceError(
            f"model {model_name!r} version {version!r} has no source run: no lineage to read"
        )
    with tempfile.TemporaryDirectory(prefix="modelyard-reference-") as tmp:
        try:
            local = client.download_artifacts(run_id, REFERENCE_ARTIFACT, tmp)
        except (MlflowException, OSError) as exc:
            logger.info("run %s has no %s (%s); using its inputs", run_id, REFERENCE_ARTIFACT, exc)
        else:
            table = read_parquet(local, fsspec.filesystem("file"))
            return Reference(table, f"runs:/{run_id}/{REFERENCE_ARTIFACT}", run_id)

    sources = _training_input_sources(client.get_run(run_id))
    if not sources:
        raise DataSourceError(
            f"run {run_id} of {model_name!r} version {version!r} has neither "
            f"{REFERENCE_ARTIFACT} nor training dataset inputs"
        )
    table = _concat([read_table(s) for s in sources])
    inputs = _model_input_names(tracking_uri, model_name, str(model_version.version))  # type: ignore[attr-defined]
    if inputs:
        # The partitions also hold the label and other columns the model never sees.
        table = table.select([c for c in table.column_names if c in inputs])
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
    import mlflow
    import numpy as np

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{model_name}/{version}")
    finally:
        mlflow.set_tracking_uri(previous)
    predictions = np.asarray(model.predict(decode_dictionaries(reference).to_pandas()))
    if predictions.ndim == 2 and predictions.shape[1] == 1:
        predictions = predictions[:, 0]
    if predictions.ndim == 1:
        return reference.append_column("prediction", pa.array(predictions))
    for i in range(predictions.shape[1]):
        reference = reference.append_column(f"prediction_{i}", pa.array(predictions[:, i]))
    return reference


def _model_input_names(tracking_uri: str, model_name: str, version: str) -> set[str]:
    import mlflow
    from mlflow.exceptions import MlflowException

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        info = mlflow.models.get_model_info(f"models:/{model_name}/{version}")
    except (MlflowException, OSError) as exc:
        logger.info("no model signature for %s v%s: %s", model_name, version, exc)
        return set()
    finally:
        mlflow.set_tracking_uri(previous)
    if info.signature is None or info.signature.inputs is None:
        return set()
    return {str(name) for name in info.signature.inputs.input_names()}


def _training_input_sources(run: object) -> list[str]:
    sources = []
    for dataset_input in run.inputs.dataset_inputs:  # type: ignore[attr-defined]
        tags = {t.key: t.value for t in dataset_input.tags}
        if tags.get("mlflow.data.context", "training") != "training":
            continue
        raw = dataset_input.dataset.source
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError:
            parsed = raw
        if isinstance(parsed, dict):
            url = parsed.get("uri") or parsed.get("url") or parsed.get("path")
        else:
            url = parsed
        if isinstance(url, str) and url:
            sources.append(url)
    return sources
