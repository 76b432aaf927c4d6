"""Request bodies in, validated model input out.

Both endpoints end in the same place: one numpy array per input column, checked against
the model's MLflow signature. Each request stays a dict of arrays (no per-request
DataFrame); the batcher concatenates columns and builds one frame per model call.

Every problem a client can cause raises :class:`PayloadError` with an HTTP status and a
message that names the problem, so bad input never turns into a 500.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

# MLflow's scoring protocol (mlflow.pyfunc.scoring_server).
DATAFRAME_SPLIT = "dataframe_split"
DATAFRAME_RECORDS = "dataframe_records"
INSTANCES = "instances"
INPUTS = "inputs"
SCORING_FORMATS = (DATAFRAME_SPLIT, DATAFRAME_RECORDS, INSTANCES, INPUTS)

Array = npt.NDArray[Any]


class PayloadError(Exception):
    """The client sent something the server cannot score; ``status`` is a 4xx."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _is_number(value: object) -> bool:
    # bool is an int subclass; JSON true is not a number.
    return (type(value) is float or type(value) is int) and not isinstance(value, bool)


def _is_integral(value: object) -> bool:
    if type(value) is int:
        return True
    return type(value) is float and math.isfinite(value) and value.is_integer()


def _is_bool(value: object) -> bool:
    return type(value) is bool


def _is_str(value: object) -> bool:
    return type(value) is str


def _to_binary(values: list[Any]) -> Array:
    return np.array([base64.b64decode(v, validate=True) for v in values], dtype=object)


def _to_datetime(values: list[Any]) -> Array:
    return np.array(values, dtype="datetime64[us]")


@dataclass(frozen=True)
class _Kind:
    """How one MLflow DataType is checked and converted."""

    description: str
    accepts: Callable[[object], bool]
    convert: Callable[[list[Any]], Array]


_KINDS: dict[str, _Kind] = {
    "double": _Kind("a number", _is_number, lambda v: np.asarray(v, dtype=np.float64)),
    "float": _Kind("a number", _is_number, lambda v: np.asarray(v, dtype=np.float32)),
    "long": _Kind("an integer", _is_integral, lambda v: np.asarray(v, dtype=np.int64)),
    "integer": _Kind("an integer", _is_integral, lambda v: np.asarray(v, dtype=np.int32)),
    "boolean": _Kind("true or false", _is_bool, lambda v: np.asarray(v, dtype=np.bool_)),
    "string": _Kind("a string", _is_str, lambda v: np.asarray(v, dtype=object)),
    "binary": _Kind("a base64 string", _is_str, _to_binary),
    "datetime": _Kind("an ISO 8601 date-time string", _is_str, _to_datetime),
}


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    kind: str  # an MLflow DataType name: double, long, string, ...
    required: bool = True

    def convert(self, values: list[Any], row_offset: int = 0) -> Array:
        kind = _KINDS[self.kind]
        accepts = kind.accepts
        for position, value in enumerate(values):
            if not accepts(value):
                shown = json.dumps(value)
                if len(shown) > 40:
                    shown = shown[:37] + "..."
                raise PayloadError(
                    f"column '{self.name}' row {row_offset + position}: expected "
                    f"{kind.description} ({self.kind}), got {shown}"
                )
        try:
            return kind.convert(values)
        except (ValueError, TypeError, OverflowError) as exc:
            raise PayloadError(f"column '{self.name}': cannot read as {self.kind}: {exc}") from exc


@dataclass(frozen=True)
class InputSchema:
    """The columns a model takes, in the order its signature lists them.

    ``columns`` is empty when the model has no signature: then any columns are accepted
    and their types are inferred by numpy.
    """

    columns: tuple[ColumnSpec, ...]

    @property
    def names(self) -> list[str]:
        return [column.name for column in self.columns]

    @classmethod
    def from_mlflow(cls, schema: Any) -> InputSchema:
        """Build from an ``mlflow.types.Schema`` (or ``None`` for no signature)."""
        if schema is None:
            return cls(columns=())
        if not schema.is_tensor_spec() and schema.has_input_names():
            columns = []
            for spec in schema.inputs:
                kind = getattr(spec.type, "name", str(spec.type))
                if kind not in _KINDS:
                    raise ValueError(
                        f"column '{spec.name}' has type {spec.type}, which this server does "
                        f"not accept (supported: {', '.join(sorted(_KINDS))})"
                    )
                columns.append(ColumnSpec(spec.name, kind, bool(getattr(spec, "required", True))))
            return cls(columns=tuple(columns))
        raise ValueError(
            "the model's signature is tensor-based or unnamed; this server serves models "
            "with a column-based (tabular) signature or no signature"
        )


@dataclass(frozen=True)
class ModelInput:
    """One request's rows, validated: column name -> 1-D array, all of length ``n_rows``."""

    columns: dict[str, Array]
    n_rows: int


def _check_rows(n_rows: int) -> None:
    if n_rows == 0:
        raise PayloadError("no input rows: send at least one row")


def _from_records(records: Sequence[Any], schema: InputSchema, where: str) -> ModelInput:
    _check_rows(len(records))
    for position, record in enumerate(records):
        if not isinstance(record, dict):
            raise PayloadError(
                f"{where} row {position}: expected an object of column values, "
                f"got {type(record).__name__}"
            )
    if not schema.columns:
        names = list(dict.fromkeys(key for record in records for key in record))
        return ModelInput(
            {name: np.asarray([record.get(name) for record in records]) for name in names},
            len(records),
        )
    columns: dict[str, Array] = {}
    for column in schema.columns:
        try:
            values = [record[column.name] for record in records]
        except KeyError:
            missing_at = next(i for i, r in enumerate(records) if column.name not in r)
            if not column.required:
                columns[column.name] = np.full(len(records), None, dtype=object)
                continue
            raise PayloadError(
                f"missing column '{column.name}' in {where} row {missing_at} "
                f"(the model expects: {', '.join(schema.names)})"
            ) from None
        columns[column.name] = column.convert(values)
    return ModelInput(columns, len(records))


