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
    scheme = urlsplit(uri).scheme.split("+")[0]
    if scheme == "sqlite":
        target = directory / f"mlflow-{revision}-{stamp}.db"
        partial = target.with_suffix(".db.partial")
        source = sqlite3.connect(f"file:{_sqlite_path(uri)}?mode=ro", uri=True)
        try:
            copy = sqlite3.connect(partial)
            with copy:
                source.backup(copy)
            copy.close()
        finally:
            source.close()
        partial.rename(target)  # only a complete copy carries the backup's name
        return target
    if scheme in ("postgresql", "postgres"):
        pg_dump = shutil.which("pg_dump")
        if pg_dump is None:
            raise MigrationFailed(
                "pg_dump is not installed: it backs PostgreSQL up before the migration"
            )
        parts = urlsplit(uri)
        target = directory / f"mlflow-{revision}-{stamp}.dump"
        partial = target.with_suffix(".dump.partial")
        env = dict(os.environ)
        # The connection the URI names; the user name and password, if not in it, come
        # from PGUSER/PGPASSWORD (the chart's Secret), as for the server.
        if parts.hostname:
            env["PGHOST"] = parts.hostname
        if parts.port:
            env["PGPORT"] = str(parts.port)
        if parts.username:
            env["PGUSER"] = unquote(parts.username)
        if parts.password:
            env["PGPASSWORD"] = unquote(parts.password)
        database = parts.path.lstrip("/")
        done = subprocess.run(
            [pg_dump, "--format=custom", f"--file={partial}", f"--dbname={database}"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            raise MigrationFailed(f"pg_dump failed: {redact_text(done.stderr.strip())[:500]}")
        partial.rename(target)
        return target
    raise MigrationFailed(f"cannot back up a {scheme!r} database; supported: sqlite, postgresql")


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
