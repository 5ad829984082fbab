"""The layer contract (pyproject.toml's [tool.importlinter], run by make lint)
holds for the package, and breaks when an import runs up a layer, closes a
cycle or reaches the package's __init__: checked on a copy of the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")  # the test extra installs it

pytestmark = pytest.mark.skipif(
    not LINT_IMPORTS.exists(),
    reason="import-linter is installed in the TensorFlow venv, where make lint runs",
)


def lint_imports(source: Path) -> subprocess.CompletedProcess:
    # The copy ahead of the installed package; wide enough that no contract's line wraps.
    env = {**os.environ, "PYTHONPATH": str(source), "COLUMNS": "500"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=source,
        timeout=120,
    )


@pytest.fixture
def package_copy(tmp_path):
    shutil.copytree(ROOT / "src" / "kedro_keras", tmp_path / "kedro_keras")
    return tmp_path


def add_import(package_copy: Path, module: str, line: str) -> None:
    path = package_copy / "kedro_keras" / module
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_package_keeps_every_contract(package_copy):
    result = lint_imports(package_copy)
    assert result.returncode == 0, result.stdout
    assert "Contracts: 3 kept, 0 broken." in result.stdout


@pytest.mark.parametrize(
    "module, line, broken",
    [
        # where bytes live, importing a Keras format: up two layers
        ("_io/files.py", "from kedro_keras._formats import archive", "Layers"),
        # Keras internals importing a dataset
        ("_keras/build.py", "import kedro_keras.keras_model_dataset", "Layers"),
        # two formats importing each other
        ("_formats/safe_configs.py", "from kedro_keras._formats import imports", "No import cycles"),
        # a module learning the version from the package's __init__
        ("_formats/weights.py", "import kedro_keras", "imports its own __init__"),
    ],
)
def test_an_upward_import_a_cycle_or_the_init_breaks_a_contract(package_copy, module, line, broken):
    add_import(package_copy, module, line)
    result = lint_imports(package_copy)
    assert result.returncode == 1, result.stdout
    (contract,) = [
        row for row in result.stdout.splitlines() if broken in row and row.endswith(("KEPT", "BROKEN"))
    ]
    assert contract.endswith("BROKEN")
