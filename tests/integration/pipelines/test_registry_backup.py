"""`modelyard registry backup` and `restore`, tried once for real: a registry with users,
a model, an alias and tags is backed up while it runs, lost, restored into a new place,
and a new `mlflow server` there knows the same users, versions, aliases, tags and files;
PostgreSQL round-trips through pg_dump and pg_restore."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from modelyard.core.contracts import RegistryUsers
from tests.integration.pipelines.test_registry_migrate import new_database, registry_at
from tests.security.conftest import PASSWORDS
from tests.support.models import mlflow_uri, register_sklearn_model, registry_login
from tests.support.servers import VENV_BIN, running_mlflow_server

pytestmark = pytest.mark.integration


def modelyard(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("modelyard", path=str(VENV_BIN)) or "modelyard"
    return subprocess.run(
        [binary, "registry", *args], capture_output=True, text=True, check=False, timeout=600
    )


def what_the_registry_knows(url: str, model: str) -> dict[str, Any]:
    from mlflow import MlflowClient

    client = MlflowClient(url)
    versions = client.search_model_versions(f"name = '{model}'")
    return {
        "versions": sorted((v.version, v.run_id, dict(v.tags), v.status) for v in versions),
        "aliases": client.get_registered_model(model).aliases,
    }


def test_a_registry_with_users_comes_back_whole_from_its_backup(tmp_path: Path) -> None:
    from mlflow import MlflowClient
    from mlflow.pyfunc import load_model

    root = tmp_path / "registry"
    with running_mlflow_server(root, auth=PASSWORDS) as server:
        url = server.url
        with registry_login(RegistryUsers.ADMIN, PASSWORDS[RegistryUsers.ADMIN]):
            model = register_sklearn_model(url, alias="champion")
            MlflowClient(url).set_model_version_tag(model.name, model.version, "reviewed", "yes")
            before = what_the_registry_knows(url, model.name)
        # Backed up while the registry runs.
        made = modelyard(
            "backup",
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--auth-db-uri", f"sqlite:///{root / 'basic_auth.db'}",
            "--artifacts", str(root / "artifacts"),
            "--to", str(tmp_path / "backups"),
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
    (backup,) = (tmp_path / "backups").iterdir()
    manifest = json.loads((backup / "backup.json").read_text())
    assert manifest["tracking"] == "tracking.db" and manifest["auth"] == "auth.db"
    assert manifest["artifactFiles"] > 0
    shutil.rmtree(root)  # the volume is lost

    # Restored into a new volume (the MLflow claim of a new install).
    new_root = tmp_path / "new-registry"
    restored = modelyard(
        "restore", str(backup),
        "--backend-store-uri", f"sqlite:///{new_root / 'mlflow.db'}",
        "--auth-db-uri", f"sqlite:///{new_root / 'basic_auth.db'}",
        "--artifacts", str(new_root / "artifacts"),
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert f"restored the registry from {backup}" in restored.stdout
    # Restoring again over it is refused unless asked for.
    again = modelyard(
        "restore", str(backup), "--backend-store-uri", f"sqlite:///{new_root / 'mlflow.db'}",
        "--auth-db-uri", f"sqlite:///{new_root / 'basic_auth.db'}",
        "--artifacts", str(new_root / "artifacts"),
    )  # fmt: skip
    assert again.returncode == 1
    assert "pass --replace to overwrite it" in again.stderr

    with running_mlflow_server(new_root, auth=PASSWORDS) as server:
        url = server.url
        # The users came back: the server's user reads, a wrong password does not.
        with (
            registry_login(RegistryUsers.SERVER, PASSWORDS[RegistryUsers.SERVER]),
            mlflow_uri(url),
        ):
            assert what_the_registry_knows(url, model.name) == before
            served = load_model(f"models:/{model.name}@champion")  # the files came back
            assert len(served.predict(model_input_frame())) == 5
        with (
            registry_login(RegistryUsers.SERVER, "wrong"),
            pytest.raises(Exception, match="401|Unauthorized|credentials"),
        ):
            what_the_registry_knows(url, model.name)


def model_input_frame() -> Any:
    from tests.support.models import small_frame

    frame, _ = small_frame()
    return frame.head(5)


def test_postgresql_round_trips_through_pg_dump_and_pg_restore(
    postgres: Any, tmp_path: Path
) -> None:
    source, target = new_database(postgres), new_database(postgres)
    registry_at(source, "head", "churn")  # a registry at today's schema, with a model
    made = modelyard("backup", "--backend-store-uri", source, "--to", str(tmp_path))
    assert made.returncode == 0, made.stderr
    (backup,) = tmp_path.iterdir()
    assert (backup / "tracking.dump").stat().st_size > 0

    restored = modelyard("restore", str(backup), "--backend-store-uri", target)
    assert restored.returncode == 0, restored.stderr

    def models(uri: str) -> list[Any]:
        engine = sqlalchemy.create_engine(uri)
        with engine.connect() as connection:
            rows = connection.execute(sqlalchemy.text("SELECT name FROM registered_models"))
            names = sorted(r[0] for r in rows)
        engine.dispose()
        return names

    assert models(target) == models(source) == ["churn"]
    # Into a SQLite file instead: refused, saying why.
    wrong = modelyard(
        "restore", str(backup), "--backend-store-uri", f"sqlite:///{tmp_path / 'x.db'}"
    )
    assert wrong.returncode == 1
    assert "cannot be restored into sqlite" in wrong.stderr
