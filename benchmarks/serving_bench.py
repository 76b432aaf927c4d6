"""Model server benchmark: modelyard's server against the servers a user would use instead.

    .venv/bin/python benchmarks/serving_bench.py --repetitions 3 --duration 5
    .venv/bin/python benchmarks/serving_bench.py --peer mlserver --models bench-rf

Registers the same two models in a real, temporary ``mlflow server`` (a 100-tree
RandomForest and a LogisticRegression, 20 numeric features), serves each with both
servers (one worker each, the same ``models:/`` URI), and loads them from a separate
process (benchmarks/serving_load.py) with one row per request at concurrency 1 and 32.
Repetitions alternate between the servers. Two peers:

- ``mlflow``: ``mlflow models serve``, both loaded on ``/invocations`` in MLflow's
  ``dataframe_split`` format;
- ``mlserver``: MLServer, as ``mlflow models serve --enable-mlserver`` runs it, both loaded
  on the Open Inference Protocol's ``/v2/models/NAME/infer`` with one input per column.
  MLServer pins older FastAPI and protobuf than this project, and MLflow dropped the flag
  in 3.13: it runs from its own virtual environment (``--mlserver-venv``, created with
  :data:`MLSERVER_REQUIREMENTS` when missing).

Also measures the in-process ``predict`` floor (one row, 32 rows). Prints a Markdown
table of medians and writes all runs as JSON (``--output``). Everything listens on
127.0.0.1 and is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
N_FEATURES = 20
CONCURRENCIES = (1, 32)
#: MLServer's environment: the last MLflow with --enable-mlserver, and the versions of the
#: model's libraries this project uses (so both servers load the same model alike).
#: uvloop 0.22 broke MLServer 1.7.1's inference workers (no current event loop).
MLSERVER_REQUIREMENTS = (
    "mlflow==3.12.0",
    "mlserver==1.7.1",
    "mlserver-mlflow==1.7.1",
    "uvloop==0.21.0",
)
MODEL_LIBRARIES = ("scikit-learn", "skops", "numpy", "pandas", "scipy")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    # `mlflow models serve` runs uvicorn through a shell: the venv's bin must be on PATH.
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["BENTOML_DO_NOT_TRACK"] = "True"
    env.update(extra)
    return env


@contextmanager
def running(
    argv: list[str], ready_url: str, log: Path, env: dict[str, str], timeout: float = 180
) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited early; see {log}")
            try:
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{ready_url} not ready after {timeout}s; see {log}")
            time.sleep(0.5)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()


def register_models(tracking_uri: str) -> dict[str, str]:
    """Train and register both models; returns name -> models:/ URI."""
    import mlflow
    import mlflow.sklearn
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    mlflow.set_tracking_uri(tracking_uri)
    rng = np.random.default_rng(7)
    features = pd.DataFrame(
        rng.normal(size=(5000, N_FEATURES)), columns=[f"f{i}" for i in range(N_FEATURES)]
    )
    target = (features["f0"] + 0.5 * features["f1"] - features["f2"] > 0).astype(int)
    models: dict[str, tuple[Any, list[str]]] = {
        "bench-rf": (
            RandomForestClassifier(n_estimators=100, random_state=0),
            ["sklearn.tree._tree.Tree"],
        ),
        "bench-lr": (LogisticRegression(max_iter=500), []),
    }
    uris = {}
    for name, (estimator, trusted) in models.items():
        estimator.fit(features, target)
        with mlflow.start_run(run_name=name):
            mlflow.sklearn.log_model(
                estimator,
                name="model",
                signature=infer_signature(features, estimator.predict(features)),
                registered_model_name=name,
                skops_trusted_types=trusted or None,
            )
        uris[name] = f"models:/{name}/1"
    return uris


def predict_floor(uri: str, repeats: int = 300) -> dict[str, float]:
    """Median in-process time of MLflow pyfunc ``predict`` for 1 and 32 rows (ms)."""
    import mlflow.pyfunc
    import numpy as np
    import pandas as pd

    model = mlflow.pyfunc.load_model(uri)
    # The estimator alone, without MLflow's per-call schema enforcement (what the
    # modelyard server calls after its own validation).
    estimator = model.get_raw_model()
    columns = [f"f{i}" for i in range(N_FEATURES)]
    result = {}
    for rows in (1, 32):
        frame = pd.DataFrame(
            np.random.default_rng(1).normal(size=(rows, N_FEATURES)), columns=columns
        )
        for label, predict in (("floor", model.predict), ("estimator", estimator.predict)):
            predict(frame)
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                predict(frame)
                times.append(time.perf_counter() - started)
            result[f"{label}_{rows}_ms"] = statistics.median(times) * 1000
    return result


def mlserver_venv(path: Path) -> Path:
    """The peer's virtual environment (made with uv when missing); its bin directory."""
    from importlib.metadata import version

    python = path / "bin" / "python"
    if not python.exists():
        uv = shutil.which("uv", path=str(VENV_BIN)) or "uv"
        subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(path)], check=True)
        pins = [f"{name}=={version(name)}" for name in MODEL_LIBRARIES]
        subprocess.run(
            [uv, "pip", "install", "-q", "--python", str(python), *MLSERVER_REQUIREMENTS, *pins],
            check=True,
        )
    return path / "bin"


