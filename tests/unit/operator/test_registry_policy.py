"""The registry allow-list: which tracking URIs a ModelDeployment may name."""

from __future__ import annotations

import pytest

from modelyard.operator.resolve import Failure, RegistryPolicy, RegistryTarget, registry_target
from modelyard.operator.resource import ModelDeploymentSpec

DEFAULT = "http://modelyard-mlflow.modelyard.svc:5000"


def _spec(uri: str | None) -> ModelDeploymentSpec:
    registry = {"trackingUri": uri} if uri else {}
    return ModelDeploymentSpec.parse(
        {"model": {"name": "churn", "alias": "champion"}, "registry": registry}
    )


def _target(uri: str | None, allowed: str = "") -> RegistryTarget | Failure:
    return registry_target(_spec(uri), "team-a", RegistryPolicy.from_settings(DEFAULT, allowed))


def test_the_default_registry_is_used_and_allowed() -> None:
    # The installation's own registry: the operator's own registry user goes with it.
    assert _target(None) == RegistryTarget(DEFAULT, installation=True)
    assert _target(DEFAULT + "/") == RegistryTarget(DEFAULT + "/", installation=True)
    other = _target("http://mlflow.team-a.svc:5000", allowed="http://mlflow.team-a.svc:5000")
    assert other == RegistryTarget("http://mlflow.team-a.svc:5000", installation=False)


@pytest.mark.parametrize(
    "uri",
    [
        "http://10.0.0.12:8080",  # an internal service
        "http://modelyard-mlflow.modelyard.svc:5001",  # another port of an allowed host
        "https://modelyard-mlflow.modelyard.svc:5000",  # another scheme
        "http://metadata.google.internal",
    ],
)
def test_a_registry_not_listed_is_refused_without_a_request(uri: str) -> None:
    found = _target(uri)
    assert isinstance(found, Failure)
    assert found.reason == "RegistryNotAllowed" and found.permanent
    assert "no request was sent" in found.message
    assert "operator.allowedRegistries" in found.message


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("http://user:secret@mlflow.team-a.svc:5000", "carries credentials"),
        ("http://mlflow.team-a.svc:5000/api?", "query or fragment"),
        ("http://mlflow.team-a.svc:5000/#x", "query or fragment"),
        ("ftp://mlflow.team-a.svc", "http:// or https://"),
    ],
)
def test_uris_that_could_steer_the_request_are_refused(uri: str, why: str) -> None:
    found = _target(uri, allowed="http://mlflow.team-a.svc:5000")
    assert isinstance(found, Failure) and found.reason == "RegistryNotAllowed"
    assert why in found.message
    assert "secret" not in found.message


def test_listed_registries_and_path_prefixes() -> None:
    allowed = "https://mlflow.example.com/team-a, http://mlflow.team-b.svc:5000"
    assert isinstance(_target("https://mlflow.example.com/team-a", allowed), RegistryTarget)
    assert isinstance(_target("https://mlflow.example.com:443/team-a/x", allowed), RegistryTarget)
    assert isinstance(_target("http://MLFLOW.team-b.svc:5000", allowed), RegistryTarget)
    refused = _target("https://mlflow.example.com/team-ab", allowed)
    assert isinstance(refused, Failure) and refused.reason == "RegistryNotAllowed"
    refused = _target("https://mlflow.example.com/", allowed)
    assert isinstance(refused, Failure)


def test_an_entry_may_allow_every_port_of_a_host() -> None:
    allowed = "http://127.0.0.1:*"
    assert isinstance(_target("http://127.0.0.1:41234", allowed), RegistryTarget)
    assert isinstance(_target("http://127.0.0.1", allowed), RegistryTarget)
    refused = _target("http://127.0.0.2:41234", allowed)
    assert isinstance(refused, Failure) and refused.reason == "RegistryNotAllowed"
    # In a spec the port is a number: "host:*" is not a URL.
    refused = _target("http://127.0.0.1:*", allowed)
    assert isinstance(refused, Failure) and "not a valid URL" in refused.message
