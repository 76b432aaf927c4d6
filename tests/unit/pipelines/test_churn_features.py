"""The sample churn data generator and the feature DAG's pure functions."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from modelyard.pipelines.churn_data import (
    DriftSettings,
    generate_customers,
    generate_usage_events,
    write_churn_day,
)
from modelyard.pipelines.features import (
    CATEGORICAL_FEATURES,
    NUMERIC_FEATURES,
    FeatureValidationError,
    aggregate_customer_day,
    clean_usage_events,
    join_customers,
    validate_features,
)

DAY = dt.date(2026, 2, 10)


def _day_features(seed: int = 3, customers: int = 300) -> pd.DataFrame:
    snapshot = generate_customers(customers, seed, DAY)
    events = generate_usage_events(snapshot, seed, DAY)
    cleaned, _ = clean_usage_events(events)
    joined, _ = join_customers(cleaned, snapshot.drop(columns=[]))
    return aggregate_customer_day(joined)


def test_dataset_has_about_twenty_numeric_and_five_categorical_features() -> None:
    features = _day_features()
    assert len(NUMERIC_FEATURES) == 20
    assert len(CATEGORICAL_FEATURES) == 5
    assert features[NUMERIC_FEATURES].dtypes.eq("float64").all()
    assert 0.05 < features["churned"].mean() < 0.6


def test_generation_and_features_are_deterministic() -> None:
    pd.testing.assert_frame_equal(_day_features(), _day_features())
    assert not _day_features(seed=4).equals(_day_features(seed=3))


def test_unhappy_customers_churn_more_and_call_support_more() -> None:
    features = _day_features(customers=3000)
    churners = features[features["churned"]]
    stayers = features[~features["churned"]]
    assert churners["support_tickets"].mean() > stayers["support_tickets"].mean()
    assert churners["dropped_calls"].mean() > stayers["dropped_calls"].mean()


def test_drift_knob_shifts_only_chosen_columns_from_its_start_date(tmp_path: Path) -> None:
    drift = DriftSettings(columns=["latency_ms", "plan"], strength=1.0, start_date=DAY)
    before, on = DAY - dt.timedelta(days=1), DAY
    for day in (before, on):
        write_churn_day(str(tmp_path / "plain"), day, 500, 1, None, on, 0)
        write_churn_day(str(tmp_path / "drifted"), day, 500, 1, drift, on, 0)

    def read(kind: str, what: str, day: dt.date) -> pd.DataFrame:
        name = "customers" if what == "customers" else "events"
        return pd.read_csv(tmp_path / kind / what / f"{name}-{day.isoformat()}.csv")

    pd.testing.assert_frame_equal(read("plain", "usage", before), read("drifted", "usage", before))
    plain, drifted = read("plain", "usage", on), read("drifted", "usage", on)
    assert drifted["latency_ms"].mean() == pytest.approx(2 * plain["latency_ms"].mean(), rel=0.01)
    pd.testing.assert_series_equal(plain["data_mb"], drifted["data_mb"])
    plans = read("drifted", "customers", on)["plan"].value_counts(normalize=True)
    assert plans["family"] > 0.4  # the last category absorbs half the rows


def test_clean_removes_and_counts_duplicates_and_clips_impossible_values() -> None:
    events = generate_usage_events(generate_customers(50, 1, DAY), 1, DAY)
    events.loc[0, "session_minutes"] = -5.0
    doubled = pd.concat([events, events.head(3)], ignore_index=True)
    cleaned, duplicates = clean_usage_events(doubled)
    assert duplicates == 3
    assert len(cleaned) == len(events)
    assert cleaned["session_minutes"].min() >= 0


def test_join_counts_events_of_unknown_customers() -> None:
    customers = generate_customers(20, 1, DAY)
    events = generate_usage_events(customers, 1, DAY)
    joined, unmatched = join_customers(events, customers[customers["customer_id"] != "C000000"])
    assert unmatched == int((events["customer_id"] == "C000000").sum())
    assert len(joined) + unmatched == len(events)


def test_validation_names_every_broken_expectation() -> None:
    features = _day_features()
    features.loc[0, "credit_score"] = None
    features.loc[1, "sessions"] = -1.0
    broken = pd.concat([features, features.head(1)], ignore_index=True)
    with pytest.raises(
        FeatureValidationError,
        match=r"credit_score: 2 null\(s\); duplicate \(customer_id, snapshot_date\) rows; "
        r"negative values in sessions",
    ):
        validate_features(broken)
    assert validate_features(_day_features())["rows"] == len(_day_features())
