"""The contracts in modelyard.core are the ones the CRD, the chart and the CLI use."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelyard.core import contracts as c
from modelyard.core.redaction import redact_text, redact_uri

REPO = Path(__file__).resolve().parents[3]


def _crd_property(*path: str) -> dict[str, Any]:
    crd = yaml.safe_load((REPO / "manifests/crds/modeldeployments.modelyard.io.yaml").read_text())
    node = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for part in path:
        node = node["properties"][part]
    return dict(node)


def test_the_crd_window_pattern_is_the_contract() -> None:
    window = _crd_property("spec", "monitoring", "drift", "window")
    assert window["pattern"] == c.WINDOW_PATTERN
    assert re.match(c.WINDOW_PATTERN, window["default"])


@pytest.mark.parametrize(
    ("text", "length"),
    [
        ("90m", dt.timedelta(minutes=90)),
        ("24h", dt.timedelta(hours=24)),
        ("7d", dt.timedelta(days=7)),
    ],
)
def test_windows(text: str, length: dt.timedelta) -> None:
    assert c.parse_window(text) == length


@pytest.mark.parametrize("text", ["0h", "1w", "h", "1.5h", "-1d", "24 h", ""])
def test_bad_windows_are_refused_with_an_example(text: str) -> None:
    with pytest.raises(ValueError, match="such as 90m, 24h or 7d"):
        c.parse_window(text)


def test_prediction_log_partition_layout() -> None:
    day = dt.date(2026, 12, 1)
    assert (
        c.prediction_log_partition("s3://lake/predictions/", "churn", "7", day)
        == "s3://lake/predictions/churn/version=7/date=2026-12-01"
    )


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("postgresql://app:s3cret@db:5432/mlflow", "postgresql://***@db:5432/mlflow"),
        ("http://user:token@mlflow:5000", "http://***@mlflow:5000"),
        ("https://mlflow/api?token=abc&page=2", "https://mlflow/api?token=***&page=2"),
        ("http://mlflow.ml.svc:5000", "http://mlflow.ml.svc:5000"),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ],
)
def test_uris_lose_their_secrets(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown


def test_texts_lose_userinfo_wherever_it_stands() -> None:
    text = "connecting to postgresql://app:s3cret@db/mlflow failed"
    assert "s3cret" not in redact_text(text)
    assert "postgresql://***@db/mlflow" in redact_text(text)


def test_texts_lose_password_like_query_parameters() -> None:
    text = "Server error '500' for url 'https://api.example/v1/items?page=2&api_key=k3y'"
    shown = redact_text(text)
    assert "k3y" not in shown
    assert "https://api.example/v1/items?page=2&api_key=***" in shown


def test_log_records_of_any_library_are_redacted() -> None:
    import io
    import logging

    from modelyard.core.redaction import install_log_redaction

    stream = io.StringIO()
    logger = logging.getLogger("test-redaction")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        install_log_redaction(logger)
        install_log_redaction(logger)  # idempotent
        assert len(handler.filters) == 1
        logger.warning("tracking %s", "http://u:pw123456@mlflow:5000/")
        try:
            raise RuntimeError("cannot reach postgresql://app:pw123456@db/x")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    assert "pw123456" not in stream.getvalue()
    assert "http://***@mlflow:5000/" in stream.getvalue()


def test_github_actions_are_pinned_by_commit() -> None:
    import re as _re

    uses = [
        line.split("uses:", 1)[1].strip()
        for path in sorted((REPO / ".github" / "workflows").glob("*.y*ml"))
        for line in path.read_text().splitlines()
        if line.strip().startswith(("uses:", "- uses:"))
    ]
    assert uses
    for action in uses:
        assert _re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}( # v[\d.]+)?", action), action
