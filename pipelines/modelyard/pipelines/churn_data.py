"""A seeded, download-free churn dataset: daily customer snapshots and usage events.

Each customer has a hidden dissatisfaction score that drives both their usage (more
dropped calls, support tickets, crashes, less use) and whether they churn, so a model
has real signal to find. Every day is generated from ``seed`` and the date alone:
regenerating a day gives the same rows. ``drift`` shifts chosen columns from a date on,
for testing drift detection and retraining.

Files written (the "landing zone" that ingestion reads):
``{landing}/customers/customers-YYYY-MM-DD.csv`` and ``{landing}/usage/events-YYYY-MM-DD.csv``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import fsspec
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from modelyard.pipelines.context import StepContext

PLANS = ["basic", "standard", "premium", "family"]
REGIONS = ["north", "south", "east", "west", "central"]
PAYMENT_METHODS = ["card", "bank_transfer", "paypal", "invoice"]
DEVICES = ["android", "ios", "web"]
CHANNELS = ["organic", "search_ads", "referral", "partner"]
CATEGORICAL_COLUMNS = {
    "plan": PLANS,
    "region": REGIONS,
    "payment_method": PAYMENT_METHODS,
    "device": DEVICES,
    "acquisition_channel": CHANNELS,
}
CUSTOMER_NUMERIC_COLUMNS = [
    "age",
    "tenure_months",
    "monthly_charges",
    "contract_months",
    "num_dependents",
    "credit_score",
]
EVENT_NUMERIC_COLUMNS = [
    "session_minutes",
    "data_mb",
    "page_views",
    "video_minutes",
    "dropped_calls",
    "support_tickets",
    "app_crashes",
    "latency_ms",
    "promo_clicks",
]


class DriftSettings(BaseModel):
    """Shift ``columns`` on and after ``start_date`` (default: the last generated day).

    Numeric columns are scaled by ``1 + strength``; for a categorical column, a share
    ``strength / 2`` (at most 0.9) of rows is moved to its last category.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    columns: list[str] = Field(min_length=1)
    start_date: dt.date | None = None
    strength: float = Field(default=0.5, gt=0)


def _rng(seed: int, day: dt.date, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, day.toordinal(), stream])


def generate_customers(count: int, seed: int, day: dt.date) -> pd.DataFrame:
    """The customer snapshot on ``day`` (attributes are stable across days)."""
    rng = np.random.default_rng([seed, 0])
    ids = [f"C{i:06d}" for i in range(count)]
    dissatisfaction = rng.normal(0, 1, count)
    plan = rng.choice(PLANS, count, p=[0.4, 0.3, 0.2, 0.1])
    contract = rng.choice([1, 12, 24], count, p=[0.5, 0.3, 0.2])
    tenure = np.clip(rng.gamma(2.0, 12.0, count), 1, 120).round()
    charges = {"basic": 20.0, "standard": 45.0, "premium": 80.0, "family": 95.0}
    monthly = np.array([charges[p] for p in plan]) * rng.uniform(0.9, 1.2, count)
    logit = -1.6 + 1.4 * dissatisfaction - 0.02 * tenure + 0.8 * (contract == 1)
    churned = rng.uniform(0, 1, count) < 1 / (1 + np.exp(-logit))
    customers = pd.DataFrame(
        {
            "customer_id": ids,
            "snapshot_date": day.isoformat(),
            "plan": plan,
            "region": rng.choice(REGIONS, count),
            "payment_method": rng.choice(PAYMENT_METHODS, count, p=[0.5, 0.2, 0.2, 0.1]),
            "device": rng.choice(DEVICES, count, p=[0.5, 0.35, 0.15]),
            "acquisition_channel": rng.choice(CHANNELS, count),
            "age": rng.integers(18, 80, count),
            "tenure_months": tenure.astype(int),
            "monthly_charges": monthly.round(2),
            "contract_months": contract,
            "num_dependents": rng.poisson(0.8, count),
            "credit_score": np.clip(rng.normal(680, 60, count) - 15 * dissatisfaction, 300, 850)
            .round()
            .astype(int),
            "churned": churned,
        }
    )
    customers.attrs["dissatisfaction"] = dissatisfaction
    return customers


