"""Starting and stopping the real servers tests talk to."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, lines: int = 60) -> str:
    if not path.exists():
        return f"(no log at {path})"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until ``url`` answers 200; fail with the log tail if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"server exited with {proc.returncode} before {url} answered:\n{log_tail(log)}",
                pytrace=False,
            )
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    pytest.fail(f"{url} did not answer within {timeout}s:\n{log_tail(log)}", pytrace=False)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for child servers: the venv's bin first (mlflow runs uvicorn
    through a shell and needs it on PATH)."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


@dataclass
class ServerProcess:
    """A server the test setup started: its URL, process and log."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (what Kubernetes sends), then SIGKILL to the group; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return int(self.proc.returncode)


def start_server(
    argv: list[str],
    port: int,
    ready_path: str,
    log: Path,
    env: dict[str, str] | None = None,
    timeout: float = 180,
) -> ServerProcess:
    """Start ``argv`` in its own session and wait until ``ready_path`` answers 200."""
    proc = subprocess.Popen(
        argv,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=subprocess_env(BENTOML_DO_NOT_TRACK="True", **(env or {})),
        start_new_session=True,
    )
    server = ServerProcess(f"http://127.0.0.1:{port}", proc, log)
    try:
        wait_http(server.url + ready_path, timeout, proc, log)
    except BaseException:
        server.stop()
        raise
    return server


@dataclass(frozen=True)
class MlflowServer:
    url: str
    root: Path


def start_mlflow_server(
    root: Path,
    port: int,
    *,
    auth: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    artifacts_destination: str | None = None,
) -> tuple[subprocess.Popen[bytes], Path]:
    """``mlflow server`` on SQLite under ``root``. With ``auth`` (each user's password,
    as the credentials Secret holds them), its users are created first by ``modelyard
    registry init-users`` and the server runs its basic-auth app, as the chart does.
    ``env``: more of the server's environment (e.g. its webhook settings, S3 keys);
    ``artifacts_destination``: where it keeps the artifacts it proxies (default
    ``root/artifacts``; e.g. ``s3://bucket/prefix`` as the chart's mlflow.artifacts.s3)."""
    root.mkdir(parents=True, exist_ok=True)
    log = root / "mlflow-server.log"
    mlflow_bin = shutil.which("mlflow", path=str(VENV_BIN)) or "mlflow"
    # As the chart runs it: without MLflow's job runners (GenAI jobs; a dozen processes).
    env = subprocess_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **(env or {}))
    extra: list[str] = []
    if auth is not None:
        from modelyard.core.contracts import RegistryUsers

        secret_dir = root / "registry-credentials"
        secret_dir.mkdir(exist_ok=True)
        for user, password in auth.items():
            (secret_dir / RegistryUsers.password_key(user)).write_text(password)
        config = root / "basic_auth.ini"
        config.write_text(
            "[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
            "admin_username = admin\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        env = {
            **env,
            "MLFLOW_AUTH_CONFIG_PATH": str(config),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-flask-secret-key",
        }
        modelyard_bin = shutil.which("modelyard", path=str(VENV_BIN)) or "modelyard"
        subprocess.run(
            [modelyard_bin, "registry", "init-users", "--credentials", str(secret_dir)],
            env=env,
            check=True,
            capture_output=True,
        )
        extra = ["--app-name", "basic-auth"]
    proc = subprocess.Popen(
        [
            mlflow_bin,
            "server",
            *extra,
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            artifacts_destination or str(root / "artifacts"),
            "--serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    return proc, log


#: How long an `mlflow server` may take to answer /health: a parameter, since on a
#: machine shared with other jobs it can take minutes.
MLFLOW_START_S = float(os.environ.get("MODELYARD_MLFLOW_START_S", "240"))


@contextmanager
def running_mlflow_server(
    root: Path,
    *,
    port: int | None = None,
    auth: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    artifacts_destination: str | None = None,
) -> Iterator[MlflowServer]:
    """``start_mlflow_server``, answering /health, stopped afterwards."""
    port = port or free_port()
    proc, log = start_mlflow_server(
        root, port, auth=auth, env=env, artifacts_destination=artifacts_destination
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", MLFLOW_START_S, proc, log)
        yield MlflowServer(url=url, root=root)
    finally:
        stop_process(proc)


@dataclass(frozen=True)
class Cluster:
    kubeconfig: Path
    bin_dir: Path

    @property
    def kubectl(self) -> str:
        return str(self.bin_dir / "kubectl")

    def run_kubectl(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """kubectl on this cluster; ``timeout`` must exceed a ``kubectl wait --timeout``."""
        return subprocess.run(
            [self.kubectl, "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )
