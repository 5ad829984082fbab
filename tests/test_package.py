"""The package as a whole: light to import, installable datasets in a catalog."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest
from kedro.io import AbstractDataset

import kedro_keras


def run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True
    )
    return result.stdout


def test_import_and_a_catalog_of_a_hundred_models_import_no_keras_or_backend(tmp_path, monkeypatch):
    # The builder's module imports Keras: the catalog checks that it exists
    # without importing it.
    (tmp_path / "my_project").mkdir()
    (tmp_path / "my_project" / "__init__.py").write_text("")
    (tmp_path / "my_project" / "models.py").write_text("import keras\n\ndef build():\n    pass\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    out = run_python(
        """
        import json, sys
        import kedro_keras
        from kedro.io import DataCatalog
        config = {}
        for i in range(34):
            config[f"m{i}"] = {"type": "kedro_keras.KerasModelDataset", "filepath": f"data/m{i}.keras", "versioned": True}
            config[f"w{i}"] = {"type": "kedro_keras.KerasWeightsDataset", "filepath": f"data/w{i}.weights.h5",
                               "architecture": "my_project.models.build"}
            config[f"h{i}"] = {"type": "kedro_keras.KerasTimestampedModelDataset", "filepath": f"data/h{i}", "keep_last": 3}
        config["mlflow"] = {"type": "kedro_keras.KerasMlflowDataset", "artifact_path": "m/model.keras",
                            "dataset": {"type": "kedro_keras.KerasModelDataset"}, "registered_model": "m"}
        catalog = DataCatalog.from_config(config)
        [catalog[name] for name in config]  # materialise every entry
        heavy = sorted({m.split(".")[0] for m in sys.modules} & {"keras", "tensorflow", "jax", "torch", "h5py", "mlflow"})
        print(json.dumps({"entries": len(config), "heavy": heavy}))
        """
    )
    result = json.loads(out)
    assert result == {"entries": 103, "heavy": []}


def test_exports():
    assert sorted(kedro_keras.__all__) == [
        "Checkpoints",
        "KerasCheckpointDataset",
        "KerasExportDataset",
        "KerasMlflowDataset",
        "KerasModelDataset",
        "KerasTimestampedModelDataset",
        "KerasWeightsDataset",
        "__version__",
    ]
    for name in kedro_keras.__all__:
        if name.endswith("Dataset"):
            assert issubclass(getattr(kedro_keras, name), AbstractDataset)


@pytest.mark.parametrize(
    "name",
    [
        "KerasModelDataset",
        "KerasWeightsDataset",
        "KerasTimestampedModelDataset",
        "KerasCheckpointDataset",
        "KerasExportDataset",
    ],
)
def test_docstrings_show_yaml_and_python(name):
    doc = getattr(kedro_keras, name).__doc__
    assert f"type: kedro_keras.{name}" in doc
    assert ">>> " in doc


def test_installed_distribution_metadata():
    from importlib.metadata import metadata, version

    assert version("kedro-keras") == kedro_keras.__version__
    requires = " ".join(metadata("kedro-keras").get_all("Requires-Dist"))
    assert "kedro<2,>=1.0" in requires.replace(" ", "") or "kedro>=1.0,<2" in requires.replace(" ", "")


def test_the_readme_lists_every_extra():
    """The install table once lacked onnx and litert, found only when an export node ran (#30)."""
    from pathlib import Path

    root = Path(__file__).parents[1]
    table = (
        (root / "pyproject.toml")
        .read_text()
        .split("[project.optional-dependencies]\n", 1)[1]
        .split("\n[", 1)[0]
    )
    extras = set(re.findall(r"^(\w+) = \[", table, re.M))
    assert {"tensorflow", "onnx", "litert", "test"} <= extras
    install = (root / "README.md").read_text().split("## Install", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(\w+)`(?:, `(\w+)`)? \|", install, re.M))
    assert extras == {name for pair in listed for name in pair if name}
