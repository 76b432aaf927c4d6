"""`helm lint` passes, strictly, for every supported configuration (ci/*-values.yaml)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.chart.rendering import CHART, CI_VALUES, helm


def test_every_configuration_has_a_values_file() -> None:
    names = {path.name for path in CI_VALUES}
    assert {
        "default-values.yaml",
        "namespaced-values.yaml",
        "external-postgres-s3-values.yaml",
        "no-pipelines-values.yaml",
    } <= names


def test_lint_defaults() -> None:
    result = helm("lint", "--strict", str(CHART))
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_lint_strict(values: Path) -> None:
    result = helm("lint", "--strict", str(CHART), "--values", str(values))
    assert "0 chart(s) failed" in result.stdout, result.stdout
    assert "[WARNING]" not in result.stdout
