"""`modelyard drift check` from the shell: output, JSON and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from modelyard.cli import app

MODELYARD = Path(sys.executable).parent / "modelyard"
FrameFactory = Callable[..., pd.DataFrame]


@pytest.fixture
def files(tmp_path: Path, make_frame: FrameFactory) -> dict[str, Path]:
    paths = {
        "reference": tmp_path / "reference.parquet",
        "same": tmp_path / "same.parquet",
        "drifted": tmp_path / "drifted.csv",
        "many": tmp_path / "many.parquet",
    }
    make_frame(5_000, seed=1).to_parquet(paths["reference"], index=False)
    make_frame(5_000, seed=2).to_parquet(paths["same"], index=False)
    make_frame(5_000, seed=3, drift=frozenset({"cont", "cat"})).to_csv(
        paths["drifted"], index=False
    )
    many = frozenset({"cont", "skewed", "cat", "code"})
    make_frame(5_000, seed=4, drift=many).to_parquet(paths["many"], index=False)
    return paths


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["drift", "check", *args])
    return result.exit_code, result.stdout, result.stderr


def test_json_lists_the_drifted_columns(files: dict[str, Path]) -> None:
    code, out, _ = invoke(
        "--reference", str(files["reference"]), "--current", str(files["many"]), "--json"
    )

    summary = json.loads(out)
    assert code == 3
    assert summary["status"] == "ok"
    assert summary["dataset_drift"] is True
    assert summary["drifted_columns"] == ["cont", "skewed", "cat", "code"]
    assert {c["column"]: c["method"] for c in summary["columns"]}["cont"] == "wasserstein"


def test_no_drift_exits_zero_with_a_table(files: dict[str, Path]) -> None:
    code, out, _ = invoke("--reference", str(files["reference"]), "--current", str(files["same"]))

    assert code == 0
    assert "wasserstein" in out
    assert "dataset drift: no; 0 of 7 feature columns drifted" in out


def test_column_drift_below_the_dataset_share_fails_only_on_request(
    files: dict[str, Path],
) -> None:
    args = ["--reference", str(files["reference"]), "--current", str(files["drifted"]), "--json"]

    code, out, _ = invoke(*args)
    assert code == 0
    assert json.loads(out)["drifted_columns"] == ["cont", "cat"]

    code, _, _ = invoke(*args, "--fail-on", "column")
    assert code == 3


def test_a_missing_file_is_a_clear_error_with_exit_2(
    files: dict[str, Path], tmp_path: Path
) -> None:
    missing = tmp_path / "nope.parquet"
    code, out, err = invoke("--reference", str(files["reference"]), "--current", str(missing))

    assert code == 2
    assert out == ""
    assert f"{missing}: no such file or directory" in err


def test_a_schema_mismatch_exits_4(files: dict[str, Path], tmp_path: Path) -> None:
    narrow = tmp_path / "narrow.parquet"
    pd.read_parquet(files["same"]).drop(columns=["flag"]).to_parquet(narrow)

    code, out, _ = invoke(
        "--reference", str(files["reference"]), "--current", str(narrow), "--json"
    )

    summary = json.loads(out)
    assert code == 4
    assert summary["status"] == "schema_mismatch"
    assert summary["missing_columns"] == ["flag"]
    assert summary["dataset_drift"] is None


def test_without_a_reference_or_model_the_usage_error_says_what_to_give(
    files: dict[str, Path],
) -> None:
    code, _, err = invoke("--current", str(files["same"]))

    assert code == 2
    assert "give --reference, or --model and --version" in err


def test_console_script_runs_from_the_shell(files: dict[str, Path]) -> None:
    result = subprocess.run(
        [
            str(MODELYARD),
            "drift",
            "check",
            "--reference",
            f"file://{files['reference']}",
            "--current",
            str(files["many"]),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 3, result.stderr
    assert json.loads(result.stdout)["dataset_drift"] is True


def test_an_unreadable_file_is_a_clear_error_with_exit_2(
    files: dict[str, Path], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.parquet"
    broken.write_text("this is not parquet")

    code, out, err = invoke("--reference", str(files["reference"]), "--current", str(broken))

    assert code == 2
    assert out == ""
    assert f"cannot read {broken}" in err


def test_the_memory_budget_is_recorded_and_the_table_says_how_columns_were_held(
    files: dict[str, Path],
) -> None:
    args = ["--reference", str(files["reference"]), "--current", str(files["many"])]

    code, out, _ = invoke(*args, "--memory-budget", "64Mi")
    assert code == 3
    assert "held" in out and "counts" in out and "memory" in out

    # 64Mi holds these columns in memory (tests/unit/drift/test_memory_limit.py has
    # windows that do not fit and are sorted on disk).
    code, out, _ = invoke(*args, "--memory-budget", "64Mi", "--json")
    summary = json.loads(out)
    assert summary["memory_budget"] == 64 * 2**20
    assert {c["computation"] for c in summary["columns"]} <= {"in_memory", "counts"}


@pytest.mark.parametrize(
    ("budget", "message"),
    [("lots", "is not an amount of memory such as 512Mi"), ("1Mi", "below the smallest budget")],
)
def test_a_bad_memory_budget_is_a_usage_error(
    files: dict[str, Path], budget: str, message: str
) -> None:
    code, _, err = invoke(
        "--reference",
        str(files["reference"]),
        "--current",
        str(files["same"]),
        "--memory-budget",
        budget,
    )
    assert code == 2
    flat = " ".join(err.replace("│", " ").split())  # the error box wraps lines
    assert "--memory-budget" in flat and message in flat
