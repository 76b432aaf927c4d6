"""The registry's schema migrations, run before a new MLflow server starts.

A new MLflow version in the image may need a newer database schema; its server refuses
to start on an old one ("Detected out-of-date database schema"). The chart runs
``modelyard registry migrate`` as an init container before the server: it compares the
database's Alembic revision with the one this MLflow needs and, only when they differ,
backs the database up and runs MLflow's own migrations (what ``mlflow db upgrade``
does). At the head revision it does nothing, so it runs exactly once per schema change,
however often the pod restarts.

Backups: SQLite through SQLite's online backup API (a consistent copy, even of a database
in use); PostgreSQL with ``pg_dump --format=custom`` (restore with ``pg_restore``). The
backup is written before anything changes and named in every message; a failed migration
stops the pod with ``MigrationFailed: ...`` (its termination message) and the backup to
restore from.

The auth database (``--app-name basic-auth``) is migrated by ``registry init-users``,
which runs after this and also backs nothing up: it holds only users and permissions,
which ``init-users`` recreates from the credentials Secret.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from modelyard.core.redaction import redact_text

#: Where Kubernetes shows why a container stopped.
TERMINATION_LOG = Path("/dev/termination-log")


class MigrationFailed(Exception):
    """The migration (or its backup) failed; the message names the backup, if any."""


@dataclass(frozen=True)
class MigrationReport:
    before: str | None
    after: str
    backup: Path | None

    @property
    def migrated(self) -> bool:
        return self.backup is not None or self.before != self.after


def _engine(uri: str) -> Any:
    import sqlalchemy

    return sqlalchemy.create_engine(uri)


def schema_revisions(uri: str) -> tuple[str | None, str, bool]:
    """The database's Alembic revision, the one this MLflow needs, and whether the
    database is empty (a new registry: MLflow creates its tables itself)."""
    from mlflow.store.db import utils

    engine = _engine(uri)
    try:
        empty = utils._is_empty_database(engine)
        current = None if empty else utils._get_schema_version(engine)
    finally:
        engine.dispose()
    return current, utils._get_latest_schema_revision(), empty


def _sqlite_path(uri: str) -> Path:
    path = uri.removeprefix("sqlite:///")
    if not path or path == ":memory:":
        raise MigrationFailed(f"{uri}: an in-memory database has nothing to migrate")
    return Path(path)


def backup(uri: str, directory: Path, revision: str | None, now: dt.datetime) -> Path:
    """A consistent copy of the tracking database in ``directory``; its path."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    target = directory / f"mlflow-{revision}-{stamp}{_suffix(uri)}"
    copy_database(uri, target)
    return target


def _scheme(uri: str) -> str:
    scheme = urlsplit(uri).scheme.split("+")[0]
    if scheme in ("sqlite", "postgresql", "postgres"):
        return "postgresql" if scheme == "postgres" else scheme
    raise MigrationFailed(f"cannot back up a {scheme!r} database; supported: sqlite, postgresql")


def _suffix(uri: str) -> str:
    return ".db" if _scheme(uri) == "sqlite" else ".dump"


def _pg_env(uri: str) -> tuple[dict[str, str], str]:
    """libpq's environment for the connection ``uri`` names, and the database name. The
    user name and password, if not in it, come from PGUSER/PGPASSWORD (the chart's
    Secret), as for the server."""
    parts = urlsplit(uri)
    env = dict(os.environ)
    if parts.hostname:
        env["PGHOST"] = parts.hostname
    if parts.port:
        env["PGPORT"] = str(parts.port)
    if parts.username:
        env["PGUSER"] = unquote(parts.username)
    if parts.password:
        env["PGPASSWORD"] = unquote(parts.password)
    return env, parts.path.lstrip("/")


def _pg_tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise MigrationFailed(f"{name} is not installed (Debian: postgresql-client)")
    return found


def _sqlite_backup(source_path: Path, target_path: Path) -> None:
    """SQLite's online backup of ``source_path`` (opened read-only) into ``target_path``."""
    source = sqlite3.connect(f"file:{source_path}?mode=ro", uri=True)
    try:
        target = sqlite3.connect(target_path)
        with target:
            source.backup(target)
        target.close()
    finally:
        source.close()


