"""The registry's users, on the MLflow side: created before the server starts, and the
grants each newly registered model needs (docs/security.md).

MLflow's own auth store and client do the work (``mlflow.server.auth``); this module
only decides who gets what, from :class:`modelyard.core.contracts.RegistryUsers`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.core import contracts as c

logger = logging.getLogger(__name__)
Users = c.RegistryUsers

#: Where the chart mounts the credentials Secret in MLflow's pod (one file per key).
DEFAULT_CREDENTIALS_DIR = Path("/etc/modelyard/registry-credentials")
MODEL_EDITORS_ENV = Users.MODEL_EDITORS_ENV


class AccountsError(Exception):
    """The users could not be set up; the message says what is missing."""


@dataclass
class InitReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def read_passwords(directory: Path) -> dict[str, str]:
    """Each user's password from the mounted Secret (``<user>-password`` files)."""
    passwords: dict[str, str] = {}
    for user in (Users.ADMIN, *Users.COMPONENTS):
        path = directory / Users.password_key(user)
        if not path.is_file():
            raise AccountsError(f"{path} is missing: the credentials Secret has no such key")
        value = path.read_text().strip()
        if len(value) < Users.MIN_PASSWORD_LENGTH:
            raise AccountsError(
                f"{path.name} is shorter than {Users.MIN_PASSWORD_LENGTH} characters "
                "(MLflow refuses it)"
            )
        passwords[user] = value
    return passwords


def init_users(passwords: dict[str, str], database_uri: str | None = None) -> InitReport:
    """Create the admin and component users in MLflow's auth database (its schema
    migrated first), or set their passwords to the given ones (a rotated Secret).
    Idempotent; safe with several replicas starting at once."""
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.config import read_auth_config
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    uri = database_uri or read_auth_config().database_uri
    store = SqlAlchemyStore()
    store.init_db(uri)
    report = InitReport()
    for user, password in passwords.items():
        if not store.has_user(user, use_primary=True):
            try:
                store.create_user(user, password, is_admin=user == Users.ADMIN)
                report.created.append(user)
                continue
            except MlflowException:
                if not store.has_user(user, use_primary=True):
                    raise  # not the race with another replica: a real error
        if store.authenticate_user(user, password, use_primary=True):
            report.unchanged.append(user)
        else:
            store.update_user(user, password=password)
            report.updated.append(user)
    return report


def model_editors() -> list[str]:
    """The users to grant EDIT on each registered model (from the pod's environment)."""
    return [u for u in os.environ.get(MODEL_EDITORS_ENV, "").replace(",", " ").split() if u]


#: MLflow's permissions from least to most.
_RANK = {"NO_PERMISSIONS": 0, "READ": 1, "USE": 2, "EDIT": 3, "MANAGE": 4}
_TOP = "MANAGE"


def _held(auth: Any, user: str, resource_type: str, model: str) -> str | None:
    """``user``'s permission on the resource, or None when the caller may not read it."""
    from mlflow.exceptions import MlflowException

    try:
        return str(auth.get_user_permission(user, resource_type, model).permission)
    except MlflowException as error:
        if error.error_code == "PERMISSION_DENIED":
            return None
        raise


def grant_model(
    tracking_uri: str,
    model: str,
    users: Iterable[str],
    permission: str | None = None,
    resource_type: str = "registered_model",
) -> list[str]:
    """Grant ``permission`` on registered model ``model`` (or, with ``resource_type``
    "experiment", on that experiment id) to each user (MLflow's auth client, with the
    caller's credentials from the environment; the caller needs MANAGE on it, which its
    creator has). Without ``permission``: each user's ``RegistryUsers.MODEL_PERMISSIONS``
    on a model, EDIT on an experiment. A lower grant made before is raised to it (an
    upgrade from a release that granted less); an equal or higher one is left as it is.
    Returns the users granted now."""
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    auth = get_app_client("basic-auth", tracking_uri=tracking_uri)
    granted = []
    for user in users:
        wanted = permission or (
            c.RegistryUsers.MODEL_PERMISSIONS.get(user, "EDIT")
            if resource_type == "registered_model"
            else "EDIT"
        )
        try:
            try:
                auth.grant_user_permission(user, resource_type, model, wanted)
            except MlflowException as error:
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                held = _held(auth, user, resource_type, model)
                if held is None:
                    # Only an admin may read another user's grant; a pipeline (the
                    # model's owner, not an admin) cannot tell what is held. The top
                    # permission can be set again without lowering anything; a lower
                    # one is left as it is (never risk lowering a higher grant).
                    if wanted != _TOP:
                        continue
                elif _RANK.get(held, 0) >= _RANK[wanted]:
                    continue
                auth.revoke_user_permission(user, resource_type, model)
                auth.grant_user_permission(user, resource_type, model, wanted)
        except MlflowException as error:
            raise AccountsError(
                f"could not grant {wanted} on {resource_type} {model!r} to {user}: "
                f"{error.error_code} (the caller needs MANAGE on the model)"
            ) from None
        granted.append(user)
    return granted
