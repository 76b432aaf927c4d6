"""docs/operations.md matches the operator: every metric it documents is exported, every
exported metric is documented, and its alert rules are valid for Prometheus."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from modelyard.operator.metrics import OperatorMetrics

DOC = Path(__file__).resolve().parents[3] / "docs" / "operations.md"


def exported() -> set[str]:
    metrics = OperatorMetrics()
    return {m.name for m in metrics.registry.collect()}


def test_the_metrics_table_lists_exactly_what_the_operator_exports() -> None:
    text = DOC.read_text()
    table = set(re.findall(r"^\| `(modelyard_operator_[a-z_]+)` \|", text, re.M))
    # prometheus_client reports a counter's family without its _total suffix.
    assert {re.sub(r"_total$", "", n) for n in table} == exported()


def test_the_alert_rules_pass_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: install Prometheus (hack/deps.sh installs it)")
    block = re.search(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    assert block is not None
    rules = tmp_path / "rules.yaml"
    rules.write_text(block.group(1))
    checked = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    used = set(re.findall(r"\b(modelyard_operator_[a-z_]+?)(?:_bucket)?\b", block.group(1)))
    assert {re.sub(r"_total$", "", n) for n in used} <= exported(), used
