"""`modelyard registry migrate` on real databases: a registry at an older MLflow schema is
backed up, migrated with MLflow's own migrations, and then served by a real `mlflow
server` with its models intact; at the current schema it does nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy

from tests.support.servers import VENV_BIN, running_mlflow_server

#: An MLflow 3.x schema (webhooks added), well before this MLflow's head.
OLD_REVISION = "1a0cddfcaa16"


def registry_at(uri: str, revision: str, model: str) -> None:
    """A tracking database at ``revision`` with one registered model in it."""
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    engine = sqlalchemy.create_engine(uri)
    try:
        # As MLflow makes a new database: its first tables, then the migrations.
        InitialBase.metadata.create_all(engine)
        with engine.begin() as connection:
            config = _get_alembic_config(uri)
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            connection.execute(
                sqlalchemy.text(
                    "INSERT INTO registered_models (name, creation_time, last_updated_time)"
                    " VALUES (:name, 1, 1)"
                ),
                {"name": model},
            )
    finally:
        engine.dispose()


def revision_of(uri: str) -> str | None:
    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.connect() as connection:
            row = connection.execute(sqlalchemy.text("SELECT version_num FROM alembic_version"))
            return str(row.scalar())
    finally:
        engine.dispose()


def migrate(uri: str, backups: Path) -> subprocess.CompletedProcess[str]:
    modelyard = shutil.which("modelyard", path=str(VENV_BIN)) or "modelyard"
    return subprocess.run(
        [
            modelyard,
            "registry",
            "migrate",
            "--backend-store-uri",
            uri,
            "--backup-dir",
            str(backups),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env=dict(os.environ),
    )


def new_database(postgres: Any) -> str:
    """A database of its own on the PostgreSQL server; its URL."""
    database = f"migrate_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(postgres.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {database}"))
    admin.dispose()
    return str(postgres.url.rsplit("/", 1)[0] + f"/{database}")


def head() -> str:
    from mlflow.store.db.utils import _get_latest_schema_revision

    return str(_get_latest_schema_revision())


def test_an_old_sqlite_registry_is_backed_up_migrated_and_served(tmp_path: Path) -> None:
    root = tmp_path / "mlflow"
    root.mkdir()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    registry_at(uri, OLD_REVISION, "churn")
    done = migrate(uri, root / "backups")
    assert done.returncode == 0, done.stderr
    assert f"migrated the schema from {OLD_REVISION} to {head()}" in done.stdout
    [backup] = (root / "backups").iterdir()
    assert backup.name.startswith(f"mlflow-{OLD_REVISION}-")
    assert revision_of(f"sqlite:///{backup}") == OLD_REVISION  # the database as it was
    assert revision_of(uri) == head()
    # Exactly once: a second run (a restarted pod) changes nothing and backs nothing up.
    again = migrate(uri, root / "backups")
    assert again.returncode == 0, again.stderr
    assert f"schema {head()}: current, nothing to migrate" in again.stdout
    assert len(list((root / "backups").iterdir())) == 1
    # A real server starts on the migrated registry and still knows the model.
    with running_mlflow_server(root) as server:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=server.url)
        assert [m.name for m in client.search_registered_models()] == ["churn"]


def test_a_new_registry_is_left_to_mlflow(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = migrate(uri, tmp_path / "backups")
    assert done.returncode == 0, done.stderr
    assert "a new database, nothing to migrate" in done.stdout
    assert not (tmp_path / "backups").exists()


def test_a_failed_migration_names_the_backup(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry_at(uri, OLD_REVISION, "churn")
    # A database the migrations cannot change: a table they alter is not what they expect.
    engine = sqlalchemy.create_engine(uri)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("DROP TABLE registered_models"))
        connection.execute(sqlalchemy.text("CREATE TABLE registered_models (x INTEGER)"))
    engine.dispose()
    done = migrate(uri, tmp_path / "backups")
    assert done.returncode == 1
    [backup] = (tmp_path / "backups").iterdir()
    assert "MigrationFailed: migrating from" in done.stderr
    assert f"backed up at {backup}" in done.stderr
    assert revision_of(f"sqlite:///{backup}") == OLD_REVISION


def test_postgresql_is_dumped_before_it_is_migrated(postgres: Any, tmp_path: Path) -> None:
    uri = new_database(postgres)
    registry_at(uri, OLD_REVISION, "churn")
    done = migrate(uri, tmp_path / "backups")
    assert done.returncode == 0, done.stderr
    [dump] = (tmp_path / "backups").iterdir()
    assert dump.suffix == ".dump"
    listing = subprocess.run(
        ["pg_restore", "--list", str(dump)], capture_output=True, text=True, check=True
    ).stdout
    assert "TABLE public registered_models" in listing
    assert revision_of(uri) == head()
    with sqlalchemy.create_engine(uri).connect() as connection:
        names = connection.execute(sqlalchemy.text("SELECT name FROM registered_models"))
        assert [n for (n,) in names] == ["churn"]


def test_without_a_place_for_the_backup_nothing_is_migrated(postgres: Any, tmp_path: Path) -> None:
    uri = new_database(postgres)
    registry_at(uri, OLD_REVISION, "churn")
    modelyard = shutil.which("modelyard", path=str(VENV_BIN)) or "modelyard"
    done = subprocess.run(
        [modelyard, "registry", "migrate", "--backend-store-uri", uri],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert f"the registry's schema is at {OLD_REVISION} and this MLflow needs {head()}" in (
        done.stderr
    )
    assert "mlflow.migrations.backupClaim" in done.stderr
    assert revision_of(uri) == OLD_REVISION
