"""The Open Inference Protocol ("V2": KServe, Triton, MLServer), REST, for tabular models.

Routes, for the one model the server serves (``{name}`` is its registered name)::

    GET  /v2/health/live    GET /v2/health/ready    GET /v2          (server metadata)
    GET  /v2/models/{name}[/versions/{version}]              model metadata
    GET  /v2/models/{name}[/versions/{version}]/ready
    POST /v2/models/{name}[/versions/{version}]/infer

An inference request names its inputs in one of two ways:

- **columnar**, as MLServer does for tabular models: one input per column of the MLflow
  signature, named after it, of shape ``[N]`` or ``[N, 1]``;
- **one tensor** of shape ``[N, C]`` whose ``C`` columns are the signature's, in order.

``data`` is JSON (flat in row-major order, or nested), or raw bytes in Triton's binary
tensor extension (``Inference-Header-Content-Length``), which ``tritonclient`` sends by
default. Either way the request becomes the same validated columns as ``/predict`` and
``/invocations``, so the batcher, the metrics and the prediction log treat it alike.
Errors are ``{"error": "..."}`` with a 4xx status and name the input at fault.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelyard._version import __version__
from modelyard.core import contracts as c
from modelyard.serving.payload import (
    Array,
    ColumnSpec,
    InputSchema,
    ModelInput,
    PayloadError,
    decode_json,
)

if TYPE_CHECKING:
    from modelyard.serving.service import ServingRuntime

#: The header of Triton's binary tensor extension: the JSON part's length in bytes.
BINARY_HEADER = "inference-header-content-length"
#: Default output name when the model's signature does not name its output (as KServe's
#: and MLServer's metadata call it).
DEFAULT_OUTPUT = "output-0"

_FLOATS = ("FP16", "FP32", "FP64")
_INTEGERS = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
_NUMPY_TYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    **{name: np.dtype(name.lower().replace("fp", "float")) for name in _FLOATS},
    **{name: np.dtype(name.lower()) for name in _INTEGERS},
    "BYTES": np.object_,
}
DATATYPES = tuple(_NUMPY_TYPES)

#: How each MLflow column type is described, and which V2 datatypes it accepts (numbers
#: of any width: the values themselves are checked as for the other endpoints).
_DATATYPE_OF_KIND = {
    "double": "FP64",
    "float": "FP32",
    "long": "INT64",
    "integer": "INT32",
    "boolean": "BOOL",
    "string": "BYTES",
    "binary": "BYTES",
    "datetime": "BYTES",
}
_ACCEPTS = {
    "double": _FLOATS + _INTEGERS,
    "float": _FLOATS + _INTEGERS,
    "long": _INTEGERS + _FLOATS,
    "integer": _INTEGERS + _FLOATS,
    "boolean": ("BOOL",),
    "string": ("BYTES",),
    "binary": ("BYTES",),
    "datetime": ("BYTES",),
}


def datatype_of_kind(kind: str) -> str:
    return _DATATYPE_OF_KIND[kind]


def datatype_of_array(values: Array) -> str:
    """The V2 datatype of a numpy array (strings and other objects are BYTES)."""
    kind = values.dtype.kind
    if kind == "b":
        return "BOOL"
    if kind in "iu":
        return f"{'U' if kind == 'u' else ''}INT{values.dtype.itemsize * 8}"
    if kind == "f":
        return f"FP{values.dtype.itemsize * 8}"
    return "BYTES"


class V2Error(PayloadError):
    """A request the protocol refuses; ``status`` is a 4xx."""


@dataclass(frozen=True)
class OutputSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]


def describe_outputs(output_schema: Any) -> tuple[OutputSpec, ...]:
    """The model's outputs as its MLflow output schema names them; empty when it has none
    (the answer then says what came out: one output, :data:`DEFAULT_OUTPUT`)."""
    if output_schema is None:
        return ()
    specs = list(output_schema.inputs)
    if output_schema.is_tensor_spec():
        outputs = []
        for position, spec in enumerate(specs):
            values = np.empty(0, dtype=spec.type)
            shape = tuple(int(d) for d in spec.shape) if spec.shape else (-1,)
            name = spec.name or (DEFAULT_OUTPUT if position == 0 else f"output-{position}")
            outputs.append(OutputSpec(name, datatype_of_array(values), shape))
        return tuple(outputs)
    kinds = [getattr(spec.type, "name", str(spec.type)) for spec in specs]
    if len(specs) == 1:
        return (
            OutputSpec(
                specs[0].name or DEFAULT_OUTPUT, _DATATYPE_OF_KIND.get(kinds[0], "BYTES"), (-1,)
            ),
        )
    if all(spec.name for spec in specs):
        return tuple(
            OutputSpec(spec.name, _DATATYPE_OF_KIND.get(kind, "BYTES"), (-1,))
            for spec, kind in zip(specs, kinds, strict=True)
        )
    return (OutputSpec(DEFAULT_OUTPUT, "BYTES", (-1, len(specs))),)


# ---------------------------------------------------------------------- requests
@dataclass(frozen=True)
class InferRequest:
    model_input: ModelInput
    #: The request's ``id``, echoed in the answer.
    id: str | None
    #: The outputs the request asked for (none: all of them).
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class _Tensor:
    name: str
    shape: tuple[int, ...]
    datatype: str
    values: list[Any]


def _flatten(data: list[Any]) -> list[Any]:
    """Nested lists in row-major order -> one flat list (flat data stays as it is)."""
    if not any(isinstance(item, list) for item in data):
        return data
    flat: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _bytes_tensor(raw: bytes, name: str) -> list[bytes]:
    """Triton's BYTES encoding: each element is a 4-byte little-endian length, then bytes."""
    values: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise V2Error(f"input '{name}': truncated BYTES element at byte {offset}")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise V2Error(f"input '{name}': truncated BYTES element at byte {offset}")
        values.append(raw[offset : offset + length])
        offset += length
    return values


