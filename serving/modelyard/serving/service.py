"""The BentoML model server: ``bentoml serve modelyard.serving.service:ModelServer``.

BentoML runs the process (workers, graceful shutdown, ``/livez``, ``/readyz``,
``/metrics``, the OpenAPI page at ``/``). ``/predict`` and ``/invocations`` are
``@bentoml.api`` methods typed from the model's signature (:mod:`modelyard.serving.bento_api`),
so BentoML's client and the OpenAPI page see them; they read the body with our own parser
so that every error has our shape and status (see :mod:`modelyard.serving.batching` for why
they are not batchable ``@bentoml.api`` methods). The Open Inference Protocol
(:mod:`modelyard.serving.v2`) and MLflow's ``/ping`` and ``/health`` are routes of a small
Starlette app mounted into the service.

The model is loaded when the service instance is created, which BentoML does before the
worker accepts connections: ``/readyz`` answers 200 only once the model is loaded and
warmed up.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable
from typing import Any, cast

import anyio.to_thread
import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from modelyard.core import contracts as c
from modelyard.core.contracts import ServerEnv
from modelyard.core.model_safety import UnsafeModelFormat
from modelyard.core.redaction import redact_text
from modelyard.serving import v2
from modelyard.serving.batching import BatchShed, PredictionBatcher
from modelyard.serving.bento_api import describe_apis, invocations_specs, predict_specs
from modelyard.serving.connections import ConnectionAge
from modelyard.serving.metrics import ServerMetrics
from modelyard.serving.model import ModelUnavailable, ServedModel, predictions_to_json
from modelyard.serving.model_cache import ModelCache
from modelyard.serving.payload import (
    Array,
    InputSchema,
    ModelInput,
    PayloadError,
    parse_predict_payload,
    parse_scoring_payload,
)
from modelyard.serving.prediction_log import LoggedRequest, PredictionLog, utc_now
from modelyard.serving.settings import ServerSettings, max_connection_age

logger = logging.getLogger(__name__)

# Bodies above this size are parsed off the event loop so that one large request does not
# stall the others.
_PARSE_INLINE_BYTES = 256 * 1024
_JSON_MEDIA_TYPES = {"application/json", "text/json"}

Parser = Callable[[bytes, InputSchema], ModelInput]
#: The answer's JSON document from the predictions and the request id.
Renderer = Callable[[Array, str], dict[str, Any]]
ErrorRenderer = Callable[[int, str, str | None], Response]


def error_response(status: int, message: str, request_id: str | None = None) -> JSONResponse:
    # The shape of MLflow's scoring-server errors, so MLflow clients show the message.
    codes = {
        400: "BAD_REQUEST",
        413: "REQUEST_TOO_LARGE",
        415: "UNSUPPORTED_MEDIA_TYPE",
        422: "INVALID_PARAMETER_VALUE",
        503: "TEMPORARILY_UNAVAILABLE",
    }
    headers = {"X-Request-ID": request_id} if request_id else None
    return JSONResponse(
        {"error_code": codes.get(status, "INTERNAL_ERROR"), "message": message},
        status_code=status,
        headers=headers,
    )


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadError(
            f"request body of {declared} bytes is larger than the limit of {limit} bytes", 413
        )
    if declared.isdigit():
        return await request.body()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadError(f"request body is larger than the limit of {limit} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def synthetic_input(schema: InputSchema) -> ModelInput:
    """One row of neutral values, for warming the model and the batcher up."""
    samples: dict[str, Any] = {
        "double": 0.0,
        "float": 0.0,
        "long": 0,
        "integer": 0,
        "boolean": False,
        "string": "",
        "binary": "",
        "datetime": "1970-01-01T00:00:00",
    }
    columns = {c.name: c.convert([samples[c.kind]]) for c in schema.columns}
    return ModelInput(columns, 1)


#: Kubernetes' default terminationMessagePath; it keeps at most 4096 bytes.
TERMINATION_LOG = "/dev/termination-log"


def write_termination_message(error: BaseException) -> None:
    """Why the server stopped, where Kubernetes shows it (the container's termination
    message): the operator turns an ``UnsafeModelFormat: ...`` message into the
    ModelDeployment's condition. Nothing is written outside a pod (no such file)."""
    path = os.environ.get(ServerEnv.TERMINATION_LOG) or TERMINATION_LOG
    if path == TERMINATION_LOG and not os.path.exists(path):
        return
    text = redact_text(str(error) or type(error).__name__)
    try:
        with open(path, "w", encoding="utf-8") as out:
            out.write(text.encode()[:4000].decode(errors="ignore"))
    except OSError:
        logger.warning("could not write the termination message to %s", path)


