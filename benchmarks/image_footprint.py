"""What each image costs: its size, the model server's import time and idle memory, the
operator's idle memory. Measured in the images themselves (buildah run), so the numbers
are those of the runtime a pod gets.

    python benchmarks/image_footprint.py \\
        --server localhost/modelyard/server:0.2.0 \\
        --operator localhost/modelyard/operator:0.2.0 \\
        --toolkit localhost/modelyard/toolkit:0.2.0 \\
        --kubeconfig .cluster/kubeconfig --repetitions 5

Import time: median of N fresh interpreters importing the server's service module (what
a pod does before it can load the model). Idle memory: the resident set of every process
of the running server (BentoML's supervisor and its worker, model loaded and warmed up)
or of the operator (watching an empty namespace), after a settling time, median of N.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def buildah(*args: str, capture: bool = True) -> str:
    done = subprocess.run(["buildah", *args], capture_output=capture, text=True, check=True)
    return done.stdout.strip() if capture else ""


def image_size(image: str) -> int:
    """Uncompressed size in bytes, as `buildah images` counts it."""
    out = buildah("images", "--json", image)
    size = json.loads(out)[0]["size"]
    if isinstance(size, int):
        return size
    # Older buildah (Debian's 1.28) gives it in words: "890 MB" (decimal units).
    number, unit = str(size).split()
    return round(float(number) * {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9}[unit])


class Container:
    def __init__(self, image: str, mounts: dict[str, str] | None = None) -> None:
        self.image = image
        self.name = f"bench-{uuid.uuid4().hex[:8]}"
        buildah("from", "--name", self.name, "--pull=never", image)
        self.mounts = mounts or {}

    def run_args(self, *command: str, env: dict[str, str] | None = None) -> list[str]:
        args = ["buildah", "run", "--isolation", "chroot", "--network", "host", "--user", "10001"]
        for source, target in self.mounts.items():
            args += ["-v", f"{source}:{target}"]
        for key, value in (env or {}).items():
            args += ["--env", f"{key}={value}"]
        return [*args, self.name, "--", *command]

    def run(self, *command: str, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            self.run_args(*command, env=env), capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    def close(self) -> None:
        subprocess.run(["buildah", "rm", self.name], capture_output=True, check=False)


def tree_rss_mib(root_pid: int) -> float:
    """Resident memory of a process and all its descendants, MiB."""
    total_kib = 0
    for pid in tree_pids(root_pid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        except OSError:
            continue
    return total_kib / 1024


def import_seconds(image: str, module: str, repetitions: int) -> float:
    container = Container(image)
    try:
        script = (
            f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
        )
        times = [float(container.run("python3", "-c", script)) for _ in range(repetitions)]
    finally:
        container.close()
    return statistics.median(times)


def save_model(directory: Path) -> Path:
    """A 100-tree forest with a signature, as the serving benchmark uses."""
    import mlflow.sklearn
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(2000, 8)), columns=[f"x{i}" for i in range(8)])
    y = (x["x0"] + x["x1"] > 0).astype(int)
    model = RandomForestClassifier(n_estimators=100, random_state=0).fit(x, y)
    path = directory / "model"
    mlflow.sklearn.save_model(
        model,
        str(path),
        serialization_format="skops",
        signature=infer_signature(x, model.predict(x)),
        skops_trusted_types=["sklearn.tree._tree.Tree"],
    )
    os.chmod(directory, 0o755)
    for item in path.rglob("*"):
        os.chmod(item, 0o755 if item.is_dir() else 0o644)
    return path


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(url)


def tree_pids(root_pid: int) -> set[int]:
    """A process and all its descendants."""
    pids = {root_pid}
    changed = True
    while changed:
        changed = False
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in pids:
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid in pids:
                pids.add(int(entry.name))
                changed = True
    return pids


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_idle_rss(image: str, model_dir: Path, settle: float, entrypoint: list[str]) -> float:
    port = free_port()
    container = Container(image, {str(model_dir): "/model"})
    proc = subprocess.Popen(
        container.run_args(
            *entrypoint,
            "--model-uri",
            "/model",
            "--port",
            str(port),
            env={"HOME": "/tmp", "BENTOML_HOME": "/tmp/bentoml", "BENTOML_DO_NOT_TRACK": "True"},
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    pids: set[int] = set()
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", 180)
        time.sleep(settle)
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}) before it was measured")
        pids = tree_pids(proc.pid)
        return tree_rss_mib(proc.pid)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(60)
        # BentoML's workers run in sessions of their own: stop whatever is left of them.
        for pid in pids - {proc.pid}:
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
        container.close()


def operator_idle_rss(image: str, kubeconfig: Path, settle: float, entrypoint: list[str]) -> float:
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    kubectl = (
        Path(os.environ.get("MODELYARD_CACHE", Path.home() / ".cache/modelyard")) / "bin/kubectl"
    )
    subprocess.run(
        [str(kubectl), "--kubeconfig", str(kubeconfig), "create", "namespace", namespace],
        check=True,
        capture_output=True,
    )
    config_dir = Path(tempfile.mkdtemp(prefix="bench-kubeconfig-"))
    # The kubeconfig names its certificates by path: copy them in and make them readable.
    text = kubeconfig.read_text()
    for line in text.splitlines():
        for key in ("certificate-authority:", "client-certificate:", "client-key:"):
            if line.strip().startswith(key):
                source = line.split(":", 1)[1].strip()
                shutil.copy(source, config_dir / Path(source).name)
                text = text.replace(source, f"/kube/{Path(source).name}")
    (config_dir / "config").write_text(text)
    os.chmod(config_dir, 0o755)
    for item in config_dir.iterdir():
        os.chmod(item, 0o644)
    container = Container(image, {str(config_dir): "/kube"})
    proc = subprocess.Popen(
        container.run_args(
            *entrypoint,
            "--namespace",
            namespace,
            "--liveness",
            "http://127.0.0.1:3901/healthz",
            env={"KUBECONFIG": "/kube/config", "HOME": "/tmp", "MODELYARD_METRICS_PORT": "0"},
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_http("http://127.0.0.1:3901/healthz", 120)
        time.sleep(settle)
        return tree_rss_mib(proc.pid)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(60)
        container.close()
        shutil.rmtree(config_dir, ignore_errors=True)
        subprocess.run(
            [
                str(kubectl),
                "--kubeconfig",
                str(kubeconfig),
                "delete",
                "namespace",
                namespace,
                "--wait=false",
            ],
            capture_output=True,
            check=False,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True, help="Model server image.")
    parser.add_argument("--operator", help="Operator image (RSS needs --kubeconfig).")
    parser.add_argument("--toolkit", help="Toolkit image (size only).")
    parser.add_argument("--kubeconfig", type=Path, help="A cluster for the operator to watch.")
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument(
        "--settle", type=float, default=20.0, help="Seconds idle before reading RSS."
    )
    parser.add_argument(
        "--server-entrypoint", default="modelyard serve", help="How the image starts a server."
    )
    parser.add_argument(
        "--operator-entrypoint",
        default="modelyard operator",
        help="How the image starts the operator.",
    )
    args = parser.parse_args()

    results: dict[str, object] = {}
    for role, image in (
        ("server", args.server),
        ("operator", args.operator),
        ("toolkit", args.toolkit),
    ):
        if image:
            results[f"{role}_image_mb"] = round(image_size(image) / 1e6)
    results["server_import_s"] = round(
        import_seconds(args.server, "modelyard.serving.service", args.repetitions), 2
    )
    with tempfile.TemporaryDirectory(prefix="bench-model-") as tmp:
        model = save_model(Path(tmp))
        rss = [
            server_idle_rss(args.server, model, args.settle, args.server_entrypoint.split())
            for _ in range(args.repetitions)
        ]
    results["server_idle_rss_mib"] = round(statistics.median(rss))
    if args.operator and args.kubeconfig:
        rss = [
            operator_idle_rss(
                args.operator, args.kubeconfig, args.settle, args.operator_entrypoint.split()
            )
            for _ in range(args.repetitions)
        ]
        results["operator_idle_rss_mib"] = round(statistics.median(rss))
    json.dump(results, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