def copy_database(uri: str, target: Path) -> None:
    """A consistent copy of the database ``uri`` at ``target``: SQLite's online backup,
    or ``pg_dump --format=custom``. Written under a temporary name and renamed: only a
    complete copy carries the name."""
    partial = target.with_name(target.name + ".partial")
    if _scheme(uri) == "sqlite":
        _sqlite_backup(_sqlite_path(uri), partial)
    else:
        env, database = _pg_env(uri)
        done = subprocess.run(
            [_pg_tool("pg_dump"), "--format=custom", f"--file={partial}", f"--dbname={database}"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            raise MigrationFailed(f"pg_dump failed: {redact_text(done.stderr.strip())[:500]}")
    partial.rename(target)


def restore_database(copy: Path, uri: str, *, replace: bool) -> None:
    """Put the copy made by :func:`copy_database` back as database ``uri``. An SQLite
    file that exists is replaced only with ``replace``; PostgreSQL's objects are dropped
    and recreated (``pg_restore --clean``) only with ``replace`` too."""
    if _scheme(uri) == "sqlite":
        path = _sqlite_path(uri)
        if path.exists() and not replace:
            raise MigrationFailed(
                f"{path} exists: stop the registry and pass --replace to overwrite it"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        _sqlite_backup(copy, partial)
        partial.replace(path)
        return
    env, database = _pg_env(uri)
    command = [_pg_tool("pg_restore"), "--no-owner", "--exit-on-error", f"--dbname={database}"]
    if replace:
        command += ["--clean", "--if-exists"]
    done = subprocess.run(
        [*command, str(copy)], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise MigrationFailed(f"pg_restore failed: {redact_text(done.stderr.strip())[:500]}")


BACKUP_MANIFEST = "backup.json"


def backup_registry(
    tracking_uri: str,
    directory: Path,
    *,
    auth_uri: str | None,
    artifacts: Path | None,
    now: dt.datetime | None = None,
) -> Path:
    """Everything a registry is, copied into a new directory under ``directory``: the
    tracking database, the auth database (users, permissions), the artifacts (the
    models' files), and ``backup.json`` saying what is where and at which schema."""
    stamp = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    final = directory / f"registry-{stamp}"
    if final.exists():
        raise MigrationFailed(f"{final} exists already")
    work = directory / f".registry-{stamp}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    revision, _, _ = schema_revisions(tracking_uri)
    manifest: dict[str, object] = {
        "created": stamp,
        "schema": revision,
        "tracking": f"tracking{_suffix(tracking_uri)}",
    }
    copy_database(tracking_uri, work / str(manifest["tracking"]))
    if auth_uri:
        manifest["auth"] = f"auth{_suffix(auth_uri)}"
        copy_database(auth_uri, work / str(manifest["auth"]))
    if artifacts is not None:
        if not artifacts.is_dir():
            raise MigrationFailed(f"the artifacts directory {artifacts} does not exist")
        shutil.copytree(artifacts, work / "artifacts", symlinks=True)
        manifest["artifacts"] = "artifacts"
        manifest["artifactFiles"] = sum(1 for p in artifacts.rglob("*") if p.is_file())
    (work / BACKUP_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    work.rename(final)  # only a complete backup carries the name
    return final


def restore_registry(
    backup_dir: Path,
    tracking_uri: str,
    *,
    auth_uri: str | None,
    artifacts: Path | None,
    replace: bool,
) -> dict[str, object]:
    """Put a :func:`backup_registry` back; the registry must be stopped. Returns the
    backup's manifest."""
    try:
        manifest = json.loads((backup_dir / BACKUP_MANIFEST).read_text())
    except FileNotFoundError:
        raise MigrationFailed(
            f"{backup_dir} has no {BACKUP_MANIFEST}: not a backup of `modelyard registry backup`"
        ) from None
    if not isinstance(manifest, dict):
        raise MigrationFailed(f"{backup_dir / BACKUP_MANIFEST} is not a backup manifest")
    if (_suffix(tracking_uri) == ".db") != str(manifest["tracking"]).endswith(".db"):
        raise MigrationFailed(
            f"the backup holds {manifest['tracking']}, which cannot be restored into"
            f" {_scheme(tracking_uri)} (restore into the kind of database it came from)"
        )
    if manifest.get("auth") and not auth_uri:
        raise MigrationFailed("the backup holds the auth database: give --auth-db-uri")
    if manifest.get("artifacts") and artifacts is None:
        raise MigrationFailed("the backup holds the artifacts: give --artifacts")
    restore_database(backup_dir / str(manifest["tracking"]), tracking_uri, replace=replace)
    if manifest.get("auth") and auth_uri:
        restore_database(backup_dir / str(manifest["auth"]), auth_uri, replace=replace)
    if manifest.get("artifacts") and artifacts is not None:
        if artifacts.exists() and any(artifacts.iterdir()) and not replace:
            raise MigrationFailed(f"{artifacts} is not empty: pass --replace to overwrite it")
        shutil.copytree(backup_dir / "artifacts", artifacts, symlinks=True, dirs_exist_ok=True)
    return manifest


def migrate(uri: str, backup_dir: Path | None, now: dt.datetime | None = None) -> MigrationReport:
    """Bring the tracking database to the schema this MLflow needs, after a backup.

    Without ``backup_dir`` nothing is migrated: a migration that is due fails, saying so.
    """
    current, head, empty = schema_revisions(uri)
    if empty or current == head:
        return MigrationReport(before=current, after=head, backup=None)
    if backup_dir is None:
        raise MigrationFailed(
            f"the registry's schema is at {current} and this MLflow needs {head}; nothing"
            " was changed because there is nowhere to put the backup taken first: give a"
            " backup directory (the chart's mlflow.migrations.backupClaim)"
        )
    copy = backup(uri, backup_dir, current, now or dt.datetime.now(dt.UTC))
    # MLflow's own command, as its docs say to run it (after a backup).
    done = subprocess.run(
        [sys.executable, "-m", "mlflow", "db", "upgrade", uri],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        said = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise MigrationFailed(
            f"migrating from {current} to {head} failed: "
            f"{redact_text(said[-1] if said else f'exit code {done.returncode}')[:300]};"
            f" the database as it was before is backed up at {copy}"
        )
    after, _, _ = schema_revisions(uri)
    if after != head:
        raise MigrationFailed(
            f"after the migration the schema is at {after}, not {head}; the database as it"
            f" was before is backed up at {copy}"
        )
    return MigrationReport(before=current, after=after, backup=copy)


def write_termination_message(message: str, path: Path = TERMINATION_LOG) -> None:
    """Why the container stopped, where ``kubectl describe pod`` shows it."""
    # Kubernetes mounts the file; elsewhere there is none, and the message is on stderr.
    if path.exists():
        with contextlib.suppress(OSError):
            path.write_text(message[:4000])