class ServingRuntime:
    """Everything one worker needs to answer requests: model, batcher, log, metrics."""

    def __init__(self, settings: ServerSettings) -> None:
        # prometheus_client must be imported after BentoML has set PROMETHEUS_MULTIPROC_DIR
        # in the worker, i.e. here and not at module import.
        import prometheus_client

        self.settings = settings
        self.model = ServedModel.load(
            settings.model_uri,
            settings.model_name,
            settings.model_version,
            allow_pickle=settings.allow_pickle,
            cache=ModelCache(settings.model_cache) if settings.model_cache else None,
        )
        identity = self.model.identity
        self.metrics = ServerMetrics(
            identity, prometheus_client.Counter, prometheus_client.Histogram
        )
        self.metrics.count_model_load(self.model.source)
        self.batcher = PredictionBatcher(
            self.model.predict,
            self.model.schema.names,
            max_batch_requests=settings.max_batch_requests,
            max_latency_ms=settings.max_latency_ms,
            predict_timeout=settings.predict_timeout,
            on_batch=self.metrics.observe_batch,
        )
        self.prediction_log: PredictionLog | None = None
        if settings.prediction_log:
            self.prediction_log = PredictionLog(
                settings.prediction_log,
                identity.name,
                identity.version,
                flush_interval=settings.log_flush_interval,
                flush_rows=settings.log_flush_rows,
                max_buffered_bytes=settings.log_max_buffered_bytes,
                on_write_failure=self.metrics.count_log_write_failure,
                on_rows_dropped=self.metrics.count_log_rows_dropped,
            )
            self.prediction_log.start()
        self.model_headers = {"X-Model-Name": identity.name, "X-Model-Version": identity.version}
        self.ready = False
        # Admission: requests being answered and the bytes of their bodies.
        self._in_flight = 0
        self._in_flight_bytes = 0
        # Unique per worker process and cheaper than a uuid4 per request.
        self._request_id_prefix = secrets.token_hex(8)
        self._request_ids = itertools.count()

    def _next_request_id(self) -> str:
        return f"{self._request_id_prefix}{next(self._request_ids):016x}"

    async def warm_up(self) -> None:
        """Run synthetic rows through the batcher: a model's first calls are slow."""
        if not self.model.schema.columns:
            self.ready = True
            return
        try:
            sample = synthetic_input(self.model.schema)
            for group in (1, 1, 1, 4, 16):
                await asyncio.gather(*(self.batcher.predict(sample) for _ in range(group)))
        except Exception as exc:
            # A model may reject neutral values (e.g. an unknown category): not a fault.
            logger.info("warm-up with synthetic rows skipped: %s", exc)
        self.ready = True

    @property
    def alive(self) -> bool:
        """False once a model call hung: ``/livez`` fails and Kubernetes restarts the pod."""
        return self.batcher.hung is None

    def close(self) -> None:
        if self.prediction_log is not None:
            self.prediction_log.close()

    def admit(self, request: Request) -> int | None:
        """Reserve room for a request: the bytes it holds, or None when the server is
        full (too many requests, or too many body bytes, at once)."""
        declared = request.headers.get("content-length", "")
        size = int(declared) if declared.isdigit() else self.settings.max_body_bytes
        size = min(size, self.settings.max_body_bytes)
        if self._in_flight and (
            self._in_flight >= self.settings.max_concurrent_requests
            or self._in_flight_bytes + size > self.settings.max_inflight_bytes
        ):
            return None
        self._in_flight += 1
        self._in_flight_bytes += size
        return size

    def release(self, size: int) -> None:
        self._in_flight -= 1
        self._in_flight_bytes -= size

    async def score(
        self,
        request: Request,
        endpoint: str,
        parse: Parser,
        render: Renderer,
        error_response: ErrorRenderer = error_response,
    ) -> Response:
        started = time.perf_counter()
        request_id = request.headers.get("x-request-id", "")[:128] or self._next_request_id()
        size = self.admit(request)
        if size is None:
            response = error_response(
                503,
                f"the server is busy: {self._in_flight} requests "
                f"({self._in_flight_bytes} body bytes) are being answered "
                "(MODELYARD_MAX_CONCURRENT_REQUESTS, MODELYARD_MAX_INFLIGHT_BYTES)",
                request_id,
            )
            response.headers["Retry-After"] = "1"
            response.headers.update(self.model_headers)
            self.metrics.observe_request(endpoint, 503, time.perf_counter() - started)
            return response
        try:
            response = await self._score(request, endpoint, parse, render, request_id)
        except PayloadError as exc:
            response = error_response(exc.status, exc.message, request_id)
        except BatchShed as exc:
            response = error_response(503, str(exc), request_id)
            response.headers["Retry-After"] = "1"
        except (ValueError, TypeError) as exc:
            # The input matched the signature but the model refused it (e.g. an unseen
            # category): the client can fix that, the server cannot.
            response = error_response(422, f"the model rejected the input: {exc}", request_id)
        except Exception:
            logger.exception("prediction failed (request %s)", request_id)
            response = error_response(500, "internal error while predicting", request_id)
        finally:
            self.release(size)
        response.headers.update(self.model_headers)
        self.metrics.observe_request(endpoint, response.status_code, time.perf_counter() - started)
        return response

    async def _score(
        self,
        request: Request,
        endpoint: str,
        parse: Parser,
        render: Renderer,
        request_id: str,
    ) -> Response:
        started = time.perf_counter()
        body = await read_body(request, self.settings.max_body_bytes)
        media_type = request.headers.get("content-type", "application/json")
        media_type = media_type.split(";")[0].strip().lower()
        if endpoint == "/invocations" and media_type not in _JSON_MEDIA_TYPES:
            raise PayloadError(
                f"unsupported content type '{media_type}': send application/json", 415
            )
        schema = self.model.schema
        if len(body) > _PARSE_INLINE_BYTES:
            model_input = await anyio.to_thread.run_sync(parse, body, schema)
        else:
            model_input = parse(body, schema)
        predictions: Array = await self.batcher.predict(model_input)
        if self.prediction_log is not None:
            # Recorded before the answer is sent: an answered request is always logged.
            self.prediction_log.record(
                LoggedRequest(
                    request_id,
                    utc_now(),
                    model_input.columns,
                    predictions,
                    model_input.n_rows,
                    latency_ms=(time.perf_counter() - started) * 1000.0,
                )
            )
        content = render(predictions, request_id)
        return JSONResponse(content, headers={"X-Request-ID": request_id})


