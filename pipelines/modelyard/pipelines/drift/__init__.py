"""Drift check: is the data a model server sees still like the data it was trained on?

Per-column tests with Evidently's DataDriftPreset semantics (its default test for each
column's type and size, its thresholds, its dataset-drift share), computed column by
column on Arrow/numpy data, so that a million logged predictions check in seconds, and
within a memory budget whatever the number of rows (Parquet is read a few columns at a
time; a column larger than the budget is sorted on disk). See docs/drift.md.

The names below load on first use: ``modelyard --help`` imports this package for the CLI
and must not pay for scipy, pandas and pyarrow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelyard.pipelines.drift._check import check_drift
    from modelyard.pipelines.drift._data import DataSource
    from modelyard.pipelines.drift._report import (
        LoggedDriftReport,
        log_drift_report,
        render_evidently_html,
    )
    from modelyard.pipelines.drift._sources import (
        DataSourceError,
        Reference,
        load_reference,
        open_data,
        open_prediction_log,
        read_prediction_log,
        read_table,
        score_reference,
    )
    from modelyard.pipelines.drift._summary import (
        CheckStatus,
        ColumnDrift,
        ColumnStatus,
        ColumnType,
        Computation,
        DriftSummary,
    )

_EXPORTS = {
    "check_drift": "_check",
    "DataSource": "_data",
    "LoggedDriftReport": "_report",
    "log_drift_report": "_report",
    "render_evidently_html": "_report",
    "DataSourceError": "_sources",
    "Reference": "_sources",
    "load_reference": "_sources",
    "open_data": "_sources",
    "open_prediction_log": "_sources",
    "read_prediction_log": "_sources",
    "read_table": "_sources",
    "score_reference": "_sources",
    "CheckStatus": "_summary",
    "ColumnDrift": "_summary",
    "ColumnStatus": "_summary",
    "ColumnType": "_summary",
    "Computation": "_summary",
    "DriftSummary": "_summary",
}

__all__ = [
    "CheckStatus",
    "ColumnDrift",
    "ColumnStatus",
    "ColumnType",
    "Computation",
    "DataSource",
    "DataSourceError",
    "DriftSummary",
    "LoggedDriftReport",
    "Reference",
    "check_drift",
    "load_reference",
    "log_drift_report",
    "open_data",
    "open_prediction_log",
    "read_prediction_log",
    "read_table",
    "render_evidently_html",
    "score_reference",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
