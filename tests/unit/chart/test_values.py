"""values.yaml is documented and the schema rejects what it does not know, with a
message that names the culprit."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.unit.chart.rendering import CHART, helm

KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z][A-Za-z0-9]*):")


def test_every_value_is_documented_by_a_comment_naming_it() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for number, line in enumerate(lines):
        match = KEY.match(line)
        if not match:
            continue
        # The comment block right above the key; its first line starts with the name.
        above = number - 1
        while above >= 0 and lines[above].strip().startswith("#"):
            above -= 1
        block = [text.strip() for text in lines[above + 1 : number]]
        if not block or not block[0].startswith(f"# {match['key']}:"):
            undocumented.append(f"line {number + 1}: {match['key']}")
    assert not undocumented, "values without a '# name: ...' comment: " + ", ".join(undocumented)


def _schema_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for name, sub in (schema.get("properties") or {}).items():
        path = f"{prefix}{name}"
        paths.add(path)
        paths |= _schema_paths(sub, f"{path}.")
    return paths


def _value_paths(values: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for name, value in values.items():
        path = f"{prefix}{name}"
        paths.add(path)
        if isinstance(value, dict) and not path.endswith(("resources", "annotations")):
            paths |= _value_paths(value, f"{path}.")
    return paths


def test_schema_is_closed_and_covers_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def open_objects(node: dict[str, Any], path: str) -> list[str]:
        found = []
        if node.get("type") == "object" and "properties" in node:
            if node.get("additionalProperties") is not False:
                found.append(path or "(root)")
            for name, sub in node["properties"].items():
                found += open_objects(sub, f"{path}.{name}".lstrip("."))
        return found

    assert open_objects(schema, "") == []
    missing = {p for p in _value_paths(values) if p not in _schema_paths(schema)}
    assert not missing


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("operator.resolveIntervall=5", "additional properties 'resolveIntervall' not allowed"),
        ("mlflow.backendStore.postgresql.hots=db", "additional properties 'hots' not allowed"),
        ("pipeline.enabled=false", "additional properties 'pipeline' not allowed"),
        ("image.toolkit.pullPolicy=Sometimes", "/image/toolkit/pullPolicy"),
        ("operator.watchNamespaces[0]=Team_A", "/operator/watchNamespaces/0"),
    ],
)
def test_a_typo_fails_with_a_message_naming_it(setting: str, message: str) -> None:
    result = helm("template", "my", str(CHART), "--set", setting, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            ["mlflow.backendStore.postgresql.host=db.example.com"],
            "mlflow.backendStore.postgresql.existingSecret is required",
        ),
        (["mlflow.artifacts.s3.bucket=models"], "mlflow.artifacts.s3.existingSecret is required"),
        (
            ["mlflow.enabled=false"],
            "pipelines.trackingUri is required when mlflow.enabled is false",
        ),
        (
            ["pipelines.definitions.fraud.definition=name: fraud"],
            "pipelines.definitions.fraud has no schedule",
        ),
        (
            ["mlflow.replicas=2"],
            "mlflow.replicas > 1 needs mlflow.backendStore.postgresql.host and "
            "mlflow.artifacts.s3.bucket",
        ),
        (
            ["operator.modelCache.url=s3://b/c", "operator.modelCache.volumeClaim=cache"],
            "operator.modelCache: set url or volumeClaim, not both",
        ),
    ],
)
def test_an_incomplete_configuration_says_what_is_missing(
    settings: list[str], message: str
) -> None:
    args = [arg for setting in settings for arg in ("--set", setting)]
    result = helm("template", "my", str(CHART), *args, check=False)
    assert result.returncode != 0
    assert message in result.stderr
