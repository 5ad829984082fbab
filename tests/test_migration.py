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
from kedro_keras import KerasModelDataset
from kedro_keras._formats import legacy_h5 as _legacy_h5


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


# --------------------------------------------------------------------------
# SavedModel folders: what TensorFlowModelDataset wrote under Keras 2
# --------------------------------------------------------------------------

KERAS_2_WRITER = r"""
import sys
import numpy as np
import tensorflow as tf

keras = tf.keras  # Keras 2 (tf-keras), as TF_USE_LEGACY_KERAS=1 selects
assert keras.__name__.startswith("tf_keras") or "tf_keras" in type(keras.layers.Dense).__module__
out = sys.argv[1]
rng = np.random.default_rng(0)
tf.random.set_seed(0)

a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
hidden = keras.layers.Dense(4, activation="relu")(keras.layers.Concatenate()([a, b]))
two = keras.Model({"a": a, "b": b}, keras.layers.Dense(2, name="score")(hidden))
two.compile(optimizer="adam", loss="mse")
x = {"a": rng.normal(size=(5, 3)).astype("float32"), "b": rng.normal(size=(5, 2)).astype("float32")}
two.fit(x, rng.normal(size=(5, 2)).astype("float32"), verbose=0)
two.save(f"{out}/two_inputs", save_format="tf")         # TensorFlowModelDataset's default
np.savez(f"{out}/two_inputs.npz", a=x["a"], b=x["b"], y=two.predict(x, verbose=0))

one = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
one.save(f"{out}/versioned/2024-05-01T10.00.00.000Z/versioned", save_format="tf")
np.savez(f"{out}/versioned.npz", x=x["a"], y=one.predict(x["a"], verbose=0))

class Doubler(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    def __call__(self, x):
        return {"doubled": 2.0 * x}

doubler = Doubler()
tf.saved_model.save(doubler, f"{out}/plain_tf", signatures=doubler.__call__)
"""


@pytest.fixture(scope="module")
def keras_2_folders(tmp_path_factory):
    """SavedModel folders written by Keras 2 (the tf-keras package, as
    TensorFlow <= 2.15 wrote them) and by tf.saved_model.save, in a child
    process: Keras 2 and Keras 3 cannot share one."""
    import os
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("keras2")
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, "-c", KERAS_2_WRITER, str(out)], env=env, check=True, timeout=600)
    return out


TRUSTED = {"safe_mode": False}


def test_a_keras_2_savedmodel_with_two_named_inputs_loads_and_predicts(keras_2_folders):
    from kedro_keras import KerasExportDataset

    served = KerasExportDataset(filepath=str(keras_2_folders / "two_inputs"), load_args=TRUSTED).load()
    recorded = np.load(keras_2_folders / "two_inputs.npz")
    assert served.endpoint == "serving_default"
    assert sorted(served.input) == ["a", "b"]
    got = served.predict({"a": recorded["a"], "b": recorded["b"]}, verbose=0)
    np.testing.assert_allclose(got, recorded["y"], rtol=1e-5, atol=1e-6)


def test_tensorflowmodeldataset_version_folders_load_through_versioned_true(keras_2_folders):
    from kedro_keras import KerasExportDataset

    dataset = KerasExportDataset(
        filepath=str(keras_2_folders / "versioned"), version=Version(None, None), load_args=TRUSTED
    )
    recorded = np.load(keras_2_folders / "versioned.npz")
    np.testing.assert_allclose(dataset.load().predict(recorded["x"], verbose=0), recorded["y"], rtol=1e-5)


def test_a_tf_saved_model_save_module_loads_by_its_only_signature(keras_2_folders):
    from kedro_keras import KerasExportDataset

    served = KerasExportDataset(filepath=str(keras_2_folders / "plain_tf"), load_args=TRUSTED).load()
    x = np.arange(6, dtype="float32").reshape(2, 3)
    np.testing.assert_array_equal(served.predict(x, verbose=0), 2 * x)


def test_a_keras_3_export_written_by_hand_loads(tmp_path, model):
    from kedro_keras import KerasExportDataset

    model.export(str(tmp_path / "by_hand"), verbose=False)  # no manifest: not written by us
    served = KerasExportDataset(filepath=str(tmp_path / "by_hand"), load_args=TRUSTED).load()
    x = np.linspace(-1, 1, 12, dtype="float32").reshape(3, 4)
    np.testing.assert_allclose(
        served.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )


def test_a_keras_2_savedmodel_in_a_bucket_loads(keras_2_folders, s3_bucket, s3_credentials):
    import s3fs

    from kedro_keras import KerasExportDataset

    s3fs.S3FileSystem(**s3_credentials).put(
        str(keras_2_folders / "two_inputs"), f"{s3_bucket}/old", recursive=True
    )
    served = KerasExportDataset(
        filepath=f"{s3_bucket}/old", credentials=s3_credentials, load_args=TRUSTED
    ).load()
    recorded = np.load(keras_2_folders / "two_inputs.npz")
    got = served.predict({"a": recorded["a"], "b": recorded["b"]}, verbose=0)
    np.testing.assert_allclose(got, recorded["y"], rtol=1e-5, atol=1e-6)
