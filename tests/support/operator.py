"""Running the operator in-process, as its tests do, and reading its /metrics."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.support.servers import free_port


@dataclass
class RunningOperator:
    """The operator under test: kopf's runner and the operator's own metrics endpoint."""

    runner: Any
    metrics_url: str

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples that carry ``labels``, as Prometheus scrapes it."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.metrics_url, timeout=5).text
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total

    def wait_metric(self, name: str, at_least: float, timeout: float = 60, **labels: str) -> float:
        """Wait until the operator reports ``name`` >= ``at_least``: a signal from the
        operator itself that something happened (a scheduler pass, a reconcile)."""
        deadline = time.monotonic() + timeout
        value = 0.0
        while time.monotonic() < deadline:
            try:
                value = self.metric(name, **labels)
            except httpx.HTTPError:
                value = 0.0
            if value >= at_least:
                return value
            time.sleep(0.2)
        pytest.fail(f"{name}{labels or ''} stayed at {value} < {at_least} for {timeout}s")


@contextmanager
def running_operator(namespace: str, **env: str) -> Iterator[RunningOperator]:
    """The operator (kopf) in a thread of this process, watching one namespace."""
    from kopf.testing import KopfRunner

    port = free_port()
    saved = {k: os.environ.get(k) for k in ("MODELYARD_METRICS_PORT", *env)}
    os.environ.update({"MODELYARD_METRICS_PORT": str(port), **env})
    args = ["run", "--standalone", "--namespace", namespace, "-m", "modelyard.operator.handlers"]
    try:
        with KopfRunner(args, timeout=60) as runner:
            yield RunningOperator(runner, f"http://127.0.0.1:{port}/metrics")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert runner.exception is None, runner.output
    assert runner.exit_code == 0, runner.output
