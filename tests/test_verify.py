"""Checking a stored model against its checksums, and comparing two stored
models array by array, without building either (kedro keras verify, diff)."""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest

from kedro_keras import KerasModelDataset, KerasTimestampedModelDataset, KerasWeightsDataset
from kedro_keras._dataset.verify import diff_files, verify_file
from kedro_keras._io.h5 import CorruptFileError


def model_of(width, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(width)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((4, 4)), np.ones((4, 1)), verbose=0)
    return model


def flip_a_byte_in_the_middle(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("suffix", [".keras", ".weights.h5"])
def test_an_intact_file_passes_and_a_flipped_byte_is_found(tmp_path, suffix):
    path = tmp_path / f"m{suffix}"
    dataset = (KerasModelDataset if suffix == ".keras" else KerasWeightsDataset)(filepath=str(path))
    dataset.save(model_of(64))
    assert "CRC-32" in dataset.verify()
    flip_a_byte_in_the_middle(path)
    with pytest.raises(CorruptFileError, match="CRC"):
        dataset.verify()


def test_a_file_written_elsewhere_has_only_its_headers_checked(tmp_path):
    path = tmp_path / "plain.weights.h5"
    model_of(8).save_weights(str(path))  # Keras's own writer: no trailer of ours
    with open(path, "rb") as file:
        assert verify_file(file, str(path)).startswith("no checksum recorded")


def test_diff_names_changed_shapes_and_the_largest_difference(tmp_path):
    history = KerasTimestampedModelDataset(filepath=str(tmp_path / "h"))
    first, second, wider = model_of(8, seed=1), model_of(8, seed=2), model_of(16, seed=1)
    for model in (first, second, wider):
        history.save(model)
    newest, middle, oldest = (tmp_path / "h" / f"model_{v}.keras" for v in history.versions())

    with open(oldest, "rb") as a, open(middle, "rb") as b:
        rows = {row["group"]: row["change"] for row in diff_files(a, b)}
    expected = np.max(np.abs(np.asarray(first.layers[1].kernel) - np.asarray(second.layers[1].kernel)))
    bias = np.max(np.abs(np.asarray(first.layers[1].bias) - np.asarray(second.layers[1].bias)))
    assert rows["layers/dense"] == f"max |difference| {max(expected, bias):.6g}"

    with open(oldest, "rb") as a, open(newest, "rb") as b:
        rows = {row["group"]: row["change"] for row in diff_files(a, b)}
    assert rows["layers/dense"] == "shapes (4, 8), (8,) -> (4, 16), (16,)"

    with open(oldest, "rb") as a, open(oldest, "rb") as b:
        rows = {row["group"]: row["change"] for row in diff_files(a, b)}
    assert set(rows.values()) == {"same"}
    # Groups with no arrays on either side (the model's own, input layers) are not rows.
    assert "" not in rows and "layers/input_layer" not in rows


def test_diff_reads_weights_files_too(tmp_path):
    paths = [tmp_path / "a.weights.h5", tmp_path / "b.weights.h5"]
    KerasWeightsDataset(filepath=str(paths[0])).save(model_of(8, seed=1))
    KerasWeightsDataset(filepath=str(paths[1])).save(model_of(8, seed=1))
    with h5py.File(paths[1], "r+") as h5:
        h5["layers/dense_1/vars/1"][...] = (
            5.0  # the output bias, changed in place (the trailer is then stale)
        )
    with open(paths[0], "rb") as a, open(paths[1], "rb") as b:
        rows = {row["group"]: row["change"] for row in diff_files(a, b)}
    assert rows["layers/dense"] == "same" and rows["layers/dense_1"].startswith("max |difference| ")


def test_diff_shows_the_optimizers_step_count_apart_from_its_arrays(tmp_path):
    """The step counter is a count, not a weight: 'max |difference| 126' said
    nothing (#29)."""
    paths = [tmp_path / "a.weights.h5", tmp_path / "b.weights.h5"]
    model = model_of(8, seed=1)  # one step
    KerasWeightsDataset(filepath=str(paths[0])).save(model)
    before = [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables]
    model.fit(np.ones((96, 4)), np.ones((96, 1)), batch_size=32, verbose=0)  # three more
    KerasWeightsDataset(filepath=str(paths[1])).save(model)
    after = [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables]
    with open(paths[0], "rb") as a, open(paths[1], "rb") as b:
        rows = {row["group"]: row["change"] for row in diff_files(a, b)}
    assert rows["optimizer step count"] == "1 -> 4"
    # The optimizer's other arrays (learning rate, Adam's moments): the counter is not among them.
    moments = max(
        float(np.max(np.abs(a.astype("float64") - b))) for a, b in zip(before[1:], after[1:], strict=True)
    )
    assert rows["optimizer"] == f"max |difference| {moments:.6g}"
    with open(paths[1], "rb") as a, open(paths[1], "rb") as b:
        same = {row["group"]: row["change"] for row in diff_files(a, b)}
    assert same["optimizer step count"] == "same" and same["optimizer"] == "same"


# -- the user's layer names beside Keras's groups (#29) -------------------------


def named_model(width):
    """Layers named by the user, a nested Sequential, a layer class used twice."""
    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(width, name="inner")], name="encoder")
    inputs = keras.Input((4,), name="features")
    x = keras.layers.Dense(3, name="hidden")(inputs)
    x = keras.layers.BatchNormalization(name="norm")(inner(x))
    model = keras.Model(inputs, keras.layers.Dense(1, name="score")(x), name="scorer")
    model.compile(optimizer="adam", loss="mse")
    return model


