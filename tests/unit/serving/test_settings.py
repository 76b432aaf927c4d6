"""Configuration: environment in, settings and reported model identity out."""

from __future__ import annotations

import pytest

from modelyard.serving.cli import build_server_environment
from modelyard.serving.model import ModelIdentity, identify_model_uri, resolve_model_identity
from modelyard.serving.settings import ServerSettings, SettingsError


@pytest.mark.parametrize(
    ("uri", "identity"),
    [
        ("models:/fraud/7", ModelIdentity("fraud", "7")),
        ("models:/fraud@champion", ModelIdentity("fraud", "@champion")),
        ("runs:/0a1b2c/model", ModelIdentity("model", "0a1b2c")),
        ("runs:/0a1b2c/nested/forest/", ModelIdentity("forest", "0a1b2c")),
        ("/models/fraud-v7", ModelIdentity("fraud-v7", "local")),
        ("file:///models/fraud-v7/", ModelIdentity("fraud-v7", "local")),
    ],
)
def test_the_uri_names_the_model(uri: str, identity: ModelIdentity) -> None:
    assert identify_model_uri(uri) == identity


def test_explicit_name_and_version_win_without_asking_the_registry() -> None:
    assert resolve_model_identity("models:/fraud@champion", "fraud", "9") == ModelIdentity(
        "fraud", "9"
    )


def test_settings_come_from_the_contracts_variables() -> None:
    settings = ServerSettings.from_env(
        {
            "MODELYARD_MODEL_URI": "models:/fraud/7",
            "MODELYARD_PREDICTION_LOG": "s3://bucket/log",
            "MODELYARD_MAX_LATENCY_MS": "250",
            "MODELYARD_LOG_FLUSH_INTERVAL": "0.5",
            "UNRELATED": "x",
        }
    )
    assert settings.model_uri == "models:/fraud/7"
    assert settings.prediction_log == "s3://bucket/log"
    assert settings.max_latency_ms == 250
    assert settings.log_flush_interval == 0.5
    assert settings.model_name is None


def test_a_missing_model_uri_says_what_to_set() -> None:
    with pytest.raises(SettingsError, match="MODELYARD_MODEL_URI is not set"):
        ServerSettings.from_env({})


def test_a_bad_number_names_the_setting() -> None:
    with pytest.raises(SettingsError, match="max_latency_ms"):
        ServerSettings.from_env({"MODELYARD_MODEL_URI": "x", "MODELYARD_MAX_LATENCY_MS": "-1"})


def test_cli_options_override_the_inherited_environment() -> None:
    env = build_server_environment(
        model_uri="models:/fraud/8",
        prediction_log=None,
        workers=2,
        max_latency_ms=None,
        max_batch_requests=None,
        access_log=True,
        base={"MODELYARD_MODEL_URI": "models:/fraud/7", "MODELYARD_PREDICTION_LOG": "/log"},
    )
    assert env["MODELYARD_MODEL_URI"] == "models:/fraud/8"
    assert env["MODELYARD_PREDICTION_LOG"] == "/log"
    assert env["MODELYARD_WORKERS"] == "2"
    assert env["MODELYARD_ACCESS_LOG"] == "1"
    assert env["BENTOML_DO_NOT_TRACK"] == "True"
    assert "MODELYARD_MAX_LATENCY_MS" not in env
