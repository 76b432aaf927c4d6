"""What the chaos suite (tests/e2e/test_chaos.py) counts and where its prediction log goes.

Each case's numbers (requests sent, failed, rows logged, dropped) are kept in
``RESULTS``; tests/e2e/conftest.py prints them as a table at the end of the run.

The prediction log's sink is pluggable (``Sink``): the suite needs a sink that every
server pod writes to and that the test can stop, start and read: ``s3_sink``, a real S3
server on the host (tests/support/s3.py), which also holds the servers' model cache.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol


@dataclasses.dataclass
class CaseResult:
    case: str
    sent: int
    failed: int
    #: Rows of this case's requests in the prediction log (None: no sink).
    logged: int | None = None
    #: Rows the servers recorded as dropped (None: no sink).
    dropped: int | None = None
    seconds: float = 0.0
    note: str = ""

    @property
    def answered(self) -> int:
        return self.sent - self.failed

    def line(self) -> str:
        def n(value: int | None) -> str:
            return "-" if value is None else str(value)

        balance = ""
        if self.logged is not None and self.dropped is not None:
            ok = self.logged + self.dropped == self.answered
            balance = f"  logged+dropped {'==' if ok else '!='} answered"
        return (
            f"{self.case:<28} sent {self.sent:>6}  failed {self.failed:>4}  "
            f"logged {n(self.logged):>6}  dropped {n(self.dropped):>5}  "
            f"{self.seconds:>5.0f}s{balance}{'  ' + self.note if self.note else ''}"
        )


#: Every case's result, in the order they ran (printed by tests/e2e/conftest.py).
RESULTS: list[CaseResult] = []


def record(result: CaseResult) -> None:
    """Keep ``result`` for the summary (a case run twice keeps its last run)."""
    RESULTS[:] = [r for r in RESULTS if r.case != result.case]
    RESULTS.append(result)
    print(result.line())


class Sink(Protocol):
    """A prediction log every server pod writes to, and the test can stop and read."""

    #: The ModelDeployment's ``spec.monitoring.predictionLog``.
    url: str
    #: Its ``spec.server.modelCache.url``, on the same store.
    cache_url: str

    def secret_data(self) -> dict[str, str]:
        """What the server pods need to reach it (keys, endpoint), for a Secret that
        ``spec.monitoring.predictionLogSecretRef`` names."""

    def stop(self) -> None:
        """The sink goes down: writes fail until ``start``."""

    def start(self) -> None: ...

    def request_ids(self) -> list[str]:
        """``_request_id`` of every row in the log (every model, version and date)."""

    def dropped_records(self) -> list[dict[str, Any]]:
        """The JSON lines the servers wrote under ``_dropped/`` (docs/serving.md)."""


@dataclasses.dataclass
class FsspecSink:
    """A sink reached through an fsspec filesystem ``fs`` from here, at ``url`` from the
    pods; ``down``/``up`` stop and start its server."""

    url: str
    fs: Any
    path: str
    env: dict[str, str]
    down: Any
    up: Any
    cache_url: str = ""

    def secret_data(self) -> dict[str, str]:
        return dict(self.env)

    def stop(self) -> None:
        self.down()

    def start(self) -> None:
        self.up()

    def _files(self, suffix: str) -> list[str]:
        self.fs.invalidate_cache()
        return [str(f) for f in self.fs.find(self.path) if str(f).endswith(suffix)]

    def request_ids(self) -> list[str]:
        import pyarrow.parquet as pq

        from modelyard.core import contracts as c

        ids: list[str] = []
        for name in self._files(".parquet"):
            if "/_dropped/" in name or name.rsplit("/", 1)[-1].startswith("."):
                continue
            with self.fs.open(name, "rb") as stream:
                table = pq.read_table(stream, columns=[c.LOG_REQUEST_ID_COLUMN])
            ids.extend(str(v) for v in table.column(0).to_pylist())
        return ids

    def dropped_records(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        for name in self._files(""):
            if "/_dropped/" not in name:
                continue
            with self.fs.open(name, "rt") as stream:
                records.extend(json.loads(line) for line in stream if line.strip())
        return records


@contextmanager
def s3_sink(host: str, port: int, prefix: str) -> Iterator[FsspecSink]:
    """A real S3 server on the host (tests/support/s3.py), a bucket for the log."""
    import s3fs

    from tests.support import s3

    with s3.running_s3(host, port) as server:
        bucket = "chaos-predictions"
        server.create_bucket(bucket)
        fs = s3fs.S3FileSystem(
            key=server.access_key,
            secret=server.secret_key,
            client_kwargs={"endpoint_url": server.endpoint_url},
        )
        yield FsspecSink(
            f"s3://{bucket}/{prefix}", fs, f"{bucket}/{prefix}", server.env(), server.stop,
            server.start, cache_url=f"s3://{bucket}/model-cache",
        )  # fmt: skip


def counted(ids: Iterable[str], prefix: str) -> int:
    """Rows whose request id starts with ``prefix-`` (one case's requests)."""
    return sum(1 for i in ids if i.startswith(prefix + "-"))