@pytest.mark.private_api
def test_our_snake_case_is_keras_own_on_every_layer_class():
    """The diff names groups without importing Keras, so it carries the
    transformation Keras's saving walk applies to class names: it must be Keras's."""
    from keras.src.utils.naming import to_snake_case

    from kedro_keras._formats.layer_names import snake_case

    names = {name for name in dir(keras.layers) if name[:1].isupper()}
    names |= {"MyLSTM2D", "HTTPServerLayer", "Conv2DTranspose", "ReLU", "PReLU", "A", "x", "Dense_v2", "Über"}
    assert len(names) > 150
    assert {name: snake_case(name) for name in names} == {name: to_snake_case(name) for name in names}


@pytest.mark.private_api
@pytest.mark.parametrize(
    "build",
    [
        named_model,
        lambda width: keras.applications.MobileNetV3Small(
            input_shape=(32, 32, 3), weights=None, include_top=True, classes=width
        ),
    ],
    ids=["named", "mobilenet_v3_small"],
)
def test_the_names_read_from_a_config_are_those_of_the_models_own_layers(build):
    """Two independent routes to the same answer: the config's layer list
    numbered as Keras's walk numbers groups, and the variables' own paths."""
    import json

    from kedro_keras._formats.layer_names import names_by_group
    from kedro_keras._keras.stores import variable_layout

    model = build(2)
    recorded = variable_layout(model)
    from_config = names_by_group(json.loads(model.to_json()))
    with_arrays = {group for group, arrays in recorded.arrays.items() if arrays}
    assert len(with_arrays) >= 4
    assert {group: from_config.get(group) for group in with_arrays} == {
        group: recorded.names[group] for group in with_arrays
    }


def test_diff_names_each_layer_as_the_user_named_it(tmp_path):
    paths = [tmp_path / "a.keras", tmp_path / "b.keras"]
    KerasModelDataset(filepath=str(paths[0])).save(named_model(2))
    KerasModelDataset(filepath=str(paths[1])).save(named_model(5))
    with open(paths[0], "rb") as a, open(paths[1], "rb") as b:
        rows = {row["group"]: (row["layer"], row["change"]) for row in diff_files(a, b)}
    assert rows["layers/dense"][0] == "hidden" and rows["layers/dense_1"][0] == "score"
    assert rows["layers/batch_normalization"][0] == "norm"
    assert rows["layers/sequential/layers/dense"] == ("encoder/inner", "shapes (3, 2), (2,) -> (3, 5), (5,)")


@pytest.mark.parametrize(
    "config",
    [b"[" * 200_000 + b"]" * 200_000, b"not json", b'{"config": {"layers": [{"class_name": 7}, "x", null]}}'],
    ids=["nested_200k", "not_json", "malformed_layers"],
)
def test_a_config_that_cannot_name_layers_leaves_the_diff_as_it_is(tmp_path, config):
    """Names only help to read a diff: a hostile or broken config.json gives
    rows without them, and every array is still compared."""
    import zipfile

    plain, forged = tmp_path / "plain.keras", tmp_path / "forged.keras"
    KerasModelDataset(filepath=str(plain)).save(named_model(2))
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(forged, "w") as target:
        for info in source.infolist():
            data = config if info.filename == "config.json" else source.read(info.filename)
            target.writestr(info, data)
    with open(plain, "rb") as a, open(forged, "rb") as b:
        named = {row["group"]: row["layer"] for row in diff_files(a, a)}
        a.seek(0)
        rows = diff_files(b, b)
    assert named["layers/dense"] == "hidden"
    assert {row["group"] for row in rows} == set(named)
    assert {row["layer"] for row in rows} == {""} and {row["change"] for row in rows} == {"same"}
