"""KerasWeightsDataset: weights only, rebuilt from a builder or the saved architecture."""

from __future__ import annotations

import json
import pickle
import re
import uuid
from pathlib import Path

import keras
import numpy as np
import pytest
from kedro.io import DataCatalog, DatasetError
from kedro.io.core import Version

import keras_test_models
from conftest import assert_same_predictions, fit
from kedro_keras import KerasWeightsDataset


def assert_same_weights(a, b):
    assert len(a.weights) == len(b.weights)
    for ours, theirs in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)


class TestKerasWeightsDataset:
    def test_saves_weights_and_architecture_beside_them(self, tmp_path, trained_model, keras_api):
        KerasWeightsDataset(filepath=str(tmp_path / "clf.weights.h5")).save(trained_model)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["clf.architecture.json", "clf.weights.h5"]
        architecture = json.loads((tmp_path / "clf.architecture.json").read_text())
        assert architecture["class_name"] == "Functional"
        # Plain Keras reads both files.
        rebuilt = keras.models.model_from_json((tmp_path / "clf.architecture.json").read_text())
        rebuilt.load_weights(tmp_path / "clf.weights.h5")
        assert_same_weights(rebuilt, trained_model)

    def test_rebuild_from_saved_architecture(self, tmp_path, trained_model, data, keras_api):
        dataset = KerasWeightsDataset(filepath=str(tmp_path / "clf.weights.h5"))
        dataset.save(trained_model)
        reloaded = dataset.load()
        assert_same_weights(reloaded, trained_model)
        assert_same_predictions(reloaded, trained_model, data[0])

    @pytest.mark.parametrize(
        "architecture, args",
        [
            ("keras_test_models.build_functional", {"hidden": 8}),
            ("keras_test_models:build_functional", {}),
            (keras_test_models.build_functional, {}),
        ],
    )
    def test_rebuild_from_builder(self, tmp_path, trained_model, data, architecture, args, keras_api):
        path = str(tmp_path / "clf.weights.h5")
        KerasWeightsDataset(filepath=path).save(trained_model)
        (tmp_path / "clf.architecture.json").unlink()  # the builder needs no saved architecture
        reloaded = KerasWeightsDataset(
            filepath=path, architecture=architecture, architecture_args=args
        ).load()
        assert_same_predictions(reloaded, trained_model, data[0])

    def test_rebuild_a_model_class(self, tmp_path, data):
        model = fit(keras_test_models.build_subclassed(hidden=5), data)
        path = str(tmp_path / "net.weights.h5")
        KerasWeightsDataset(filepath=path).save(model)

        reloaded = KerasWeightsDataset(
            filepath=path, architecture="keras_test_models.build_subclassed", architecture_args={"hidden": 5}
        ).load()
        assert_same_predictions(reloaded, model, data[0])
        from_json = KerasWeightsDataset(
            filepath=path, load_args={"custom_objects": {"TwoLayerNet": "keras_test_models.TwoLayerNet"}}
        ).load()
        assert_same_predictions(from_json, model, data[0])

    def test_sequential_with_batchnorm_and_dropout(self, tmp_path, data):
        model = fit(keras_test_models.build_sequential(), data)
        dataset = KerasWeightsDataset(filepath=str(tmp_path / "seq.weights.h5"))
        dataset.save(model)
        assert_same_predictions(dataset.load(), model, data[0])

    def test_custom_layer_through_saved_architecture(self, tmp_path, data):
        model = fit(keras_test_models.build_with_custom_layer(), data)
        path = str(tmp_path / "scaled.weights.h5")
        KerasWeightsDataset(filepath=path).save(model)
        reloaded = KerasWeightsDataset(
            filepath=path, load_args={"custom_objects": ["keras_test_models.Scale"]}
        ).load()
        assert_same_predictions(reloaded, model, data[0])

    def test_lambda_in_saved_architecture_needs_safe_mode_off(self, tmp_path, data):
        model = fit(keras_test_models.build_with_lambda(), data)
        path = str(tmp_path / "lam.weights.h5")
        KerasWeightsDataset(filepath=path).save(model)
        with pytest.raises(DatasetError, match=r"(?s)lam\.architecture\.json.*safe_mode"):
            KerasWeightsDataset(filepath=path).load()
        reloaded = KerasWeightsDataset(filepath=path, load_args={"safe_mode": False}).load()
        assert_same_predictions(reloaded, model, data[0])

    @pytest.mark.private_api
    def test_builder_with_other_shapes_is_refused(self, tmp_path, trained_model):
        path = str(tmp_path / "clf.weights.h5")
        KerasWeightsDataset(filepath=path).save(trained_model)
        dataset = KerasWeightsDataset(
            filepath=path, architecture="keras_test_models.build_functional", architecture_args={"hidden": 3}
        )
        with pytest.raises(
            DatasetError,
            match=r"clf\.weights\.h5. do not fit .*'dense(_\d+)?' \(layers/dense\): array 0 has shape \(4, 3\) in the model but \(4, 8\) in the file; 'dense(_\d+)?' \(layers/dense\): array 1 has shape \(3,\) in the model but \(8,\)",
        ):
            dataset.load()

    @pytest.mark.private_api
    def test_builder_with_other_layer_count_is_refused(self, tmp_path, trained_model):
        path = str(tmp_path / "clf.weights.h5")
        KerasWeightsDataset(filepath=path).save(trained_model)
        dataset = KerasWeightsDataset(filepath=path, architecture="keras_test_models.build_sequential")
        with pytest.raises(
            DatasetError,
            match=r"the file holds nothing for 'batch_normalization(_\d+)?' \(layers/batch_normalization\) \(4 array\(s\) in the model\)",
        ):
            dataset.load()

    @pytest.mark.private_api
    def test_a_mismatch_names_the_layers_as_the_user_named_them(self, tmp_path, data):
        """Keras's file names groups by class ('layers/dense_1'); the user
        knows 'hidden' and 'encoder/inner': the message gives both."""

        def build(width):
            inner = keras.Sequential(
                [keras.Input((3,)), keras.layers.Dense(width, name="inner")], name="encoder"
            )
            inputs = keras.Input((4,))
            x = keras.layers.Dense(3, name="hidden")(inputs)
            outputs = keras.layers.Dense(1, name="score")(inner(x))
            return keras.Model(inputs, outputs)

        path = str(tmp_path / "named.weights.h5")
        KerasWeightsDataset(filepath=path).save(build(2))
        with pytest.raises(DatasetError) as refused:
            KerasWeightsDataset(filepath=path, architecture=lambda: build(5)).load()
        message = str(refused.value)
        assert (
            "'encoder/inner' (layers/sequential/layers/dense): array 0 has shape (3, 5) in the model but (3, 2)"
            in message
        )
        assert "'score' (layers/dense_1): array 0 has shape (5, 1) in the model but (2, 1)" in message
        assert "'hidden'" not in message  # unchanged: not named

    @pytest.mark.private_api
    def test_unbuilt_sublayers_are_refused_not_silently_skipped(self, tmp_path, data):
        model = fit(keras_test_models.build_subclassed(hidden=5), data)
        path = str(tmp_path / "net.weights.h5")
        KerasWeightsDataset(filepath=path).save(model)
        dataset = KerasWeightsDataset(
            filepath=path,
            architecture="keras_test_models.build_subclassed_unbuilt",
            architecture_args={"hidden": 5},
        )
        with pytest.raises(
            DatasetError,
            match=r"'dense' has no variables in the model but 2 array\(s\) in the file.*A layer without variables was never built",
        ):
            dataset.load()

    @pytest.mark.parametrize(
        "architecture, message",
        [
            ("keras_test_models.not_a_model", "returned str, not a keras.Model"),
            ("keras_test_models.no_such_builder", "has no attribute 'no_such_builder'"),
        ],
    )
    def test_bad_builder(self, tmp_path, trained_model, architecture, message):
        path = str(tmp_path / "clf.weights.h5")
        KerasWeightsDataset(filepath=path).save(trained_model)
        with pytest.raises(DatasetError, match=message) as error:
            KerasWeightsDataset(filepath=path, architecture=architecture).load()
        assert "architecture builder" in str(error.value)

    @pytest.mark.parametrize(
        "architecture, message",
        [
            ("os.system('ls')", "not an import path"),
            ("keras_test_modelz.build_functional", "there is no module 'keras_test_modelz'"),
            ("keras_test_models.buildz.build_functional", r"there is no module 'keras_test_models\.buildz'"),
            ("subprocess.run", "module 'subprocess', which is never model code"),
        ],
    )
    def test_a_bad_builder_path_fails_when_the_catalog_is_built(self, tmp_path, architecture, message):
        """Before the training and the save: not only at load."""
        with pytest.raises(DatasetError, match=rf"clf\.weights\.h5': architecture: .*{message}"):
            KerasWeightsDataset(filepath=str(tmp_path / "clf.weights.h5"), architecture=architecture)

    def test_builder_that_raises(self, tmp_path, trained_model):
        path = str(tmp_path / "clf.weights.h5")
        KerasWeightsDataset(filepath=path).save(trained_model)
        dataset = KerasWeightsDataset(
            filepath=path,
            architecture="keras_test_models.build_functional",
            architecture_args={"colour": "red"},
        )
        with pytest.raises(DatasetError, match=r"build_functional.*TypeError.*colour"):
            dataset.load()

    def test_no_architecture_anywhere(self, tmp_path, trained_model):
        path = tmp_path / "clf.weights.h5"
        trained_model.save_weights(path)  # plain Keras writes no architecture
        with pytest.raises(
            DatasetError,
            match=r"no architecture was saved at '.*clf\.architecture\.json'.*architecture: <import path",
        ):
            KerasWeightsDataset(filepath=str(path)).load()

    @pytest.mark.parametrize("filepath", ["clf.h5", "clf.keras", "clf.json", "clf_weights.h5"])
    def test_file_name_must_end_in_weights_h5(self, tmp_path, filepath):
        with pytest.raises(
            DatasetError, match=r"ending in '\.weights\.h5' .*'\.weights\.json' .* or '\.orbax'"
        ) as error:
            KerasWeightsDataset(filepath=str(tmp_path / filepath))
        assert filepath in str(error.value)

    def test_an_orbax_folder_round_trips_on_jax_and_names_the_backend_elsewhere(
        self, tmp_path, trained_model, data
    ):
        dataset = KerasWeightsDataset(filepath=str(tmp_path / "clf.orbax"))
        if keras.backend.backend() == "jax":  # each process writes its shards (tests/processes)
            dataset.save(trained_model)
            assert_same_predictions(dataset.load(), trained_model, data[0][:8])
            return
        with pytest.raises(DatasetError) as error:
            dataset.save(trained_model)
        assert f"needs the JAX backend; this process runs Keras on {keras.backend.backend()}" in str(
            error.value
        )
        assert "'.weights.json' (sharded weights), which every backend reads" in str(error.value)
        assert not (tmp_path / "clf.orbax").exists()

    def test_architecture_of_the_wrong_type(self, tmp_path):
        with pytest.raises(DatasetError, match="architecture must be an import path"):
            KerasWeightsDataset(filepath=str(tmp_path / "a.weights.h5"), architecture=42)

    def test_missing_file(self, tmp_path):
        dataset = KerasWeightsDataset(filepath=str(tmp_path / "absent.weights.h5"))
        assert not dataset.exists()
        with pytest.raises(DatasetError, match=r"No Keras weights at '.*absent\.weights\.h5'"):
            dataset.load()

    def test_truncated_file(self, tmp_path, trained_model):
        path = tmp_path / "clf.weights.h5"
        KerasWeightsDataset(filepath=str(path)).save(trained_model)
        path.write_bytes(path.read_bytes()[:800])
        with pytest.raises(DatasetError, match=r"clf\.weights\.h5' is not a valid \.weights\.h5 file"):
            KerasWeightsDataset(filepath=str(path)).load()

    def test_unbuilt_model_is_refused_on_save(self, tmp_path):
        model = keras_test_models.TwoLayerNet(3)
        with pytest.raises(DatasetError, match="not built yet"):
            KerasWeightsDataset(filepath=str(tmp_path / "n.weights.h5")).save(model)
        assert list(tmp_path.iterdir()) == []

    def test_include_optimizer_false(self, tmp_path, trained_model, keras_api):
        import h5py

        KerasWeightsDataset(filepath=str(tmp_path / "a.weights.h5")).save(trained_model)
        KerasWeightsDataset(
            filepath=str(tmp_path / "b.weights.h5"), save_args={"include_optimizer": False}
        ).save(trained_model)
        with h5py.File(tmp_path / "a.weights.h5") as full, h5py.File(tmp_path / "b.weights.h5") as slim:
            assert "optimizer" in full and "optimizer" not in slim
        assert_same_weights(
            KerasWeightsDataset(filepath=str(tmp_path / "b.weights.h5")).load(), trained_model
        )

    def test_describe(self, tmp_path):
        text = repr(
            KerasWeightsDataset(
                filepath=str(tmp_path / "a.weights.h5"), architecture=keras_test_models.build_functional
            )
        )
        assert "architecture='keras_test_models.build_functional'" in text


