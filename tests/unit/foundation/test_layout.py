"""The layout is the architecture: one package, one import path per module, no shadowed
standard library, and import contracts that fail on a wrong import."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
#: The folders that each hold one portion of the ``modelyard`` namespace package.
PORTIONS = ("src", "operator", "serving", "pipelines")


def stdlib_operator_seen_from(root: Path) -> str:
    """Where ``import operator`` leads for a Python started in ``root`` with ``root`` first
    on its path (as ``python`` in a checkout, or pytest's rootdir insertion, does)."""
    script = "import sys; sys.path.insert(0, '.'); import operator; print(operator.__file__)"
    result = subprocess.run(
        [sys.executable, "-S", "-c", script], cwd=root, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def test_the_operator_folder_does_not_shadow_the_standard_library() -> None:
    found = stdlib_operator_seen_from(REPO)
    assert found == str(Path(sysconfig.get_paths()["stdlib"]) / "operator.py")


def test_the_guard_catches_a_shadowing_operator_package(tmp_path: Path) -> None:
    # The same check on a tree where operator/ is a package: it must see the shadowing.
    (tmp_path / "operator").mkdir()
    (tmp_path / "operator" / "__init__.py").write_text("itemgetter = None\n")
    assert stdlib_operator_seen_from(tmp_path) == str(tmp_path / "operator" / "__init__.py")


def test_component_folders_are_not_packages_and_src_has_no_links() -> None:
    for folder in ("operator", "serving", "pipelines"):
        assert not (REPO / folder / "__init__.py").exists(), f"{folder}/ must not be a package"
    links = [p for p in (REPO / "src").rglob("*") if p.is_symlink()]
    assert links == []


def _modules() -> list[tuple[str, Path]]:
    found = []
    for portion in PORTIONS:
        base = REPO / portion
        for path in sorted((base / "modelyard").rglob("*.py")):
            parts = path.relative_to(base).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found.append((".".join(parts), path))
    return found


@pytest.mark.parametrize(("module", "path"), _modules(), ids=[m for m, _ in _modules()])
def test_each_module_has_one_import_path(module: str, path: Path) -> None:
    if module.endswith(".service"):
        pytest.importorskip("bentoml")
    imported = importlib.import_module(module)
    assert Path(str(imported.__file__)).resolve() == path.resolve()


def test_import_contracts_fail_on_a_deliberate_bad_import(tmp_path: Path) -> None:
    """`make lint` runs lint-imports; a copy of the tree where the server imports the
    operator breaks the layers contract, and lint-imports says so."""
    for portion in PORTIONS:
        shutil.copytree(REPO / portion / "modelyard", tmp_path / portion / "modelyard")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")

    def lint() -> subprocess.CompletedProcess[str]:
        # -S: no site-packages .pth files, so the checkout's own portions stay out of it.
        path = [str(tmp_path / p) for p in PORTIONS] + [sysconfig.get_paths()["purelib"]]
        return subprocess.run(
            [
                sys.executable,
                "-S",
                "-c",
                "from importlinter.cli import lint_imports_command; lint_imports_command()",
            ],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(path)},
            capture_output=True,
            text=True,
            check=False,
        )

    clean = lint()
    assert clean.returncode == 0, clean.stdout + clean.stderr
    bad = tmp_path / "serving" / "modelyard" / "serving" / "shortcut.py"
    bad.write_text("from modelyard.operator import reconcile  # noqa: F401\n")
    broken = lint()
    assert broken.returncode != 0
    assert "modelyard.serving.shortcut -> modelyard.operator.reconcile" in broken.stdout
