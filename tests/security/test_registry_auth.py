"""MLflow with its users (as the chart runs it): who may read, tag, move an alias."""

from __future__ import annotations

import httpx
import pytest
from mlflow import MlflowClient
from mlflow.server import get_app_client

from modelyard.core.contracts import RegistryUsers
from modelyard.core.registry import Credentials, RegistryAccessDenied, open_registry
from modelyard.pipelines.registry_accounts import grant_model
from tests.security.conftest import PASSWORDS, AuthMlflow, as_user
from tests.support.models import register_sklearn_model

#: Generous: a loaded machine checks passwords slowly (PBKDF2).
TIMEOUT = 60
SEARCH = "/api/2.0/mlflow/registered-models/search"


def _registered(auth_mlflow: AuthMlflow) -> str:
    """A model registered by the pipelines' user, which grants the editors as the
    training step does."""
    with as_user(RegistryUsers.PIPELINES):
        model = register_sklearn_model(auth_mlflow.url).name
        grant_model(auth_mlflow.url, model, RegistryUsers.MODEL_EDITORS)
    return model


@pytest.mark.parametrize(
    "auth",
    [None, ("admin", "wrong-password-123"), (RegistryUsers.SERVER, "not-its-password")],
    ids=["no-credentials", "wrong-admin-password", "wrong-user-password"],
)
def test_unauthenticated_requests_get_401(auth_mlflow: AuthMlflow, auth: tuple[str, str]) -> None:
    answer = httpx.get(auth_mlflow.url + SEARCH, auth=auth, timeout=TIMEOUT)
    assert answer.status_code == 401


def test_the_health_probe_stays_open(auth_mlflow: AuthMlflow) -> None:
    assert httpx.get(auth_mlflow.url + "/health", timeout=TIMEOUT).status_code == 200


def test_each_component_user_signs_in(auth_mlflow: AuthMlflow) -> None:
    for user in RegistryUsers.COMPONENTS:
        answer = httpx.get(auth_mlflow.url + SEARCH, auth=(user, PASSWORDS[user]), timeout=TIMEOUT)
        assert answer.status_code == 200, user


def test_the_servers_user_reads_but_cannot_move_an_alias(auth_mlflow: AuthMlflow) -> None:
    model = _registered(auth_mlflow)
    server = open_registry(
        auth_mlflow.url, Credentials(RegistryUsers.SERVER, PASSWORDS[RegistryUsers.SERVER])
    )
    assert server.get_version_by_alias(model, "champion").version == 1
    with pytest.raises(RegistryAccessDenied, match="HTTP 403"):
        server.set_alias(model, "champion", 1)
    with pytest.raises(RegistryAccessDenied, match="HTTP 403"):
        server.set_version_tag(model, 1, "modelyard.drift.last_status", "forged")
    answer = httpx.post(
        auth_mlflow.url + "/api/2.0/mlflow/registered-models/alias",
        json={"name": model, "alias": "champion", "version": "1"},
        auth=(RegistryUsers.SERVER, PASSWORDS[RegistryUsers.SERVER]),
        timeout=TIMEOUT,
    )
    assert answer.status_code == 403


def test_the_operator_and_drift_users_tag_what_the_pipelines_registered(
    auth_mlflow: AuthMlflow,
) -> None:
    model = _registered(auth_mlflow)
    for user in (RegistryUsers.OPERATOR, RegistryUsers.DRIFT):
        client = open_registry(auth_mlflow.url, Credentials(user, PASSWORDS[user]))
        client.set_version_tag(model, 1, f"written-by.{user}", "yes")
    with as_user(RegistryUsers.ADMIN):
        tags = MlflowClient(auth_mlflow.url).get_model_version(model, "1").tags
    assert {tags["written-by.modelyard-operator"], tags["written-by.modelyard-drift"]} == {"yes"}
    # The operator removes the tags it wrote (deployed, pending, rejection): MLflow ties
    # that to MANAGE. The drift user only sets tags and cannot remove one.
    drift = open_registry(
        auth_mlflow.url, Credentials(RegistryUsers.DRIFT, PASSWORDS[RegistryUsers.DRIFT])
    )
    with pytest.raises(RegistryAccessDenied):
        drift.delete_version_tag_if_present(model, 1, "written-by.modelyard-operator")
    operator = open_registry(
        auth_mlflow.url, Credentials(RegistryUsers.OPERATOR, PASSWORDS[RegistryUsers.OPERATOR])
    )
    operator.delete_version_tag_if_present(model, 1, "written-by.modelyard-operator")
    with as_user(RegistryUsers.ADMIN):
        tags = MlflowClient(auth_mlflow.url).get_model_version(model, "1").tags
    assert "written-by.modelyard-operator" not in tags


def test_a_model_registered_by_someone_else_is_not_taggable_until_granted(
    auth_mlflow: AuthMlflow,
) -> None:
    with as_user(RegistryUsers.ADMIN):
        model = register_sklearn_model(auth_mlflow.url).name
    operator = open_registry(
        auth_mlflow.url, Credentials(RegistryUsers.OPERATOR, PASSWORDS[RegistryUsers.OPERATOR])
    )
    with pytest.raises(RegistryAccessDenied):
        operator.set_version_tag(model, 1, "k", "v")
    with as_user(RegistryUsers.ADMIN):
        assert grant_model(auth_mlflow.url, model, [RegistryUsers.OPERATOR]) == [
            RegistryUsers.OPERATOR
        ]
        assert grant_model(auth_mlflow.url, model, [RegistryUsers.OPERATOR]) == []  # idempotent
    operator.set_version_tag(model, 1, "k", "v")


def test_the_owner_grants_again_at_every_retrain_without_being_an_admin(
    auth_mlflow: AuthMlflow,
) -> None:
    """The pipelines' user (the model's owner, not an admin) may not read another user's
    grant; granting again (the next training of the same model) still succeeds, keeps
    what each user holds, and raises a lower grant of the operator's to MANAGE."""
    model = _registered(auth_mlflow)
    with as_user(RegistryUsers.PIPELINES):
        grant_model(auth_mlflow.url, model, RegistryUsers.MODEL_EDITORS)  # it raised here
    with as_user(RegistryUsers.ADMIN):
        auth = get_app_client("basic-auth", tracking_uri=auth_mlflow.url)
        held = {
            u: auth.get_user_permission(u, "registered_model", model).permission
            for u in RegistryUsers.MODEL_EDITORS
        }
        assert held == RegistryUsers.MODEL_PERMISSIONS, held
        # As an older release granted it: the operator with EDIT only.
        auth.revoke_user_permission(RegistryUsers.OPERATOR, "registered_model", model)
        auth.grant_user_permission(RegistryUsers.OPERATOR, "registered_model", model, "EDIT")
    with as_user(RegistryUsers.PIPELINES):
        grant_model(auth_mlflow.url, model, RegistryUsers.MODEL_EDITORS)
    with as_user(RegistryUsers.ADMIN):
        raised = auth.get_user_permission(
            RegistryUsers.OPERATOR, "registered_model", model
        ).permission
    assert raised == "MANAGE"
