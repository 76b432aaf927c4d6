"""Data for the drift tests, and Evidently's own verdicts as the oracle."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

CATEGORIES = np.asarray(["red", "green", "blue", "black", "white"], dtype=object)


def mixed_frame(rows: int, seed: int, drift: frozenset[str] = frozenset()) -> pd.DataFrame:
    """One column of each kind the default method choice tells apart; ``drift`` names the
    columns whose distribution moves."""
    rng = np.random.default_rng(seed)
    shift = {name: name in drift for name in ("cont", "skewed", "discrete", "cat", "code", "flag")}
    shares = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
    if shift["cat"]:
        shares = np.array([0.2, 0.3, 0.15, 0.1, 0.25])
    return pd.DataFrame(
        {
            "cont": rng.normal(1.0 if shift["cont"] else 0.0, 1.0, rows),
            "skewed": rng.lognormal(0.0, 1.5 if shift["skewed"] else 1.0, rows),
            # Four distinct float values: Evidently treats it as discrete.
            "discrete": rng.choice(
                [0.0, 1.0, 2.0, 3.0], rows, p=[0.1, 0.2, 0.3, 0.4] if shift["discrete"] else None
            ),
            "cat": CATEGORIES[rng.choice(5, rows, p=shares)],
            # Integers with few distinct values are categorical for Evidently.
            "code": rng.integers(0, 4 if shift["code"] else 6, rows),
            "flag": rng.random(rows) < (0.6 if shift["flag"] else 0.3),
            "wide_int": rng.integers(0, 1000, rows),
        }
    )


@pytest.fixture
def make_frame() -> Callable[..., pd.DataFrame]:
    return mixed_frame


@dataclass(frozen=True)
class EvidentlyColumn:
    method_label: str
    score: float
    drifted: bool


@dataclass(frozen=True)
class EvidentlyVerdict:
    columns: dict[str, EvidentlyColumn]
    share: float
    dataset_drift: bool

    @property
    def drifted_columns(self) -> set[str]:
        return {name for name, c in self.columns.items() if c.drifted}


def evidently_verdict(reference: pd.DataFrame, current: pd.DataFrame) -> EvidentlyVerdict:
    """Evidently's DataDriftPreset on the same data: the behaviour we promise to match."""
    from evidently import Report
    from evidently.presets import DataDriftPreset

    result = Report([DataDriftPreset()], include_tests=True).run(current, reference).dict()
    columns: dict[str, EvidentlyColumn] = {}
    failed = {
        t["metric_config"]["params"]["column"]
        for t in result["tests"]
        if t["id"] == "drift" and t["status"] == "FAIL"
    }
    share = 0.0
    for metric in result["metrics"]:
        config = metric["config"]
        if config["type"].endswith("ValueDrift"):
            name = config["column"]
            columns[name] = EvidentlyColumn(
                config["method"], float(metric["value"]), name in failed
            )
        elif config["type"].endswith("DriftedColumnsCount"):
            share = float(metric["value"]["share"])
    return EvidentlyVerdict(columns, share, share >= 0.5)


@pytest.fixture
def evidently() -> Callable[[pd.DataFrame, pd.DataFrame], EvidentlyVerdict]:
    return evidently_verdict
