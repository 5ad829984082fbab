"""KerasModelDataset on local disk, memory:// and a real S3 server on loopback."""

from __future__ import annotations

import importlib.util
import json
import logging
import pickle
import re
import zipfile

import keras
import numpy as np
import pytest
from kedro.io import DataCatalog, DatasetError
from kedro.io.core import Version, VersionNotFoundError

import keras_test_models
from conftest import assert_same_predictions, fit
from kedro_keras import KerasModelDataset, KerasWeightsDataset


def flip_weights_byte(path, where):
    """Invert one byte inside the stored weights member, at a fraction of its length."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("model.weights.h5")
    data = bytearray(path.read_bytes())
    header = info.header_offset
    start = (
        header
        + 30
        + int.from_bytes(data[header + 26 : header + 28], "little")
        + int.from_bytes(data[header + 28 : header + 30], "little")
    )
    data[start + int(info.file_size * where)] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def handed_over(monkeypatch):
    """The arrays offered to TensorFlow for adoption, in order."""
    from kedro_keras._keras import build as _keras_build

    arrays = []
    adoptable_init = _keras_build._Adoptable.__init__

    def record(self, array):
        arrays.append(array)
        adoptable_init(self, array)

    monkeypatch.setattr(_keras_build._Adoptable, "__init__", record)
    return arrays


def iterations(model) -> int:
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


class TestKerasModelDataset:
    def test_a_file_where_the_folder_goes_is_said_not_taken_for_another_runs_version(
        self, tmp_path, trained_model
    ):
        (tmp_path / "models").write_text("a file, not a folder")
        with pytest.raises(DatasetError, match="a file is where a folder on its path must be") as raised:
            KerasModelDataset(filepath=str(tmp_path / "models" / "model.keras")).save(trained_model)
        assert str(tmp_path / "models" / "model.keras") in str(raised.value)
        assert "another run" not in str(raised.value)

    def test_round_trip_keeps_predictions_and_optimizer_state(self, tmp_path, trained_model, data, keras_api):
        dataset = KerasModelDataset(filepath=str(tmp_path / "model.keras"))
        dataset.save(trained_model)
        reloaded = dataset.load()

        assert_same_predictions(reloaded, trained_model, data[0])
        assert iterations(reloaded) == iterations(trained_model)
        for ours, theirs in zip(reloaded.optimizer.variables, trained_model.optimizer.variables, strict=True):
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs)
            )

    def test_loaded_variables_hold_the_backends_own_tensors(self, tmp_path, trained_model, keras_api):
        """As after keras.saving.load_model: e.g. JAX arrays under JAX, not NumPy arrays."""
        path = tmp_path / "model.keras"
        KerasModelDataset(filepath=str(path)).save(trained_model)
        ours = KerasModelDataset(filepath=str(path)).load()
        theirs = keras.saving.load_model(path)
        assert [type(v.value) for v in ours.variables] == [type(v.value) for v in theirs.variables]

    @pytest.mark.parametrize(
        "build",
        [
            keras_test_models.build_functional,
            keras_test_models.build_sequential,
            keras_test_models.build_with_custom_layer,
            keras_test_models.build_subclassed,
        ],
    )
    @pytest.mark.private_api
    def test_arrays_become_their_variables_as_read(self, tmp_path, data, build, monkeypatch):
        """Under TensorFlow, an array HDF5 reads is handed to its new variable
        through ``__array__``, which TensorFlow adopts without a copy (it
        copies an ndarray twice). With the size limit lowered, every array of
        these small models takes that path: the weights, the optimizer state
        (an ordinary assign of an offered array) and the variables' own tensor
        type must be as after a plain Keras load, and the model trains on."""
        from kedro_keras._keras import build as _keras_build

        monkeypatch.setattr(_keras_build, "_ADOPT_MIN", 1)
        adopted = []
        adopt = _keras_build._adopt
        monkeypatch.setattr(_keras_build, "_adopt", lambda *args: adopted.append(adopt(*args)) or adopted[-1])
        model = fit(build(), data)
        path = tmp_path / "model.keras"
        KerasModelDataset(filepath=str(path)).save(model)
        custom = {"Scale": keras_test_models.Scale, "TwoLayerNet": keras_test_models.TwoLayerNet}
        ours = KerasModelDataset(filepath=str(path), load_args={"custom_objects": custom}).load()
        theirs = keras.saving.load_model(path, custom_objects=custom)

        assert_same_predictions(ours, model, data[0])
        # (weights, not variables: Keras saves no random-seed state, so a Dropout's differs on every load)
        for a, b in zip(
            ours.weights + ours.optimizer.variables, theirs.weights + theirs.optimizer.variables, strict=True
        ):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
            assert type(a.value) is type(b.value)
        fit(ours, data, epochs=1)  # and it trains on
        # The path is TensorFlow's; other backends adopt the aligned array itself.
        assert all(adopted) if keras.backend.backend() == "tensorflow" else not any(adopted)
        assert adopted  # every first assign was offered the chance

    @pytest.mark.private_api
    def test_an_adopted_array_is_the_variables_memory(self, tmp_path, handed_over):
        """The point of adopting: no copy. Writing into the array read from
        the file shows in the variable (only this test holds the array; the
        store gives it to no layer). A TensorFlow that copied would fail here,
        and the load's peak memory would grow by the largest array."""
        inputs = keras.Input((512,))
        model = keras.Model(inputs, keras.layers.Dense(1024, name="wide")(inputs))  # a 2 MB kernel
        path = tmp_path / "model.keras"
        KerasModelDataset(filepath=str(path)).save(model)
        loaded = KerasModelDataset(filepath=str(path)).load()

        kernel = loaded.get_layer("wide").kernel
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(kernel), keras.ops.convert_to_numpy(model.get_layer("wide").kernel)
        )
        if keras.backend.backend() != "tensorflow":
            assert handed_over == []  # JAX and PyTorch take the aligned array from the store
            return
        assert [array.shape for array in handed_over] == [(512, 1024)]
        handed_over[0][3, 5] = 1234.5
        assert keras.ops.convert_to_numpy(kernel)[3, 5] == 1234.5

    @pytest.mark.private_api
    def test_optimizer_state_is_adopted_too_not_zero_filled_then_copied(self, tmp_path, handed_over):
        """A trained model's Adam state is twice its weights: its variables
        are made without a value, as the layers' are, and take the arrays
        read from the file as their memory (TensorFlow), instead of Keras's
        zeros overwritten by a copy."""
        inputs = keras.Input((512,))
        model = keras.Model(inputs, keras.layers.Dense(1024, name="wide")(inputs))
        model.compile(optimizer="adam", loss="mse")
        x = np.random.default_rng(0).normal(size=(8, 512)).astype("float32")
        model.fit(x, np.ones((8, 1024), "float32"), verbose=0)
        path = tmp_path / "model.keras"
        KerasModelDataset(filepath=str(path)).save(model)
        loaded = KerasModelDataset(filepath=str(path)).load()

        for ours, theirs in zip(loaded.optimizer.variables, model.optimizer.variables, strict=True):
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs)
            )
        if keras.backend.backend() != "tensorflow":
            assert handed_over == []
            return
        # The kernel, then its two Adam slots (momentum and velocity).
        assert [array.shape for array in handed_over] == [(512, 1024)] * 3
        momentum = next(v for v in loaded.optimizer.variables if v.shape == (512, 1024))
        handed_over[1][0, 0] = 99.0
        assert keras.ops.convert_to_numpy(momentum)[0, 0] == 99.0

    def test_an_optimizer_that_needs_concrete_values_in_build_loads_its_state(self, tmp_path, data):
        """An optimizer whose build makes a variable from a concrete value
        cannot be built without values: it is built the usual way, from a
        fresh compile, and its whole state still loads."""
        model = fit(keras_test_models.build_functional(), data)
        model.compile(optimizer=keras_test_models.ConcreteStateAdam(), loss="mse")
        model.fit(*data, epochs=1, verbose=0)
        path = tmp_path / "model.keras"
        KerasModelDataset(filepath=str(path)).save(model)
        custom = {"ConcreteStateAdam": "keras_test_models.ConcreteStateAdam"}
        loaded = KerasModelDataset(filepath=str(path), load_args={"custom_objects": custom}).load()

        assert type(loaded.optimizer).__name__ == "ConcreteStateAdam"
        assert [v.name for v in loaded.optimizer.variables] == [v.name for v in model.optimizer.variables]
        for ours, theirs in zip(loaded.optimizer.variables, model.optimizer.variables, strict=True):
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs)
            )
        assert iterations(loaded) == iterations(model) > 0

    def test_a_value_a_layer_keeps_instead_of_assigning_is_read_before_the_file_closes(
        self, tmp_path, monkeypatch
    ):
        """Some layers keep what the store gives them (a Discretization's
        summary): a deferred array must still hold its values afterwards."""
        from kedro_keras._keras import build as _keras_build

        monkeypatch.setattr(_keras_build, "_ADOPT_MIN", 1)

        class KeepsTable(keras.layers.Layer):
            def call(self, x):
                return x

            def save_own_variables(self, store):
                store["0"] = np.arange(12.0, dtype="float32").reshape(3, 4)

            def load_own_variables(self, store):
                self.table = store["0"]

        inputs = keras.Input((4,))
        model = keras.Model(inputs, KeepsTable(name="keeps")(inputs))
        path = tmp_path / "model.keras"
        KerasModelDataset(filepath=str(path)).save(model)
        loaded = KerasModelDataset(
            filepath=str(path), load_args={"custom_objects": {"KeepsTable": KeepsTable}}
        ).load()

        np.testing.assert_array_equal(
            np.asarray(loaded.get_layer("keeps").table), np.arange(12.0).reshape(3, 4)
        )

    def test_bfloat16_weights_keep_kerass_dtype_tag(self, tmp_path):
        """Arrays NumPy has no native type for go through Keras's own store
        code, which tags them: both loaders give the same bfloat16 values."""
        import io

        import h5py

        inputs = keras.Input((4,))
        layer = keras.layers.Dense(3, dtype="bfloat16", name="half")
        model = keras.Model(inputs, layer(inputs))
        layer.kernel.assign(np.arange(12, dtype="float32").reshape(4, 3) / 7)
        path = tmp_path / "model.keras"
        KerasModelDataset(filepath=str(path)).save(model)

        with (
            zipfile.ZipFile(path) as archive,
            h5py.File(io.BytesIO(archive.read("model.weights.h5"))) as weights,
        ):
            assert weights["layers/dense/vars/0"].attrs["dtype"] == "bfloat16"  # (layers are stored by class)
        expected = keras.ops.convert_to_numpy(keras.ops.cast(layer.kernel, "float32"))
        for loaded in (KerasModelDataset(filepath=str(path)).load(), keras.saving.load_model(path)):
            kernel = loaded.get_layer("half").kernel
            assert kernel.dtype == "bfloat16"
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(keras.ops.cast(kernel, "float32")), expected
            )

    def test_training_resumes_from_loaded_optimizer_state(self, tmp_path, data):
        """Two epochs, save, load, one more == three epochs straight."""
        x, y = data
        keras.utils.set_random_seed(1)
        straight = keras_test_models.build_functional()
        keras.utils.set_random_seed(1)
        resumed = keras_test_models.build_functional()
        for model in (straight, resumed):
            model.compile(optimizer="adam", loss="mse")
        straight.fit(x, y, epochs=3, batch_size=64, shuffle=False, verbose=0)
        resumed.fit(x, y, epochs=2, batch_size=64, shuffle=False, verbose=0)

        dataset = KerasModelDataset(filepath=str(tmp_path / "model.keras"))
        dataset.save(resumed)
        reloaded = dataset.load()
        reloaded.fit(x, y, epochs=1, batch_size=64, shuffle=False, verbose=0)

        assert_same_predictions(reloaded, straight, x)

    @pytest.mark.parametrize(
        "builder",
        [
            keras_test_models.build_functional,
            keras_test_models.build_sequential,
            keras_test_models.build_subclassed,
        ],
    )
    def test_model_kinds(self, tmp_path, data, builder, keras_api):
        model = fit(builder(), data)
        dataset = KerasModelDataset(
            filepath=str(tmp_path / "model.keras"),
            load_args={"custom_objects": {"TwoLayerNet": "keras_test_models.TwoLayerNet"}},
        )
        dataset.save(model)
        assert_same_predictions(dataset.load(), model, data[0])

    def test_layers_with_assets_and_concrete_state(self, tmp_path, keras_api):
        model = keras_test_models.build_with_preprocessing()
        model.compile(optimizer="adam", loss="mse")
        numbers = np.arange(24, dtype="float32").reshape(6, 4)
        words = np.array([[3], [7], [5], [9], [3], [7]], dtype="int32")
        model.fit([numbers, words], np.ones((6, 1)), verbose=0)
        dataset = KerasModelDataset(filepath=str(tmp_path / "model.keras"))
        dataset.save(model)
        with zipfile.ZipFile(tmp_path / "model.keras") as archive:
            assert [n for n in archive.namelist() if n.startswith("assets/")] == [
                "assets/layers/position_in/vocabulary.txt"
            ]
        reloaded = dataset.load()
        assert reloaded.get_layer("colour").vocabulary == [3, 5, 7]  # from the asset alone
        np.testing.assert_allclose(
            reloaded.predict([numbers, words], verbose=0),
            model.predict([numbers, words], verbose=0),
            rtol=1e-6,
        )

    @pytest.mark.skipif(
        importlib.util.find_spec("tensorflow") is None,
        reason="Keras's lookup layers (IntegerLookup, StringLookup, TextVectorization) need TensorFlow "
        "installed whatever the backend; runs in the TensorFlow suite. test_layers_with_assets_and_concrete_state "
        "covers assets on every backend.",
    )
    def test_keras_lookup_layer_vocabulary_asset(self, tmp_path, keras_api):
        model = keras_test_models.build_with_integer_lookup()
        model.compile(optimizer="adam", loss="mse")
        words = np.array([[3], [7], [5], [9], [3], [7]], dtype="int64")
        model.fit(words, np.ones((6, 1)), verbose=0)
        dataset = KerasModelDataset(filepath=str(tmp_path / "model.keras"))
        dataset.save(model)
        with zipfile.ZipFile(tmp_path / "model.keras") as archive:
            assert "assets/layers/integer_lookup/vocabulary.txt" in archive.namelist()
        reloaded = dataset.load()
        np.testing.assert_allclose(
            reloaded.predict(words, verbose=0), model.predict(words, verbose=0), rtol=1e-6
        )
        assert reloaded.get_layer("colour").get_vocabulary() == model.get_layer("colour").get_vocabulary()

    def test_custom_layer_by_import_path(self, tmp_path, data):
        model = fit(keras_test_models.build_with_custom_layer(), data)
        path = str(tmp_path / "model.keras")
        KerasModelDataset(filepath=path).save(model)

        with pytest.raises(
            DatasetError,
            match=r"model\.keras.*uses 'Scale' \(the file records it in module 'keras_test_models'\), which "
            r"Keras cannot find.*custom_objects: \{Scale: keras_test_models\.Scale\}",
        ):
            KerasModelDataset(filepath=path).load()
        weights = str(tmp_path / "model.weights.h5")
        KerasWeightsDataset(filepath=weights).save(model)
        with pytest.raises(DatasetError) as error:  # the same message when rebuilt from the architecture
            KerasWeightsDataset(filepath=weights).load()
        assert "custom_objects: {Scale: keras_test_models.Scale}" in str(error.value)
        assert "Full object config" not in str(error.value)
        for custom_objects in (
            {"Scale": "keras_test_models.Scale"},
            ["keras_test_models.Scale"],
            {"Scale": keras_test_models.Scale},
        ):
            reloaded = KerasModelDataset(filepath=path, load_args={"custom_objects": custom_objects}).load()
            assert_same_predictions(reloaded, model, data[0])
            assert isinstance(reloaded.layers[1], keras_test_models.Scale)

    def test_a_missing_attribute_in_a_custom_object_path_fails_at_load(self, tmp_path, trained_model):
        dataset = KerasModelDataset(
            filepath=str(tmp_path / "model.keras"),
            load_args={"custom_objects": {"Scale": "keras_test_models.NoSuchLayer"}},
        )
        dataset.save(trained_model)
        with pytest.raises(DatasetError, match=r"model\.keras.*has no attribute 'NoSuchLayer'"):
            dataset.load()

    @pytest.mark.parametrize(
        "import_path, message",
        [
            ("no_such_module.Scale", "there is no module 'no_such_module'"),
            ("keras_test_models.layerz.Scale", r"there is no module 'keras_test_models\.layerz'"),
            ("__import__('os').system('true')", "not an import path"),
            ("keras_test_models.Scale; rm -rf", "not an import path"),
        ],
    )
    def test_a_bad_custom_object_path_fails_when_the_catalog_is_built(self, tmp_path, import_path, message):
        """Before any training: the module is looked for, not imported."""
        config = {
            "model": {
                "type": "kedro_keras.KerasModelDataset",
                "filepath": str(tmp_path / "model.keras"),
                "load_args": {"custom_objects": {"Scale": import_path}},
            }
        }
        with pytest.raises(DatasetError, match=message) as error:
            DataCatalog.from_config(config)["model"]
        assert "model.keras" in str(error.value)

    def test_lambda_refused_by_default_loaded_with_safe_mode_off(self, tmp_path, data):
        model = fit(keras_test_models.build_with_lambda(), data)
        path = str(tmp_path / "model.keras")
        KerasModelDataset(filepath=path).save(model)

        with pytest.raises(DatasetError, match=r"model\.keras.*safe_mode"):
            KerasModelDataset(filepath=path).load()
        reloaded = KerasModelDataset(filepath=path, load_args={"safe_mode": False}).load()
        assert_same_predictions(reloaded, model, data[0])

    def test_include_optimizer_false_writes_a_slim_file(
        self, tmp_path, trained_model, data, keras_api, recwarn
    ):
        full, slim = tmp_path / "full.keras", tmp_path / "slim.keras"
        KerasModelDataset(filepath=str(full)).save(trained_model)
        KerasModelDataset(filepath=str(slim), save_args={"include_optimizer": False}).save(trained_model)

        assert slim.stat().st_size < full.stat().st_size
        reloaded = KerasModelDataset(filepath=str(slim)).load()
        assert_same_predictions(reloaded, trained_model, data[0])
        assert iterations(reloaded) == 0
        assert not [w for w in recwarn if "Skipping variable loading for optimizer" in str(w.message)]

    def test_files_load_with_plain_keras_and_back(self, tmp_path, trained_model, data, keras_api):
        ours = tmp_path / "ours.keras"
        KerasModelDataset(filepath=str(ours)).save(trained_model)
        assert_same_predictions(keras.saving.load_model(ours), trained_model, data[0])

        theirs = tmp_path / "theirs.keras"
        trained_model.save(theirs)
        assert_same_predictions(KerasModelDataset(filepath=str(theirs)).load(), trained_model, data[0])

    def test_metadata_records_backend_and_versions(self, tmp_path, trained_model, keras_api):
        path = tmp_path / "model.keras"
        KerasModelDataset(filepath=str(path), save_args={"include_optimizer": False}).save(trained_model)
        with zipfile.ZipFile(path) as archive:
            metadata = json.loads(archive.read("metadata.json"))
        assert metadata["kedro_keras"]["backend"] == keras.backend.backend()
        assert metadata["kedro_keras"]["keras_version"] == keras.version()
        assert metadata["kedro_keras"]["include_optimizer"] is False

    def test_load_logs_the_keras_version_and_backend_it_was_saved_with(
        self, tmp_path, trained_model, caplog, keras_api
    ):
        path = tmp_path / "model.keras"
        KerasModelDataset(filepath=str(path)).save(trained_model)
        with caplog.at_level(logging.INFO, logger="kedro_keras"):
            KerasModelDataset(filepath=str(path)).load()
        saved_with = f"(saved with Keras {keras.version()} on the {keras.backend.backend()} backend)"
        size = f"{path.stat().st_size / 1000:.1f} KB"
        expected = rf"Loaded Keras model 'functional' from {re.escape(f'{path} {saved_with}: {size}')} in \d+\.\d\d s, [\d.]+ (bytes|KB|MB|GB)/s"
        assert [m for m in caplog.messages if re.fullmatch(expected, m)], caplog.messages

    def test_load_log_of_files_that_record_less(self, tmp_path, trained_model, caplog):
        # Keras's own .keras files record its version but not the backend.
        trained_model.save(tmp_path / "plain.keras")
        with caplog.at_level(logging.INFO, logger="kedro_keras"):
            KerasModelDataset(filepath=str(tmp_path / "plain.keras")).load()
        assert f"plain.keras (saved with Keras {keras.version()}): " in caplog.messages[-1]
        # A .keras archive with no metadata.json at all still loads, and says nothing.
        with (
            zipfile.ZipFile(tmp_path / "plain.keras") as source,
            zipfile.ZipFile(tmp_path / "bare.keras", "w") as bare,
        ):
            for info in source.infolist():
                if info.filename != "metadata.json":
                    bare.writestr(info, source.read(info))
        with caplog.at_level(logging.INFO, logger="kedro_keras"):
            KerasModelDataset(filepath=str(tmp_path / "bare.keras")).load()
        assert "bare.keras: " in caplog.messages[-1] and "saved with" not in caplog.messages[-1]

    @pytest.mark.parametrize("filepath", ["model.pkl", "model", "model.weights.h5", "model.tf"])
    def test_unknown_extension_is_refused_at_construction(self, tmp_path, filepath):
        with pytest.raises(DatasetError, match=r"\.keras") as error:
            KerasModelDataset(filepath=str(tmp_path / filepath))
        assert filepath in str(error.value)

    def test_weights_file_name_points_to_weights_dataset(self, tmp_path):
        with pytest.raises(DatasetError, match="KerasWeightsDataset"):
            KerasModelDataset(filepath=str(tmp_path / "m.weights.h5"))

    def test_unknown_args_are_refused(self, tmp_path):
        with pytest.raises(DatasetError, match=r"Unknown load_args \['custom_object'\]"):
            KerasModelDataset(filepath=str(tmp_path / "m.keras"), load_args={"custom_object": {}})
        with pytest.raises(DatasetError, match=r"Unknown save_args \['include_optimiser'\]"):
            KerasModelDataset(filepath=str(tmp_path / "m.keras"), save_args={"include_optimiser": False})

    def test_missing_file(self, tmp_path):
        dataset = KerasModelDataset(filepath=str(tmp_path / "absent.keras"))
        assert not dataset.exists()
        with pytest.raises(
            DatasetError, match=r"No Keras model at '.*absent\.keras': the file does not exist"
        ):
            dataset.load()

    def test_truncated_file(self, tmp_path, trained_model):
        path = tmp_path / "model.keras"
        KerasModelDataset(filepath=str(path)).save(trained_model)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(DatasetError, match=r"model\.keras' is not a valid \.keras archive.*truncated"):
            KerasModelDataset(filepath=str(path)).load()

    @pytest.mark.parametrize("where", [0.5, 0.01, 0.999])
    def test_flipped_byte_in_the_weights_is_reported_as_corruption(self, tmp_path, trained_model, where):
        path = tmp_path / "model.keras"
        KerasModelDataset(filepath=str(path)).save(trained_model)
        flip_weights_byte(path, where)
        with pytest.raises(
            DatasetError,
            # ours, or zipfile's own check on the public-API path
            match=r"model\.keras' is corrupt: (the weights do not match their checksum|Bad CRC-32)",
        ):
            KerasModelDataset(filepath=str(path)).load()

    def test_checksum_is_checked_on_s3_too(self, s3_bucket, s3_credentials, trained_model, tmp_path):
        import s3fs

        local = tmp_path / "model.keras"
        KerasModelDataset(filepath=str(local)).save(trained_model)
        flip_weights_byte(local, 0.5)
        s3fs.S3FileSystem(**s3_credentials).put(str(local), f"{s3_bucket}/model.keras")
        dataset = KerasModelDataset(filepath=f"{s3_bucket}/model.keras", credentials=s3_credentials)
        with pytest.raises(DatasetError, match="is corrupt"):
            dataset.load()

    def test_foreign_file(self, tmp_path):
        path = tmp_path / "model.keras"
        path.write_text("name,value\na,1\n")
        with pytest.raises(DatasetError, match=r"model\.keras' is not a valid \.keras archive"):
            KerasModelDataset(filepath=str(path)).load()

    def test_zip_that_is_not_a_model(self, tmp_path):
        path = tmp_path / "model.keras"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "hello")
        with pytest.raises(DatasetError, match=r"not a Keras model archive: it has no config\.json"):
            KerasModelDataset(filepath=str(path)).load()

    def test_saving_something_else_is_refused(self, tmp_path):
        dataset = KerasModelDataset(filepath=str(tmp_path / "m.keras"))
        with pytest.raises(DatasetError, match=r"Cannot save dict to '.*m\.keras': expected a keras\.Model"):
            dataset.save({"not": "a model"})

    def test_failed_save_keeps_the_previous_model(self, tmp_path, trained_model, data):
        path = tmp_path / "model.keras"
        dataset = KerasModelDataset(filepath=str(path))
        dataset.save(trained_model)
        before = path.read_bytes()

        class Unsaveable(keras_test_models.TwoLayerNet):
            def get_config(self):
                raise RuntimeError("cannot describe myself")

        broken = fit(Unsaveable(4), data)
        broken(data[0][:1])
        with pytest.raises(
            DatasetError,
            match=r"Could not save .*model\.keras': cannot describe myself\. Any model previously saved there is unchanged",
        ):
            dataset.save(broken)
        assert path.read_bytes() == before
        assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]

    def test_describe_and_repr(self, tmp_path):
        dataset = KerasModelDataset(filepath=str(tmp_path / "m.keras"), load_args={"compile": False})
        text = repr(dataset)
        assert "m.keras" in text and "'compile': False" in text and "format='keras'" in text

    def test_memory_filesystem(self, trained_model, data):
        dataset = KerasModelDataset(filepath="memory://models/model.keras")
        dataset.save(trained_model)
        assert dataset.exists()
        assert_same_predictions(dataset.load(), trained_model, data[0])

    def test_file_url(self, tmp_path, trained_model, data):
        dataset = KerasModelDataset(filepath=f"file://{tmp_path}/model.keras")
        dataset.save(trained_model)
        assert (tmp_path / "model.keras").is_file()
        assert_same_predictions(dataset.load(), trained_model, data[0])