def _read_tensor(
    spec: Any, position: int, binary: memoryview | None, offset: int
) -> tuple[_Tensor, int]:
    """One entry of ``inputs``, checked; returns it and the offset of the next binary part."""
    if not isinstance(spec, dict):
        raise V2Error(f"inputs[{position}] must be an object, got {type(spec).__name__}")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise V2Error(f"inputs[{position}] has no 'name'")
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise V2Error(f"input '{name}': 'shape' must be a list of non-negative integers")
    datatype = spec.get("datatype")
    if datatype not in _NUMPY_TYPES:
        raise V2Error(
            f"input '{name}': unknown datatype {datatype!r} (one of {', '.join(DATATYPES)})"
        )
    size = math.prod(shape)
    parameters = spec.get("parameters") or {}
    binary_size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if binary_size is not None:
        if binary is None:
            raise V2Error(
                f"input '{name}' has binary_data_size but the request has no "
                "Inference-Header-Content-Length header"
            )
        if type(binary_size) is not int or binary_size < 0 or offset + binary_size > len(binary):
            raise V2Error(f"input '{name}': binary_data_size {binary_size!r} exceeds the body")
        raw = bytes(binary[offset : offset + binary_size])
        offset += binary_size
        if datatype == "BYTES":
            values: list[Any] = _bytes_tensor(raw, name)
        else:
            dtype = np.dtype(_NUMPY_TYPES[datatype]).newbyteorder("<")
            if binary_size % dtype.itemsize:
                raise V2Error(
                    f"input '{name}': {binary_size} bytes is not a whole number of "
                    f"{datatype} values"
                )
            values = np.frombuffer(raw, dtype=dtype).tolist()
    else:
        data = spec.get("data")
        if not isinstance(data, list):
            raise V2Error(f"input '{name}': 'data' must be a list of values")
        values = _flatten(data)
    if len(values) != size:
        raise V2Error(
            f"input '{name}': shape {shape} holds {size} values but the data has {len(values)}"
        )
    return _Tensor(name, tuple(shape), datatype, values), offset