def _runtime() -> ServingRuntime:
    service = bentoml.get_current_service()
    return cast(ServingRuntime, service.runtime)


async def predict_endpoint(request: Request) -> Response:
    runtime = _runtime()
    identity = runtime.model.identity

    def render(predictions: Array, request_id: str) -> dict[str, Any]:
        return {
            "model_name": identity.name,
            "model_version": identity.version,
            "request_id": request_id,
            "predictions": predictions_to_json(predictions),
        }

    return await runtime.score(request, c.PREDICT_PATH, parse_predict_payload, render)


def _render_invocations(predictions: Array, request_id: str) -> dict[str, Any]:
    # Exactly what `mlflow models serve` answers, so MLflow's clients read it unchanged.
    return {"predictions": predictions_to_json(predictions)}


async def invocations_endpoint(request: Request) -> Response:
    return await _runtime().score(
        request, c.INVOCATIONS_PATH, parse_scoring_payload, _render_invocations
    )


async def ping_endpoint(request: Request) -> Response:
    # `mlflow models serve` answers /ping and /health; MLflow's client waits on /ping.
    return PlainTextResponse("\n", status_code=200 if _runtime().ready else 503)


scoring_app = Starlette(
    routes=[
        Route("/ping", ping_endpoint, methods=["GET"]),
        Route("/health", ping_endpoint, methods=["GET"]),
        *v2.routes(_runtime),
    ]
)