class TestKerasModelDatasetLegacyH5:
    def test_round_trip_warns_about_the_format(self, tmp_path, trained_model, data):
        with pytest.warns(UserWarning, match="legacy HDF5"):
            dataset = KerasModelDataset(filepath=str(tmp_path / "model.h5"))
        dataset.save(trained_model)
        assert_same_predictions(dataset.load(), trained_model, data[0])

    def test_uncompilable_training_config_loads_uncompiled_with_a_log(self, tmp_path, trained_model, caplog):
        # Keras 3 cannot rebuild the 'mse' loss it wrote into the legacy file.
        dataset = KerasModelDataset(filepath=str(tmp_path / "model.h5"))
        dataset.save(trained_model)
        reloaded = dataset.load()
        assert "loaded it uncompiled" in caplog.text
        assert not reloaded.compiled

    def test_lambda_refused_in_h5_too(self, tmp_path, data):
        model = fit(keras_test_models.build_with_lambda(), data)
        KerasModelDataset(filepath=str(tmp_path / "model.h5")).save(model)
        with pytest.raises(
            DatasetError, match=r"model\.h5.*layer 'lambda\w*' \(Lambda\) holds Python code.*safe_mode: false"
        ):
            KerasModelDataset(filepath=str(tmp_path / "model.h5")).load()
        reloaded = KerasModelDataset(
            filepath=str(tmp_path / "model.h5"), load_args={"safe_mode": False, "compile": False}
        ).load()
        assert_same_predictions(reloaded, model, data[0])

    def test_load_logs_the_keras_version_and_backend_it_was_saved_with(self, tmp_path, trained_model, caplog):
        KerasModelDataset(filepath=str(tmp_path / "model.h5")).save(trained_model)
        with caplog.at_level(logging.INFO, logger="kedro_keras"):
            KerasModelDataset(filepath=str(tmp_path / "model.h5"), load_args={"compile": False}).load()
        saved_with = f"(saved with Keras {keras.version()} on the {keras.backend.backend()} backend)"
        assert f"model.h5 {saved_with}: " in caplog.messages[-1]

    def test_truncated_h5(self, tmp_path, trained_model):
        path = tmp_path / "model.h5"
        KerasModelDataset(filepath=str(path)).save(trained_model)
        path.write_bytes(path.read_bytes()[:1000])
        with pytest.raises(DatasetError, match=r"model\.h5' is not a valid HDF5 file"):
            KerasModelDataset(filepath=str(path)).load()

    def test_plain_keras_reads_our_h5(self, tmp_path, trained_model, data):
        path = tmp_path / "model.h5"
        KerasModelDataset(filepath=str(path)).save(trained_model)
        assert_same_predictions(keras.saving.load_model(path, compile=False), trained_model, data[0])


