"""The model server as a user meets it: real processes, real MLflow, real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pandas as pd
import pyarrow.dataset as ds
import pytest
from mlflow.pyfunc.scoring_server.client import ScoringServerClient

from tests.integration.serving.conftest import MODEL_NAME

if TYPE_CHECKING:
    from tests.integration.serving.conftest import RegisteredModel, ServerUnderTest
    from tests.support.servers import ServerProcess

pytestmark = pytest.mark.integration

FEATURES = ["x0", "x1", "x2", "x3"]


def scoring_bodies(rows: pd.DataFrame) -> dict[str, Any]:
    records = rows.to_dict(orient="records")
    return {
        "dataframe_split": {"dataframe_split": rows.to_dict(orient="split")},
        "dataframe_records": {"dataframe_records": records},
        "instances": {"instances": records},
        "inputs-columns": {"inputs": rows.to_dict(orient="list")},
    }


def test_predict_answers_with_the_models_own_predictions_and_names_the_version(
    modelyard_server: ServerUnderTest, registered_forest: RegisteredModel
) -> None:
    records = registered_forest.rows.to_dict(orient="records")
    response = httpx.post(f"{modelyard_server.url}/predict", json=records, timeout=30)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["predictions"] == registered_forest.expected
    assert answer["model_name"] == MODEL_NAME
    assert answer["model_version"] == "1"
    assert response.headers["x-model-version"] == "1"
    assert answer["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize(
    "form",
    ["dataframe_split", "dataframe_records", "instances", "inputs-columns"],
)
def test_invocations_matches_mlflow_models_serve_in_every_format(
    form: str,
    modelyard_server: ServerUnderTest,
    mlflow_models_serve: ServerProcess,
    registered_forest: RegisteredModel,
) -> None:
    body = scoring_bodies(registered_forest.rows)[form]
    ours = httpx.post(f"{modelyard_server.url}/invocations", json=body, timeout=30)
    theirs = httpx.post(f"{mlflow_models_serve.url}/invocations", json=body, timeout=30)
    assert theirs.status_code == 200, theirs.text
    assert ours.status_code == 200, ours.text
    assert ours.json() == theirs.json() == {"predictions": registered_forest.expected}


def test_rows_in_signature_order_are_accepted_where_mlflow_refuses_them(
    modelyard_server: ServerUnderTest, registered_forest: RegisteredModel
) -> None:
    # An extension: `mlflow models serve` answers 400 to lists of values on a column
    # signature; the signature's column order makes them unambiguous.
    body = {"inputs": registered_forest.rows.to_numpy().tolist()}
    ours = httpx.post(f"{modelyard_server.url}/invocations", json=body, timeout=30)
    assert ours.json() == {"predictions": registered_forest.expected}


def test_mlflows_own_scoring_client_gets_the_same_answers_from_both(
    modelyard_server: ServerUnderTest,
    mlflow_models_serve: ServerProcess,
    registered_forest: RegisteredModel,
) -> None:
    answers = []
    for url in (modelyard_server.url, mlflow_models_serve.url):
        host, port = url.removeprefix("http://").split(":")
        client = ScoringServerClient(host, int(port))
        client.wait_server_ready(timeout=30)
        answers.append(client.invoke(registered_forest.rows).get_predictions())
    ours, theirs = answers
    pd.testing.assert_frame_equal(ours, theirs)
    assert ours.iloc[:, 0].tolist() == registered_forest.expected


def _big_body() -> bytes:
    row = json.dumps({name: 0.5 for name in FEATURES})
    return ("[" + ",".join([row] * 8000) + "]").encode()  # > the 256 KiB test limit


GOOD_ROW = {name: 0.5 for name in FEATURES}

BAD_REQUESTS = [
    # (id, path, body, content type, status, what the message must say)
    ("malformed-json", "/predict", b'[{"x0": 1,', "application/json", 400, "malformed JSON"),
    ("empty-body", "/predict", b"", "application/json", 400, "empty request body"),
    ("no-rows", "/predict", b"[]", "application/json", 400, "no input rows"),
    (
        "missing-column",
        "/predict",
        json.dumps([{"x0": 1.0, "x1": 1.0, "x2": 1.0}]).encode(),
        "application/json",
        400,
        "missing column 'x3'",
    ),
    (
        "wrong-type",
        "/predict",
        json.dumps([{**GOOD_ROW, "x1": "high"}]).encode(),
        "application/json",
        400,
        "column 'x1' row 0: expected a number",
    ),
    (
        "null-value",
        "/predict",
        json.dumps([GOOD_ROW, {**GOOD_ROW, "x2": None}]).encode(),
        "application/json",
        400,
        "column 'x2' row 1",
    ),
    (
        "unknown-format",
        "/invocations",
        json.dumps({"rows": [GOOD_ROW]}).encode(),
        "application/json",
        400,
        "unknown input format",
    ),
    (
        "two-formats",
        "/invocations",
        json.dumps({"instances": [GOOD_ROW], "inputs": [GOOD_ROW]}).encode(),
        "application/json",
        400,
        "exactly one of the keys",
    ),
    (
        "split-row-too-short",
        "/invocations",
        json.dumps({"dataframe_split": {"columns": FEATURES, "data": [[1.0, 2.0]]}}).encode(),
        "application/json",
        400,
        "has 2 values for 4 columns",
    ),
    (
        "csv-content-type",
        "/invocations",
        b"x0,x1,x2,x3\n1,2,3,4\n",
        "text/csv",
        415,
        "unsupported content type 'text/csv'",
    ),
    ("oversized-body", "/predict", _big_body(), "application/json", 413, "larger than the limit"),
]


@pytest.mark.parametrize(
    ("path", "body", "content_type", "status", "message"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_REQUESTS],
)
def test_bad_requests_get_a_4xx_that_names_the_problem(
    modelyard_server: ServerUnderTest,
    path: str,
    body: bytes,
    content_type: str,
    status: int,
    message: str,
) -> None:
    response = httpx.post(
        modelyard_server.url + path,
        content=body,
        headers={"Content-Type": content_type},
        timeout=30,
    )
    assert response.status_code == status, response.text
    assert message in response.json()["message"]


def test_wrong_method_is_a_405_not_a_500(modelyard_server: ServerUnderTest) -> None:
    assert httpx.get(f"{modelyard_server.url}/predict", timeout=10).status_code == 405


def test_health_and_metrics_name_the_model(modelyard_server: ServerUnderTest) -> None:
    assert httpx.get(f"{modelyard_server.url}/livez", timeout=10).status_code == 200
    assert httpx.get(f"{modelyard_server.url}/readyz", timeout=10).status_code == 200
    httpx.post(f"{modelyard_server.url}/predict", content=b"{", timeout=10)
    httpx.post(f"{modelyard_server.url}/predict", json=[GOOD_ROW], timeout=10)
    metrics = httpx.get(f"{modelyard_server.url}/metrics", timeout=10).text
    labels = f'model_name="{MODEL_NAME}",model_version="1"'
    for expected in (
        f'modelyard_requests_total{{endpoint="/predict",{labels},status="200"}}',
        f'modelyard_requests_total{{endpoint="/predict",{labels},status="400"}}',
        f'modelyard_request_duration_seconds_bucket{{endpoint="/predict",le="0.005",{labels},'
        'status="200"}',
        f"modelyard_prediction_log_write_failures_total{{{labels}}}",
    ):
        assert expected in metrics, f"{expected} not in /metrics"


def read_prediction_log(base: Path) -> pd.DataFrame:
    if not base.exists():
        return pd.DataFrame()
    files = [p for p in base.rglob("*.parquet") if not p.name.startswith(".")]
    if not files:
        return pd.DataFrame()
    dataset = ds.dataset(str(base), format="parquet", partitioning="hive")
    return dataset.to_table().to_pandas()


def test_answered_predictions_reach_the_prediction_log(
    modelyard_server: ServerUnderTest, registered_forest: RegisteredModel
) -> None:
    rows = registered_forest.rows.head(3)
    response = httpx.post(
        f"{modelyard_server.url}/predict",
        json=rows.to_dict(orient="records"),
        headers={"X-Request-ID": "log-check-1"},
        timeout=30,
    )
    assert response.status_code == 200
    deadline = time.monotonic() + 20
    logged = pd.DataFrame()
    while time.monotonic() < deadline:
        log = read_prediction_log(modelyard_server.prediction_log)
        if not log.empty and "log-check-1" in set(log["_request_id"]):
            logged = log[log["_request_id"] == "log-check-1"]
            break
        time.sleep(0.3)
    assert len(logged) == 3, "the request did not reach the prediction log in 20 s"
    assert logged["prediction"].tolist() == registered_forest.expected[:3]
    assert logged[FEATURES].to_numpy().tolist() == rows.to_numpy().tolist()
    assert set(logged["_model_name"]) == {MODEL_NAME}
    assert set(logged["_model_version"]) == {"1"}
    assert str(logged["_timestamp"].dtype) == "datetime64[us, UTC]"
    partition = next(modelyard_server.prediction_log.rglob("*.parquet")).parent
    assert partition.parent.relative_to(modelyard_server.prediction_log) == Path(
        MODEL_NAME, "version=1"
    )
    assert partition.name.startswith("date=")


def test_sigterm_under_load_loses_no_answered_prediction(
    start_modelyard_server: Callable[..., ServerUnderTest], registered_forest: RegisteredModel
) -> None:
    # A long flush interval: whatever is in the log was written by the shutdown flush.
    under_test = start_modelyard_server(MODELYARD_LOG_FLUSH_INTERVAL="3600")
    records = registered_forest.rows.head(2).to_dict(orient="records")
    answered: list[str] = []
    refused: list[str] = []

    async def client(stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            while not stop.is_set():
                try:
                    response = await http.post(f"{under_test.url}/predict", json=records)
                except httpx.HTTPError as exc:
                    refused.append(type(exc).__name__)
                    return  # the server has stopped listening
                if response.status_code == 200:
                    answered.append(response.json()["request_id"])
                else:
                    refused.append(str(response.status_code))

    async def load_then_sigterm() -> None:
        stop = asyncio.Event()
        clients = [asyncio.create_task(client(stop)) for _ in range(8)]
        await asyncio.sleep(3)
        under_test.server.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(5)
        stop.set()
        await asyncio.gather(*clients)

    asyncio.run(load_then_sigterm())
    assert under_test.server.proc.wait(60) == 0, log_text(under_test)
    assert len(answered) > 50, f"too little load to mean anything: {len(answered)} answers"

    log = read_prediction_log(under_test.prediction_log)
    logged = set(log["_request_id"]) if not log.empty else set()
    lost = [request_id for request_id in answered if request_id not in logged]
    assert not lost, f"{len(lost)} of {len(answered)} answered requests are not in the log"
    assert len(log) == 2 * len(answered)  # two rows per request, nothing twice


def test_with_the_sink_down_the_log_stays_in_its_byte_bound_and_counts_every_drop(
    start_modelyard_server: Callable[..., ServerUnderTest],
    registered_forest: RegisteredModel,
    tmp_path: Path,
) -> None:
    """The bound used to be checked only after a failed flush, in rows: with the sink
    down a server grew until it was OOM-killed. Now it holds bytes, and what it drops is
    counted (metric, log line, a record in the log): logged + dropped == answered."""
    blocked = tmp_path / "predictions"
    blocked.write_text("a file where the log's directory should be")
    under_test = start_modelyard_server(
        MODELYARD_LOG_FLUSH_INTERVAL="0.2", MODELYARD_LOG_MAX_BUFFERED_BYTES=str(32 * 1024)
    )
    records = registered_forest.rows.head(2).to_dict(orient="records")
    answered = 0
    with httpx.Client(timeout=30) as http:
        for _ in range(400):
            response = http.post(f"{under_test.url}/predict", json=records)
            assert response.status_code == 200, response.text
            answered += 2
        metrics = http.get(f"{under_test.url}/metrics").text
    dropped = metric_total(metrics, "modelyard_prediction_log_rows_dropped_total")
    assert 0 < dropped < answered, metrics
    assert metric_total(metrics, "modelyard_prediction_log_write_failures_total") > 0
    assert "prediction log: dropped" in under_test.server.log.read_text(errors="replace")

    blocked.unlink()  # the sink is back: the rows held are written, the drops recorded
    under_test.server.proc.send_signal(signal.SIGTERM)
    assert under_test.server.proc.wait(60) == 0, log_text(under_test)
    logged = len(read_prediction_log(blocked))
    recorded = [
        json.loads(line)["rows"]
        for path in sorted((blocked / "_dropped").glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    assert sum(recorded) == dropped
    assert logged > 0
    assert logged + dropped == answered


def metric_total(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def test_beyond_its_limits_the_server_answers_503_with_retry_after(
    start_modelyard_server: Callable[..., ServerUnderTest], registered_forest: RegisteredModel
) -> None:
    """Bodies in flight are bounded in bytes: ten 10 MiB bodies at once used to be
    parsed together (enough to OOM a 1 Gi pod). One request is always taken."""
    under_test = start_modelyard_server(
        MODELYARD_MAX_BODY_BYTES=str(4 * 1024 * 1024),
        MODELYARD_MAX_INFLIGHT_BYTES=str(3 * 1024 * 1024),
    )
    rows = pd.concat([registered_forest.rows] * 600, ignore_index=True)  # ~2 MiB of JSON
    body = json.dumps({"dataframe_split": rows.to_dict(orient="split")}).encode()
    assert 1.5 * 1024 * 1024 < len(body) < 3 * 1024 * 1024

    async def at_once(n: int) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as http:
            return await asyncio.gather(
                *(
                    http.post(
                        f"{under_test.url}/invocations",
                        content=body,
                        headers={"Content-Type": "application/json"},
                    )
                    for _ in range(n)
                )
            )

    alone = asyncio.run(at_once(1))[0]
    assert alone.status_code == 200, alone.text
    answers = asyncio.run(at_once(8))
    statuses = sorted(a.status_code for a in answers)
    assert set(statuses) == {200, 503}, statuses
    busy = next(a for a in answers if a.status_code == 503)
    assert busy.headers["Retry-After"] == "1"
    assert busy.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert "MODELYARD_MAX_INFLIGHT_BYTES" in busy.json()["message"]
    # The server is not worse for it.
    after = httpx.post(f"{under_test.url}/invocations", content=body, timeout=120)
    assert after.status_code == 200


def test_a_model_call_past_its_deadline_fails_liveness_and_its_requests(
    start_modelyard_server: Callable[..., ServerUnderTest], registered_forest: RegisteredModel
) -> None:
    """A hung model call used to stall the batcher while /livez and /readyz said 200."""
    # Every call is past a deadline of a microsecond: the warm-up's first call hangs.
    under_test = start_modelyard_server(ready_path="/ping", MODELYARD_PREDICT_TIMEOUT="0.000001")
    assert httpx.get(f"{under_test.url}/livez", timeout=10).status_code == 503
    assert httpx.get(f"{under_test.url}/readyz", timeout=10).status_code == 503
    records = registered_forest.rows.head(1).to_dict(orient="records")
    answer = httpx.post(f"{under_test.url}/predict", json=records, timeout=10)
    assert answer.status_code == 503
    assert "MODELYARD_PREDICT_TIMEOUT" in answer.json()["message"]
    assert "MODELYARD_PREDICT_TIMEOUT" in log_text(under_test)


def log_text(under_test: ServerUnderTest) -> str:
    return under_test.server.log.read_text(errors="replace")[-4000:]


def test_a_model_that_cannot_load_stops_the_server_with_the_reason(
    registered_forest: RegisteredModel, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bin_dir = Path(sys.executable).parent
    log = tmp_path / "server.log"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": registered_forest.tracking_uri,
        "BENTOML_DO_NOT_TRACK": "True",
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [shutil.which("modelyard", path=str(bin_dir)) or "modelyard", "serve",
             "--model-uri", "models:/no-such-model/1", "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
        try:
            proc.wait(120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text(errors="replace")
    assert "the model server cannot start" in text
    assert "no-such-model" in text
