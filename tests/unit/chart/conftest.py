"""The chart's unit tests need the helm binary (``make tools``), no cluster."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.chart.rendering import render


@pytest.fixture(scope="session")
def default_objects() -> list[dict[str, Any]]:
    return render()
