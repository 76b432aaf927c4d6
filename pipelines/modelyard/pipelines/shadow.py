"""Shadow comparison: would the shadow version have answered the same as the live one?

While a ModelDeployment mirrors a share of its requests to a shadow version
(``spec.rollout.shadow``), the router gives both copies of a request the same
``X-Request-ID`` and both servers log their answers (docs/contracts.md, "Prediction log").
This joins the two versions' rows for one window on (``_request_id``, ``_row``) and says
how often they agree (classification: equal predictions) or how far apart they are
(regression: absolute differences), with each side's latency for the same requests.

The result is logged as an MLflow run in the shadow version's experiment (metrics
``shadow.*``, linked to the shadow version's logged model when it has one, so they show on
the version) and, for a ModelDeployment, as a JSON tag on the shadow version that the
operator reports in ``status.shadow``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

from modelyard.core import contracts as c
from modelyard.pipelines.drift._sources import DataSourceError, open_prediction_log, resolve_version

logger = logging.getLogger(__name__)

#: Two regression answers closer than this (absolutely or relatively) count as agreeing.
REGRESSION_TOLERANCE = 1e-6
_KEY = [c.LOG_REQUEST_ID_COLUMN, c.LOG_ROW_COLUMN]


class ShadowComparison(BaseModel):
    """What ``modelyard shadow compare`` found (also its ``--json`` output)."""

    model: str
    stable_version: str
    shadow_version: str
    window_start: datetime
    window_end: datetime
    #: ``compared``, or ``no_data`` (no request answered by both in the window).
    status: str
    stable_rows: int
    shadow_rows: int
    #: Rows both versions answered (the mirrored ones).
    compared_rows: int
    #: ``classification`` (labels compared for equality) or ``regression``.
    kind: str | None = None
    #: Share of the compared rows where both answered the same (regression: within
    #: REGRESSION_TOLERANCE).
    agreement_rate: float | None = None
    mean_abs_difference: float | None = None
    rmse: float | None = None
    max_abs_difference: float | None = None
    #: Server-side latency of the requests both answered, per version (ms).
    stable_latency_p50_ms: float | None = None
    stable_latency_p99_ms: float | None = None
    shadow_latency_p50_ms: float | None = None
    shadow_latency_p99_ms: float | None = None

    def metrics(self) -> dict[str, float]:
        """The MLflow metrics (``shadow.*``) of this comparison."""
        values: dict[str, Any] = {
            "compared_rows": self.compared_rows,
            "stable_rows": self.stable_rows,
            "shadow_rows": self.shadow_rows,
            "agreement_rate": self.agreement_rate,
            "mean_abs_difference": self.mean_abs_difference,
            "rmse": self.rmse,
            "max_abs_difference": self.max_abs_difference,
            "stable_latency_p50_ms": self.stable_latency_p50_ms,
            "stable_latency_p99_ms": self.stable_latency_p99_ms,
            "shadow_latency_p50_ms": self.shadow_latency_p50_ms,
            "shadow_latency_p99_ms": self.shadow_latency_p99_ms,
        }
        prefix = c.ShadowTags.METRIC_PREFIX
        return {f"{prefix}.{k}": float(v) for k, v in values.items() if v is not None}

    def tag_value(self, run_id: str | None) -> str:
        """The compact JSON the operator reads into ``status.shadow.comparison``."""
        keep = {
            "stableVersion": self.stable_version,
            "status": self.status,
            "kind": self.kind,
            "comparedRows": self.compared_rows,
            "agreementRate": _round(self.agreement_rate),
            "meanAbsDifference": _round(self.mean_abs_difference),
            "stableLatencyP99Ms": _round(self.stable_latency_p99_ms),
            "shadowLatencyP99Ms": _round(self.shadow_latency_p99_ms),
            "windowStart": _stamp(self.window_start),
            "windowEnd": _stamp(self.window_end),
            "runId": run_id,
        }
        return json.dumps({k: v for k, v in keep.items() if v is not None}, sort_keys=True)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read_side(
    log_url: str, model: str, version: str, start: datetime, end: datetime
) -> pd.DataFrame:
    """One version's logged answers in the window: key, predictions and latency."""
    source = open_prediction_log(log_url, model, version, start, end)
    names = source.column_names
    if not names:
        return pd.DataFrame()
    if c.LOG_REQUEST_ID_COLUMN not in names:
        raise DataSourceError(
            f"the prediction log of {model} v{version} has no {c.LOG_REQUEST_ID_COLUMN} "
            "column: it was written by a server too old to be compared"
        )
    outputs = sorted(n for n in names if c.PREDICTION_COLUMN_PATTERN.match(n))
    if not outputs:
        raise DataSourceError(f"the prediction log of {model} v{version} has no prediction column")
    wanted = [c.LOG_REQUEST_ID_COLUMN, *outputs]
    wanted += [n for n in (c.LOG_ROW_COLUMN, c.LOG_LATENCY_COLUMN) if n in names]
    frame: pd.DataFrame = source.select(wanted).to_pandas()
    if c.LOG_ROW_COLUMN not in frame.columns:
        # Logs from before `_row`: rows of a request were written in order.
        frame[c.LOG_ROW_COLUMN] = frame.groupby(c.LOG_REQUEST_ID_COLUMN).cumcount()
    # A request logged twice (a retried flush) counts once.
    return frame.drop_duplicates(subset=_KEY, keep="last")


