"""The host's nginx (Debian's package, hack/deps.sh installs it) running a configuration
the operator rendered, for tests of the canary router in front of real servers."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.servers import ServerProcess, free_port, log_tail, wait_http


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if found is None:
        pytest.fail("nginx is not installed: run hack/deps.sh (Debian's nginx)", pytrace=False)
    return found


@contextmanager
def running_nginx(conf: str, root: Path, port: int, ready_path: str) -> Iterator[ServerProcess]:
    """nginx in the foreground with ``conf`` (which must say ``daemon off``), until the
    block ends; then a graceful stop (SIGQUIT), as the router's pods stop."""
    root.mkdir(parents=True, exist_ok=True)
    # Worker processes run as nobody when the tests run as root.
    root.chmod(0o755)
    path = root / "nginx.conf"
    path.write_text(conf)
    log = root / "nginx.log"
    binary = nginx_binary()
    check = subprocess.run(
        [binary, "-t", "-q", "-c", str(path), "-e", "stderr"], capture_output=True, text=True
    )
    if check.returncode != 0:
        pytest.fail(f"nginx refused the configuration:\n{check.stderr}\n{conf}", pytrace=False)
    proc = subprocess.Popen(
        [binary, "-c", str(path), "-e", "stderr"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = ServerProcess(f"http://127.0.0.1:{port}", proc, log)
    try:
        wait_http(server.url + ready_path, 20, proc, log)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


__all__ = ["free_port", "log_tail", "nginx_binary", "running_nginx"]
