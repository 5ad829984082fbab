"""Moving a catalog entry from kedro-datasets' ``tensorflow.TensorFlowModelDataset``
to ``kedro_keras.KerasModelDataset``: the files it wrote load, by content not
by name, and the arguments it took are accepted or refused with a way forward.

TensorFlow only (``TensorFlowModelDataset`` imports it): left out of the JAX
and PyTorch runs by the Makefile.
"""

from __future__ import annotations

import logging

import keras
import numpy as np
import pytest
from kedro.io import DataCatalog
from kedro.io.core import DatasetError, Version
from kedro_datasets.tensorflow import TensorFlowModelDataset

import keras_test_models
from kedro_keras import KerasModelDataset, _legacy_h5


@pytest.fixture(scope="module")
def model():
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    net = keras_test_models.build_functional(hidden=6)
    net.compile(optimizer="adam", loss="mse")
    net.fit(x, x[:, :1], epochs=1, verbose=0)
    return net


def assert_same_model(loaded, model):
    x = np.linspace(-1, 1, 12, dtype="float32").reshape(3, 4)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    for ours, theirs in zip(loaded.optimizer.variables, model.optimizer.variables, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs))


def test_a_keras_archive_that_tensorflowmodeldataset_wrote_under_an_h5_name_loads(tmp_path, model, caplog):
    path = tmp_path / "classifier.h5"
    TensorFlowModelDataset(filepath=str(path)).save(model)
    assert path.read_bytes()[:4] == b"PK\x03\x04"  # what it writes under Keras 3: a .keras zip

    with caplog.at_level(logging.INFO, logger="kedro_keras"):
        with pytest.warns(UserWarning, match="legacy HDF5 format"):
            dataset = KerasModelDataset(filepath=str(path))
        loaded = dataset.load()

    assert_same_model(loaded, model)
    assert "holds a .keras archive although its name ends in '.h5'" in caplog.text


def test_its_version_folders_load_through_versioned_true(tmp_path, model):
    path = str(tmp_path / "classifier.h5")
    TensorFlowModelDataset(filepath=path, version=Version(None, None)).save(model)
    catalog = DataCatalog.from_config(
        {"classifier": {"type": "kedro_keras.KerasModelDataset", "filepath": path, "versioned": True}}
    )
    with pytest.warns(UserWarning, match="legacy HDF5 format"):
        assert_same_model(catalog.load("classifier"), model)


def test_a_legacy_hdf5_model_under_a_keras_name_loads(tmp_path, model, caplog):
    path = tmp_path / "classifier.keras"
    with open(path, "wb") as file:
        _legacy_h5.write_legacy_h5(model, file)
    with caplog.at_level(logging.INFO, logger="kedro_keras"):
        loaded = KerasModelDataset(filepath=str(path)).load()
    x = np.ones((2, 4), dtype="float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert "holds a legacy HDF5 model although its name ends in '.keras'" in caplog.text


def test_a_foreign_file_is_still_refused_as_such(tmp_path):
    path = tmp_path / "classifier.h5"
    path.write_bytes(b"this is not a model" * 10)
    with pytest.warns(UserWarning, match="legacy HDF5"):
        dataset = KerasModelDataset(filepath=str(path))
    with pytest.raises(
        DatasetError, match="is not a valid HDF5 file .*truncated, corrupt, or in another format"
    ):
        dataset.load()


def test_its_arguments(tmp_path, model):
    """overwrite (from its docstring example) is accepted with a warning,
    tf_device is read as the backend-neutral device, and a save_format that
    contradicts the file name is refused with what to do."""
    path = str(tmp_path / "classifier.keras")
    with pytest.warns(UserWarning, match=r"save_args\.overwrite is not needed and is ignored"):
        KerasModelDataset(filepath=path, save_args={"overwrite": True}).save(model)
    with pytest.warns(UserWarning, match=r"load_args\.tf_device .* read as load_args\.device: 'CPU:0'"):
        dataset = KerasModelDataset(filepath=path, load_args={"tf_device": "/CPU:0", "compile": True})
    assert_same_model(dataset.load(), model)
    assert dataset._describe()["load_args"]["device"] == "CPU:0"

    with pytest.raises(
        DatasetError, match=r"save_format: 'tf' does not match the file name.*remove save_format"
    ):
        KerasModelDataset(filepath=path, save_args={"save_format": "tf"})
    with pytest.raises(DatasetError, match=r"Unknown load_args \['tf_devcie'\]"):
        KerasModelDataset(filepath=path, load_args={"tf_devcie": "/CPU:0"})


def test_a_savedmodel_folder_is_named_as_such_with_the_way_forward(tmp_path):
    folder = tmp_path / "classifier.h5"  # what TensorFlowModelDataset wrote with save_format: tf
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"\x08\x01")
    with pytest.warns(UserWarning, match="legacy HDF5"):
        dataset = KerasModelDataset(filepath=str(folder))
    with pytest.raises(
        DatasetError, match=r"is a TensorFlow SavedModel folder.*Keras 3 cannot load.*tf-keras"
    ):
        dataset.load()
