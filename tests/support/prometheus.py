"""A real Prometheus (Debian's package; hack/deps.sh installs it) scraping test servers."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.support.servers import ServerProcess, free_port, start_server


def start_prometheus(
    targets: list[str], tmp_path: Path, *, job: str, interval: float = 1.0
) -> ServerProcess:
    """Prometheus with its own config, storage and free port under ``tmp_path``,
    scraping ``targets`` (host:port; path /metrics) every ``interval`` seconds.
    Fails the test when the binary is missing: a test that needs it never skips."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: run hack/deps.sh (Debian's prometheus)")
    config = {
        "global": {
            "scrape_interval": f"{round(interval * 1000)}ms",
            "scrape_timeout": f"{round(interval * 800)}ms",
        },
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    return start_server(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        port,
        "/-/ready",
        tmp_path / "prometheus.log",
        timeout=60,
    )


def wait_until_up(
    query: Callable[[str], float | None], job: str, count: int, timeout: float = 30
) -> None:
    """Wait until Prometheus has scraped ``count`` targets of ``job`` successfully;
    ``query`` is a PromQL instant-query function (PrometheusCollector.query)."""
    deadline = time.monotonic() + timeout
    promql = f'count(up{{job="{job}"}} == 1)'
    while (value := query(promql)) != count:
        if time.monotonic() > deadline:
            pytest.fail(f"Prometheus scraped {value or 0} of {count} {job} targets in {timeout}s")
        time.sleep(0.5)