def _is_regression(values: pd.Series) -> bool:
    return bool(pd.api.types.is_float_dtype(values.dtype))


def _latency(frame: pd.DataFrame, column: str) -> tuple[float | None, float | None]:
    if column not in frame.columns:
        return None, None
    per_request = frame.drop_duplicates(subset=c.LOG_REQUEST_ID_COLUMN)[column].dropna()
    if per_request.empty:
        return None, None
    p50, p99 = np.percentile(per_request.to_numpy(dtype=float), [50, 99])
    return float(p50), float(p99)


def compare(
    log_url: str,
    model: str,
    stable_version: str,
    shadow_version: str,
    start: datetime,
    end: datetime,
) -> ShadowComparison:
    """Join both versions' logged answers for ``[start, end)`` and compare them."""
    stable = _read_side(log_url, model, stable_version, start, end)
    shadow = _read_side(log_url, model, shadow_version, start, end)
    base: dict[str, Any] = {
        "model": model,
        "stable_version": stable_version,
        "shadow_version": shadow_version,
        "window_start": start,
        "window_end": end,
        "stable_rows": len(stable),
        "shadow_rows": len(shadow),
    }
    if stable.empty or shadow.empty:
        return ShadowComparison(status="no_data", compared_rows=0, **base)
    outputs = sorted(
        set(n for n in stable.columns if c.PREDICTION_COLUMN_PATTERN.match(n))
        & set(n for n in shadow.columns if c.PREDICTION_COLUMN_PATTERN.match(n))
    )
    if not outputs:
        raise DataSourceError(
            f"v{stable_version} and v{shadow_version} log different outputs "
            f"({sorted(stable.columns)} vs {sorted(shadow.columns)}): nothing to compare"
        )
    joined = stable.merge(shadow, on=_KEY, suffixes=("_stable", "_shadow"), how="inner")
    if joined.empty:
        return ShadowComparison(status="no_data", compared_rows=0, **base)
    regression = any(
        _is_regression(joined[f"{n}_stable"]) or _is_regression(joined[f"{n}_shadow"])
        for n in outputs
    )
    result: dict[str, Any] = {"kind": "regression" if regression else "classification"}
    if regression:
        left = np.column_stack([joined[f"{n}_stable"].to_numpy(dtype=float) for n in outputs])
        right = np.column_stack([joined[f"{n}_shadow"].to_numpy(dtype=float) for n in outputs])
        diff = np.abs(left - right)
        close = np.isclose(left, right, rtol=REGRESSION_TOLERANCE, atol=REGRESSION_TOLERANCE)
        result |= {
            "agreement_rate": float(close.all(axis=1).mean()),
            "mean_abs_difference": float(diff.mean()),
            "rmse": float(np.sqrt((diff**2).mean())),
            "max_abs_difference": float(diff.max()),
        }
    else:
        same = np.ones(len(joined), dtype=bool)
        for n in outputs:
            same &= (
                joined[f"{n}_stable"].astype(str) == joined[f"{n}_shadow"].astype(str)
            ).to_numpy()
        result["agreement_rate"] = float(same.mean())
    latency = c.LOG_LATENCY_COLUMN
    key_and_latency = [c.LOG_REQUEST_ID_COLUMN, f"{latency}_stable", f"{latency}_shadow"]
    if all(k in joined.columns for k in key_and_latency):
        requests = joined[key_and_latency]
        s50, s99 = _latency(requests.rename(columns={f"{latency}_stable": latency}), latency)
        h50, h99 = _latency(requests.rename(columns={f"{latency}_shadow": latency}), latency)
        result |= {
            "stable_latency_p50_ms": s50,
            "stable_latency_p99_ms": s99,
            "shadow_latency_p50_ms": h50,
            "shadow_latency_p99_ms": h99,
        }
    return ShadowComparison(status="compared", compared_rows=len(joined), **base, **result)


