"""Parsing MLflow scoring payloads and /predict records, checked against a signature."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from mlflow.types import ColSpec, DataType, Schema

from modelyard.serving.payload import (
    InputSchema,
    PayloadError,
    concat_inputs,
    parse_predict_payload,
    parse_scoring_payload,
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
RECORDS = [
    {"x": 1.5, "n": 2, "city": "Oslo", "flag": True},
    {"x": -3, "n": 7, "city": "Rome", "flag": False},
]


def body(document: Any) -> bytes:
    return json.dumps(document).encode()


def assert_two_rows(columns: dict[str, np.ndarray]) -> None:
    assert list(columns) == ["x", "n", "city", "flag"]
    assert columns["x"].dtype == np.float64
    assert columns["x"].tolist() == [1.5, -3.0]
    assert columns["n"].dtype == np.int64
    assert columns["n"].tolist() == [2, 7]
    assert columns["city"].tolist() == ["Oslo", "Rome"]
    assert columns["flag"].tolist() == [True, False]


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(
            {
                "dataframe_split": {
                    "columns": ["x", "n", "city", "flag"],
                    "data": [[1.5, 2, "Oslo", True], [-3, 7, "Rome", False]],
                }
            },
            id="dataframe_split",
        ),
        pytest.param(
            # Columns in another order than the signature, as pandas may write them.
            {
                "dataframe_split": {
                    "columns": ["flag", "city", "n", "x"],
                    "index": [0, 1],
                    "data": [[True, "Oslo", 2, 1.5], [False, "Rome", 7, -3]],
                }
            },
            id="dataframe_split-reordered",
        ),
        pytest.param({"dataframe_records": RECORDS}, id="dataframe_records"),
        pytest.param({"instances": RECORDS}, id="instances-records"),
        pytest.param(
            {"instances": [[1.5, 2, "Oslo", True], [-3, 7, "Rome", False]]}, id="instances-rows"
        ),
        pytest.param(
            {
                "inputs": {
                    "x": [1.5, -3],
                    "n": [2, 7],
                    "city": ["Oslo", "Rome"],
                    "flag": [True, False],
                }
            },
            id="inputs-columns",
        ),
        pytest.param({"inputs": RECORDS, "params": {}}, id="inputs-records-with-params"),
    ],
)
def test_each_scoring_format_gives_the_same_columns(document: Any) -> None:
    parsed = parse_scoring_payload(body(document), SCHEMA)
    assert parsed.n_rows == 2
    assert_two_rows(parsed.columns)


def test_predict_takes_records_or_one_record() -> None:
    assert_two_rows(parse_predict_payload(body(RECORDS), SCHEMA).columns)
    one = parse_predict_payload(body(RECORDS[0]), SCHEMA)
    assert one.n_rows == 1
    assert one.columns["city"].tolist() == ["Oslo"]


def test_extra_columns_are_ignored_like_mlflow_does() -> None:
    parsed = parse_predict_payload(body([{**RECORDS[0], "unused": "x"}]), SCHEMA)
    assert "unused" not in parsed.columns


def test_integral_floats_are_accepted_for_integer_columns() -> None:
    parsed = parse_predict_payload(body([{**RECORDS[0], "n": 4.0}]), SCHEMA)
    assert parsed.columns["n"].tolist() == [4]


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"", "empty request body"),
        (b"   \n", "empty request body"),
        (b'{"x": 1,', "malformed JSON"),
        (b"\xff\xfe", "not UTF-8|malformed JSON"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "nested too deeply", id="deep-nesting"),
        (body(42), "expected a JSON array of records"),
        (body([]), "no input rows"),
        (body([1, 2]), "record row 0: expected an object"),
        (body([{"x": 1.0, "n": 1, "flag": True}]), "missing column 'city' in record row 0"),
        (body([{**RECORDS[0], "x": "1.5"}]), r"column 'x' row 0: expected a number \(double\)"),
        (body([{**RECORDS[0], "x": True}]), "column 'x' row 0: expected a number"),
        (
            body([{**RECORDS[0], "x": None}]),
            r"column 'x' row 0: expected a number \(double\), got null",
        ),
        (body([RECORDS[0], {**RECORDS[1], "n": 2.5}]), "column 'n' row 1: expected an integer"),
        (body([{**RECORDS[0], "city": 3}]), "column 'city' row 0: expected a string"),
        (body([{**RECORDS[0], "flag": "yes"}]), "column 'flag' row 0: expected true or false"),
    ],
)
def test_bad_predict_bodies_name_the_problem(raw: bytes, match: str) -> None:
    with pytest.raises(PayloadError, match=match) as caught:
        parse_predict_payload(raw, SCHEMA)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("document", "match"),
    [
        ([RECORDS[0]], "expected a JSON object with exactly one of the keys"),
        ({"records": RECORDS}, r"unknown input format.*found keys \['records'\]"),
        ({"inputs": RECORDS, "instances": RECORDS}, "exactly one of the keys"),
        ({"dataframe_split": RECORDS}, "'dataframe_split' must be an object with 'data'"),
        (
            {"dataframe_split": {"columns": ["x", "n"], "data": [[1.0, 2]]}},
            "missing column 'city' in dataframe_split",
        ),
        (
            {"dataframe_split": {"columns": ["x", "n", "city", "flag"], "data": [[1.0, 2]]}},
            "dataframe_split row 0 has 2 values for 4 columns",
        ),
        ({"dataframe_records": {"x": 1}}, "'dataframe_records' must be a list of records"),
        ({"dataframe_records": []}, "no input rows"),
        ({"instances": "x"}, "'instances' must be a list of rows"),
        ({"instances": [[1.0, 2, "Oslo"]]}, "instances row 0 has 3 values for 4 columns"),
        (
            {"inputs": {"x": [1.0, 2.0], "n": [1], "city": ["a"], "flag": [True]}},
            "the columns have different lengths",
        ),
        ({"inputs": [{**RECORDS[0], "n": "2"}]}, "column 'n' row 0: expected an integer"),
    ],
)
def test_bad_scoring_bodies_name_the_problem(document: Any, match: str) -> None:
    with pytest.raises(PayloadError, match=match):
        parse_scoring_payload(body(document), SCHEMA)


def test_datetime_and_float32_columns_are_converted() -> None:
    schema = InputSchema.from_mlflow(
        Schema([ColSpec(DataType.datetime, "at"), ColSpec(DataType.float, "v")])
    )
    parsed = parse_predict_payload(body([{"at": "2026-01-02T03:04:05", "v": 1}]), schema)
    assert parsed.columns["at"].dtype == np.dtype("datetime64[us]")
    assert parsed.columns["v"].dtype == np.float32
    with pytest.raises(PayloadError, match="column 'at': cannot read as datetime"):
        parse_predict_payload(body([{"at": "yesterday", "v": 1}]), schema)


def test_without_a_signature_any_columns_pass() -> None:
    schema = InputSchema.from_mlflow(None)
    parsed = parse_scoring_payload(body({"dataframe_records": [{"a": 1, "b": "z"}]}), schema)
    assert parsed.columns["a"].tolist() == [1]
    with pytest.raises(PayloadError, match="needs a model signature"):
        parse_scoring_payload(body({"instances": [[1, 2]]}), schema)


def test_tensor_signatures_are_refused_at_load() -> None:
    from mlflow.types import TensorSpec

    tensor = Schema([TensorSpec(np.dtype("float64"), (-1, 4))])
    with pytest.raises(ValueError, match="tensor-based"):
        InputSchema.from_mlflow(tensor)


def test_requests_are_joined_column_by_column_in_signature_order() -> None:
    first = parse_predict_payload(body(RECORDS), SCHEMA)
    second = parse_predict_payload(body(RECORDS[:1]), SCHEMA)
    joined = concat_inputs([first, second], SCHEMA.names)
    assert list(joined) == SCHEMA.names
    assert joined["city"].tolist() == ["Oslo", "Rome", "Oslo"]
    assert joined["x"].dtype == np.float64
