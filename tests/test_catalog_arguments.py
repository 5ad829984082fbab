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


def _filepath_for(dataset, root):
    if dataset is KerasWeightsDataset:
        return f"{root}/m.weights.h5"
    if dataset is KerasExportDataset:
        return f"{root}/m.onnx"
    if dataset in (KerasCheckpointDataset, KerasTimestampedModelDataset):
        return f"{root}/folder"
    return f"{root}/m.keras"


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize(
    "root, typo, meant",
    [
        ("{tmp}", "stall_timout", "stall_timeout"),
        ("{tmp}", "concurency", "concurrency"),
        ("s3://bucket/models", "endpoint_ur1", "endpoint_url"),
        ("s3://bucket/models", "config_kwarg", "config_kwargs"),
    ],
)
def test_a_misspelt_fs_arg_is_refused_when_the_catalog_is_built(dataset, root, typo, meant, tmp_path):
    """fsspec filesystems take **kwargs and ignore what they do not know:
    'stall_timout: 5' left the 60 s default in place without a word (#30)."""
    filepath = _filepath_for(dataset, root.format(tmp=tmp_path))
    with pytest.raises(DatasetError) as raised:
        dataset(filepath=filepath, fs_args={typo: 5})
    assert str(raised.value).startswith(
        f"fs_args.{typo} of '{filepath}' is not an option: did you mean '{meant}'?"
    )


@pytest.mark.parametrize("value", [0, -1, "5", True, None])
def test_stall_timeout_must_be_seconds_above_zero(value, tmp_path):
    filepath = str(tmp_path / "m.keras")
    with pytest.raises(
        DatasetError, match=r"fs_args.stall_timeout of '.*' must be a number of seconds above 0"
    ):
        KerasModelDataset(filepath=filepath, fs_args={"stall_timeout": value})


def test_an_fs_arg_far_from_every_known_name_still_reaches_the_filesystem(tmp_path):
    """A filesystem may take keys no signature names (its **kwargs): only near
    misses of a known name are refused."""
    path = tmp_path / "m.keras"
    dataset = KerasModelDataset(
        filepath=str(path), fs_args={"stall_timeout": 7.5, "auto_mkdir": True, "project_specific_flag": 1}
    )
    assert dataset._location.transfer.stall_seconds == 7.5
    assert dataset._location.fs.auto_mkdir is True