class TestKerasModelDatasetVersioned:
    def test_versions_do_not_overwrite(self, tmp_path, data):
        path = str(tmp_path / "model.keras")
        first = fit(keras_test_models.build_functional(), data)
        second = fit(keras_test_models.build_functional(hidden=4), data)
        KerasModelDataset(filepath=path, version=Version(None, "2026-01-01T00.00.00.000Z")).save(first)
        KerasModelDataset(filepath=path, version=Version(None, "2026-01-02T00.00.00.000Z")).save(second)

        latest = KerasModelDataset(filepath=path, version=Version(None, None))
        assert latest.load().layers[1].units == 4
        pinned = KerasModelDataset(filepath=path, version=Version("2026-01-01T00.00.00.000Z", None))
        assert pinned.load().layers[1].units == 8
        assert latest.list_versions(full_path=False) == [
            "2026-01-02T00.00.00.000Z",
            "2026-01-01T00.00.00.000Z",
        ]
        assert (tmp_path / "model.keras" / "2026-01-01T00.00.00.000Z" / "model.keras").is_file()

    def test_saving_an_existing_version_is_refused(self, tmp_path, trained_model):
        version = Version(None, "2026-01-01T00.00.00.000Z")
        KerasModelDataset(filepath=str(tmp_path / "m.keras"), version=version).save(trained_model)
        with pytest.raises(DatasetError, match="must not exist"):
            KerasModelDataset(filepath=str(tmp_path / "m.keras"), version=version).save(trained_model)

    def test_a_version_written_by_another_run_meanwhile_is_not_overwritten(self, tmp_path, data, monkeypatch):
        from kedro_keras._formats import archive as _archive

        version = Version(None, "2026-01-01T00.00.00.000Z")
        theirs = fit(keras_test_models.build_functional(hidden=2), data)
        ours = fit(keras_test_models.build_functional(hidden=5), data)
        write = _archive.write_keras_archive

        def write_while_another_run_saves(model, file, **kwargs):
            monkeypatch.setattr(_archive, "write_keras_archive", write)
            KerasModelDataset(filepath=str(tmp_path / "m.keras"), version=version).save(theirs)
            write(model, file, **kwargs)

        monkeypatch.setattr(_archive, "write_keras_archive", write_while_another_run_saves)
        with pytest.raises(DatasetError, match="was created by another run while this one was saving"):
            KerasModelDataset(filepath=str(tmp_path / "m.keras"), version=version).save(ours)
        pinned = KerasModelDataset(filepath=str(tmp_path / "m.keras"), version=Version(version.save, None))
        assert pinned.load().layers[1].units == 2

    def test_no_versions_yet(self, tmp_path):
        dataset = KerasModelDataset(filepath=str(tmp_path / "m.keras"), version=Version(None, None))
        assert not dataset.exists()
        with pytest.raises(VersionNotFoundError) as raised:  # still Kedro's kind of error
            dataset.load()
        # Kedro's message quoted the dataset's whole repr (#30): ours says what is missing.
        assert str(raised.value) == (
            f"Nothing is saved at '{tmp_path / 'm.keras'}' yet: it has no version (a versioned entry's "
            "first save, say the kedro run of the node that returns it, makes one)"
        )
        catalog = DataCatalog({"m": dataset})
        with pytest.raises(DatasetError, match=r"Nothing is saved at '.*m\.keras' yet") as raised:
            catalog.load("m")
        assert "load_args" not in str(raised.value)

    def test_catalog_config_versioned_and_load_version(self, tmp_path, data):
        config = {
            "model": {
                "type": "kedro_keras.KerasModelDataset",
                "filepath": str(tmp_path / "m.keras"),
                "versioned": True,
            }
        }
        catalog = DataCatalog.from_config(config)
        first = fit(keras_test_models.build_functional(hidden=3), data)
        catalog.save("model", first)
        version = catalog["model"].list_versions(full_path=False)[0]
        catalog = DataCatalog.from_config(config)
        catalog.save("model", fit(keras_test_models.build_functional(hidden=5), data))

        assert DataCatalog.from_config(config).load("model").layers[1].units == 5
        assert DataCatalog.from_config(config).load("model", version=version).layers[1].units == 3
        pinned = DataCatalog.from_config(config, load_versions={"model": version})
        assert pinned.load("model").layers[1].units == 3


