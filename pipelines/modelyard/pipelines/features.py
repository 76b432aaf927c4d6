"""The sample feature DAG for churn: clean -> join -> aggregate -> validate.

The transformations are pure pandas functions (deterministic: same input rows, same
output rows in the same order); the ``*_step`` functions wrap them as pipeline steps that
read and write one lake partition per day of the window ending on the run date.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from modelyard.pipelines.churn_data import CATEGORICAL_COLUMNS, CUSTOMER_NUMERIC_COLUMNS
from modelyard.pipelines.context import StepContext
from modelyard.pipelines.lake import (
    Partition,
    read_partition,
    select_partitions,
    write_parquet_atomic,
)

logger = logging.getLogger(__name__)

CATEGORICAL_FEATURES = list(CATEGORICAL_COLUMNS)
AGGREGATED_FEATURES = [
    "sessions",
    "total_session_minutes",
    "mean_session_minutes",
    "total_data_mb",
    "total_page_views",
    "total_video_minutes",
    "dropped_calls",
    "support_tickets",
    "app_crashes",
    "mean_latency_ms",
    "max_latency_ms",
    "promo_clicks",
]
DERIVED_FEATURES = ["minutes_per_charge", "data_mb_per_session"]
NUMERIC_FEATURES = CUSTOMER_NUMERIC_COLUMNS + AGGREGATED_FEATURES + DERIVED_FEATURES
LABEL = "churned"
KEY_COLUMNS = ["customer_id", "snapshot_date"]

# Physical limits of the usage metrics; values outside are measurement errors.
_CLIP_LIMITS = {
    "session_minutes": (0.0, 24 * 60.0),
    "data_mb": (0.0, 100_000.0),
    "video_minutes": (0.0, 24 * 60.0),
    "latency_ms": (0.0, 60_000.0),
}


class FeatureValidationError(ValueError):
    """The feature table breaks an expectation; training must not use it."""


def clean_usage_events(events: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Remove exact duplicate events and clip metrics to physical limits.

    Returns the cleaned events and the number of duplicates removed (reported, so no row
    disappears without a count).
    """
    deduplicated = events.drop_duplicates(subset=["customer_id", "event_time"], keep="first")
    cleaned = deduplicated.copy()
    for column, (low, high) in _CLIP_LIMITS.items():
        cleaned[column] = cleaned[column].astype("float64").clip(low, high)
    cleaned = cleaned.sort_values(["event_time", "customer_id"], kind="mergesort")
    return cleaned.reset_index(drop=True), len(events) - len(deduplicated)


