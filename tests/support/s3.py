"""A real S3-compatible server for the tests: SeaweedFS (``weed server -s3``).

Built from the Go module proxy by ``hack/build-tools.sh`` (pinned in
hack/tools/seaweedfs/go.mod) into ``~/.cache/modelyard/bin/weed``. Only the tests run it;
it is never in the chart or an image.

The server requires credentials (an identity of its own, random keys per server), so a
client without them is refused as it would be by a real bucket. ``stop()`` ends the
process (an outage a client sees as connection refused); ``start()`` brings it back on
the same ports with the same data and keys.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import free_port, log_tail

CACHE = Path(os.environ.get("MODELYARD_CACHE", Path.home() / ".cache" / "modelyard"))
WEED = CACHE / "bin" / "weed"
REGION = "us-east-1"
#: Seconds the server may take to answer after a start (a parameter: slow shared machines).
START_TIMEOUT = float(os.environ.get("MODELYARD_S3_START_S", "60"))
#: Seconds a stop waits after SIGTERM before SIGKILL (the data is on disk either way).
STOP_TIMEOUT = float(os.environ.get("MODELYARD_S3_STOP_S", "5"))


def _free_port(host: str) -> int:
    if host in ("127.0.0.1", "localhost"):
        return free_port()
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class S3Server:
    """One SeaweedFS process: master, volume server, filer and the S3 gateway."""

    def __init__(self, host: str, port: int, data_dir: Path) -> None:
        self.host = host
        self.port = port
        self.data_dir = data_dir
        self.endpoint_url = f"http://{host}:{port}"
        self.access_key = "modelyard" + secrets.token_hex(6)
        self.secret_key = secrets.token_urlsafe(24)
        self.log = data_dir / "weed.log"
        # Every listener on a port of its own (gRPC ports too: SeaweedFS would otherwise
        # take http port + 10000, which may be another program's).
        self._ports = {
            name: _free_port(host)
            for name in (
                "master.port",
                "master.port.grpc",
                "volume.port",
                "volume.port.grpc",
                "filer.port",
                "filer.port.grpc",
                "s3.port.grpc",
            )
        }
        self._proc: subprocess.Popen[bytes] | None = None
        config = {
            "identities": [
                {
                    "name": "modelyard-tests",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        self._config = data_dir / "s3.json"
        self._config.write_text(json.dumps(config))
        self._config.chmod(0o600)

    def _argv(self) -> list[str]:
        ports = [f"-{name}={port}" for name, port in self._ports.items()]
        return [
            str(WEED),
            "server",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            f"-dir={self.data_dir / 'volumes'}",
            f"-master.dir={self.data_dir / 'master'}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=200",
            "-filer",
            "-s3",
            f"-s3.port={self.port}",
            f"-s3.config={self._config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            *ports,
        ]

    def client(self) -> Any:
        """A boto3 S3 client with this server's endpoint and keys."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
            config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}),
        )

    def start(self) -> None:
        """Start (again) on the same ports with the same data; return once S3 answers."""
        if self._proc is not None and self._proc.poll() is None:
            return
        for sub in ("volumes", "master"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                self._argv(),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self._proc is not None
        client = self.client()
        deadline = time.monotonic() + START_TIMEOUT
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                pytest.fail(
                    f"SeaweedFS exited with {self._proc.returncode} before S3 answered:\n"
                    + log_tail(self.log),
                    pytrace=False,
                )
            try:
                client.list_buckets()
                return
            except Exception as error:  # not up yet: connection refused, 503, ...
                last = error
            time.sleep(0.3)
        self.stop()
        pytest.fail(
            f"SeaweedFS S3 at {self.endpoint_url} did not answer within {START_TIMEOUT}s "
            f"({last}):\n{log_tail(self.log)}",
            pytrace=False,
        )

    def stop(self) -> None:
        """End the process (SIGTERM, then SIGKILL); the data stays on disk."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def env(self) -> dict[str, str]:
        """What a client process needs to reach this server: the keys, the endpoint under
        the names botocore (and so s3fs and boto3) and MLflow read, and the region."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
        }


@contextmanager
def running_s3(host: str = "127.0.0.1", port: int | None = None) -> Iterator[S3Server]:
    """A SeaweedFS S3 server of the caller's own, with data in a fresh directory."""
    if not WEED.exists():
        pytest.fail(
            f"SeaweedFS is not built ({WEED} missing): run hack/build-tools.sh", pytrace=False
        )
    root = Path(tempfile.mkdtemp(prefix="modelyard-s3-"))
    server = S3Server(host, port or _free_port(host), root)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
