"""Drift reports in MLflow, next to the model version they are about."""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from modelyard.core import contracts as c
from modelyard.pipelines.drift._check import Frame
from modelyard.pipelines.drift._data import as_source
from modelyard.pipelines.drift._sources import decode_dictionaries, registry_for, resolve_version
from modelyard.pipelines.drift._summary import ColumnStatus, ColumnType, DriftSummary

logger = logging.getLogger(__name__)

# Evidently renders every point it is given; on 1M rows its HTML alone takes about a minute.
# The verdicts come from the full data (summary.json); the HTML shows a sample.
HTML_SAMPLE_ROWS = 20_000
HTML_SAMPLE_SEED = 0
FALLBACK_EXPERIMENT = "modelyard-drift"
SUMMARY_ARTIFACT = c.DRIFT_SUMMARY_ARTIFACT
HTML_ARTIFACT = c.DRIFT_REPORT_ARTIFACT


def render_evidently_html(
    reference: Frame,
    current: Frame,
    summary: DriftSummary,
    *,
    sample_rows: int = HTML_SAMPLE_ROWS,
    seed: int = HTML_SAMPLE_SEED,
) -> str | None:
    """Evidently's own DataDriftPreset report, on a sample, with the full check's methods.

    Each column is rendered with the type and test the full-data check chose, so the
    pictures explain the verdicts in ``summary`` even where the sample alone would have
    made Evidently pick another test. The samples are drawn batch by batch from sources
    (a prediction-log window is not loaded for them). ``None`` when no column was tested.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    tested = [
        c for c in [*summary.columns, *summary.predictions] if c.status is ColumnStatus.CHECKED
    ]
    if not tested:
        return None
    renames = {c.reference_column: c.column for c in tested if c.reference_column}
    ref_columns = list(dict.fromkeys(c.reference_column or c.column for c in tested))
    # Plain strings, not pandas categoricals: what pandas.read_parquet gives Evidently.
    ref_sample = decode_dictionaries(as_source(reference).sample(ref_columns, sample_rows, seed))
    ref_frame = ref_sample.to_pandas().rename(columns=renames)
    cur_sample = as_source(current).sample([c.column for c in tested], sample_rows, seed)
    cur_frame = decode_dictionaries(cur_sample).to_pandas()
    definition = DataDefinition(
        numerical_columns=[c.column for c in tested if c.column_type is ColumnType.NUMERICAL],
        categorical_columns=[c.column for c in tested if c.column_type is ColumnType.CATEGORICAL],
    )
    preset = DataDriftPreset(
        columns=[c.column for c in tested],
        per_column_method={c.column: str(c.method) for c in tested},
        drift_share=summary.drift_share,
    )
    snapshot = Report([preset]).run(
        Dataset.from_pandas(cur_frame, data_definition=definition),
        Dataset.from_pandas(ref_frame, data_definition=definition),
    )
    with tempfile.TemporaryDirectory(prefix="modelyard-drift-") as tmp:
        path = Path(tmp) / "report.html"
        snapshot.save_html(str(path))
        return path.read_text(encoding="utf-8")


@dataclass(frozen=True)
class LoggedDriftReport:
    run_id: str
    experiment_id: str
    model_version: str
    artifact_uri: str


def _metric_key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", name)


def log_drift_report(
    summary: DriftSummary,
    *,
    tracking_uri: str,
    model_name: str,
    model_version: str,
    html: str | None = None,
    window: str | None = None,
    deployment: tuple[str, str] | None = None,
) -> LoggedDriftReport:
    """Log the check as its own run, in the experiment of the version's training run.

    The run carries the summary (``drift/summary.json``), Evidently's HTML if given
    (``drift/report.html``), the scores as metrics and tags naming the model version; the
    model version gets ``modelyard.drift.*`` tags pointing at the latest check, so the
    registry shows it next to the version.
    """
    from mlflow.entities import Metric, Param, RunStatus
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    version = resolve_version(tracking_uri, model_name, model_version)
    number = str(version.version)
    source_run = version.run_id
    if source_run:
        experiment_id = str(client.get_run(source_run).info.experiment_id)
    else:
        found = client.get_experiment_by_name(FALLBACK_EXPERIMENT)
        experiment_id = (
            str(found.experiment_id) if found else client.create_experiment(FALLBACK_EXPERIMENT)
        )

    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    tags = {
        c.DriftTags.MODEL_NAME: model_name,
        c.DriftTags.MODEL_VERSION: number,
        c.DriftTags.SOURCE_RUN_ID: source_run,
        c.DriftTags.STATUS: summary.status.value,
        c.DriftTags.DATASET_DRIFT: str(summary.dataset_drift).lower(),
        c.DriftTags.PREDICTION_DRIFT: str(summary.prediction_drift).lower(),
        c.RunTags.PIPELINE: "drift",
    }
    if window:
        tags[c.DriftTags.WINDOW] = window
    if deployment is not None:
        tags[c.DriftTags.DEPLOYMENT] = "/".join(deployment)
    run = client.create_run(
        experiment_id, run_name=f"drift-{model_name}-v{number}-{stamp}", tags=tags
    )
    run_id = str(run.info.run_id)
    try:
        now = int(datetime.now(UTC).timestamp() * 1000)
        metrics = [
            Metric("drift.number_of_drifted_columns", summary.number_of_drifted_columns, now, 0),
            Metric("drift.number_of_columns", summary.number_of_columns, now, 0),
            Metric("drift.current_rows", summary.current_rows, now, 0),
        ]
        if summary.share_of_drifted_columns is not None:
            metrics.append(
                Metric("drift.share_of_drifted_columns", summary.share_of_drifted_columns, now, 0)
            )
        for column in [*summary.columns, *summary.predictions]:
            if column.score is not None and np.isfinite(column.score):
                key = _metric_key(f"drift.score.{column.column}")
                metrics.append(Metric(key, column.score, now, 0))
        params = [Param("drift_share", str(summary.drift_share))]
        client.log_batch(run_id, metrics=metrics, params=params)
        client.log_text(run_id, summary.model_dump_json(indent=2), SUMMARY_ARTIFACT)
        if html is not None:
            client.log_text(run_id, html, HTML_ARTIFACT)
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    except Exception:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise

    # The run id goes last: a reader that sees the new id sees the other tags of that
    # check (MLflow sets one tag per request).
    version_tags = {
        c.DriftTags.keyed(key, deployment): value
        for key, value in {
            c.DriftTags.LAST_CHECKED: stamp,
            c.DriftTags.LAST_STATUS: summary.status.value,
            c.DriftTags.LAST_DATASET_DRIFT: str(summary.dataset_drift).lower(),
            # Tag values are limited (5000 characters in MLflow's store); keep it short.
            c.DriftTags.LAST_DRIFTED_COLUMNS: ",".join(summary.drifted_columns)[
                : c.DriftTags.MAX_TEXT
            ],
            # What the operator records in the ModelDeployment's status (docs/drift.md).
            c.DriftTags.LAST_PREDICTION_DRIFT: str(summary.prediction_drift).lower(),
            c.DriftTags.LAST_SHARE: (
                ""
                if summary.share_of_drifted_columns is None
                else f"{summary.share_of_drifted_columns:.6g}"
            ),
            c.DriftTags.LAST_MESSAGE: summary.message[: c.DriftTags.MAX_TEXT],
            c.DriftTags.LAST_RUN_ID: run_id,
        }.items()
    }
    registry = registry_for(tracking_uri)
    try:
        for key, value in version_tags.items():
            registry.set_version_tag(model_name, version.version, key, value)
    finally:
        registry.close()
    logger.info("drift report for %s v%s logged as run %s", model_name, number, run_id)
    return LoggedDriftReport(run_id, experiment_id, number, str(run.info.artifact_uri))