def v2_body(row: dict[str, float]) -> dict[str, Any]:
    """One row as the Open Inference Protocol's columnar request (MLServer's tabular form)."""
    return {
        "parameters": {"content_type": "pd"},
        "inputs": [
            {"name": name, "shape": [1], "datatype": "FP64", "data": [value]}
            for name, value in row.items()
        ],
    }


def run_load(url: str, body: Path, concurrency: int, duration: float) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            str(HERE / "serving_load.py"),
            url,
            str(body),
            "--concurrency",
            str(concurrency),
            "--duration",
            str(duration),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration + 120,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in runs if r[key] is not None]
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load run")
    parser.add_argument("--output", type=Path, default=Path("serving-bench.json"))
    parser.add_argument(
        "--peer",
        choices=("mlflow", "mlserver"),
        default="mlflow",
        help="mlflow: /invocations against `mlflow models serve`; mlserver: the V2 "
        "protocol against MLServer (mlflow models serve --enable-mlserver)",
    )
    parser.add_argument(
        "--models", nargs="+", choices=("bench-rf", "bench-lr"), default=["bench-rf", "bench-lr"]
    )
    parser.add_argument(
        "--mlserver-venv",
        type=Path,
        default=Path.home() / ".cache" / "modelyard" / "mlserver-venv",
        help="MLServer's own virtual environment (created when missing)",
    )
    args = parser.parse_args()
    peer: str = args.peer
    peer_bin = mlserver_venv(args.mlserver_venv) if peer == "mlserver" else VENV_BIN

    work = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    mlflow_port = free_port()
    tracking_uri = f"http://127.0.0.1:{mlflow_port}"
    mlflow_bin = shutil.which("mlflow", path=str(VENV_BIN)) or "mlflow"
    modelyard_bin = shutil.which("modelyard", path=str(VENV_BIN)) or "modelyard"
    env = child_env(MLFLOW_TRACKING_URI=tracking_uri)
    row = {f"f{i}": round(0.1 * i - 1, 3) for i in range(N_FEATURES)}
    body = work / "one-row.json"
    if peer == "mlserver":
        body.write_text(json.dumps(v2_body(row)))
    else:
        body.write_text(
            json.dumps({"dataframe_split": {"columns": list(row), "data": [list(row.values())]}})
        )
    results: list[dict[str, Any]] = []
    floors: dict[str, dict[str, float]] = {}
    # Other work on the machine skews everything: record how busy it was.
    load_before = os.getloadavg()
    try:
        with running(
            [
                mlflow_bin,
                "server",
                "--backend-store-uri",
                f"sqlite:///{work / 'mlflow.db'}",
                "--artifacts-destination",
                str(work / "artifacts"),
                "--serve-artifacts",
                "--host",
                "127.0.0.1",
                "--port",
                str(mlflow_port),
                "--workers",
                "1",
            ],  # fmt: skip
            f"{tracking_uri}/health",
            work / "mlflow-server.log",
            env,
        ):
            uris = register_models(tracking_uri)
            os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
            for name, uri in uris.items():
                if name not in args.models:
                    continue
                floor_before = predict_floor(uri)
                ours_port, theirs_port = free_port(), free_port()
                path = f"/v2/models/{name}/infer" if peer == "mlserver" else "/invocations"
                theirs_env = env
                if peer == "mlserver":
                    # MLServer's gRPC and metrics servers default to fixed ports.
                    theirs_env = child_env(
                        MLFLOW_TRACKING_URI=tracking_uri,
                        PATH=f"{peer_bin}{os.pathsep}{os.environ.get('PATH', '')}",
                        MLSERVER_MODEL_NAME=name,
                        MLSERVER_GRPC_PORT=str(free_port()),
                        MLSERVER_METRICS_PORT=str(free_port()),
                    )
                peer_args = ["--enable-mlserver"] if peer == "mlserver" else []
                peer_ready = "/v2/health/ready" if peer == "mlserver" else "/ping"
                servers = {
                    "modelyard": (
                        [modelyard_bin, "serve", "-m", uri, "--host", "127.0.0.1",
                         "--port", str(ours_port)],
                        f"http://127.0.0.1:{ours_port}",
                        "/readyz",
                        env,
                    ),
                    peer: (
                        [str(peer_bin / "mlflow"), "models", "serve", "-m", uri, *peer_args,
                         "--env-manager", "local", "--host", "127.0.0.1",
                         "--port", str(theirs_port), "--workers", "1"],
                        f"http://127.0.0.1:{theirs_port}",
                        peer_ready,
                        theirs_env,
                    ),
                }  # fmt: skip
                with (
                    running(
                        servers["modelyard"][0],
                        servers["modelyard"][1] + servers["modelyard"][2],
                        work / f"{name}-modelyard.log",
                        servers["modelyard"][3],
                    ),
                    running(
                        servers[peer][0],
                        servers[peer][1] + servers[peer][2],
                        work / f"{name}-{peer}.log",
                        servers[peer][3],
                    ),
                ):
                    for repetition in range(args.repetitions):
                        for concurrency in CONCURRENCIES:
                            for server, (_, base, _, _) in servers.items():
                                run = run_load(f"{base}{path}", body, concurrency, args.duration)
                                run.update(model=name, server=server, repetition=repetition)
                                results.append(run)
                                print(json.dumps(run), file=sys.stderr)
                # Measured again after the loads (servers idle): other work on the machine
                # only ever slows a measurement down, so the lower of the two is kept.
                floor_after = predict_floor(uri)
                floors[name] = {k: min(v, floor_after[k]) for k, v in floor_before.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    load_after = os.getloadavg()
    args.output.write_text(
        json.dumps(
            {"peer": peer, "floors": floors, "runs": results, "loadavg": [load_before, load_after]},
            indent=2,
        )
    )
    print(
        "| model | concurrency | server | req/s | p50 ms | p99 ms | non-200 | "
        f"req/s vs {peer} | p50 - 1-row floor (ms) |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for name in floors:
        for concurrency in CONCURRENCIES:
            by_server = {
                server: [
                    r
                    for r in results
                    if r["model"] == name
                    and r["server"] == server
                    and r["concurrency"] == concurrency
                ]
                for server in ("modelyard", peer)
            }
            peer_rps = median_of(by_server[peer], "rps")
            for server, runs in by_server.items():
                rps = median_of(runs, "rps")
                failures = sum(sum(r["failures"].values()) for r in runs)
                p50 = median_of(runs, "p50_ms")
                print(
                    f"| {name} | {concurrency} | {server} | {rps:.0f} | {p50:.1f} | "
                    f"{median_of(runs, 'p99_ms'):.1f} | {failures} | {rps / peer_rps:.1f}x | "
                    f"{p50 - floors[name]['floor_1_ms']:+.1f} |"
                )
    for name in floors:
        for concurrency in CONCURRENCIES:
            paired = []
            for repetition in range(args.repetitions):
                rps = {
                    r["server"]: r["rps"]
                    for r in results
                    if r["model"] == name
                    and r["concurrency"] == concurrency
                    and r["repetition"] == repetition
                }
                if rps.get(peer):
                    paired.append(rps["modelyard"] / rps[peer])
            if paired:
                print(
                    f"\n{name} at concurrency {concurrency}: req/s vs {peer} per repetition "
                    + ", ".join(f"{ratio:.1f}x" for ratio in paired)
                    + f" (median {statistics.median(paired):.1f}x)",
                    end="",
                )
    for name, floor in floors.items():
        print(
            f"\n{name}: in-process pyfunc predict floor {floor['floor_1_ms']:.1f} ms "
            f"(1 row), {floor['floor_32_ms']:.1f} ms (32 rows); the estimator alone "
            f"{floor['estimator_1_ms']:.1f} ms (1 row), {floor['estimator_32_ms']:.1f} ms "
            "(32 rows)",
            end="",
        )
    print(
        f"\nload average (1, 5, 15 min) before: {load_before[0]:.1f} {load_before[1]:.1f} "
        f"{load_before[2]:.1f}, after: {load_after[0]:.1f} {load_after[1]:.1f} {load_after[2]:.1f}"
    )


if __name__ == "__main__":
    main()
