"""``modelyard registry init-users|grant|webhook ...``: the registry's users, their grants,
and the webhook that tells the operator of alias moves at once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from modelyard.core.contracts import RegistryWebhook

console = Console()
error_console = Console(stderr=True)


_TRACKING_DB = typer.Option(
    "--backend-store-uri",
    envvar="MODELYARD_BACKEND_STORE_URI",
    help="The tracking database (sqlite:////path or postgresql+psycopg://host:port/db; "
    "PostgreSQL's user and password from PGUSER/PGPASSWORD).",
)
_AUTH_DB = typer.Option(
    "--auth-db-uri",
    help="The auth database (users and permissions; database_uri of basic_auth.ini), "
    "if the registry has users.",
)
_ARTIFACTS = typer.Option(
    "--artifacts",
    help="The artifacts directory (`mlflow server --artifacts-destination`: the models' "
    "files), if on a volume.",
)


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

    @registry_app.command("migrate")
    def migrate_command(
        backend_store_uri: Annotated[
            str,
            typer.Option(
                "--backend-store-uri",
                envvar="MODELYARD_BACKEND_STORE_URI",
                help="The tracking database, as `mlflow server --backend-store-uri` takes it "
                "(sqlite:////path or postgresql+psycopg://host:port/db; PostgreSQL's user "
                "and password from PGUSER/PGPASSWORD).",
            ),
        ],
        backup_dir: Annotated[
            Path | None,
            typer.Option(
                "--backup-dir",
                help="Where the backup taken before a migration goes (kept: delete old "
                "ones yourself). Without it, a migration that is due is refused.",
            ),
        ] = None,
    ) -> None:
        """Migrate the tracking database to the schema this MLflow needs, after a
        backup, before `mlflow server` starts (the chart's init container). Does nothing
        when the schema is current; a failure names the backup to restore."""
        from modelyard.pipelines import registry_migrate as m

        try:
            report = m.migrate(backend_store_uri, backup_dir)
        except m.MigrationFailed as error:
            message = f"MigrationFailed: {error}"
            m.write_termination_message(message)
            error_console.print(f"[red]error:[/red] {message}", soft_wrap=True)
            raise typer.Exit(1) from None
        if report.backup is None:
            state = "a new database" if report.before is None else "current"
            console.print(f"schema {report.after}: {state}, nothing to migrate")
        else:
            console.print(
                f"migrated the schema from {report.before} to {report.after};"
                f" the database before is backed up at {report.backup}",
                soft_wrap=True,
            )

    @registry_app.command("backup")
    def backup_command(
        backend_store_uri: Annotated[str, _TRACKING_DB],
        to: Annotated[
            Path, typer.Option("--to", help="Directory the backup goes into, as registry-<time>/.")
        ],
        auth_db_uri: Annotated[str | None, _AUTH_DB] = None,
        artifacts: Annotated[Path | None, _ARTIFACTS] = None,
    ) -> None:
        """Back up a registry: the tracking database (a consistent online copy of SQLite,
        or pg_dump), the auth database and the artifacts, with a manifest. Safe while the
        registry runs; restore with `modelyard registry restore`."""
        from modelyard.pipelines import registry_migrate as m

        try:
            made = m.backup_registry(
                backend_store_uri, to, auth_uri=auth_db_uri, artifacts=artifacts
            )
        except m.MigrationFailed as error:
            error_console.print(f"[red]error:[/red] {error}", soft_wrap=True)
            raise typer.Exit(1) from None
        console.print(f"backed up the registry to {made}", soft_wrap=True)

    @registry_app.command("restore")
    def restore_command(
        backup: Annotated[
            Path, typer.Argument(help="A directory `modelyard registry backup` made.")
        ],
        backend_store_uri: Annotated[str, _TRACKING_DB],
        auth_db_uri: Annotated[str | None, _AUTH_DB] = None,
        artifacts: Annotated[Path | None, _ARTIFACTS] = None,
        replace: Annotated[
            bool,
            typer.Option(
                "--replace", help="Overwrite an existing database and artifacts directory."
            ),
        ] = False,
    ) -> None:
        """Restore a registry from a backup, with the registry stopped (scale the MLflow
        Deployment to 0 first): its databases and artifacts are put back as they were."""
        from modelyard.pipelines import registry_migrate as m

        try:
            manifest = m.restore_registry(
                backup,
                backend_store_uri,
                auth_uri=auth_db_uri,
                artifacts=artifacts,
                replace=replace,
            )
        except m.MigrationFailed as error:
            error_console.print(f"[red]error:[/red] {error}", soft_wrap=True)
            raise typer.Exit(1) from None
        console.print(
            f"restored the registry from {backup} (made {manifest['created']}, schema"
            f" {manifest['schema']})",
            soft_wrap=True,
        )

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
            str | None,
            typer.Option(
                "--permission",
                help="READ, USE, EDIT or MANAGE; default: what the pipelines grant each "
                "user (MANAGE to the operator, which removes the tags it wrote; EDIT to "
                "the drift checks).",
            ),
        ] = None,
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
            granted = accounts.grant_model(
                tracking_uri, model, users, permission.upper() if permission else None
            )
        except accounts.AccountsError as error:
            error_console.print(f"[red]error:[/red] {error}")
            raise typer.Exit(1) from None
        held = [u for u in users if u not in granted]

        def what(u: str) -> str:
            return (
                permission.upper()
                if permission
                else c.RegistryUsers.MODEL_PERMISSIONS.get(u, "EDIT")
            )

        console.print(
            f"on {model!r}: granted "
            + (", ".join(f"{what(u)} to {u}" for u in granted) or "nothing new")
            + (f"; already held by {', '.join(held)}" if held else "")
        )

    webhook_app = typer.Typer(
        help=(
            "MLflow webhooks to the operator: an alias moved or a tag set is acted on at "
            "once instead of at the next resolve interval (docs/operations.md)."
        ),
        no_args_is_help=True,
    )
    registry_app.add_typer(webhook_app, name="webhook")

    @webhook_app.command("create")
    def webhook_create_command(
        url: Annotated[
            str,
            typer.Option(
                "--url",
                help="The operator's receiver as MLflow reaches it, e.g. "
                f"http://modelyard-operator.modelyard:8082{RegistryWebhook.PATH}.",
            ),
        ],
        secret_env: Annotated[
            str,
            typer.Option(
                "--secret-env",
                help="Environment variable holding the shared secret (the same value as "
                "the operator's Secret, operator.webhook.secretName); never printed.",
            ),
        ] = RegistryWebhook.SECRET_ENV,
        name: Annotated[
            str, typer.Option("--name", help="The webhook's name; an existing one is updated.")
        ] = "modelyard-operator",
        tracking_uri: Annotated[
            str,
            typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", help="The registry."),
        ] = "",
    ) -> None:
        """Register (or update) the registry-wide webhook sending alias, tag and version
        events to the operator, signed with the shared secret. Needs an MLflow admin
        (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD) when the registry has users.
        Polling goes on beside it: a lost delivery is caught up at the next interval.

        Example:
        MODELYARD_WEBHOOK_SECRET=$(kubectl -n modelyard get secret modelyard-webhook
        -o jsonpath='{.data.secret}' | base64 -d) modelyard registry webhook create
        --url http://modelyard-operator.modelyard:8082/webhooks/mlflow
        """
        import os

        from modelyard.pipelines import registry_webhooks as w

        if not tracking_uri:
            error_console.print("[red]error:[/red] set --tracking-uri or MLFLOW_TRACKING_URI")
            raise typer.Exit(2)
        secret = os.environ.get(secret_env, "")
        if not secret:
            error_console.print(
                f"[red]error:[/red] {secret_env} is empty: export the shared secret in it "
                "(or name another variable with --secret-env)"
            )
            raise typer.Exit(2)
        try:
            hook = w.register_webhook(tracking_uri, url, secret, name)
        except w.WebhookError as error:
            error_console.print(f"[red]error:[/red] {error}", soft_wrap=True)
            raise typer.Exit(1) from None
        console.print(
            f"{'created' if hook.created else 'updated'} webhook {hook.name!r} "
            f"(id {hook.webhook_id}): {', '.join(hook.events)} -> {hook.url}",
            soft_wrap=True,
        )