def generate_usage_events(customers: pd.DataFrame, seed: int, day: dt.date) -> pd.DataFrame:
    """Session events of ``day``: a few per customer, fewer for unhappy customers."""
    rng = _rng(seed, day, 1)
    dissatisfaction = np.asarray(customers.attrs["dissatisfaction"])
    sessions = rng.poisson(np.clip(3.0 - 0.8 * dissatisfaction, 0.3, None))
    owner = np.repeat(np.arange(len(customers)), sessions)
    n = len(owner)
    unhappy = dissatisfaction[owner]
    seconds = rng.integers(0, 86_400, n)
    start = pd.Timestamp(day, tz="UTC")
    events = pd.DataFrame(
        {
            "customer_id": customers["customer_id"].to_numpy()[owner],
            "event_time": (start + pd.to_timedelta(seconds, unit="s")).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            "session_minutes": rng.gamma(2.0, 8.0 - np.clip(unhappy, -2, 2), n).round(2),
            "data_mb": rng.lognormal(3.5, 0.8, n).round(1),
            "page_views": rng.poisson(12, n),
            "video_minutes": rng.gamma(1.5, 6.0, n).round(2),
            "dropped_calls": rng.poisson(np.clip(0.2 + 0.25 * unhappy, 0.02, None)),
            "support_tickets": rng.poisson(np.clip(0.05 + 0.1 * unhappy, 0.01, None)),
            "app_crashes": rng.poisson(np.clip(0.1 + 0.1 * unhappy, 0.01, None)),
            "latency_ms": rng.gamma(4.0, 30.0 + 8 * np.clip(unhappy, -2, 3), n).round(1),
            "promo_clicks": rng.poisson(0.3, n),
        }
    )
    return events.sort_values(["event_time", "customer_id"], kind="mergesort").reset_index(
        drop=True
    )


def apply_drift(frame: pd.DataFrame, drift: DriftSettings, rng: np.random.Generator) -> None:
    """Shift the drift columns present in ``frame``, in place."""
    for column in drift.columns:
        if column not in frame.columns:
            continue
        if column in CATEGORICAL_COLUMNS:
            moved = rng.uniform(0, 1, len(frame)) < min(drift.strength / 2, 0.9)
            frame.loc[moved, column] = CATEGORICAL_COLUMNS[column][-1]
        else:
            shifted = frame[column].astype(float) * (1 + drift.strength)
            frame[column] = shifted.round(2)


def add_bad_rows(events: pd.DataFrame, count: int, rng: np.random.Generator) -> pd.DataFrame:
    """Append rows a real feed produces: unreadable numbers and missing keys."""
    if count == 0 or events.empty:
        return events
    bad = events.sample(count, random_state=rng.integers(0, 2**31)).astype(str)
    bad.iloc[::2, bad.columns.get_loc("session_minutes")] = "n/a"
    bad.iloc[1::2, bad.columns.get_loc("customer_id")] = ""
    return pd.concat([events.astype(str), bad], ignore_index=True)


def _write_text_atomic(url: str, text: str) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    directory = path.rpartition("/")[0]
    fs.makedirs(directory, exist_ok=True)
    temporary = f"{directory}/.{uuid.uuid4().hex}.tmp"
    with fs.open(temporary, "w") as handle:
        handle.write(text)
    fs.mv(temporary, path)


def write_churn_day(
    landing: str,
    day: dt.date,
    customers: int,
    seed: int,
    drift: DriftSettings | None,
    drift_start: dt.date,
    bad_rows: int,
) -> int:
    """Write one day's customers and events files; return the number of event rows."""
    snapshot = generate_customers(customers, seed, day)
    events = generate_usage_events(snapshot, seed, day)
    if drift is not None and day >= drift_start:
        rng = _rng(seed, day, 2)
        apply_drift(snapshot, drift, rng)
        apply_drift(events, drift, rng)
    events = add_bad_rows(events, bad_rows, _rng(seed, day, 3))
    base = landing.rstrip("/")
    _write_text_atomic(
        f"{base}/customers/customers-{day.isoformat()}.csv", snapshot.to_csv(index=False)
    )
    _write_text_atomic(f"{base}/usage/events-{day.isoformat()}.csv", events.to_csv(index=False))
    return len(events)


def generate_churn_sources(
    ctx: StepContext,
    landing: str,
    days: int = 7,
    customers: int = 2000,
    seed: int = 7,
    drift: DriftSettings | None = None,
    bad_rows_per_day: int = 3,
) -> dict[str, Any]:
    """Step: write the ``days`` days ending on the run date into ``landing``.

    With fan-out, partition ``i`` of ``n`` writes every n-th day.
    """
    all_days = [ctx.run_date - dt.timedelta(days=offset) for offset in range(days - 1, -1, -1)]
    drift_start = (drift.start_date if drift and drift.start_date else None) or all_days[-1]
    rows = 0
    mine = ctx.shard(all_days)
    for day in mine:
        rows += write_churn_day(landing, day, customers, seed, drift, drift_start, bad_rows_per_day)
    return {"days": len(mine), "rows_written": rows}
