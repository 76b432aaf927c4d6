"""The Open Inference Protocol's requests and answers, checked against a signature."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest
from mlflow.types import ColSpec, DataType, Schema, TensorSpec

from modelyard.serving.payload import InputSchema, PayloadError
from modelyard.serving.v2 import (
    OutputSpec,
    V2Error,
    describe_outputs,
    parse_infer_request,
    render_outputs,
)

SCHEMA = InputSchema.from_mlflow(
    Schema(
        [
            ColSpec(DataType.double, "x"),
            ColSpec(DataType.long, "n"),
            ColSpec(DataType.string, "city"),
            ColSpec(DataType.boolean, "flag"),
        ]
    )
)
NUMERIC = InputSchema.from_mlflow(
    Schema([ColSpec(DataType.double, "a"), ColSpec(DataType.double, "b")])
)


def body(document: Any) -> bytes:
    return json.dumps(document).encode()


def columnar(shape: list[int] | None = None, **overrides: Any) -> dict[str, Any]:
    inputs = {
        "x": {"name": "x", "shape": shape or [2], "datatype": "FP64", "data": [1.5, -3]},
        "n": {"name": "n", "shape": shape or [2], "datatype": "INT64", "data": [2, 7]},
        "city": {
            "name": "city",
            "shape": shape or [2],
            "datatype": "BYTES",
            "data": ["Oslo", "Rome"],
        },
        "flag": {"name": "flag", "shape": shape or [2], "datatype": "BOOL", "data": [True, False]},
    }
    for name, change in overrides.items():
        if change is None:
            del inputs[name]
        else:
            inputs[name] = {**inputs[name], **change}
    return {"id": "req-1", "inputs": list(inputs.values())}


def test_one_input_per_column_becomes_the_signatures_columns() -> None:
    parsed = parse_infer_request(body(columnar()), SCHEMA)
    columns = parsed.model_input.columns
    assert parsed.model_input.n_rows == 2
    assert list(columns) == ["x", "n", "city", "flag"]
    assert columns["x"].dtype == np.float64 and columns["x"].tolist() == [1.5, -3.0]
    assert columns["n"].dtype == np.int64 and columns["n"].tolist() == [2, 7]
    assert columns["city"].tolist() == ["Oslo", "Rome"]
    assert columns["flag"].tolist() == [True, False]
    assert parsed.id == "req-1"
    assert parsed.outputs == ()


def test_columns_may_be_n_by_1_and_nested() -> None:
    document = columnar(shape=[2, 1])
    for item in document["inputs"]:
        item["data"] = [[value] for value in item["data"]]
    parsed = parse_infer_request(body(document), SCHEMA)
    assert parsed.model_input.columns["x"].tolist() == [1.5, -3.0]


def test_one_tensor_holds_the_columns_in_signature_order() -> None:
    document = {
        "inputs": [
            {"name": "input-0", "shape": [3, 2], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}
        ]
    }
    parsed = parse_infer_request(body(document), NUMERIC)
    assert parsed.model_input.columns["a"].tolist() == [1, 3, 5]
    assert parsed.model_input.columns["b"].tolist() == [2, 4, 6]
    nested = {"inputs": [{**document["inputs"][0], "data": [[1, 2], [3, 4], [5, 6]]}]}
    assert parse_infer_request(body(nested), NUMERIC).model_input.columns["b"].tolist() == [2, 4, 6]


def binary_request(inputs: list[tuple[str, str, list[int], bytes]]) -> tuple[bytes, int]:
    """Triton's binary tensor extension: JSON, then each input's raw bytes."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": shape,
                    "parameters": {"binary_data_size": len(raw)},
                }
                for name, datatype, shape, raw in inputs
            ]
        }
    ).encode()
    return header + b"".join(raw for *_, raw in inputs), len(header)


def bytes_tensor(*values: str) -> bytes:
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)


def test_the_binary_tensor_extension_is_read_as_json_data_would_be() -> None:
    raw, json_length = binary_request(
        [
            ("x", "FP64", [2], np.array([1.5, -3], dtype="<f8").tobytes()),
            ("n", "INT64", [2], np.array([2, 7], dtype="<i8").tobytes()),
            ("city", "BYTES", [2], bytes_tensor("Oslo", "Rome")),
            ("flag", "BOOL", [2], np.array([True, False]).tobytes()),
        ]
    )
    parsed = parse_infer_request(raw, SCHEMA, json_length)
    expected = parse_infer_request(body(columnar()), SCHEMA)
    for name, values in expected.model_input.columns.items():
        assert parsed.model_input.columns[name].tolist() == values.tolist()


