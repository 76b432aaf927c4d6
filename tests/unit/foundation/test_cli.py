"""The console script teaches with --help and reports its version."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from modelyard._version import __version__
from modelyard.cli import app

MODELYARD = Path(sys.executable).parent / "modelyard"


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"modelyard {__version__}"


def test_help_lists_the_commands() -> None:
    result = subprocess.run([str(MODELYARD), "--help"], capture_output=True, text=True, check=True)
    assert "operator" in result.stdout
    assert "Kubernetes-native MLOps" in result.stdout


def test_operator_is_not_importable_as_top_level_module() -> None:
    # The operator folder maps into the package; the standard library's `operator` wins.
    import operator

    assert operator.__file__ is not None
    assert "site-packages" in operator.__file__ or "lib/python" in operator.__file__
    assert hasattr(operator, "itemgetter")