def _as_json_values(tensor: _Tensor, column: ColumnSpec) -> list[Any]:
    """The tensor's values as the column expects them (bytes from the binary extension
    become text, or base64 for a binary column)."""
    values = tensor.values
    if tensor.datatype == "BYTES" and values and isinstance(values[0], bytes):
        if column.kind == "binary":
            return [base64.b64encode(v).decode("ascii") for v in values]
        try:
            return [v.decode("utf-8") for v in values]
        except UnicodeDecodeError as exc:
            raise V2Error(f"input '{tensor.name}': BYTES values are not UTF-8 text") from exc
    return values


def _check_datatype(tensor: _Tensor, column: ColumnSpec) -> None:
    if tensor.datatype not in _ACCEPTS[column.kind]:
        raise V2Error(
            f"input '{tensor.name}': datatype {tensor.datatype} does not fit column "
            f"'{column.name}' ({column.kind}); send {_DATATYPE_OF_KIND[column.kind]}"
        )


def _rows_of(tensor: _Tensor) -> int:
    if len(tensor.shape) == 1 or (len(tensor.shape) == 2 and tensor.shape[1] == 1):
        return tensor.shape[0]
    raise V2Error(
        f"input '{tensor.name}': shape {list(tensor.shape)} is not a column: send [N] or "
        "[N, 1] per column, or one input of shape [N, number of columns]"
    )


def _columnar(tensors: list[_Tensor], schema: InputSchema) -> ModelInput:
    rows = {tensor.name: _rows_of(tensor) for tensor in tensors}
    if len(set(rows.values())) > 1:
        raise V2Error(f"the inputs have different numbers of rows: {rows}")
    n_rows = next(iter(rows.values()))
    if n_rows == 0:
        raise V2Error("no input rows: send at least one row")
    by_name = {tensor.name: tensor for tensor in tensors}
    if len(by_name) != len(tensors):
        raise V2Error("an input is named twice")
    if not schema.columns:
        return ModelInput(
            {t.name: np.asarray(t.values, dtype=_NUMPY_TYPES[t.datatype]) for t in tensors},
            n_rows,
        )
    unknown = [name for name in by_name if name not in schema.names]
    if unknown:
        raise V2Error(
            f"unknown input '{unknown[0]}' (the model's inputs: {', '.join(schema.names)})"
        )
    columns: dict[str, Array] = {}
    for column in schema.columns:
        tensor = by_name.get(column.name)
        if tensor is None:
            if not column.required:
                columns[column.name] = np.full(n_rows, None, dtype=object)
                continue
            raise V2Error(
                f"missing input '{column.name}' (the model's inputs: {', '.join(schema.names)})"
            )
        _check_datatype(tensor, column)
        columns[column.name] = column.convert(_as_json_values(tensor, column))
    return ModelInput(columns, n_rows)


def _single_tensor(tensor: _Tensor, schema: InputSchema) -> ModelInput:
    if not schema.columns:
        raise V2Error(
            f"input '{tensor.name}' is not a column name, and the model has no signature "
            "to name a tensor's columns: send one input per column"
        )
    width = len(schema.columns)
    if len(tensor.shape) != 2 or tensor.shape[1] != width:
        raise V2Error(
            f"input '{tensor.name}' is not a column of the model, so it must be one tensor "
            f"of shape [N, {width}] with the columns {', '.join(schema.names)} in this "
            f"order; got shape {list(tensor.shape)}"
        )
    n_rows = tensor.shape[0]
    if n_rows == 0:
        raise V2Error("no input rows: send at least one row")
    columns: dict[str, Array] = {}
    for position, column in enumerate(schema.columns):
        _check_datatype(tensor, column)
        values = _as_json_values(tensor, column)[position::width]
        try:
            columns[column.name] = column.convert(values)
        except PayloadError as exc:
            raise V2Error(f"input '{tensor.name}': {exc.message}", exc.status) from exc
    return ModelInput(columns, n_rows)


