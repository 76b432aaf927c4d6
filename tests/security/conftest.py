"""The security tier: each attack on the trust boundaries (docs/security.md) as a test
against real parts. The ones that need pods on a real node are in tests/e2e
(``test_security.py``); ``make security`` runs both."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from modelyard.core.contracts import RegistryUsers
from tests.integration.operator.conftest import operator, operator_environment  # noqa: F401
from tests.support.models import registry_login
from tests.support.servers import running_mlflow_server

#: What the credentials Secret holds (the operator generates it in a cluster).
PASSWORDS = {
    RegistryUsers.ADMIN: "admin-password-for-tests",
    RegistryUsers.OPERATOR: "operator-password-for-tests",
    RegistryUsers.PIPELINES: "pipelines-password-for-tests",
    RegistryUsers.SERVER: "server-password-for-tests",
    RegistryUsers.DRIFT: "drift-password-for-tests",
}


@dataclass(frozen=True)
class AuthMlflow:
    url: str


@pytest.fixture(scope="session")
def auth_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthMlflow]:
    """A real `mlflow server --app-name basic-auth` whose users `modelyard registry
    init-users` created, as in the chart."""
    with running_mlflow_server(tmp_path_factory.mktemp("auth-mlflow"), auth=PASSWORDS) as server:
        yield AuthMlflow(server.url)


@contextmanager
def as_user(user: str | None) -> Iterator[None]:
    """MLflow's client as ``user`` (its password from PASSWORDS) for a while."""
    with registry_login(user, PASSWORDS[user] if user is not None else None):
        yield


def pytest_collection_modifyitems(items: list[Any]) -> None:
    for item in items:
        item.add_marker(pytest.mark.security)
