"""A real PostgreSQL for the tests, from the Debian package (postgresql-15).

PostgreSQL refuses to run as root, so the cluster is created and started as the
``postgres`` user, in a directory of its own under /tmp (pytest's tmp dirs are private to
root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.servers import free_port, log_tail

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass(frozen=True)
class Postgres:
    url: str  # SQLAlchemy URL (psycopg 3 driver)
    port: int


def _as_postgres(*command: str) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return list(command)


@contextmanager
def running_postgres() -> Iterator[Postgres]:
    if not (PG_BIN / "initdb").exists():
        pytest.fail(
            f"PostgreSQL is not installed ({PG_BIN}/initdb missing): apt-get install postgresql",
            pytrace=False,
        )
    root = Path(tempfile.mkdtemp(prefix="modelyard-pg-"))
    data, log = root / "data", root / "postgres.log"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = free_port()
    try:
        subprocess.run(
            _as_postgres(
                str(PG_BIN / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ),
            check=True,
            capture_output=True,
        )
        started = subprocess.run(
            _as_postgres(
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-w",
                "-t",
                "60",
                "-o",
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
                "start",
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        if started.returncode != 0:
            pytest.fail(
                f"PostgreSQL did not start:\n{started.stderr}\n{log_tail(log)}", pytrace=False
            )
        yield Postgres(url=f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", port=port)
    finally:
        subprocess.run(
            _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"),
            capture_output=True,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)