class TestKerasModelDatasetS3:
    def test_round_trip(self, s3_bucket, s3_credentials, trained_model, data, keras_api):
        dataset = KerasModelDataset(filepath=f"{s3_bucket}/models/model.keras", credentials=s3_credentials)
        assert not dataset.exists()
        dataset.save(trained_model)
        assert dataset.exists()
        assert_same_predictions(dataset.load(), trained_model, data[0])

    @pytest.mark.parametrize("writer", ["ours", "keras"])
    def test_load_is_one_stream_of_get_requests(self, s3_bucket, s3_credentials, data, tmp_path, writer):
        """Each ranged GET costs a round trip (and on this server a read of the
        whole object): a load makes one for the zip directory and streams the
        rest, even with arrays of several MB that HDF5 peeks past."""
        import s3fs

        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(1024)(keras.layers.Dense(1024)(keras.layers.Dense(1024)(inputs)))
        model = keras.Model(inputs, keras.layers.Dense(1)(hidden))  # 3 arrays of 4 MB
        path = f"{s3_bucket}/big.keras"
        if writer == "ours":
            KerasModelDataset(filepath=path, credentials=s3_credentials).save(model)
        else:
            model.save(tmp_path / "big.keras")
            s3fs.S3FileSystem(**s3_credentials).put(str(tmp_path / "big.keras"), path)
        dataset = KerasModelDataset(filepath=path, credentials=s3_credentials)
        requests = []
        dataset._fs.s3.meta.events.register(
            "before-call.s3.GetObject", lambda **kwargs: requests.append(kwargs)
        )

        loaded = dataset.load()

        assert len(requests) == 2
        for ours, theirs in zip(loaded.weights, model.weights, strict=True):
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs)
            )

    def test_versioned(self, s3_bucket, s3_credentials, data):
        path = f"{s3_bucket}/model.keras"
        small = fit(keras_test_models.build_functional(hidden=2), data)
        KerasModelDataset(
            filepath=path, credentials=s3_credentials, version=Version(None, "2026-01-01T00.00.00.000Z")
        ).save(small)
        KerasModelDataset(
            filepath=path, credentials=s3_credentials, version=Version(None, "2026-01-02T00.00.00.000Z")
        ).save(fit(keras_test_models.build_functional(hidden=6), data))
        latest = KerasModelDataset(filepath=path, credentials=s3_credentials, version=Version(None, None))
        assert latest.load().layers[1].units == 6
        assert latest.list_versions(full_path=False)[-1] == "2026-01-01T00.00.00.000Z"

    def test_pickles_and_works_after_unpickling(self, s3_bucket, s3_credentials, trained_model, data):
        dataset = KerasModelDataset(
            filepath=f"{s3_bucket}/model.keras", credentials=s3_credentials, version=Version(None, None)
        )
        clone = pickle.loads(pickle.dumps(dataset))
        clone.save(trained_model)
        assert_same_predictions(pickle.loads(pickle.dumps(dataset)).load(), trained_model, data[0])

    def test_missing_object(self, s3_bucket, s3_credentials):
        dataset = KerasModelDataset(filepath=f"{s3_bucket}/absent.keras", credentials=s3_credentials)
        with pytest.raises(DatasetError, match=r"No Keras model at 's3://test-.*/absent\.keras'"):
            dataset.load()

    def test_failed_save_keeps_the_previous_object(self, s3_bucket, s3_credentials, trained_model, data):
        import s3fs

        path = f"{s3_bucket}/model.keras"
        dataset = KerasModelDataset(filepath=path, credentials=s3_credentials)
        dataset.save(trained_model)
        fs = s3fs.S3FileSystem(**s3_credentials)
        before = fs.cat(path)

        class Unsaveable(keras_test_models.TwoLayerNet):
            def get_config(self):
                raise RuntimeError("cannot describe myself")

        broken = fit(Unsaveable(4), data)
        with pytest.raises(DatasetError, match="previously saved there is unchanged"):
            dataset.save(broken)
        fs.invalidate_cache()
        assert fs.cat(path) == before
        assert fs.ls(s3_bucket, detail=False) == [path.removeprefix("s3://")]


