"""Clients people already have, against one running model server: the Open Inference
Protocol's (Triton's ``tritonclient``), BentoML's own, and MLflow's."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

import bentoml
import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from bentoml.exceptions import InvalidArgument
from mlflow.pyfunc.scoring_server.client import ScoringServerClient

from tests.integration.serving.conftest import FEATURES, MODEL_NAME
from tests.integration.serving.test_server import read_prediction_log

if TYPE_CHECKING:
    from tests.integration.serving.conftest import RegisteredModel, ServerUnderTest

pytestmark = pytest.mark.integration


def triton_client(url: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=30)


def columns_as_inputs(rows: Any, binary: bool) -> list[triton.InferInput]:
    inputs = []
    for name in FEATURES:
        tensor = triton.InferInput(name, [len(rows)], "FP64")
        tensor.set_data_from_numpy(rows[name].to_numpy(dtype=np.float64), binary_data=binary)
        inputs.append(tensor)
    return inputs


def test_three_clients_get_the_models_predictions_from_one_server(
    modelyard_server: ServerUnderTest, registered_forest: RegisteredModel
) -> None:
    rows, expected = registered_forest.rows, registered_forest.expected
    url = modelyard_server.url

    v2 = triton_client(url).infer(MODEL_NAME, columns_as_inputs(rows, binary=False))
    assert v2.as_numpy("output-0").tolist() == expected

    with bentoml.SyncHTTPClient(url) as bento:
        answer = bento.predict(rows.to_dict(orient="records"))
    assert answer["predictions"] == expected

    host, port = url.removeprefix("http://").split(":")
    scored = ScoringServerClient(host, int(port)).invoke(rows).get_predictions()
    assert scored.iloc[:, 0].tolist() == expected


def test_the_v2_client_sees_health_and_the_signature_in_the_metadata(
    modelyard_server: ServerUnderTest,
) -> None:
    client = triton_client(modelyard_server.url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL_NAME)
    assert client.is_model_ready(MODEL_NAME, model_version="1")
    assert not client.is_model_ready("no-such-model")
    metadata = client.get_model_metadata(MODEL_NAME)
    assert metadata["name"] == MODEL_NAME and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [
        {"name": name, "datatype": "FP64", "shape": [-1, 1]} for name in FEATURES
    ]
    assert metadata["outputs"] == [{"name": "output-0", "datatype": "INT64", "shape": [-1]}]
    assert client.get_server_metadata()["name"] == "modelyard"


def test_v2_binary_tensors_and_one_tensor_input_give_the_same_predictions(
    modelyard_server: ServerUnderTest, registered_forest: RegisteredModel
) -> None:
    rows, expected = registered_forest.rows, registered_forest.expected
    client = triton_client(modelyard_server.url)
    # tritonclient's default: Triton's binary tensor extension.
    binary = client.infer(MODEL_NAME, columns_as_inputs(rows, binary=True), request_id="r-7")
    assert binary.as_numpy("output-0").tolist() == expected
    assert binary.get_response()["id"] == "r-7"
    assert binary.get_response()["model_version"] == "1"

    tensor = triton.InferInput("input-0", [len(rows), len(FEATURES)], "FP32")
    tensor.set_data_from_numpy(rows[FEATURES].to_numpy(dtype=np.float32))
    one = client.infer(
        MODEL_NAME,
        [tensor],
        model_version="1",
        outputs=[triton.InferRequestedOutput("output-0", binary_data=False)],
    )
    # float32 rounding can move a row across a split: compare with the model on float32.
    assert one.as_numpy("output-0").tolist() == registered_forest_predict_float32(registered_forest)


def registered_forest_predict_float32(model: RegisteredModel) -> list[Any]:
    import mlflow.pyfunc

    from tests.support.models import mlflow_uri

    with mlflow_uri(model.tracking_uri):
        pyfunc = mlflow.pyfunc.load_model(model.uri)
    frame = model.rows[FEATURES].astype(np.float32).astype(np.float64)
    return list(pyfunc.predict(frame).tolist())


GOOD = {name: 0.5 for name in FEATURES}


def v2_body(**changes: Any) -> dict[str, Any]:
    inputs = {
        name: {"name": name, "shape": [1], "datatype": "FP64", "data": [value]}
        for name, value in GOOD.items()
    }
    for name, change in changes.items():
        if change is None:
            del inputs[name]
        else:
            inputs[name] = {**inputs[name], **change}
    return {"inputs": list(inputs.values())}


BAD_V2 = [
    # (id, path, body, status, what the error must say)
    ("missing-input", "infer", v2_body(x3=None), 400, "missing input 'x3'"),
    ("wrong-datatype", "infer", v2_body(x1={"datatype": "BYTES", "data": ["a"]}), 400,
     "input 'x1': datatype BYTES does not fit column 'x1' (double)"),
    ("wrong-value", "infer", v2_body(x2={"data": ["high"]}), 400, "column 'x2' row 0"),
    ("short-data", "infer", v2_body(x0={"shape": [2]}), 400,
     "input 'x0': shape [2] holds 2 values but the data has 1"),
    ("unknown-input", "infer",
     {"inputs": [*v2_body()["inputs"], {"name": "x9", "shape": [1], "datatype": "FP64",
                                         "data": [1.0]}]}, 400, "unknown input 'x9'"),
    ("unknown-output", "infer", {**v2_body(), "outputs": [{"name": "proba"}]}, 400,
     "unknown output 'proba'"),
    ("not-json", "infer", "{", 400, "malformed JSON"),
    ("unknown-model", "other", v2_body(), 404, "unknown model 'other'"),
    ("unknown-version", "versions/7", v2_body(), 404, "unknown version '7'"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_V2],
)
def test_bad_v2_requests_get_a_4xx_in_the_protocols_shape_naming_the_input(
    modelyard_server: ServerUnderTest, path: str, body: Any, status: int, message: str
) -> None:
    target = {
        "infer": f"/v2/models/{MODEL_NAME}/infer",
        "other": "/v2/models/other/infer",
        "versions/7": f"/v2/models/{MODEL_NAME}/versions/7/infer",
    }[path]
    content = body if isinstance(body, str) else json.dumps(body)
    response = httpx.post(modelyard_server.url + target, content=content, timeout=30)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_the_v2_client_shows_the_servers_message(
    modelyard_server: ServerUnderTest, registered_forest: RegisteredModel
) -> None:
    inputs = columns_as_inputs(registered_forest.rows.head(1), binary=True)
    inputs[1] = triton.InferInput("x1", [1], "BYTES")
    inputs[1].set_data_from_numpy(np.array(["high"], dtype=object))
    with pytest.raises(
        triton.InferenceServerException, match=r"input 'x1': datatype BYTES does not fit"
    ):
        triton_client(modelyard_server.url).infer(MODEL_NAME, inputs)


def test_v2_requests_are_counted_and_logged_like_the_others(
    modelyard_server: ServerUnderTest, registered_forest: RegisteredModel
) -> None:
    rows = registered_forest.rows.head(3)
    body = {
        "id": "v2-log-check",
        "inputs": [
            {"name": n, "shape": [3], "datatype": "FP64", "data": rows[n].tolist()}
            for n in FEATURES
        ],
    }
    response = httpx.post(
        f"{modelyard_server.url}/v2/models/{MODEL_NAME}/infer",
        json=body,
        headers={"X-Request-ID": "v2-log-check"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["id"] == "v2-log-check"
    metrics = httpx.get(f"{modelyard_server.url}/metrics", timeout=10).text
    assert (
        'modelyard_requests_total{endpoint="/v2/models/{name}/infer",'
        f'model_name="{MODEL_NAME}",model_version="1",status="200"}}'
    ) in metrics
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        log = read_prediction_log(modelyard_server.prediction_log)
        if not log.empty and "v2-log-check" in set(log["_request_id"]):
            logged = log[log["_request_id"] == "v2-log-check"]
            assert logged["prediction"].tolist() == registered_forest.expected[:3]
            assert logged[FEATURES].to_numpy().tolist() == rows.to_numpy().tolist()
            return
        time.sleep(0.3)
    pytest.fail("the V2 request did not reach the prediction log in 20 s")


def test_bentomls_clients_list_the_endpoints_and_keep_each_requests_error(
    modelyard_server: ServerUnderTest, registered_forest: RegisteredModel
) -> None:
    records = registered_forest.rows.to_dict(orient="records")
    with bentoml.SyncHTTPClient(modelyard_server.url) as client:
        assert {"predict", "invocations"} <= set(client.endpoints)
        scored = client.invocations({"dataframe_records": records})
        assert scored == {"predictions": registered_forest.expected}
        with pytest.raises(InvalidArgument, match="column 'x1' row 0: expected a number"):
            client.predict([{**records[0], "x1": "high"}])

    async def concurrently() -> list[Any]:
        # Good and bad requests at once: each gets its own answer (batched together).
        async with bentoml.AsyncHTTPClient(modelyard_server.url) as client:
            calls = [client.predict([record]) for record in records]
            calls.append(client.predict([{**records[0], "x3": None}]))
            return list(await asyncio.gather(*calls, return_exceptions=True))

    *good, bad = asyncio.run(concurrently())
    assert [answer["predictions"][0] for answer in good] == registered_forest.expected
    assert isinstance(bad, InvalidArgument) and "column 'x3' row 0" in str(bad)


def test_the_schema_bentoml_publishes_names_each_column_and_its_type(
    modelyard_server: ServerUnderTest,
) -> None:
    spec = httpx.get(f"{modelyard_server.url}/docs.json", timeout=30).json()
    record = spec["components"]["schemas"]["Record"]
    assert list(record["properties"]) == FEATURES
    assert {p["type"] for p in record["properties"].values()} == {"number"}
    assert record["required"] == FEATURES
    predict = spec["paths"]["/predict"]["post"]
    assert "x0 (double)" in predict["description"]
    assert "/invocations" in spec["paths"]