def join_customers(events: pd.DataFrame, customers: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Attach each event's customer snapshot; return the joined rows and how many events
    had no known customer (counted, not silently lost)."""
    joined = events.merge(customers, on="customer_id", how="left", validate="many_to_one")
    unmatched = joined["plan"].isna()
    return joined[~unmatched].reset_index(drop=True), int(unmatched.sum())


def aggregate_customer_day(joined: pd.DataFrame) -> pd.DataFrame:
    """One row per customer and day: usage aggregates plus the customer's attributes."""
    grouped = joined.groupby("customer_id", sort=True)
    usage = pd.DataFrame(
        {
            "sessions": grouped.size(),
            "total_session_minutes": grouped["session_minutes"].sum(),
            "mean_session_minutes": grouped["session_minutes"].mean(),
            "total_data_mb": grouped["data_mb"].sum(),
            "total_page_views": grouped["page_views"].sum(),
            "total_video_minutes": grouped["video_minutes"].sum(),
            "dropped_calls": grouped["dropped_calls"].sum(),
            "support_tickets": grouped["support_tickets"].sum(),
            "app_crashes": grouped["app_crashes"].sum(),
            "mean_latency_ms": grouped["latency_ms"].mean(),
            "max_latency_ms": grouped["latency_ms"].max(),
            "promo_clicks": grouped["promo_clicks"].sum(),
        }
    )
    attributes = grouped[
        ["snapshot_date", *CATEGORICAL_FEATURES, *CUSTOMER_NUMERIC_COLUMNS, LABEL]
    ].first()
    features = attributes.join(usage).reset_index()
    features["minutes_per_charge"] = features["total_session_minutes"] / features[
        "monthly_charges"
    ].clip(lower=1.0)
    features["data_mb_per_session"] = features["total_data_mb"] / features["sessions"]
    for column in NUMERIC_FEATURES:
        features[column] = features[column].astype("float64").round(6)
    for column in CATEGORICAL_FEATURES:
        features[column] = features[column].astype(str)
    features[LABEL] = features[LABEL].astype(bool)
    return features[[*KEY_COLUMNS, *CATEGORICAL_FEATURES, *NUMERIC_FEATURES, LABEL]]


def validate_features(features: pd.DataFrame, min_rows: int = 1) -> dict[str, Any]:
    """Check the expectations training relies on; raise naming every broken one."""
    problems = []
    expected = [*KEY_COLUMNS, *CATEGORICAL_FEATURES, *NUMERIC_FEATURES, LABEL]
    missing = [c for c in expected if c not in features.columns]
    if missing:
        raise FeatureValidationError(f"missing feature columns: {', '.join(missing)}")
    if len(features) < min_rows:
        problems.append(f"{len(features)} rows, fewer than {min_rows}")
    nulls = features[expected].isna().sum()
    problems += [f"{column}: {int(n)} null(s)" for column, n in nulls.items() if n]
    if features.duplicated(subset=KEY_COLUMNS).any():
        problems.append("duplicate (customer_id, snapshot_date) rows")
    numeric = features[NUMERIC_FEATURES].to_numpy(dtype="float64")
    if not np.isfinite(numeric[~np.isnan(numeric)]).all():
        problems.append("infinite values in numeric features")
    negative = [c for c in NUMERIC_FEATURES if (features[c] < 0).any()]
    if negative:
        problems.append(f"negative values in {', '.join(negative)}")
    if features[LABEL].nunique() < 2:
        problems.append(f"{LABEL} has a single class")
    if problems:
        raise FeatureValidationError("feature validation failed: " + "; ".join(problems))
    return {"rows": len(features), "churn_rate": round(float(features[LABEL].mean()), 4)}


# ------------------------------------------------------------------------------ steps
def _per_day(
    ctx: StepContext,
    source: str,
    target: str,
    days: int,
    transform: Callable[[Partition], tuple[pd.DataFrame, dict[str, int]]],
) -> dict[str, Any]:
    partitions = ctx.shard(select_partitions(ctx.lake, source, ctx.run_date, days))
    if not partitions:
        raise FileNotFoundError(f"no partitions of {source!r} in the {days} days to {ctx.run_date}")
    totals: dict[str, Any] = {"rows_written": 0, "partitions": []}
    for partition in partitions:
        output, counts = transform(partition)
        out = Partition(ctx.lake, target, partition.date)
        write_parquet_atomic(output, out.part_url(0))
        totals["rows_written"] += len(output)
        totals["partitions"].append(out.url)
        for key, value in counts.items():
            totals[key] = totals.get(key, 0) + value
    return totals


def clean_step(
    ctx: StepContext, source: str = "usage", target: str = "usage_clean", days: int = 7
) -> dict[str, Any]:
    """Step: ``clean_usage_events`` on each day's usage partition."""

    def transform(partition: Partition) -> tuple[pd.DataFrame, dict[str, int]]:
        cleaned, duplicates = clean_usage_events(read_partition(partition))
        return cleaned, {"duplicates_removed": duplicates}

    return _per_day(ctx, source, target, days, transform)


def join_step(
    ctx: StepContext,
    events: str = "usage_clean",
    customers: str = "customers",
    target: str = "usage_enriched",
    days: int = 7,
) -> dict[str, Any]:
    """Step: join each day's events with that day's customer snapshot."""

    def transform(partition: Partition) -> tuple[pd.DataFrame, dict[str, int]]:
        snapshot = read_partition(Partition(ctx.lake, customers, partition.date))
        snapshot = snapshot.drop_duplicates(subset=["customer_id"], keep="last")
        joined, unmatched = join_customers(read_partition(partition), snapshot)
        if unmatched:
            logger.warning("%s: %d event(s) of unknown customers", partition.url, unmatched)
        return joined, {"rows_unmatched": unmatched}

    return _per_day(ctx, events, target, days, transform)


def aggregate_step(
    ctx: StepContext, source: str = "usage_enriched", target: str = "churn_features", days: int = 7
) -> dict[str, Any]:
    """Step: one feature row per customer and day."""

    def transform(partition: Partition) -> tuple[pd.DataFrame, dict[str, int]]:
        return aggregate_customer_day(read_partition(partition)), {}

    return _per_day(ctx, source, target, days, transform)


def validate_step(
    ctx: StepContext, dataset: str = "churn_features", days: int = 7, min_rows: int = 100
) -> dict[str, Any]:
    """Step: ``validate_features`` on every partition of the window; fails the run if any
    expectation is broken, so training never sees a bad table."""
    partitions = select_partitions(ctx.lake, dataset, ctx.run_date, days)
    if not partitions:
        raise FileNotFoundError(
            f"no partitions of {dataset!r} in the {days} days to {ctx.run_date}"
        )
    rows = 0
    for partition in partitions:
        try:
            rows += validate_features(read_partition(partition), min_rows)["rows"]
        except FeatureValidationError as error:
            raise FeatureValidationError(f"{partition.url}: {error}") from None
    return {"rows_checked": rows, "partitions": [p.url for p in partitions]}
