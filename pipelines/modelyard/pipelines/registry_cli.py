"""``modelyard registry init-users|grant``: the registry's users and their grants."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()
error_console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Add the ``registry`` command group to the top-level CLI."""
    from modelyard.core import contracts as c
    from modelyard.pipelines import registry_accounts as accounts

    registry_app = typer.Typer(
        help=(
            "The MLflow registry's users: create them from the credentials Secret, and "
            "grant the operator and the drift checks what they need on a model "
            "(docs/security.md)."
        ),
        no_args_is_help=True,
    )
    app.add_typer(registry_app, name="registry")

    @registry_app.command("init-users")
    def init_users_command(
        credentials: Annotated[
            Path,
            typer.Option(
                "--credentials",
                help="Directory with the credentials Secret's keys as files "
                "(admin-password, operator-password, ...).",
            ),
        ] = accounts.DEFAULT_CREDENTIALS_DIR,
        database_uri: Annotated[
            str | None,
            typer.Option(
                "--database-uri",
                help="MLflow's auth database; default: database_uri of the file "
                "MLFLOW_AUTH_CONFIG_PATH names.",
            ),
        ] = None,
    ) -> None:
        """Create (or re-password) the admin and component users before `mlflow server
        --app-name basic-auth` starts; migrates the auth database first. Idempotent."""
        try:
            report = accounts.init_users(accounts.read_passwords(credentials), database_uri)
        except accounts.AccountsError as error:
            error_console.print(f"[red]error:[/red] {error}")
            raise typer.Exit(2) from None
        for what, users in (
            ("created", report.created),
            ("password updated", report.updated),
            ("unchanged", report.unchanged),
        ):
            if users:
                console.print(f"{what}: {', '.join(users)}")

    @registry_app.command("grant")
    def grant_command(
        model: Annotated[str, typer.Argument(help="Registered model name.")],
        user: Annotated[
            list[str] | None,
            typer.Option(
                "--user",
                help="User to grant (repeatable); default: the operator's and the drift "
                "checks' users.",
            ),
        ] = None,
        permission: Annotated[
            str, typer.Option("--permission", help="READ, USE, EDIT or MANAGE.")
        ] = "EDIT",
        tracking_uri: Annotated[
            str,
            typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", help="The registry."),
        ] = "",
    ) -> None:
        """Grant users a permission on a model registered by someone else than the
        pipelines (which grant it themselves). Your credentials come from
        MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD and need MANAGE on it."""
        if not tracking_uri:
            error_console.print("[red]error:[/red] set --tracking-uri or MLFLOW_TRACKING_URI")
            raise typer.Exit(2)
        users = user or list(c.RegistryUsers.MODEL_EDITORS)
        try:
            granted = accounts.grant_model(tracking_uri, model, users, permission.upper())
        except accounts.AccountsError as error:
            error_console.print(f"[red]error:[/red] {error}")
            raise typer.Exit(1) from None
        held = [u for u in users if u not in granted]
        console.print(
            f"{permission.upper()} on {model!r}: granted to {', '.join(granted) or 'nobody new'}"
            + (f"; already held by {', '.join(held)}" if held else "")
        )