def test_save_and_load_each_log_one_line_with_size_time_and_rate(tmp_path, trained_model, caplog):
    import logging

    path = tmp_path / "m.weights.h5"
    with caplog.at_level(logging.INFO, logger="kedro_keras"):
        KerasWeightsDataset(filepath=str(path)).save(trained_model)
        KerasWeightsDataset(filepath=str(path)).load()
    size = re.escape(f"{path.stat().st_size / 1000:.1f} KB")
    transfer = rf"{size} in \d+\.\d\d s, [\d.]+ (bytes|KB|MB|GB)/s"
    saved = [m for m in caplog.messages if m.startswith("Saved weights")]
    loaded = [m for m in caplog.messages if m.startswith("Loaded weights")]
    assert len(saved) == 1 and re.fullmatch(
        rf"Saved weights of model 'functional' to .*: {transfer}", saved[0]
    )
    backend = keras.backend.backend()
    assert len(loaded) == 1 and re.fullmatch(
        rf"Loaded weights from .* \(saved with Keras {re.escape(keras.version())} on the {backend} backend\)"
        rf" into model '.*': {transfer}",
        loaded[0],
    )


def test_the_architecture_records_what_wrote_the_weights(tmp_path, trained_model):
    dataset = KerasWeightsDataset(
        filepath=str(tmp_path / "m.weights.h5"), save_args={"include_optimizer": False}
    )
    dataset.save(trained_model)
    record = json.loads((tmp_path / "m.architecture.json").read_text())["kedro_keras"]
    assert record["keras_version"] == keras.version() and record["backend"] == keras.backend.backend()
    assert record["include_optimizer"] is False
    rows = dict(dataset.preview()["data"])
    assert rows["saved with"].startswith(
        f"Keras {keras.version()}, {keras.backend.backend()} backend, kedro-keras "
    )
    # UTC with its offset, as the exports' and checkpoints' times (#30).
    assert rows["saved at"] == record["saved_at"] and record["saved_at"].endswith("+00:00")


