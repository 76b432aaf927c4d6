"""``modelyard operator``: run the ModelDeployment operator."""

from __future__ import annotations

from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the ``operator`` command to the top-level CLI."""

    @app.command("operator")
    def run_operator(
        namespace: Annotated[
            list[str] | None,
            typer.Option(
                "--namespace",
                "-n",
                help="Watch only this namespace (repeatable; glob patterns allowed). "
                "Default: all namespaces.",
            ),
        ] = None,
        liveness: Annotated[
            str | None,
            typer.Option(
                help="Serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz.",
            ),
        ] = "http://0.0.0.0:8080/healthz",
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    ) -> None:
        """Run the Kopf operator that reconciles ModelDeployment resources.

        It uses the in-cluster service account, or $KUBECONFIG outside a cluster.
        """
        from modelyard.operator.runtime import run

        run(namespaces=namespace or [], liveness=liveness, verbose=verbose)
