"""The installation's registry accounts: one MLflow user per component, their passwords in
one Secret in the release's namespace.

The operator creates the Secret when it is missing (random passwords, generated here and
never rendered into a manifest, so ``helm template`` and Argo CD output carry none), reads
its own password from it, and gives each ModelDeployment's servers and drift check a
Secret of their own beside them with only their user's credentials. MLflow's pod creates
the users from the same Secret before the server starts (``modelyard registry
init-users``).
"""

from __future__ import annotations

import base64
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from modelyard.core import contracts as c
from modelyard.core import pods
from modelyard.core.registry import Credentials
from modelyard.operator.rest import Rest

logger = logging.getLogger(__name__)
Users = c.RegistryUsers


class CredentialsUnavailable(Exception):
    """The accounts Secret could not be read or created."""


@dataclass(frozen=True)
class RegistryAccounts:
    """Each component user's password (never printed)."""

    passwords: Mapping[str, str]

    def credentials(self, user: str) -> Credentials:
        return Credentials(username=user, password=self.passwords[user])

    def __repr__(self) -> str:
        return f"RegistryAccounts(users={sorted(self.passwords)})"

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str]) -> RegistryAccounts:
        missing = [
            Users.password_key(u) for u in Users.COMPONENTS if not data.get(Users.password_key(u))
        ]
        if missing:
            raise CredentialsUnavailable(
                f"the registry credentials Secret has no {', '.join(missing)}"
            )
        return cls({u: data[Users.password_key(u)] for u in Users.COMPONENTS})


def new_secret_data() -> dict[str, str]:
    """Fresh random passwords for the admin and every component, and the Flask key."""
    data = {
        Users.password_key(u): secrets.token_urlsafe(24) for u in (Users.ADMIN, *Users.COMPONENTS)
    }
    data[Users.FLASK_SECRET_KEY] = secrets.token_urlsafe(32)
    return data


def ensure_accounts(rest: Rest, namespace: str, name: str, *, create: bool) -> RegistryAccounts:
    """Read the accounts Secret, creating it first when missing and ``create``."""
    try:
        secret = rest.get("v1", "Secret", namespace, name)
    except ApiException as error:
        raise CredentialsUnavailable(
            f"cannot read Secret {namespace}/{name} (HTTP {error.status})"
        ) from None
    if secret is not None:
        return RegistryAccounts.from_secret_data(
            {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        )
    if not create:
        raise CredentialsUnavailable(
            f"Secret {namespace}/{name} with the registry users' passwords does not exist"
        )
    body: Any = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": pods.app_labels("modelyard-registry", name, "registry-credentials"),
        },
        "type": "Opaque",
        "stringData": new_secret_data(),
    }
    try:
        rest.create(body)
        logger.info("created Secret %s/%s with the registry users' passwords", namespace, name)
    except ApiException as error:
        if error.status != 409:  # 409: another replica created it first; read theirs
            raise CredentialsUnavailable(
                f"cannot create Secret {namespace}/{name} (HTTP {error.status})"
            ) from None
    return ensure_accounts(rest, namespace, name, create=False)


def build_credentials_secret(
    name: str, namespace: str, labels: Mapping[str, str], credentials: Credentials
) -> dict[str, Any]:
    """A Secret beside a ModelDeployment with one user's credentials, under the keys
    MLflow reads (the pods take them as environment variables)."""
    assert credentials.username is not None and credentials.password is not None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "type": "Opaque",
        "data": {
            c.TRACKING_USERNAME_ENV: base64.b64encode(credentials.username.encode()).decode(),
            c.TRACKING_PASSWORD_ENV: base64.b64encode(credentials.password.encode()).decode(),
        },
    }