@dataclass(frozen=True)
class LoggedComparison:
    run_id: str
    tag_key: str | None


def log_comparison(
    comparison: ShadowComparison,
    *,
    tracking_uri: str,
    deployment: tuple[str, str] | None,
) -> LoggedComparison:
    """Log ``comparison`` as its own run in the shadow version's experiment; with a
    ModelDeployment (namespace, name), tag the shadow version with the summary."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    version = resolve_version(tracking_uri, comparison.model, comparison.shadow_version)
    if not version.run_id:
        raise DataSourceError(
            f"{comparison.model} v{version.version} has no source run to log the comparison in"
        )
    experiment_id = str(client.get_run(version.run_id).info.experiment_id)
    window = f"{_stamp(comparison.window_start)}/{_stamp(comparison.window_end)}"
    tags = {
        c.ShadowTags.MODEL_NAME: comparison.model,
        c.ShadowTags.STABLE_VERSION: comparison.stable_version,
        c.ShadowTags.SHADOW_VERSION: comparison.shadow_version,
        c.ShadowTags.WINDOW: window,
        c.RunTags.PIPELINE: "shadow-compare",
    }
    name = (
        f"shadow-{comparison.model}-v{comparison.shadow_version}"
        f"-vs-v{comparison.stable_version}-{_stamp(comparison.window_end)}"
    )
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    run_id = str(run.info.run_id)
    model_id = _logged_model_id(client, comparison.model, comparison.shadow_version)
    try:
        now = int(datetime.now(UTC).timestamp() * 1000)
        step = int(comparison.window_end.timestamp())
        for key, value in comparison.metrics().items():
            # One call per metric: log_batch cannot link a metric to a logged model.
            client.log_metric(run_id, key, value, timestamp=now, step=step, model_id=model_id)
        client.log_text(run_id, comparison.model_dump_json(indent=2), "shadow/summary.json")
        client.set_terminated(run_id, "FINISHED")
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    tag_key = None
    if deployment is not None:
        tag_key = c.ShadowTags.key(*deployment)
        client.set_model_version_tag(
            comparison.model, comparison.shadow_version, tag_key, comparison.tag_value(run_id)
        )
    return LoggedComparison(run_id=run_id, tag_key=tag_key)


def _logged_model_id(client: Any, model: str, version: str) -> str | None:
    """The MLflow 3 logged model behind a registered version, if it has one."""
    try:
        found = client.get_model_version(model, version)
    except Exception:  # an older server without logged models: metrics stay on the run
        return None
    return getattr(found, "model_id", None) or None
