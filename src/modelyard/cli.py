"""The ``modelyard`` command line.

Each component contributes its own sub-command group; heavy libraries (mlflow, bentoml,
evidently) are imported inside the commands, so ``modelyard --help`` stays fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

from modelyard._version import __version__

app = typer.Typer(
    name="modelyard",
    help=(
        "Kubernetes-native MLOps: serve MLflow registry models with BentoML through a Kopf "
        "operator, run data and training pipelines as CronJobs, and check live drift."
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"modelyard {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version_callback,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Kubernetes-native MLOps toolkit."""


def _register_components() -> None:
    # Imported here, not at module top, so that a component's import error names the
    # component instead of breaking `modelyard --version`.
    from modelyard.operator.cli import register as register_operator

    register_operator(app)

    from modelyard.serving.cli import register as register_serving

    register_serving(app)

    from modelyard.pipelines.cli import register as register_pipelines

    register_pipelines(app)

    from modelyard.pipelines.drift.cli import register as register_drift

    register_drift(app)


_register_components()


def main() -> None:
    """Console-script entry point."""
    app()