class NormalModel(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(3)

    def call(self, x):
        return self.dense(x)


class AliasedModel(keras.Model):
    """Keras's test_redefinition_of_trackable: the layer saving walks is
    ``a_dense``; the file holds ``dense``, which a property returns."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.a_dense = keras.layers.Dense(3)

    @property
    def dense(self):
        return self.a_dense

    def call(self, x):
        return self.dense(x)


def built(model_class, width=2):
    model = model_class()
    model(np.random.default_rng(0).random((2, width)))
    return model


class TestWhereKerasLoadsWeights:
    """Where plain ``model.load_weights`` loads a file, the dataset does too (#29)."""

    def test_a_layer_under_a_second_name_loads_as_keras_loads_it(self, tmp_path):
        path = tmp_path / "normal.weights.h5"
        saved = built(NormalModel)
        KerasWeightsDataset(filepath=str(path)).save(saved)
        plain = built(AliasedModel)
        plain.load_weights(str(path))  # what Keras does with it

        loaded = KerasWeightsDataset(filepath=str(path), architecture=lambda: built(AliasedModel)).load()
        np.testing.assert_array_equal(np.asarray(loaded.dense.kernel), np.asarray(saved.dense.kernel))
        np.testing.assert_array_equal(np.asarray(loaded.dense.kernel), np.asarray(plain.dense.kernel))

    def test_a_second_name_with_other_shapes_is_still_refused(self, tmp_path):
        path = tmp_path / "normal.weights.h5"
        KerasWeightsDataset(filepath=str(path)).save(built(NormalModel, width=2))
        # Our check names the group; with Keras's internals off, Keras's own message names the layer.
        refused = (
            r"do not fit .*the file holds nothing for 'dense(_\d+)?' \(a_dense\)|objects could not be loaded"
        )
        with pytest.raises(DatasetError, match=refused):
            KerasWeightsDataset(filepath=str(path), architecture=lambda: built(AliasedModel, width=5)).load()


class TestKerasWeightsDatasetVersioned:
    def test_versions_keep_weights_and_architecture_together(self, tmp_path, data):
        config = {
            "weights": {
                "type": "kedro_keras.KerasWeightsDataset",
                "filepath": str(tmp_path / "w.weights.h5"),
                "versioned": True,
            }
        }
        small = fit(keras_test_models.build_functional(hidden=2), data)
        DataCatalog.from_config(config).save("weights", small)
        first = DataCatalog.from_config(config)["weights"].list_versions(full_path=False)[0]
        DataCatalog.from_config(config).save(
            "weights", fit(keras_test_models.build_functional(hidden=7), data)
        )

        assert DataCatalog.from_config(config).load("weights").layers[1].units == 7
        assert DataCatalog.from_config(config).load("weights", version=first).layers[1].units == 2
        assert (tmp_path / "w.weights.h5" / first / "w.architecture.json").is_file()


class TestKerasWeightsDatasetS3:
    def test_round_trip_and_pickle(self, s3_bucket, s3_credentials, trained_model, data, keras_api):
        dataset = KerasWeightsDataset(
            filepath=f"{s3_bucket}/w/clf.weights.h5", credentials=s3_credentials, version=Version(None, None)
        )
        pickle.loads(pickle.dumps(dataset)).save(trained_model)
        reloaded = pickle.loads(pickle.dumps(dataset)).load()
        assert_same_predictions(reloaded, trained_model, data[0])

    def test_builder(self, s3_bucket, s3_credentials, trained_model, data):
        path = f"{s3_bucket}/clf.weights.h5"
        KerasWeightsDataset(filepath=path, credentials=s3_credentials).save(trained_model)
        reloaded = KerasWeightsDataset(
            filepath=path, credentials=s3_credentials, architecture="keras_test_models.build_functional"
        ).load()
        assert_same_predictions(reloaded, trained_model, data[0])


# Sharded weights ---------------------------------------------------------

# About 1 KB of arrays per shard: the small test models take several shards.
SHARD_GB = 1e-6


def index_of(path):
    return json.loads(Path(path).read_text())


def shard_names(index_path):
    """The shard files an index names, in order."""
    names = [
        name
        for names in index_of(index_path)["weight_map"].values()
        for name in ([names] if isinstance(names, str) else names)
    ]
    return list(dict.fromkeys(names))


def names_in(folder):
    return sorted(path.name for path in Path(folder).iterdir())


def sharded(path, **kwargs):
    save_args = kwargs.pop("save_args", {"max_shard_size": SHARD_GB})
    return KerasWeightsDataset(filepath=str(path), save_args=save_args, **kwargs)


def flip_byte_in_array(shard, array_path):
    """Change one byte inside an array's data: HDF5 itself reads it without complaint."""
    import h5py

    with h5py.File(shard, "r") as h5_file:
        offset = h5_file[array_path].id.get_offset()
    data = bytearray(shard.read_bytes())
    data[offset] ^= 0xFF
    shard.write_bytes(bytes(data))


@pytest.fixture
def wide_model(data):
    """A fitted model whose weights and Adam state fill several 1 KB shards."""
    return fit(keras_test_models.build_functional(hidden=64), data)


def assert_same_optimizer_state(a, b):
    assert int(keras.ops.convert_to_numpy(a.optimizer.iterations)) == int(
        keras.ops.convert_to_numpy(b.optimizer.iterations)
    )
    assert len(a.optimizer.variables) == len(b.optimizer.variables)
    for ours, theirs in zip(a.optimizer.variables, b.optimizer.variables, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs))


class TestKerasWeightsDatasetSharded:
    def test_round_trip_in_several_shards(self, tmp_path, wide_model, data, keras_api):
        index = tmp_path / "clf.weights.json"
        sharded(index).save(wide_model)

        names = shard_names(index)
        assert len(names) >= 4
        assert all(re.fullmatch(r"clf_[0-9a-f]{8}_\d{5}\.weights\.h5", name) for name in names)
        # Beside them: the architecture, and the empty first shard plain Keras opens first.
        assert names_in(tmp_path) == sorted(
            [*names, "clf.architecture.json", "clf.weights.json", "clf_00000.weights.h5"]
        )
        assert index_of(index)["kedro_keras"]["architecture"]["class_name"] == "Functional"

        reloaded = sharded(index).load()
        assert_same_predictions(reloaded, wide_model, data[0])
        assert_same_weights(reloaded, wide_model)
        assert_same_optimizer_state(reloaded, wide_model)  # compiled from the saved architecture

    def test_plain_keras_loads_what_we_save(self, tmp_path, wide_model, data, keras_api):
        index = tmp_path / "clf.weights.json"
        sharded(index).save(wide_model)
        plain = keras.models.model_from_json((tmp_path / "clf.architecture.json").read_text())
        plain.load_weights(index)
        assert_same_predictions(plain, wide_model, data[0])

    def test_we_load_what_plain_keras_saves(self, tmp_path, wide_model, data, keras_api):
        index = tmp_path / "clf.weights.json"
        wide_model.save_weights(index, max_shard_size=SHARD_GB)
        assert len(shard_names(index)) >= 4 and "clf_00000.weights.h5" in shard_names(index)

        from_builder = KerasWeightsDataset(
            filepath=str(index),
            architecture="keras_test_models.build_functional",
            architecture_args={"hidden": 64},
        ).load()
        assert_same_predictions(from_builder, wide_model, data[0])
        (tmp_path / "clf.architecture.json").write_text(wide_model.to_json())
        from_json = KerasWeightsDataset(filepath=str(index)).load()
        assert_same_predictions(from_json, wide_model, data[0])
        assert_same_optimizer_state(from_json, wide_model)

    def test_overwrite_removes_the_shards_of_the_previous_save(self, tmp_path, wide_model, data):
        index = tmp_path / "clf.weights.json"
        sharded(index).save(fit(keras_test_models.build_functional(hidden=32), data))
        first = shard_names(index)

        sharded(index).save(wide_model)
        second = shard_names(index)
        assert not set(first) & set(second)
        assert names_in(tmp_path) == sorted(
            [*second, "clf.architecture.json", "clf.weights.json", "clf_00000.weights.h5"]
        )
        assert_same_predictions(sharded(index).load(), wide_model, data[0])

    def test_overwrite_of_plain_keras_shards(self, tmp_path, wide_model, data):
        index = tmp_path / "clf.weights.json"
        fit(keras_test_models.build_functional(hidden=32), data).save_weights(index, max_shard_size=SHARD_GB)
        assert "clf_00001.weights.h5" in names_in(tmp_path)

        sharded(index).save(wide_model)
        # Keras's shards are gone but its first name, which now holds nothing.
        assert names_in(tmp_path) == sorted(
            [*shard_names(index), "clf.architecture.json", "clf.weights.json", "clf_00000.weights.h5"]
        )
        import h5py

        with h5py.File(tmp_path / "clf_00000.weights.h5") as first:
            assert list(first) == []
        plain = keras_test_models.build_functional(hidden=64)
        plain.load_weights(index)
        assert_same_predictions(plain, wide_model, data[0])
        assert_same_predictions(sharded(index).load(), wide_model, data[0])

    def test_save_that_fails_half_way_leaves_the_previous_weights(
        self, tmp_path, wide_model, data, keras_api
    ):
        index = tmp_path / "clf.weights.json"
        sharded(index).save(wide_model)
        before = {name: (tmp_path / name).read_bytes() for name in names_in(tmp_path)}

        failing = fit(keras_test_models.build_failing_to_save(), data)
        with pytest.raises(
            DatasetError,
            match=r"Could not save .*clf\.weights\.json.*no space left.*previously saved there are unchanged",
        ):
            sharded(index).save(failing)

        # Every file as it was, and nothing left behind by the failed save.
        assert {name: (tmp_path / name).read_bytes() for name in names_in(tmp_path)} == before
        assert_same_predictions(sharded(index).load(), wide_model, data[0])
        plain = keras_test_models.build_functional(hidden=64)
        plain.load_weights(index)
        assert_same_predictions(plain, wide_model, data[0])

    @pytest.mark.private_api
    def test_interrupted_save_leaves_the_previous_weights(self, tmp_path, wide_model, data):
        # KeyboardInterrupt skips the clean-up, as a killed process would:
        # the shards written so far stay, named by no index.
        index = tmp_path / "clf.weights.json"
        sharded(index).save(wide_model)
        before = {name: (tmp_path / name).read_bytes() for name in names_in(tmp_path)}

        with pytest.raises(KeyboardInterrupt):
            sharded(index).save(fit(keras_test_models.build_failing_to_save(KeyboardInterrupt), data))

        left = set(names_in(tmp_path)) - set(before)
        assert left and all(name.endswith(".weights.h5") and name not in shard_names(index) for name in left)
        assert {name: (tmp_path / name).read_bytes() for name in before} == before
        assert_same_predictions(sharded(index).load(), wide_model, data[0])

    def test_versioned(self, tmp_path, data):
        config = {
            "weights": {
                "type": "kedro_keras.KerasWeightsDataset",
                "filepath": str(tmp_path / "w.weights.json"),
                "versioned": True,
                "save_args": {"max_shard_size": SHARD_GB},
            }
        }
        small = fit(keras_test_models.build_functional(hidden=2), data)
        DataCatalog.from_config(config).save("weights", small)
        first = DataCatalog.from_config(config)["weights"].list_versions(full_path=False)[0]
        wide = fit(keras_test_models.build_functional(hidden=64), data)
        DataCatalog.from_config(config).save("weights", wide)

        assert_same_predictions(DataCatalog.from_config(config).load("weights"), wide, data[0])
        assert_same_predictions(
            DataCatalog.from_config(config).load("weights", version=first), small, data[0]
        )
        # A version's folder holds everything, under Keras's own shard names.
        (second,) = set(DataCatalog.from_config(config)["weights"].list_versions(full_path=False)) - {first}
        folder = tmp_path / "w.weights.json" / second
        names = shard_names(folder / "w.weights.json")
        assert names == [f"w_{i:05}.weights.h5" for i in range(len(names))] and len(names) >= 4
        assert names_in(folder) == sorted([*names, "w.architecture.json", "w.weights.json"])
        plain = keras_test_models.build_functional(hidden=64)
        plain.load_weights(folder / "w.weights.json")
        assert_same_predictions(plain, wide, data[0])

    def test_default_shard_size(self, tmp_path, wide_model, data):
        dataset = KerasWeightsDataset(filepath=str(tmp_path / "clf.weights.json"))
        assert "max_shard_size': 0.25" in repr(dataset) and "up to 0.25 GB of arrays each" in repr(dataset)
        dataset.save(wide_model)
        assert len(shard_names(tmp_path / "clf.weights.json")) == 1
        assert_same_predictions(dataset.load(), wide_model, data[0])

    @pytest.mark.private_api
    def test_a_variable_larger_than_a_shard_gets_its_own(self, tmp_path, wide_model, data):
        index = tmp_path / "clf.weights.json"
        sharded(index, save_args={"max_shard_size": 1e-9}).save(wide_model)  # 1 byte
        arrays = len(wide_model.weights) + len(wide_model.optimizer.variables)
        assert len(shard_names(index)) == arrays
        assert_same_predictions(sharded(index).load(), wide_model, data[0])

    def test_include_optimizer_false(self, tmp_path, wide_model, data, keras_api):
        index = tmp_path / "clf.weights.json"
        sharded(index, save_args={"max_shard_size": SHARD_GB, "include_optimizer": False}).save(wide_model)
        assert not [entry for entry in index_of(index)["weight_map"] if entry.startswith("/optimizer")]
        reloaded = sharded(index).load()
        assert_same_predictions(reloaded, wide_model, data[0])
        assert int(keras.ops.convert_to_numpy(reloaded.optimizer.iterations)) == 0

    @pytest.mark.private_api
    def test_builder_that_does_not_fit(self, tmp_path, wide_model):
        index = tmp_path / "clf.weights.json"
        sharded(index).save(wide_model)
        dataset = KerasWeightsDataset(filepath=str(index), architecture="keras_test_models.build_functional")
        with pytest.raises(
            DatasetError,
            match=r"clf\.weights\.json. do not fit .*has shape \(4, 8\) in the model but \(4, 64\) in the file",
        ):
            dataset.load()

    def test_max_shard_size_needs_a_weights_json_file(self, tmp_path):
        with pytest.raises(
            DatasetError, match=r"max_shard_size is for sharded weights, but '.*clf\.weights\.h5' is one"
        ):
            KerasWeightsDataset(filepath=str(tmp_path / "clf.weights.h5"), save_args={"max_shard_size": 1})

    @pytest.mark.parametrize("value", [0, -1, "1GB", True, float("inf")])
    def test_max_shard_size_must_be_a_positive_number(self, tmp_path, value):
        with pytest.raises(
            DatasetError, match=r"max_shard_size for '.*clf\.weights\.json' must be a positive number"
        ):
            KerasWeightsDataset(
                filepath=str(tmp_path / "clf.weights.json"), save_args={"max_shard_size": value}
            )


class TestKerasWeightsDatasetShardedDamage:
    def test_missing_shard(self, tmp_path, wide_model):
        index = tmp_path / "clf.weights.json"
        sharded(index).save(wide_model)
        gone = shard_names(index)[2]
        (tmp_path / gone).unlink()
        with pytest.raises(
            DatasetError, match=rf"clf\.weights\.json' names shards that do not exist: '.*{gone}'"
        ):
            sharded(index).load()

    def test_flipped_byte_in_a_shard_is_detected(self, tmp_path, wide_model, keras_api):
        index = tmp_path / "clf.weights.json"
        sharded(index).save(wide_model)
        holder = index_of(index)["weight_map"]["/layers/dense/vars"][0]
        flip_byte_in_array(tmp_path / holder, "layers/dense/vars/0")
        with pytest.raises(
            DatasetError, match=rf"{holder}' \(a shard of '.*clf\.weights\.json'\) is corrupt: .*checksum"
        ):
            sharded(index).load()

    def test_flipped_byte_in_an_optimizer_shard_is_detected(self, tmp_path, wide_model):
        index = tmp_path / "clf.weights.json"
        sharded(index).save(wide_model)
        holder = index_of(index)["weight_map"]["/optimizer/vars"][-1]
        import h5py

        with h5py.File(tmp_path / holder) as shard:
            array = f"optimizer/vars/{sorted(shard['optimizer/vars'], key=int)[-1]}"
        flip_byte_in_array(tmp_path / holder, array)
        with pytest.raises(DatasetError, match=rf"{holder}' \(a shard of .*\) is corrupt"):
            sharded(index).load()

    def test_truncated_shard(self, tmp_path, wide_model):
        index = tmp_path / "clf.weights.json"
        sharded(index).save(wide_model)
        shard = tmp_path / shard_names(index)[0]
        shard.write_bytes(shard.read_bytes()[:800])
        with pytest.raises(
            DatasetError, match=rf"{shard.name}' \(a shard of .*\) is not a valid \.weights\.h5 file"
        ):
            sharded(index).load()

    @pytest.mark.parametrize(
        "content, message",
        [
            (b"\x89HDF\r\n", r"is not a valid sharded-weights index: it is not JSON"),
            (b"[1, 2]", r"expected a JSON object with a 'weight_map' object"),
            (b'{"weight_map": ["a.weights.h5"]}', r"expected a JSON object with a 'weight_map' object"),
            (
                b'{"weight_map": {"/vars": 3}}',
                r"weight_map\['/vars'\] must be a shard's file name or a list of them; got 3",
            ),
            (b'{"weight_map": {"/vars": []}}', r"weight_map\['/vars'\] must be a shard's file name"),
        ],
    )
    def test_index_of_the_wrong_shape(self, tmp_path, content, message):
        index = tmp_path / "clf.weights.json"
        index.write_bytes(content)
        with pytest.raises(DatasetError, match=rf"clf\.weights\.json' .*{message}"):
            sharded(index, architecture=keras_test_models.build_functional).load()

    @pytest.mark.parametrize(
        "name",
        [
            "../outside.weights.h5",
            "/tmp/outside.weights.h5",
            "s3://bucket/outside.weights.h5",
            "file:///tmp/outside.weights.h5",
            "..\\outside.weights.h5",
            "clf.architecture.json",
            "..",
        ],
    )
    def test_shard_names_that_leave_the_folder_are_refused(self, tmp_path, trained_model, name):
        # A real shard waits outside the folder: a loader that followed the name would load it.
        folder = tmp_path / "models"
        folder.mkdir()
        trained_model.save_weights(tmp_path / "outside.weights.h5")
        index = folder / "clf.weights.json"
        index.write_text(
            json.dumps({"weight_map": {"/layers/dense/vars": [name], "/layers/dense_1/vars": name}})
        )
        with pytest.raises(
            DatasetError,
            match=rf"clf\.weights\.json' is not a valid sharded-weights index: refusing shard '{re.escape(name)}': a shard must be a plain file name",
        ):
            sharded(index, architecture=keras_test_models.build_functional).load()

    def test_save_over_a_hostile_index_removes_nothing_outside(self, tmp_path, wide_model, data, caplog):
        folder = tmp_path / "models"
        folder.mkdir()
        victim = tmp_path / "victim.weights.h5"
        victim.write_bytes(b"not yours to delete")
        index = folder / "clf.weights.json"
        index.write_text(json.dumps({"weight_map": {"/vars": "../victim.weights.h5"}}))

        sharded(index).save(wide_model)
        assert victim.read_bytes() == b"not yours to delete"
        assert "unreadable, so the shards it named (if any) are left in place" in caplog.text
        assert_same_predictions(sharded(index).load(), wide_model, data[0])

    def test_a_planted_index_cannot_make_a_save_delete_another_models_file(
        self, tmp_path, wide_model, data, caplog
    ):
        """An index naming a file beside it that is not one of its shards (another
        model's weights): the save replaces the index and leaves that file alone."""
        other = tmp_path / "other_model.weights.h5"
        other.write_bytes(b"another model's weights")
        index = tmp_path / "clf.weights.json"
        index.write_text(json.dumps({"weight_map": {"/vars": "other_model.weights.h5"}}))

        sharded(index).save(wide_model)
        assert other.read_bytes() == b"another model's weights"
        assert (
            "named files that are not its shards (other_model.weights.h5); they are left in place"
            in caplog.text
        )
        assert_same_predictions(sharded(index).load(), wide_model, data[0])

    def test_index_beside_no_architecture(self, tmp_path, wide_model):
        index = tmp_path / "clf.weights.json"
        wide_model.save_weights(index, max_shard_size=SHARD_GB)  # plain Keras: no architecture anywhere
        with pytest.raises(DatasetError, match=r"no architecture was saved at '.*clf\.architecture\.json'"):
            KerasWeightsDataset(filepath=str(index)).load()


class TestKerasWeightsDatasetShardedS3:
    def test_round_trip_overwrite_and_pickle(self, s3_bucket, s3_credentials, wide_model, data):
        import s3fs

        path = f"{s3_bucket}/models/clf.weights.json"
        dataset = sharded(path, credentials=s3_credentials)
        pickle.loads(pickle.dumps(dataset)).save(fit(keras_test_models.build_functional(hidden=32), data))
        pickle.loads(pickle.dumps(dataset)).save(wide_model)
        reloaded = pickle.loads(pickle.dumps(dataset)).load()
        assert_same_predictions(reloaded, wide_model, data[0])
        assert_same_optimizer_state(reloaded, wide_model)

        fs = s3fs.S3FileSystem(**s3_credentials)
        fs.invalidate_cache()
        objects = sorted(key.rsplit("/", 1)[-1] for key in fs.ls(f"{s3_bucket}/models"))
        index = json.loads(fs.cat(path))
        names = list(
            dict.fromkeys(
                n
                for names in index["weight_map"].values()
                for n in ([names] if isinstance(names, str) else names)
            )
        )
        assert len(names) >= 4  # the first save's shards are gone
        assert objects == sorted(
            [*names, "clf.architecture.json", "clf.weights.json", "clf_00000.weights.h5"]
        )

    def test_versioned_and_corrupt_shard(self, s3_bucket, s3_credentials, wide_model, data):
        import s3fs

        path = f"{s3_bucket}/clf.weights.json"
        sharded(path, credentials=s3_credentials, version=Version(None, None)).save(wide_model)
        reloaded = sharded(path, credentials=s3_credentials, version=Version(None, None)).load()
        assert_same_predictions(reloaded, wide_model, data[0])

        fs = s3fs.S3FileSystem(**s3_credentials)
        fs.invalidate_cache()
        (version,) = fs.ls(path)
        index = json.loads(fs.cat(f"{version}/clf.weights.json"))
        holder = index["weight_map"]["/layers/dense_1/vars"][0]
        data_bytes = bytearray(fs.cat(f"{version}/{holder}"))
        data_bytes[-100] ^= 0xFF  # inside the last array, before our trailer
        fs.pipe(f"{version}/{holder}", bytes(data_bytes))
        with pytest.raises(
            DatasetError, match=rf"s3://.*/{holder}' \(a shard of 's3://.*clf\.weights\.json'\) is corrupt"
        ):
            sharded(path, credentials=s3_credentials, version=Version(None, None)).load()


class TestFilesFromElsewhere:
    """Files other tools wrote, and places that are not what the entry expects."""

    def test_a_keras_2_weights_file_with_metrics_arrays_loads(self, tmp_path, trained_model, data):
        """tf-keras's save_weights also stores its metrics' state under metrics/;
        plain Keras 3 load_weights skips it, and so do we."""
        import h5py

        path = tmp_path / "clf.weights.h5"
        trained_model.save_weights(path)
        with h5py.File(path, "a") as file:
            file.create_group("metrics/mean/vars")["0"] = np.float32(3.0)
            file["metrics/mean/vars"]["1"] = np.float32(7.0)
        reloaded = KerasWeightsDataset(
            filepath=str(path), architecture="keras_test_models.build_functional"
        ).load()
        assert_same_weights(reloaded, trained_model)

    def test_a_missing_bucket_is_named(self, s3_credentials):
        path = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/clf.weights.h5"
        with pytest.raises(DatasetError, match=r"the bucket 'no-such-bucket-\w+' does not exist"):
            KerasWeightsDataset(filepath=path, credentials=s3_credentials).load()
