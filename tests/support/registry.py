"""A real OCI registry for the tests: the CNCF distribution registry, from Debian's
``docker-registry`` package, on a free port of this machine, storing under a temporary
directory; stopped (and its storage removed) afterwards."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.servers import free_port, stop_process, wait_http

BINARY = "/usr/bin/docker-registry"


@dataclass(frozen=True)
class Registry:
    host: str  # localhost:PORT, as image references and oci:// URLs name it


@contextmanager
def running_registry() -> Iterator[Registry]:
    if not Path(BINARY).exists():
        pytest.fail(
            f"{BINARY} is missing: apt-get install docker-registry (hack/deps.sh)",
            pytrace=False,
        )
    root = Path(tempfile.mkdtemp(prefix="modelyard-registry-"))
    port = free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
    )
    log = root / "registry.log"
    proc = subprocess.Popen(
        [BINARY, "serve", str(config)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/", 60, proc, log)
        yield Registry(host=f"localhost:{port}")
    finally:
        stop_process(proc)
        shutil.rmtree(root, ignore_errors=True)
