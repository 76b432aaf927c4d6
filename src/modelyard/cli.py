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


#: Each component's CLI module, and the image that carries it: an image installs only
#: its own component, so `modelyard` there offers only that component's commands.
COMPONENT_CLIS = (
    ("modelyard.operator", "modelyard.operator.cli"),
    ("modelyard.serving", "modelyard.serving.cli"),
    ("modelyard.pipelines", "modelyard.pipelines.cli"),
    ("modelyard.pipelines", "modelyard.pipelines.drift.cli"),
    ("modelyard.pipelines", "modelyard.pipelines.registry_cli"),
    ("modelyard.pipelines", "modelyard.pipelines.shadow_cli"),
)


def _register_components() -> None:
    import importlib

    for package, module in COMPONENT_CLIS:
        try:
            cli = importlib.import_module(module)
        except ModuleNotFoundError as error:
            # Not installed here (an image of another component). Any other missing module
            # is a real error and is raised, naming the component.
            if error.name != package:
                raise
            continue
        cli.register(app)


_register_components()


def main() -> None:
    """Console-script entry point."""
    app()