def _from_rows(
    rows: Sequence[Any], names: Sequence[str], schema: InputSchema, where: str
) -> ModelInput:
    _check_rows(len(rows))
    for position, row in enumerate(rows):
        if not isinstance(row, list):
            raise PayloadError(
                f"{where} row {position}: expected a list of values, got {type(row).__name__}"
            )
        if len(row) != len(names):
            raise PayloadError(
                f"{where} row {position} has {len(row)} values for {len(names)} columns"
            )
    by_name = {name: [row[i] for row in rows] for i, name in enumerate(names)}
    return _from_columns(by_name, schema, where, len(rows))


def _from_columns(
    by_name: Mapping[str, Any], schema: InputSchema, where: str, n_rows: int | None = None
) -> ModelInput:
    lengths = {len(v) if isinstance(v, list) else 1 for v in by_name.values()}
    if len(lengths) > 1:
        raise PayloadError(f"{where}: the columns have different lengths {sorted(lengths)}")
    if n_rows is None:
        n_rows = lengths.pop() if lengths else 0
    _check_rows(n_rows)
    lists = {name: v if isinstance(v, list) else [v] for name, v in by_name.items()}
    if not schema.columns:
        return ModelInput({name: np.asarray(values) for name, values in lists.items()}, n_rows)
    columns: dict[str, Array] = {}
    for column in schema.columns:
        values = lists.get(column.name)
        if values is None:
            if not column.required:
                columns[column.name] = np.full(n_rows, None, dtype=object)
                continue
            raise PayloadError(
                f"missing column '{column.name}' in {where} "
                f"(the model expects: {', '.join(schema.names)})"
            )
        columns[column.name] = column.convert(values)
    return ModelInput(columns, n_rows)


def decode_json(body: bytes) -> Any:
    if not body.strip():
        raise PayloadError("empty request body: send a JSON document")
    try:
        return json.loads(body)
    except UnicodeDecodeError as exc:
        raise PayloadError(f"the body is not UTF-8 text: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise PayloadError(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except RecursionError as exc:
        raise PayloadError("the JSON document is nested too deeply") from exc


def parse_predict_payload(body: bytes, schema: InputSchema) -> ModelInput:
    """``POST /predict``: a JSON array of records, or one record object."""
    document = decode_json(body)
    if isinstance(document, dict):
        return _from_records([document], schema, "record")
    if isinstance(document, list):
        return _from_records(document, schema, "record")
    raise PayloadError(
        f"expected a JSON array of records (objects of column values), "
        f"got {type(document).__name__}"
    )


def _rows_or_records(data: Any, schema: InputSchema, where: str) -> ModelInput:
    if not isinstance(data, list):
        raise PayloadError(f"'{where}' must be a list of rows, got {type(data).__name__}")
    _check_rows(len(data))
    if isinstance(data[0], dict):
        return _from_records(data, schema, where)
    if not schema.columns:
        raise PayloadError(
            f"'{where}' as lists of values needs a model signature to name the columns; "
            "send records (objects) instead"
        )
    if not isinstance(data[0], list) and len(schema.columns) == 1:
        data = [[value] for value in data]
    return _from_rows(data, schema.names, schema, where)


def parse_scoring_payload(body: bytes, schema: InputSchema) -> ModelInput:
    """``POST /invocations``: MLflow's scoring protocol, one of :data:`SCORING_FORMATS`."""
    document = decode_json(body)
    if not isinstance(document, dict):
        raise PayloadError(
            f"expected a JSON object with exactly one of the keys {list(SCORING_FORMATS)}, "
            f"got {type(document).__name__}"
        )
    present = [key for key in SCORING_FORMATS if key in document]
    if len(present) != 1:
        raise PayloadError(
            f"unknown input format: the body must have exactly one of the keys "
            f"{list(SCORING_FORMATS)}; found keys {sorted(document)}"
        )
    key = present[0]
    data = document[key]
    if key == DATAFRAME_SPLIT:
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise PayloadError(
                "'dataframe_split' must be an object with 'data' (a list of rows) and "
                "optionally 'columns'"
            )
        names = data.get("columns", schema.names)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise PayloadError("'dataframe_split.columns' must be a list of column names")
        if not names:
            raise PayloadError("'dataframe_split' has no 'columns' and the model no signature")
        return _from_rows(data["data"], names, schema, key)
    if key == DATAFRAME_RECORDS:
        if not isinstance(data, list):
            raise PayloadError(
                f"'dataframe_records' must be a list of records, got {type(data).__name__}"
            )
        return _from_records(data, schema, key)
    if key == INPUTS and isinstance(data, dict):
        return _from_columns(data, schema, key)
    return _rows_or_records(data, schema, key)


def concat_inputs(inputs: Sequence[ModelInput], names: Sequence[str]) -> dict[str, Array]:
    """Join several requests' columns into one batch, in signature order."""
    if len(inputs) == 1:
        return {name: inputs[0].columns[name] for name in names}
    return {name: np.concatenate([i.columns[name] for i in inputs]) for name in names}
