"""What a catalog entry may say, the same for all five datasets: drift
between copies of these checks let three datasets take an empty or null
filepath and left prune unable to list an export's versions (#28)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from kedro.io.core import DatasetError, Version

from kedro_keras import (
    KerasCheckpointDataset,
    KerasExportDataset,
    KerasModelDataset,
    KerasTimestampedModelDataset,
    KerasWeightsDataset,
    cli,
)
from kedro_keras._dataset import exported as _exported

DATASETS = [
    KerasModelDataset,
    KerasWeightsDataset,
    KerasTimestampedModelDataset,
    KerasCheckpointDataset,
    KerasExportDataset,
]


@pytest.mark.parametrize("dataset", DATASETS, ids=lambda d: d.__name__)
@pytest.mark.parametrize("filepath", [None, "", "   ", 3])
def test_a_filepath_that_names_nothing_is_refused_when_the_catalog_is_built(dataset, filepath):
    with pytest.raises(DatasetError, match=rf"filepath must name a file or folder .*got {filepath!r}"):
        dataset(filepath=filepath)


def test_the_checkpoint_datasets_description_names_every_setting(tmp_path):
    dataset = KerasCheckpointDataset(
        filepath=str(tmp_path / "c"), mode="max", remove_when_done=True, load_args={"compile": False}
    )
    described = dataset._describe()
    assert described["mode"] == "max" and described["remove_when_done"] is True
    assert described["load_args"] == {"compile": False, "safe_mode": True}
    assert "mode='max'" in str(dataset) and "remove_when_done=True" in str(dataset)


def test_prune_lists_and_removes_the_versions_of_a_versioned_export(tmp_path, monkeypatch):
    problem = _exported.why_cannot_export("onnx", keras.backend.backend()) or _exported.why_cannot_load(
        "onnx", keras.backend.backend()
    )
    format = "tf_saved_model" if problem else "onnx"  # the dataset's own name
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model(np.zeros((1, 3), "float32"))
    filepath = str(tmp_path / ("m.onnx" if format == "onnx" else "m_saved_model"))
    saved = []
    for stamp in ("2026-01-01T00.00.00.000Z", "2026-01-02T00.00.00.000Z", "2026-01-03T00.00.00.000Z"):
        dataset = KerasExportDataset(filepath=filepath, format=format, version=Version(None, stamp))
        if format == "onnx":
            dataset.save(model)
        else:  # a SavedModel cannot be written under this backend: the folders stand in for it
            (tmp_path / "m_saved_model" / stamp / "m_saved_model").mkdir(parents=True)
            (tmp_path / "m_saved_model" / stamp / "m_saved_model" / "saved_model.pb").write_bytes(b"x")
        saved.append(stamp)
    entry = KerasExportDataset(filepath=filepath, format=format, version=Version(None, None))
    monkeypatch.setattr(cli, "_entry", lambda name, env, version: entry)
    result = CliRunner().invoke(cli.commands, ["keras", "prune", "served", "--keep-last", "1"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"removed served version {saved[1]}",
        f"removed served version {saved[0]}",
        "served: 1 version(s) kept of 3",
    ]
    assert sorted(p.name for p in (tmp_path / filepath.rsplit("/", 1)[1]).iterdir()) == [saved[2]]


@pytest.mark.parametrize("dataset", DATASETS, ids=lambda d: d.__name__)
def test_an_unknown_load_arg_is_refused_in_one_wording_by_every_dataset(dataset, tmp_path):
    filepath = str(tmp_path / ("m.weights.h5" if dataset is KerasWeightsDataset else "m.keras"))
    if dataset is KerasExportDataset:
        filepath = str(tmp_path / "m.onnx")
    elif dataset in (KerasCheckpointDataset, KerasTimestampedModelDataset):
        filepath = str(tmp_path / "folder")
    with pytest.raises(DatasetError) as raised:
        dataset(filepath=filepath, load_args={"safe_mdoe": False})
    assert str(raised.value).startswith(
        f"Unknown load_args ['safe_mdoe'] for '{filepath}'; the ones understood are ['"
    )
    assert "'safe_mode'" in str(raised.value)
