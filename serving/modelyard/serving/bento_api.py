"""``/predict`` and ``/invocations`` as BentoML APIs, typed from the model's signature.

BentoML's client (``bentoml.SyncHTTPClient``) finds a server's endpoints in its
``/schema.json``, and the OpenAPI page at ``/`` describes the same APIs: both come from
the ``@bentoml.api`` methods' input and output types. Those types are generated here from
the MLflow signature (a ``Record`` with one field per column, its name and type), once
the worker has loaded the model, so the page documents each column and its example body
is a request that works.

The body itself is still read by :mod:`modelyard.serving.payload`, not by pydantic: the
input types' ``from_http_request`` hands the raw request to the API method, which scores
it like any other endpoint (the body limit, the batcher, each request's own 4xx with the
column named, the metrics and the prediction log).
"""

from __future__ import annotations

import datetime as dt
import types
from collections.abc import Mapping
from typing import Any

from _bentoml_sdk.io_models import IODescriptor, IORootModel
from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.requests import Request

from modelyard.serving.payload import InputSchema

_PYTHON_TYPES: dict[str, Any] = {
    "double": float,
    "float": float,
    "long": int,
    "integer": int,
    "boolean": bool,
    "string": str,
    "binary": str,
    "datetime": dt.datetime,
}
_EXAMPLES: dict[str, Any] = {
    "double": 0.0,
    "float": 0.0,
    "long": 0,
    "integer": 0,
    "boolean": False,
    "string": "",
    "binary": "",
    "datetime": "1970-01-01T00:00:00",
}
_DESCRIPTIONS = {
    "binary": "binary (base64)",
    "datetime": "datetime (ISO 8601)",
}


class _RawBody:
    """Mixin of the input types: BentoML passes the request itself to the API method."""

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> Any:
        # No parsing here: the method reads the body with the server's own parser.
        return cls.model_construct(root=request)  # type: ignore[attr-defined]


def _raw_body_spec(name: str, body_type: Any) -> type[IODescriptor]:
    spec: type[IODescriptor] = create_model(
        name, __base__=(_RawBody, IORootModel[body_type]), __module__=__name__
    )
    spec.__root_input__ = True
    return spec


def record_model(schema: InputSchema) -> type[BaseModel]:
    """One input row: a field per column of the signature, under the column's own name."""
    if not schema.columns:
        return create_model(
            "Record",
            __config__=ConfigDict(
                extra="allow",
                title="Record",
                json_schema_extra={"description": "the model has no signature: any columns"},
            ),
        )
    fields: dict[str, Any] = {}
    for position, column in enumerate(schema.columns):
        python_type = _PYTHON_TYPES[column.kind]
        kind = _DESCRIPTIONS.get(column.kind, column.kind)
        field = Field(
            default=... if column.required else None,
            alias=column.name,
            title=column.name,
            description=f"{kind}{'' if column.required else ', optional'}",
        )
        fields[f"column_{position}"] = (
            python_type if column.required else python_type | None,
            field,
        )
    return create_model(
        "Record", __config__=ConfigDict(populate_by_name=True, title="Record"), **fields
    )


def example_record(schema: InputSchema) -> dict[str, Any]:
    return {column.name: _EXAMPLES[column.kind] for column in schema.columns}


def predict_specs(schema: InputSchema) -> tuple[type[IODescriptor], type[IODescriptor]]:
    """``/predict``: a JSON array of records in; name, version, request id and predictions
    out."""
    record = record_model(schema)
    records = _list_of(record)
    body = _raw_body_spec("PredictInput", records)

    class PredictOutput(BaseModel):
        model_name: str
        model_version: str
        request_id: str
        predictions: list[Any]

    return body, _output_spec(PredictOutput)


def invocations_specs(schema: InputSchema) -> tuple[type[IODescriptor], type[IODescriptor]]:
    """``/invocations``: MLflow's scoring protocol, exactly one of its four keys."""
    record = record_model(schema)

    class DataframeSplit(BaseModel):
        columns: list[str] = Field(
            default=schema.names, description="column names; default: the signature's order"
        )
        data: list[list[Any]] = Field(description="rows of values, in the columns' order")

    columns_fields: dict[str, Any] = {
        f"column_{i}": (
            _list_of(_PYTHON_TYPES[c.kind]) | None,
            Field(default=None, alias=c.name, title=c.name),
        )
        for i, c in enumerate(schema.columns)
    }
    column_lists = create_model(
        "ColumnLists",
        __config__=ConfigDict(populate_by_name=True, title="ColumnLists", extra="allow"),
        **columns_fields,
    )
    example_row = example_record(schema)
    records = _list_of(record)
    keys: dict[str, Any] = {
        "dataframe_split": (DataframeSplit | None, None),
        "dataframe_records": (records | None, None),
        "instances": (records | None, None),
        "inputs": (column_lists | records | None, None),
    }
    request = create_model(
        "ScoringRequest",
        __config__=ConfigDict(
            title="ScoringRequest",
            json_schema_extra={
                "description": "exactly one of the four keys, as `mlflow models serve` takes",
                "example": {
                    "dataframe_split": {
                        "columns": list(example_row),
                        "data": [list(example_row.values())],
                    }
                },
            },
        ),
        **keys,
    )

    class ScoringResponse(BaseModel):
        predictions: list[Any]

    return _raw_body_spec("ScoringInput", request), _output_spec(ScoringResponse)


def _list_of(item_type: Any) -> Any:
    """``list[item_type]`` for a type made at run time."""
    return types.GenericAlias(list, (item_type,))


def _output_spec(model: type[BaseModel]) -> type[IODescriptor]:
    spec: type[IODescriptor] = create_model(
        model.__name__, __base__=(IODescriptor, model), __module__=__name__
    )
    return spec


def describe_apis(apis: Mapping[str, Any], schema: InputSchema, model_label: str) -> None:
    """Give the service's APIs the input and output types of the model just loaded (the
    OpenAPI page and ``/schema.json`` are generated from them on each request)."""
    columns = ", ".join(f"{c.name} ({c.kind})" for c in schema.columns) or "any (no signature)"
    for name, (input_spec, output_spec), doc in (
        (
            "predict",
            predict_specs(schema),
            f"Predict with {model_label}: a JSON array of records (or one record). "
            f"Columns: {columns}.",
        ),
        (
            "invocations",
            invocations_specs(schema),
            f"MLflow's scoring protocol for {model_label}: one of dataframe_split, "
            f"dataframe_records, instances, inputs. Columns: {columns}.",
        ),
    ):
        api = apis[name]
        api.input_spec = input_spec
        api.output_spec = output_spec
        api.doc = doc