def parse_infer_request(
    body: bytes, schema: InputSchema, json_length: int | None = None
) -> InferRequest:
    """``POST .../infer``: the request's columns, checked against the model's signature.

    ``json_length`` is the Inference-Header-Content-Length header of the binary tensor
    extension: the body's first ``json_length`` bytes are the JSON request, the rest the
    inputs' raw data in the order of ``inputs``.
    """
    binary: memoryview | None = None
    if json_length is not None:
        if not 0 < json_length <= len(body):
            raise V2Error(
                f"Inference-Header-Content-Length {json_length} does not fit a body of "
                f"{len(body)} bytes"
            )
        binary = memoryview(body)[json_length:]
        body = body[:json_length]
    document = decode_json(body)
    if not isinstance(document, dict):
        raise V2Error(f"expected a JSON object with 'inputs', got {type(document).__name__}")
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise V2Error("'inputs' must be a non-empty list of input tensors")
    tensors = []
    offset = 0
    for position, spec in enumerate(inputs):
        tensor, offset = _read_tensor(spec, position, binary, offset)
        tensors.append(tensor)
    only = tensors[0] if len(tensors) == 1 else None
    # One input that is not a column, or that is several columns wide: a tensor.
    if only is not None and (
        (schema.columns and only.name not in schema.names)
        or (len(only.shape) == 2 and only.shape[1] > 1)
    ):
        model_input = _single_tensor(only, schema)
    else:
        model_input = _columnar(tensors, schema)
    request_id = document.get("id")
    return InferRequest(
        model_input,
        str(request_id) if request_id is not None else None,
        _requested_outputs(document.get("outputs")),
    )


def _requested_outputs(outputs: Any) -> tuple[str, ...]:
    if outputs is None:
        return ()
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise V2Error("'outputs' must be a list of objects with a 'name'")
    return tuple(o["name"] for o in outputs)


# ---------------------------------------------------------------------- answers
def _output(name: str, values: Array) -> dict[str, Any]:
    datatype = datatype_of_array(values)
    flat = values.reshape(-1)
    data: list[Any] = [str(v) for v in flat] if datatype == "BYTES" else flat.tolist()
    return {"name": name, "shape": list(values.shape), "datatype": datatype, "data": data}


def render_outputs(predictions: Array, described: Sequence[OutputSpec]) -> list[dict[str, Any]]:
    """The predictions as V2 outputs: one per named output column, else one tensor."""
    if predictions.ndim == 2 and len(described) == predictions.shape[1] > 1:
        return [_output(spec.name, predictions[:, i]) for i, spec in enumerate(described)]
    name = described[0].name if described else DEFAULT_OUTPUT
    return [_output(name, predictions)]


def output_names(described: Sequence[OutputSpec]) -> tuple[str, ...]:
    return tuple(spec.name for spec in described) or (DEFAULT_OUTPUT,)


def error_response(status: int, message: str, request_id: str | None = None) -> JSONResponse:
    """The protocol's error shape."""
    headers = {"X-Request-ID": request_id} if request_id else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