BAD = [
    ("not-json", b"{", None, 400, "malformed JSON"),
    ("no-inputs", body({"inputs": []}), None, 400, "'inputs' must be a non-empty list"),
    ("missing-input", body(columnar(city=None)), None, 400, "missing input 'city'"),
    (
        "unknown-input",
        body(
            {
                "inputs": [
                    *columnar()["inputs"],
                    {"name": "zip", "shape": [2], "datatype": "INT64", "data": [1, 2]},
                ]
            }
        ),
        None,
        400,
        "unknown input 'zip'",
    ),
    (
        "wrong-datatype",
        body(columnar(n={"datatype": "BYTES", "data": ["a", "b"]})),
        None,
        400,
        "input 'n': datatype BYTES does not fit column 'n' (long); send INT64",
    ),
    (
        "wrong-value",
        body(columnar(x={"data": [1.0, "high"]})),
        None,
        400,
        "column 'x' row 1: expected a number",
    ),
    ("null-value", body(columnar(flag={"data": [True, None]})), None, 400, "column 'flag' row 1"),
    (
        "short-data",
        body(columnar(x={"data": [1.0]})),
        None,
        400,
        "input 'x': shape [2] holds 2 values but the data has 1",
    ),
    (
        "unknown-datatype",
        body(columnar(x={"datatype": "FLOAT"})),
        None,
        400,
        "input 'x': unknown datatype 'FLOAT'",
    ),
    (
        "bad-shape",
        body(columnar(x={"shape": [1, 2]})),
        None,
        400,
        "input 'x': shape [1, 2] is not a column",
    ),
    (
        "rows-differ",
        body(columnar(x={"shape": [1], "data": [1.0]})),
        None,
        400,
        "different numbers of rows",
    ),
    (
        "zero-rows",
        body(
            {
                "inputs": [
                    {"name": "a", "shape": [0], "datatype": "FP64", "data": []},
                    {"name": "b", "shape": [0], "datatype": "FP64", "data": []},
                ]
            }
        ),
        None,
        400,
        "no input rows",
    ),
    (
        "no-name",
        body({"inputs": [{"shape": [1], "datatype": "FP64", "data": [1]}]}),
        None,
        400,
        "inputs[0] has no 'name'",
    ),
    (
        "bad-outputs",
        body({**columnar(), "outputs": ["output-0"]}),
        None,
        400,
        "'outputs' must be a list of objects",
    ),
    ("header-beyond-body", b'{"inputs": []}', 99, 400, "does not fit a body of 14 bytes"),
    (
        "binary-short",
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [1],
                        "datatype": "FP64",
                        "parameters": {"binary_data_size": 8},
                    }
                ]
            }
        ).encode()
        + b"1234",
        len(
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "x",
                            "shape": [1],
                            "datatype": "FP64",
                            "parameters": {"binary_data_size": 8},
                        }
                    ]
                }
            )
        ),
        400,
        "binary_data_size 8 exceeds the body",
    ),
]


@pytest.mark.parametrize(
    ("raw", "json_length", "status", "message"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD],
)
def test_bad_requests_name_the_input(
    raw: bytes, json_length: int | None, status: int, message: str
) -> None:
    # Every one is a PayloadError (the server's 4xx); V2Error is one.
    with pytest.raises(PayloadError) as caught:
        parse_infer_request(raw, SCHEMA, json_length)
    assert getattr(caught.value, "status", None) == status
    assert message in str(caught.value)


def test_a_tensor_must_be_as_wide_as_the_signature() -> None:
    document = {"inputs": [{"name": "t", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]}
    with pytest.raises(V2Error, match=r"shape \[N, 2\] with the columns a, b"):
        parse_infer_request(body(document), NUMERIC)
    mixed = {"inputs": [{"name": "t", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}
    with pytest.raises(V2Error, match=r"input 't': datatype FP64 does not fit column 'city'"):
        parse_infer_request(body(mixed), SCHEMA)


def test_without_a_signature_inputs_are_taken_as_named() -> None:
    document = {"inputs": [{"name": "anything", "shape": [2], "datatype": "INT32", "data": [1, 2]}]}
    parsed = parse_infer_request(body(document), InputSchema(columns=()))
    assert parsed.model_input.columns["anything"].dtype == np.int32


def test_outputs_are_named_by_the_output_signature_or_output_0() -> None:
    assert describe_outputs(None) == ()
    unnamed = describe_outputs(Schema([TensorSpec(np.dtype("int64"), (-1,))]))
    assert unnamed == (OutputSpec("output-0", "INT64", (-1,)),)
    named = describe_outputs(Schema([ColSpec(DataType.double, "score")]))
    assert named == (OutputSpec("score", "FP64", (-1,)),)

    one = render_outputs(np.array([1, 0, 2]), unnamed)
    assert one == [{"name": "output-0", "shape": [3], "datatype": "INT64", "data": [1, 0, 2]}]
    wide = render_outputs(np.array([[0.1, 0.9], [0.8, 0.2]]), ())
    assert wide == [
        {"name": "output-0", "shape": [2, 2], "datatype": "FP64", "data": [0.1, 0.9, 0.8, 0.2]}
    ]
    labels = render_outputs(np.array(["yes", "no"], dtype=object), ())
    assert labels[0]["datatype"] == "BYTES" and labels[0]["data"] == ["yes", "no"]
