"""The leader election's settings: defaults, and timings that cannot work are refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from modelyard.operator.leader import new_identity, own_namespace
from modelyard.operator.settings import OperatorSettings


def test_defaults() -> None:
    settings = OperatorSettings.from_env({})
    assert settings.leader_election is True
    assert settings.leader_election_lease == "modelyard-operator"
    assert (
        settings.leader_election_lease_duration,
        settings.leader_election_renew_deadline,
        settings.leader_election_retry_period,
    ) == (15.0, 10.0, 2.0)


def test_a_renew_deadline_not_shorter_than_the_lease_is_refused() -> None:
    with pytest.raises(ValidationError, match="MODELYARD_LEADER_ELECTION_RETRY_PERIOD"):
        OperatorSettings.from_env(
            {
                "MODELYARD_LEADER_ELECTION_LEASE_DURATION": "10",
                "MODELYARD_LEADER_ELECTION_RENEW_DEADLINE": "10",
            }
        )


def test_off() -> None:
    assert (
        OperatorSettings.from_env({"MODELYARD_LEADER_ELECTION": "false"}).leader_election is False
    )


def test_identity_names_the_pod_and_differs_per_process() -> None:
    first, second = new_identity("op-7d9f-x2"), new_identity("op-7d9f-x2")
    assert first.startswith("op-7d9f-x2_") and second.startswith("op-7d9f-x2_")
    assert first != second


def test_the_configured_namespace_wins() -> None:
    assert own_namespace("ml") == "ml"