# ---------------------------------------------------------------------- routes
def routes(runtime: Callable[[], ServingRuntime]) -> list[Route]:
    """The protocol's routes, answering for the model ``runtime()`` serves."""
    models = c.V2_PREFIX + "/models/{name}"
    described: dict[int, tuple[OutputSpec, ...]] = {}

    def outputs_of(served: ServingRuntime) -> tuple[OutputSpec, ...]:
        key = id(served.model)
        if key not in described:
            described[key] = describe_outputs(
                served.model.pyfunc_model.metadata.get_output_schema()
            )
        return described[key]

    versioned = models + "/versions/{version}"

    def model_of(request: Request) -> tuple[ServingRuntime, Response | None]:
        served = runtime()
        identity = served.model.identity
        name = request.path_params["name"]
        version = request.path_params.get("version")
        if name != identity.name:
            return served, error_response(
                404,
                f"unknown model '{name}': this server serves '{identity.name}' "
                f"(version {identity.version})",
            )
        if version is not None and version != identity.version:
            return served, error_response(
                404,
                f"unknown version '{version}' of '{name}': this server serves version "
                f"{identity.version}",
            )
        return served, None

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        is_ready = runtime().ready
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)

    async def server_metadata(request: Request) -> Response:
        return JSONResponse({"name": "modelyard", "version": __version__, "extensions": []})

    async def model_metadata(request: Request) -> Response:
        served, refused = model_of(request)
        if refused is not None:
            return refused
        model = served.model
        outputs = outputs_of(served)
        return JSONResponse(
            {
                "name": model.identity.name,
                "versions": [model.identity.version],
                "platform": "mlflow",
                "inputs": [
                    {"name": col.name, "datatype": datatype_of_kind(col.kind), "shape": [-1, 1]}
                    for col in model.schema.columns
                ],
                "outputs": [
                    {"name": o.name, "datatype": o.datatype, "shape": list(o.shape)}
                    for o in outputs
                ],
                # MLServer's codecs read this: the inputs are the columns of one frame.
                "parameters": {"content_type": "pd"},
            }
        )

    async def model_ready(request: Request) -> Response:
        served, refused = model_of(request)
        if refused is not None:
            return refused
        return JSONResponse(
            {"name": served.model.identity.name, "ready": served.ready},
            status_code=200 if served.ready else 503,
        )

    async def infer(request: Request) -> Response:
        served, refused = model_of(request)
        if refused is not None:
            return refused
        identity = served.model.identity
        outputs_described = outputs_of(served)
        header = request.headers.get(BINARY_HEADER)
        if header is not None and not header.isdigit():
            return error_response(
                400, f"Inference-Header-Content-Length {header!r} is not a number"
            )
        json_length = int(header) if header is not None else None
        parsed: list[InferRequest] = []

        def parse(body: bytes, schema: InputSchema) -> ModelInput:
            infer_request = parse_infer_request(body, schema, json_length)
            known = output_names(outputs_described)
            unknown = sorted(set(infer_request.outputs) - set(known))
            if unknown:
                raise V2Error(
                    f"unknown output '{unknown[0]}' (the model's outputs: {', '.join(known)})"
                )
            parsed.append(infer_request)
            return infer_request.model_input

        def render(predictions: Array, request_id: str) -> dict[str, Any]:
            outputs = render_outputs(predictions, outputs_described)
            wanted = parsed[0].outputs
            if wanted:
                outputs = [o for o in outputs if o["name"] in wanted]
            return {
                "model_name": identity.name,
                "model_version": identity.version,
                "id": parsed[0].id or request_id,
                "outputs": outputs,
            }

        return await served.score(request, V2_INFER_ENDPOINT, parse, render, error_response)

    return [
        Route(c.V2_PREFIX + "/health/live", live, methods=["GET"]),
        Route(c.V2_PREFIX + "/health/ready", ready, methods=["GET"]),
        Route(c.V2_PREFIX, server_metadata, methods=["GET"]),
        Route(models, model_metadata, methods=["GET"]),
        Route(versioned, model_metadata, methods=["GET"]),
        Route(models + "/ready", model_ready, methods=["GET"]),
        Route(versioned + "/ready", model_ready, methods=["GET"]),
        Route(models + "/infer", infer, methods=["POST"]),
        Route(versioned + "/infer", infer, methods=["POST"]),
    ]


#: The ``endpoint`` label of V2 inference requests in the server's metrics.
V2_INFER_ENDPOINT = c.V2_PREFIX + "/models/{name}/infer"
