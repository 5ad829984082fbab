"""KerasWeightsDataset: weights only, rebuilt from a builder or the saved architecture."""

from __future__ import annotations

import json
import pickle

import keras
import numpy as np
import pytest
from conftest import assert_same_predictions, fit
from kedro.io import DataCatalog, DatasetError
from kedro.io.core import Version

import keras_test_models
from kedro_keras import KerasWeightsDataset


def assert_same_weights(a, b):
    assert len(a.weights) == len(b.weights)
    for ours, theirs in zip(a.get_weights(), b.get_weights()):
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
        reloaded = KerasWeightsDataset(filepath=path, architecture=architecture, architecture_args=args).load()
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
        reloaded = KerasWeightsDataset(filepath=path, load_args={"custom_objects": ["keras_test_models.Scale"]}).load()
        assert_same_predictions(reloaded, model, data[0])

    def test_lambda_in_saved_architecture_needs_safe_mode_off(self, tmp_path, data):
        model = fit(keras_test_models.build_with_lambda(), data)
        path = str(tmp_path / "lam.weights.h5")
        KerasWeightsDataset(filepath=path).save(model)
        with pytest.raises(DatasetError, match=r"(?s)lam\.architecture\.json.*safe_mode"):
            KerasWeightsDataset(filepath=path).load()
        reloaded = KerasWeightsDataset(filepath=path, load_args={"safe_mode": False}).load()
        assert_same_predictions(reloaded, model, data[0])

    def test_builder_with_other_shapes_is_refused(self, tmp_path, trained_model):
        path = str(tmp_path / "clf.weights.h5")
        KerasWeightsDataset(filepath=path).save(trained_model)
        dataset = KerasWeightsDataset(
            filepath=path, architecture="keras_test_models.build_functional", architecture_args={"hidden": 3}
        )
        with pytest.raises(DatasetError, match=r"clf\.weights\.h5. do not fit .*shapes differ: the model has \(3,\), \(3, 1\), \(4, 3\) where the file has \(4, 8\), \(8,\), \(8, 1\)"):
            dataset.load()

    def test_builder_with_other_layer_count_is_refused(self, tmp_path, trained_model):
        path = str(tmp_path / "clf.weights.h5")
        KerasWeightsDataset(filepath=path).save(trained_model)
        dataset = KerasWeightsDataset(filepath=path, architecture="keras_test_models.build_sequential")
        with pytest.raises(DatasetError, match=r"the model has 8 weight arrays but the file holds 4"):
            dataset.load()

    def test_unbuilt_sublayers_are_refused_not_silently_skipped(self, tmp_path, data):
        model = fit(keras_test_models.build_subclassed(hidden=5), data)
        path = str(tmp_path / "net.weights.h5")
        KerasWeightsDataset(filepath=path).save(model)
        dataset = KerasWeightsDataset(
            filepath=path, architecture="keras_test_models.build_subclassed_unbuilt", architecture_args={"hidden": 5}
        )
        with pytest.raises(DatasetError, match=r"has 0 weight arrays but the file holds 4\. Is every sublayer built"):
            dataset.load()

    @pytest.mark.parametrize(
        "architecture, message",
        [
            ("keras_test_models.not_a_model", "returned str, not a keras.Model"),
            ("keras_test_models.no_such_builder", "has no attribute 'no_such_builder'"),
            ("os.system('ls')", "not an import path"),
        ],
    )
    def test_bad_builder(self, tmp_path, trained_model, architecture, message):
        path = str(tmp_path / "clf.weights.h5")
        KerasWeightsDataset(filepath=path).save(trained_model)
        with pytest.raises(DatasetError, match=message) as error:
            KerasWeightsDataset(filepath=path, architecture=architecture).load()
        assert "architecture builder" in str(error.value)

    def test_builder_that_raises(self, tmp_path, trained_model):
        path = str(tmp_path / "clf.weights.h5")
        KerasWeightsDataset(filepath=path).save(trained_model)
        dataset = KerasWeightsDataset(
            filepath=path, architecture="keras_test_models.build_functional", architecture_args={"colour": "red"}
        )
        with pytest.raises(DatasetError, match=r"build_functional.*TypeError.*colour"):
            dataset.load()

    def test_no_architecture_anywhere(self, tmp_path, trained_model):
        path = tmp_path / "clf.weights.h5"
        trained_model.save_weights(path)  # plain Keras writes no architecture
        with pytest.raises(DatasetError, match=r"no architecture was saved at '.*clf\.architecture\.json'.*architecture: <import path"):
            KerasWeightsDataset(filepath=str(path)).load()

    @pytest.mark.parametrize("filepath", ["clf.h5", "clf.keras", "clf.weights.json", "clf_weights.h5"])
    def test_file_name_must_end_in_weights_h5(self, tmp_path, filepath):
        with pytest.raises(DatasetError, match=r"ending in '\.weights\.h5'") as error:
            KerasWeightsDataset(filepath=str(tmp_path / filepath))
        assert filepath in str(error.value)

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
        KerasWeightsDataset(filepath=str(tmp_path / "b.weights.h5"), save_args={"include_optimizer": False}).save(
            trained_model
        )
        with h5py.File(tmp_path / "a.weights.h5") as full, h5py.File(tmp_path / "b.weights.h5") as slim:
            assert "optimizer" in full and "optimizer" not in slim
        assert_same_weights(KerasWeightsDataset(filepath=str(tmp_path / "b.weights.h5")).load(), trained_model)

    def test_describe(self, tmp_path):
        text = repr(
            KerasWeightsDataset(
                filepath=str(tmp_path / "a.weights.h5"), architecture=keras_test_models.build_functional
            )
        )
        assert "architecture='keras_test_models.build_functional'" in text


class TestKerasWeightsDatasetVersioned:
    def test_versions_keep_weights_and_architecture_together(self, tmp_path, data):
        config = {
            "weights": {"type": "kedro_keras.KerasWeightsDataset", "filepath": str(tmp_path / "w.weights.h5"), "versioned": True}
        }
        small = fit(keras_test_models.build_functional(hidden=2), data)
        DataCatalog.from_config(config).save("weights", small)
        first = DataCatalog.from_config(config)["weights"].list_versions(full_path=False)[0]
        DataCatalog.from_config(config).save("weights", fit(keras_test_models.build_functional(hidden=7), data))

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
