"""``modelyard serve``: run the model server locally or as the image's entrypoint."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from modelyard.core.contracts import SERVER_PORT, ServerEnv

SERVICE_IMPORT_PATH = "modelyard.serving.service:ModelServer"


def build_server_environment(
    *,
    model_uri: str | None,
    prediction_log: str | None,
    workers: int | None,
    model_cache: str | None = None,
    max_latency_ms: int | None,
    max_batch_requests: int | None,
    access_log: bool,
    base: dict[str, str],
) -> dict[str, str]:
    """The environment the BentoML server reads: options override inherited variables."""
    env = dict(base)
    options = {
        ServerEnv.MODEL_URI: model_uri,
        ServerEnv.PREDICTION_LOG: prediction_log,
        ServerEnv.MODEL_CACHE: model_cache,
        ServerEnv.WORKERS: workers,
        ServerEnv.MAX_LATENCY_MS: max_latency_ms,
        ServerEnv.MAX_BATCH_REQUESTS: max_batch_requests,
    }
    env.update({name: str(value) for name, value in options.items() if value is not None})
    if access_log:
        env[ServerEnv.ACCESS_LOG] = "1"
    # No usage tracking: servers often run where nothing may leave the network.
    env.setdefault("BENTOML_DO_NOT_TRACK", "True")
    return env


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to the top-level CLI."""

    @app.command("serve")
    def serve(
        model_uri: Annotated[
            str | None,
            typer.Option(
                "--model-uri",
                "-m",
                help="models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/PATH or a "
                "local path. Default: $MODELYARD_MODEL_URI.",
            ),
        ] = None,
        port: Annotated[int, typer.Option("--port", "-p", help="Port to listen on.")] = SERVER_PORT,
        host: Annotated[str, typer.Option(help="Address to bind.")] = "0.0.0.0",
        prediction_log: Annotated[
            str | None,
            typer.Option(
                help="fsspec URL under which to append the prediction log as Parquet "
                "(e.g. /data/predictions or s3://bucket/predictions). "
                "Default: $MODELYARD_PREDICTION_LOG, or no log.",
            ),
        ] = None,
        model_cache: Annotated[
            str | None,
            typer.Option(
                help="fsspec URL of the model cache (a directory, s3://bucket/prefix): a "
                "models:/NAME/VERSION downloaded from the registry is kept there, and "
                "loaded from there when the registry cannot be reached. "
                "Default: $MODELYARD_MODEL_CACHE, or no cache.",
            ),
        ] = None,
        workers: Annotated[
            int | None,
            typer.Option(min=1, help="Worker processes (each loads the model). Default 1."),
        ] = None,
        max_latency_ms: Annotated[
            int | None,
            typer.Option(
                min=1,
                help="Adaptive batching: refuse (503) requests that cannot be answered "
                "within this time. Default 1000.",
            ),
        ] = None,
        max_batch_requests: Annotated[
            int | None,
            typer.Option(min=1, help="Adaptive batching: most requests per model call."),
        ] = None,
        access_log: Annotated[
            bool, typer.Option("--access-log", help="Log every HTTP request.")
        ] = False,
    ) -> None:
        """Serve an MLflow model over HTTP in three protocols: BentoML's (POST /predict,
        with the OpenAPI page at /), MLflow's scoring protocol (POST /invocations) and the
        Open Inference Protocol (POST /v2/models/NAME/infer); also /readyz and /metrics.

        The MLflow tracking server and its credentials come from MLFLOW_TRACKING_URI,
        MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN, as MLflow reads them.
        """
        env = build_server_environment(
            model_uri=model_uri,
            prediction_log=prediction_log,
            model_cache=model_cache,
            workers=workers,
            max_latency_ms=max_latency_ms,
            max_batch_requests=max_batch_requests,
            access_log=access_log,
            base=dict(os.environ),
        )
        if not env.get(ServerEnv.MODEL_URI):
            raise typer.BadParameter(
                "give the model with --model-uri or $MODELYARD_MODEL_URI",
                param_hint="--model-uri",
            )
        argv = [
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            SERVICE_IMPORT_PATH,
            "--host",
            host,
            "--port",
            str(port),
        ]
        # exec, not a child: in a container BentoML then runs as PID 1 and
        # receives SIGTERM itself, which is what drains requests and flushes the log.
        os.execve(sys.executable, argv, env)