def test_text_from_a_file_cannot_forge_a_log_line(tmp_path, caplog):
    """metadata.json's keras_version is the file's to choose: a newline in it
    must not start a line of its own in our log."""
    import logging
    import zipfile

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    path = tmp_path / "model.keras"
    KerasModelDataset(filepath=str(path)).save(model)
    forged = tmp_path / "forged.keras"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(forged, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "metadata.json":
                metadata = json.loads(data)
                metadata["kedro_keras"]["keras_version"] = "3.15.1\nINFO kedro.framework: all checks passed"
                data = json.dumps(metadata).encode()
            target.writestr(info, data)
    with caplog.at_level(logging.INFO, logger="kedro_keras"):
        KerasModelDataset(filepath=str(forged)).load()
    (line,) = [
        record.getMessage() for record in caplog.records if "Loaded Keras model" in record.getMessage()
    ]
    assert "\n" not in line and "3.15.1\\nINFO kedro.framework" in line


def test_a_missing_bucket_is_named(s3_credentials):
    with pytest.raises(
        DatasetError, match=r"No Keras model at .*: the bucket 'no-such-bucket-9c2d' does not exist"
    ):
        KerasModelDataset(filepath="s3://no-such-bucket-9c2d/model.keras", credentials=s3_credentials).load()


def test_access_denied_names_the_stores_error_code():
    """s3fs turns a refused request into PermissionError('Forbidden'); the
    store's own code (wrong key, bad signature, no access) is in its cause."""
    from kedro_keras._dataset.failures import read_failure

    class ClientError(Exception):
        response = {"Error": {"Code": "InvalidAccessKeyId", "Message": "The key you gave does not exist"}}

    try:
        try:
            raise ClientError("InvalidAccessKeyId")
        except ClientError as cause:
            raise PermissionError("Forbidden") from cause
    except PermissionError as error:
        message = read_failure(
            "s3://bucket/model.keras",
            error,
            what="the Keras model",
            file_format=".keras archive",
            remedy="save the model again",
        )
    assert message == (
        "Cannot read 's3://bucket/model.keras': access denied (the store answered InvalidAccessKeyId). "
        "Check the credentials and the file's permissions."
    )


def test_a_model_quantized_in_a_mode_this_keras_lacks_says_so(tmp_path, keras_api):
    """A .keras file naming a quantization mode the installed Keras does not
    know (a newer Keras's; written here by editing config.json) fails with
    the path, the mode, the Keras that wrote it and the one running, and
    what to do. (docs/large-models.md: quantized models.)"""
    import quantized_models

    path = tmp_path / "model.keras"
    KerasModelDataset(filepath=str(path)).save(quantized_models.build("layers_stack", "int8"))
    quantized_models.rewrite_archive(path, mode="int2", keras_version="3.99.0")

    with pytest.raises(DatasetError) as error:
        KerasModelDataset(filepath=str(path)).load()
    message = str(error.value)
    assert message.startswith(
        f"Cannot load the Keras model at '{path}': it is a model quantized with int2 (4 layers)"
    ), message
    assert f"written by Keras 3.99.0, which Keras {keras.__version__} (installed here) cannot load" in message
    assert "Load it with Keras 3.99.0 or later" in message
