"""The BentoML APIs' input types, made from an MLflow signature."""

from __future__ import annotations

from mlflow.types import ColSpec, DataType, Schema

from modelyard.serving.bento_api import invocations_specs, predict_specs, record_model
from modelyard.serving.payload import InputSchema

SCHEMA = InputSchema.from_mlflow(
    Schema(
        [
            ColSpec(DataType.double, "petal length (cm)"),
            ColSpec(DataType.long, "n"),
            ColSpec(DataType.string, "city", required=False),
            ColSpec(DataType.datetime, "seen"),
        ]
    )
)


def test_a_record_has_each_column_under_its_own_name_and_type() -> None:
    schema = record_model(SCHEMA).model_json_schema()
    properties = schema["properties"]
    assert list(properties) == ["petal length (cm)", "n", "city", "seen"]
    assert properties["petal length (cm)"]["type"] == "number"
    assert properties["n"]["type"] == "integer"
    assert {"type": "string"} in properties["city"]["anyOf"]  # optional: may be null
    assert properties["seen"]["format"] == "date-time"
    assert schema["required"] == ["petal length (cm)", "n", "seen"]


def test_predict_takes_an_array_of_records_as_the_whole_body() -> None:
    body, _ = predict_specs(SCHEMA)
    schema = body.model_json_schema()
    assert schema["type"] == "array" and schema["root_input"] is True
    assert schema["items"]["$ref"].endswith("/Record")


def test_invocations_documents_the_four_formats_with_a_working_example() -> None:
    body, _ = invocations_specs(SCHEMA)
    schema = body.model_json_schema()
    assert set(schema["properties"]) == {
        "dataframe_split",
        "dataframe_records",
        "instances",
        "inputs",
    }
    example = schema["example"]
    assert list(example) == ["dataframe_split"]  # exactly one key, as the server wants
    assert example["dataframe_split"]["columns"] == ["petal length (cm)", "n", "city", "seen"]


def test_without_a_signature_any_record_is_documented() -> None:
    schema = record_model(InputSchema(columns=())).model_json_schema()
    assert schema.get("additionalProperties") is True
