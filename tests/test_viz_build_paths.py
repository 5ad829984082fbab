"""Previews name paths as the catalog wrote them, not as this machine has them
(#30): `kedro viz build --include-previews` publishes the previews, and they
said /home/<user>/<project>/data/06_models/... for every entry.

Kedro hands a dataset an absolute path (its context prefixes the project's
folder to each relative ``filepath`` of the catalog), so the datasets are
built here as Kedro builds them, in a folder that is a Kedro project, and
their previews must not hold that folder. (Kedro-Viz's own "filepath" field
of a data node is that absolute path, for kedro-datasets' entries as for
ours: docs/viz-and-cli.md says so. tests/e2e/test_e2e_digits_example.py
checks a real build of the digits example.)"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from kedro.io import DataCatalog

from kedro_keras._dataset.preview import project_root

# The digits example's catalog, as written in conf/base/catalog.yml.
CATALOG = {
    "classifier_model": {
        "type": "kedro_keras.KerasModelDataset",
        "filepath": "data/06_models/classifier.keras",
        "versioned": True,
    },
    "classifier_weights": {
        "type": "kedro_keras.KerasWeightsDataset",
        "filepath": "data/06_models/classifier.weights.h5",
    },
    "classifier_history": {
        "type": "kedro_keras.KerasTimestampedModelDataset",
        "filepath": "data/06_models/classifier_history",
    },
    "classifier_checkpoints": {
        "type": "kedro_keras.KerasCheckpointDataset",
        "filepath": "data/06_models/classifier_checkpoints",
    },
    "classifier_saved_model": {
        "type": "kedro_keras.KerasExportDataset",
        "filepath": "data/06_models/classifier_saved_model",
        "format": "tf_saved_model",
    },
    "classifier_onnx": {
        "type": "kedro_keras.KerasExportDataset",
        "filepath": "data/06_models/classifier.onnx",
    },
}
SAVED = ["classifier_model", "classifier_weights", "classifier_history"]


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A Kedro project's folder, the working directory from one of its
    subfolders (a notebook's), as Kedro finds a project from there."""
    root = tmp_path / "my-project"
    (root / "notebooks").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[tool.kedro]\npackage_name = "my_project"\nproject_name = "my"\n')
    monkeypatch.chdir(root / "notebooks")
    return root


def catalog_of(project: Path) -> DataCatalog:
    """The catalog as a KedroContext builds it: relative paths made absolute
    under the project's folder."""
    config = {
        name: {**entry, "filepath": (project / entry["filepath"]).as_posix()}
        for name, entry in CATALOG.items()
    }
    return DataCatalog.from_config(config)


def small_model() -> keras.Model:
    inputs = keras.Input((4,), name="pixels")
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(inputs), name="small")
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((4, 4)), np.ones((4, 2)), epochs=1, verbose=0)
    return model


def assert_as_written(name: str, preview: dict, project: Path) -> None:
    shown = json.dumps(preview)
    assert project.as_posix() not in shown, shown
    assert str(project) not in shown, shown
    path = dict(preview["data"])["path"]
    assert path.startswith(CATALOG[name]["filepath"]), path


def test_the_project_is_found_as_kedro_finds_it(project):
    assert project_root() == project.as_posix()


@pytest.mark.parametrize("name", list(CATALOG))
def test_a_preview_of_nothing_saved_names_no_folder_of_this_machine(project, name):
    """The messages too ("Nothing is saved at '...' yet") quote the path."""
    dataset = catalog_of(project).get(name)
    assert dataset._describe()["filepath"].startswith(project.as_posix())  # what Kedro gave it
    assert_as_written(name, dataset.preview(), project)


def test_previews_of_saved_models_name_no_folder_of_this_machine(project):
    catalog = catalog_of(project)
    model = small_model()
    for name in SAVED:
        catalog.save(name, model)
    for name in SAVED:
        preview = catalog.get(name).preview()
        assert dict(preview["data"])["model"] == "small (Functional)"
        assert_as_written(name, preview, project)
    rows = dict(catalog.get("classifier_model").preview()["data"])
    assert (
        rows["path"].startswith("data/06_models/classifier.keras/") and rows["versions"] == "1, newest first"
    )


def test_paths_outside_the_project_and_urls_stay_as_written(project, tmp_path, s3_bucket, s3_credentials):
    from kedro_keras import KerasModelDataset

    elsewhere = (tmp_path / "my-project-old" / "m.keras").as_posix()  # the project's name, longer
    assert dict(KerasModelDataset(filepath=elsewhere).preview()["data"])["path"] == elsewhere
    # A bucket's key may repeat the project's folder: a URL is not a local path.
    url = f"{s3_bucket}{project.as_posix()}/m.keras"
    rows = dict(KerasModelDataset(filepath=url, credentials=s3_credentials).preview()["data"])
    assert rows["path"] == url and rows["stored"] == "nothing saved yet", rows


def test_outside_any_project_paths_stay_absolute(tmp_path, monkeypatch):
    from kedro_keras import KerasModelDataset

    monkeypatch.chdir(tmp_path)
    path = (tmp_path / "m.keras").as_posix()
    assert project_root() is None
    assert dict(KerasModelDataset(filepath=path).preview()["data"])["path"] == path