def _access_log_config() -> dict[str, Any]:
    if os.environ.get(ServerEnv.ACCESS_LOG, "") in ("1", "true"):
        return {"enabled": True}
    # BentoML's per-request traffic metrics skip the same paths as its access log. With
    # the access log off, skip them on the scoring routes too: modelyard_requests_total
    # and modelyard_request_duration_seconds already count those requests, per model.
    return {
        "enabled": False,
        "skip_paths": [
            c.METRICS_PATH,
            "/healthz",
            c.LIVENESS_PATH,
            c.READINESS_PATH,
            c.PREDICT_PATH,
            c.INVOCATIONS_PATH,
            # The V2 inference routes (startswith: model metadata and readiness too).
            f"{c.V2_PREFIX}/models/",
        ],
    }


@bentoml.service(
    name="modelyard-server",
    workers=int(os.environ.get(ServerEnv.WORKERS, "1")),
    traffic={"timeout": 120},
    # With no exporter configured, BentoML's OpenTelemetry middleware still opens a span per
    # request: about a fifth of the event loop's time on the scoring routes in a profile.
    # MODELYARD_TRACE_REQUESTS=1 keeps them traced when tracing is set up.
    tracing={}
    if os.environ.get(ServerEnv.TRACE_REQUESTS, "") in ("1", "true")
    else {"excluded_urls": f"{c.PREDICT_PATH},{c.INVOCATIONS_PATH},{c.V2_PREFIX}/models/"},
    logging={"access": _access_log_config()},
)
@bentoml.asgi_app(scoring_app, path="/")
class ModelServer:
    """Serves one MLflow model, configured by ``MODELYARD_*`` environment variables."""

    def __init__(self) -> None:
        try:
            self.runtime = ServingRuntime(ServerSettings.from_env())
        except Exception as error:
            # BentoML would restart this worker forever and the server would never be
            # ready; stopping the whole server instead makes a bad model URI or registry
            # a visible crash (CrashLoopBackOff in Kubernetes) with this message in the log,
            # and its first line in the pod's termination message, which the operator reads.
            write_termination_message(error)
            if isinstance(error, UnsafeModelFormat | ModelUnavailable):
                logger.critical("the model server refuses to start: %s", error)
            else:
                logger.critical("the model server cannot start; stopping it", exc_info=True)
            os.kill(os.getppid(), signal.SIGTERM)
            raise
        model = self.runtime.model
        describe_apis(
            cast(Any, ModelServer).apis,
            model.schema,
            f"{model.identity.name} version {model.identity.version}",
        )

    # bentoml's lazy top-level module leaves its decorators untyped for mypy.
    @bentoml.on_startup  # type: ignore[untyped-decorator]
    async def warm_up(self) -> None:
        await self.runtime.warm_up()

    async def __is_ready__(self) -> bool:
        return self.runtime.ready and self.runtime.alive

    async def __is_alive__(self) -> bool:
        return self.runtime.alive

    # The input types below describe a model without a signature; describe_apis() gives
    # them the loaded model's columns. Each method gets the request itself (see bento_api).
    @bentoml.api(  # type: ignore[untyped-decorator]
        route=c.PREDICT_PATH,
        input_spec=predict_specs(InputSchema(columns=()))[0],
        output_spec=predict_specs(InputSchema(columns=()))[1],
    )
    async def predict(self, request: Request, /) -> Response:
        """Predict: a JSON array of records (or one record)."""
        return await predict_endpoint(request)

    @bentoml.api(  # type: ignore[untyped-decorator]
        route=c.INVOCATIONS_PATH,
        input_spec=invocations_specs(InputSchema(columns=()))[0],
        output_spec=invocations_specs(InputSchema(columns=()))[1],
    )
    async def invocations(self, request: Request, /) -> Response:
        """MLflow's scoring protocol, as `mlflow models serve` speaks it."""
        return await invocations_endpoint(request)

    @bentoml.on_shutdown  # type: ignore[untyped-decorator]
    def close(self) -> None:
        logger.info("shutting down: flushing the prediction log")
        self.runtime.close()


# Keep-alive clients reconnect now and then, so the Service places them afresh: on new
# replicas, and on a canary's router once it fronts the servers (serving.connections).
cast(Any, ModelServer).add_asgi_middleware(ConnectionAge, max_age=max_connection_age())
