"""What a deletion that gave up on the registry records, and how records are merged and
dropped in the ConfigMap's data (the sweep itself: tests/integration/operator)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from kubernetes import client

from modelyard.core.contracts import ApprovalTags, deployed_tag_key
from modelyard.operator.leftovers import (
    LeftTags,
    entry_key,
    parse_records,
    with_record,
    without_records,
)
from modelyard.operator.reconcile import Operator, VersionTag, registry_tags
from modelyard.operator.resolve import RegistryTarget
from modelyard.operator.resource import SpecError
from modelyard.operator.settings import OperatorSettings

URI = "http://mlflow.example:5000"
NOW = dt.datetime(2026, 12, 2, 2, 30, tzinfo=dt.UTC)


def operator(**settings: Any) -> Operator:
    return Operator(
        settings=OperatorSettings(default_tracking_uri=URI, **settings),
        api_client=client.ApiClient(),
        post_event=lambda *_: None,
    )


def md(status: dict[str, Any], spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "team", "name": "churn", "uid": "u-1"},
        "spec": spec or {"model": {"name": "churn-model", "alias": "champion"}},
        "status": status,
    }


def test_the_tags_a_deployment_holds_are_its_live_and_pending_versions() -> None:
    body = md({"model": {"name": "churn-model", "version": 4}, "pending": {"version": 5}})
    target, tags = registry_tags(operator(), body) or (None, [])
    assert target == RegistryTarget(URI, None, installation=True)
    assert tags == [
        VersionTag("churn-model", 4, deployed_tag_key("team", "churn")),
        VersionTag("churn-model", 5, ApprovalTags.key("team", "churn")),
    ]
    assert registry_tags(operator(), md({})) is None  # never served: nothing to remove


def test_a_spec_naming_a_registry_not_allowed_holds_no_tag_the_operator_may_remove() -> None:
    body = md(
        {"model": {"name": "churn-model", "version": 4}},
        {"model": {"name": "churn-model", "version": 4}, "registry": {"trackingUri": "http://x"}},
    )
    with pytest.raises(SpecError):
        registry_tags(operator(), body)


def test_a_record_says_where_the_tags_are_and_round_trips() -> None:
    body = md({"model": {"name": "churn-model", "version": 4}})
    target = RegistryTarget("http://other:5000", ("team", "creds"))
    tags = [VersionTag("churn-model", 4, deployed_tag_key("team", "churn"))]
    record = LeftTags.of(body, target, tags, now=NOW)
    assert record.entry == entry_key("team", "churn") == "team.churn"
    assert record.deleted == "2026-12-02T02:30:00Z"
    assert record.uid == "u-1"
    assert record.target() == target
    assert record.version_tags() == tags
    data = with_record({}, record)
    assert json.loads(data["team.churn"])[0]["secret"] == "team/creds"
    assert parse_records(data["team.churn"]) == [record]


def test_records_of_one_name_accumulate_and_go_one_by_one() -> None:
    body = md({"model": {"name": "churn-model", "version": 4}})
    target = RegistryTarget(URI)
    first = LeftTags.of(body, target, [VersionTag("churn-model", 4, "k")], now=NOW)
    again = first.model_copy(update={"uid": "u-2"})
    other = first.model_copy(update={"name": "fraud"})
    data = with_record(with_record(with_record({"unrelated": "x"}, first), first), again)
    data = with_record(data, other)
    assert parse_records(data["team.churn"]) == [first, again]  # the same one is not doubled
    # The sweep dropping the first keeps what was recorded since.
    data = without_records(data, "team.churn", [first])
    assert parse_records(data["team.churn"]) == [again]
    data = without_records(data, "team.churn", [again])
    assert set(data) == {"unrelated", "team.fraud"}
    assert without_records(data, "team.churn", [again]) == data


def test_an_entry_that_does_not_parse_is_left_out() -> None:
    assert parse_records("not json") == []
    assert parse_records('[{"namespace": "team"}]') == []


def test_the_configmap_setting_is_namespace_slash_name() -> None:
    assert OperatorSettings().leftover_tags_ref is None
    assert OperatorSettings(leftover_tags="ml/left").leftover_tags_ref == ("ml", "left")
    with pytest.raises(ValueError, match="MODELYARD_LEFTOVER_TAGS must be namespace/name"):
        _ = OperatorSettings(leftover_tags="left").leftover_tags_ref
    assert OperatorSettings().leftover_sweep_interval == 300.0
    settings = OperatorSettings.from_env({"MODELYARD_LEFTOVER_SWEEP_INTERVAL": "2"})
    assert settings.leftover_sweep_interval == 2.0
