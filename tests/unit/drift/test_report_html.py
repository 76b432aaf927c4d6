"""Evidently's HTML report for a check: a sample, drawn with the full check's tests."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from modelyard.pipelines.drift import check_drift, render_evidently_html


def test_html_uses_the_full_checks_methods_on_a_sample(
    make_frame: Callable[..., pd.DataFrame],
) -> None:
    reference = make_frame(5_000, seed=1)
    current = make_frame(5_000, seed=2, drift=frozenset({"cont"}))
    reference["target"] = reference["flag"]
    current["prediction"] = current["flag"]
    summary = check_drift(reference, current)

    # 300 rows a side: alone, Evidently would switch to p-value tests.
    html = render_evidently_html(reference, current, summary, sample_rows=300)

    assert html is not None
    assert html.lstrip().lower().startswith("<!doctype html") or "<html" in html[:500].lower()
    assert "Wasserstein distance (normed)" in html
    assert "K-S p_value" not in html
    assert "prediction" in html


def test_no_html_when_nothing_was_tested(make_frame: Callable[..., pd.DataFrame]) -> None:
    reference = make_frame(100, seed=1)
    summary = check_drift(reference, reference.iloc[0:0])

    assert render_evidently_html(reference, reference.iloc[0:0], summary) is None
