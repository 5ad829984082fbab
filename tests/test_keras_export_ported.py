"""Keras's own export tests (keras/src/export: saved_model_test.py,
onnx_test.py, litert_test.py, openvino_test.py, torch_test.py), ported to
``KerasExportDataset``.

Each scenario saves a model through the dataset, loads the artifact back
through it and compares what the artifact predicts with the Keras model's
own ``predict``, on local disk or on ``memory://`` (each case on one of
the two, fixed by its name: the files' handling is the same code for every
model, and an export is the slowest thing the suite does). Keras's files repeat
each model under many parametrizations; this file keeps one case per
distinct model shape and export option. Where a backend (or what is
installed beside it) cannot write or read a format, the scenario asserts
the DatasetError that says why, as tests/test_keras_export_dataset.py does.
Where the dataset differs from Keras on purpose, the test says
``# Difference from Keras:`` and docs/export.md lists it.
"""

from __future__ import annotations

import re
import uuid
import zlib

import fsspec
import keras
import numpy as np
import pytest
from kedro.io import DatasetError

from kedro_keras import KerasExportDataset
from kedro_keras._dataset import exported as _exported
from test_keras_export_dataset import BACKEND, TRUSTED, assert_names_what_is_missing, filepath_for

# The formats of Keras's SavedModel, ONNX and LiteRT tests, which every scenario ports.
FORMATS = ("tf_saved_model", "onnx", "litert")
# Keras's OpenVINO and PyTorch tests (openvino_test.py, torch_test.py) cover
# fewer model shapes: the cases porting them run these formats as well (every
# OpenVINO and .pt2 export costs a second or two, on every backend that can
# write it). Their own round trips and refusals are in test_keras_export_dataset.py
# and test_hostile_exports.py.
WITH_OPENVINO = (*FORMATS, "openvino")
WITH_TORCH = (*FORMATS, "torch")
EVERY_FORMAT = (*FORMATS, "openvino", "torch")
# How close each runtime comes to Keras's own predict: a SavedModel runs
# TensorFlow's graph of the same ops; onnxruntime and LiteRT's kernels sum
# in other orders (Keras's own tests: 1e-6 for ONNX, 1e-4 for LiteRT, 1e-3
# for OpenVINO, 1e-5 for a .pt2).
TOLERANCE = {"tf_saved_model": 1e-5, "onnx": 1e-5, "litert": 1e-4, "openvino": 1e-3, "torch": 1e-5}


def test_the_cases_go_to_both_destinations(request):
    prefix = f"{request.node.nodeid.split('::')[0]}::TestPortedFromKerasExportTests::"
    names = [name for name in vars(TestPortedFromKerasExportTests) if name.startswith("test_")]
    assert len(names) > 10 and {destination_of(prefix + name) for name in names} == {"local", "memory"}


def destination_of(nodeid: str) -> str:
    """The same destination for a case in every run, half the cases each."""
    return ("local", "memory")[zlib.crc32(nodeid.encode()) % 2]


@pytest.fixture
def where(request, tmp_path):
    """The folder a test's exports go to: pytest's own, or a fresh one on
    fsspec's memory filesystem, removed from it after the test."""
    if destination_of(request.node.nodeid) == "local":
        yield str(tmp_path)
        return
    folder = f"memory:///ported-{uuid.uuid4().hex}"
    yield folder
    memory = fsspec.filesystem("memory")
    if memory.exists(folder):
        memory.rm(folder, recursive=True)


def entry(format, where, name="model", export_args=None):
    return KerasExportDataset(
        filepath=filepath_for(format, f"{where}/{name}"),
        format=format,
        export_args=export_args,
        load_args=TRUSTED if format == "tf_saved_model" else None,
    )


def save_and_load(model, format, where, name="model", export_args=None):
    """Save ``model`` through the dataset and load the artifact back; None
    where this backend cannot write or read ``format``, once the refusal is
    asserted to name why (what to install, or which backend to use)."""
    dataset = entry(format, where, name, export_args)
    cannot_export = _exported.why_cannot_export(format, BACKEND)
    if cannot_export:
        with pytest.raises(DatasetError, match="Cannot export model") as raised:
            dataset.save(model)
        assert_names_what_is_missing(str(raised.value), cannot_export)
        assert not dataset.exists()
        return None
    dataset.save(model)
    assert dataset.exists()
    cannot_load = _exported.why_cannot_load(format, BACKEND)
    if cannot_load:
        with pytest.raises(DatasetError, match="Cannot load the") as raised:
            dataset.load()
        assert cannot_load in str(raised.value)
        return None
    return dataset.load()


def assert_flex_refused(model, format, where):
    """A LiteRT file TensorFlow's converter wrote with TensorFlow ("Flex")
    operators saves, and loads with safe_mode off only."""
    dataset = entry(format, where)
    dataset.save(model)
    if not _exported.why_cannot_load(format, BACKEND):
        with pytest.raises(DatasetError, match="custom operator 'Flex"):
            dataset.load()


def predicted(served, x):
    """What the loaded artifact predicts for ``x``, as NumPy arrays (a list
    for several outputs)."""
    outputs = served.predict(x, verbose=0)
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    if isinstance(outputs, (list, tuple)):
        return [np.asarray(keras.ops.convert_to_numpy(o)) for o in outputs]
    return np.asarray(keras.ops.convert_to_numpy(outputs))


def assert_predicts_like(served, expected, x, format, tolerance=None):
    tolerance = TOLERANCE[format] if tolerance is None else tolerance
    actual = predicted(served, x)
    if isinstance(expected, (list, tuple)):
        assert isinstance(actual, list) and len(actual) == len(expected), format
        for one, other in zip(actual, expected, strict=True):
            np.testing.assert_allclose(one, other, rtol=tolerance, atol=tolerance, err_msg=format)
    else:
        np.testing.assert_allclose(actual, expected, rtol=tolerance, atol=tolerance, err_msg=format)


def normal(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


# --------------------------------------------------------------------------
# Models, as Keras's tests build them (smaller)
# --------------------------------------------------------------------------


class LayerList(keras.Model):
    """A subclassed model calling its layers in turn (Keras's CustomModel)."""

    def __init__(self, layer_list, **kwargs):
        super().__init__(**kwargs)
        self.layer_list = layer_list

    def call(self, inputs):
        for layer in self.layer_list:
            inputs = layer(inputs)
        return inputs


def dense_batchnorm_layers():
    return [
        keras.layers.Dense(6, activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.Dense(2),
    ]


def build(kind, layer_list, features=10, name="features"):
    """A sequential, functional or subclassed model of ``layer_list``,
    called once (Keras exports only models that have run)."""
    keras.utils.set_random_seed(7)
    if kind == "sequential":
        model = keras.Sequential([keras.Input((features,)), *layer_list])
    elif kind == "functional":
        inputs = outputs = keras.Input((features,), name=name)
        for layer in layer_list:
            outputs = layer(outputs)
        model = keras.Model(inputs, outputs)
    else:
        model = LayerList(layer_list)
    model(normal(2, features))
    return model


def with_moved_batchnorm_statistics(model):
    """BatchNormalization's non-trainable moving mean and variance, and its
    scale and offset, set away from their initial 0 and 1, so that an export
    that dropped or reset them would predict something else."""
    rng = np.random.default_rng(3)
    for layer in model.layers if not isinstance(model, LayerList) else model.layer_list:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = (v.shape for v in layer.weights)
            layer.set_weights(
                [
                    rng.uniform(0.5, 2.0, gamma).astype("float32"),
                    rng.normal(size=beta).astype("float32"),
                    rng.normal(size=mean).astype("float32"),
                    rng.uniform(0.5, 3.0, variance).astype("float32"),
                ]
            )
    return model


class TupleInput(keras.Model):
    def call(self, inputs):
        x, y = inputs
        return keras.ops.subtract(x, y)  # not symmetric: swapped inputs would show


class ListInput(keras.Model):
    def call(self, inputs):
        return keras.ops.subtract(inputs[0], inputs[1])


class DictInput(keras.Model):
    def call(self, inputs):  # keys sorted as text ("x10" first) and with numbers as numbers differ
        return keras.ops.subtract(inputs["x2"], inputs["x10"])


class TwoPositional(keras.Model):
    """Called as model(x, y) (Keras's TwoInputsModel)."""

    def call(self, x, y):
        return keras.ops.subtract(x, y)

    def build(self, x_shape, y_shape):
        self.built = True


class Counter(keras.layers.Layer):
    """A non-trainable int32 variable incremented on every call (Keras's StateLayer)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.counter = self.add_variable((), "zeros", "int32", trainable=False)

    def call(self, inputs):
        self.counter.assign_add(1)
        return inputs, keras.ops.convert_to_tensor(self.counter.value)


class Noise(keras.layers.Layer):
    """Adds uniform noise in [0, 1), a new draw on every call (Keras's RandomLayer)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(5)

    def call(self, inputs):
        return inputs + keras.random.uniform(keras.ops.shape(inputs), seed=self.seed_generator)


# --------------------------------------------------------------------------
# The scenarios
# --------------------------------------------------------------------------


class TestPortedFromKerasExportTests:
    @pytest.mark.parametrize("kind", ["sequential", "functional", "subclass"])
    def test_standard_model(self, where, kind):
        """Ports ExportSavedModelTest.test_standard_model_export,
        ExportONNXTest.test_standard_model_export and
        ExportLitertInterpreterTest.test_standard_model_export /
        test_export_subclass_model, ExportOpenVINOTest.test_standard_model_export
        and ExportTorchTest.test_standard_model_export / test_export_subclass_model /
        test_export_with_batch_normalization (Dense, BatchNormalization with moved
        statistics, Dense), the batch size left open: batch 1 and batch 3
        from one export (a .pt2 is exported for batch 1: it runs row by row).
        The functional model's named input keeps its name in the ONNX and
        LiteRT files (ports
        ExportLitertInterpreterTest.test_signature_def_with_named_model)."""
        model = with_moved_batchnorm_statistics(build(kind, dense_batchnorm_layers()))
        for format in EVERY_FORMAT:
            served = save_and_load(model, format, where)
            if served is None:
                continue
            for batch in (1, 3):
                x = normal(batch, 10, seed=batch)
                assert_predicts_like(served, model.predict(x, verbose=0), x, format)
            if kind == "functional" and format in ("onnx", "litert"):
                assert served.input_names == ["features"]

    @pytest.mark.parametrize("structure", ["tuple", "list", "dict"])
    def test_model_with_input_structure(self, where, structure):
        """Ports test_model_with_input_structure of ExportSavedModelTest,
        ExportONNXTest, ExportLitertInterpreterTest and ExportOpenVINOTest: a
        subclassed model taking a tuple, a list or a dict of two tensors, at
        batch 1 and 3. Traced under PyTorch, the OpenVINO IR's inputs are
        "input" and "input_1" and its output has no name, which the load
        failed on."""
        model = {"tuple": TupleInput, "list": ListInput, "dict": DictInput}[structure]()

        def inputs(batch):
            x, y = normal(batch, 4, seed=batch), normal(batch, 4, seed=batch + 10)
            return {"tuple": (x, y), "list": [x, y], "dict": {"x2": x, "x10": y}}[structure]

        model(inputs(2))
        for format in WITH_OPENVINO:
            served = save_and_load(model, format, where)
            if served is None:
                continue
            for batch in (1, 3):
                x = inputs(batch)
                assert_predicts_like(served, model.predict(x, verbose=0), x, format)

    def test_model_with_several_positional_inputs(self, where):
        """Ports test_model_with_multiple_inputs of ExportSavedModelTest,
        ExportONNXTest and ExportOpenVINOTest: a model called as model(x, y),
        fed a list of both."""
        model = TwoPositional()
        x, y = normal(3, 4, seed=1), normal(3, 4, seed=2)
        expected = keras.ops.convert_to_numpy(model(x, y))
        for format in WITH_OPENVINO:
            served = save_and_load(model, format, where)
            if served is None:
                continue
            assert_predicts_like(served, expected, [x, y], format)
            assert_predicts_like(served, expected[:1], [x[:1], y[:1]], format)

    @pytest.mark.parametrize("structure", ["list", "dict"])
    def test_several_inputs_and_outputs(self, where, structure):
        """Ports ExportSavedModelTest.test_multi_input_output_functional_model
        (a list, then a dict of inputs, two outputs) and ExportLitertInterpreterTest.
        test_multi_output_model_export, test_signature_def_with_multi_input_model,
        test_signature_def_with_multi_output_model and test_dict_input_multi_output_model,
        and ExportTorchTest.test_model_with_multiple_inputs, test_multi_output_model_export,
        test_model_with_input_structure and test_model_with_named_inputs (a
        functional model of a list, then a dict of inputs).
        Eleven inputs and outputs of as many sizes, not two: LiteRT lists a
        file's names sorted as text ("in10" before "in2", "output_10" before
        "output_2"), and a list fed to predict, or the list it returns, must
        still follow the model's order; a .pt2 takes the dict in its own key
        order ("feature_10" last), model.inputs sorts it as text."""
        keras.utils.set_random_seed(9)
        count = 11
        tensors = [keras.Input((k + 1,), name=f"in{k}") for k in range(count)]
        outputs = [keras.layers.Dense(count - k)(tensor) for k, tensor in enumerate(tensors)]
        keys = [f"feature_{k}" for k in range(count)]  # a dict keyed otherwise than the tensors are named
        inputs = tensors if structure == "list" else dict(zip(keys, tensors, strict=True))
        model = keras.Model(inputs, outputs)
        for format in WITH_TORCH:
            served = save_and_load(model, format, where)
            if served is None:
                continue
            for batch in (1, 3):
                arrays = [normal(batch, k + 1, seed=k) for k in range(count)]
                x = arrays if structure == "list" else dict(zip(keys, arrays, strict=True))
                assert_predicts_like(served, model.predict(x, verbose=0), x, format)

    def test_model_with_state_and_randomness(self, where):
        """Ports ExportSavedModelTest.test_model_with_non_trainable_state_export
        (a layer whose int32 counter goes up on every call keeps counting in
        the loaded SavedModel) and test_model_with_rng_export (a layer adding
        uniform noise draws anew on every call). Keras tests both for
        SavedModel only: an ONNX or LiteRT graph has no variables to update,
        and onnxruntime has no TensorFlow random op."""
        counting, noisy = build("functional", [Counter()]), build("functional", [Noise()])
        counter = save_and_load(counting, "tf_saved_model", where, name="counter")
        if counter is None:  # SavedModels are TensorFlow's: the refusal was asserted
            return
        x = normal(4, 10)
        (first, first_count), (second, second_count) = counter(x), counter(x)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(first), x)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(second), x)
        # The counter was 1 when exported (build() ran the model once): each call adds one.
        assert int(first_count) == 2 and int(second_count) == 3

        noise = save_and_load(noisy, "tf_saved_model", where, name="noise")
        first, second = predicted(noise, x), predicted(noise, x)
        assert first.shape == second.shape == x.shape
        assert np.all((first - x >= 0) & (first - x < 1))
        assert not np.allclose(first, second)

    def test_model_with_preprocessing_layer(self, where):
        """Ports ExportSavedModelTest.test_model_with_tf_data_layer: a
        subclassed model of a Rescaling layer (a preprocessing layer, which
        tf.data can run)."""
        model = build("subclass", [keras.layers.Rescaling(scale=2.0, offset=-1.0)])
        for format in FORMATS:
            served = save_and_load(model, format, where)
            if served is None:
                continue
            for batch in (1, 3):
                x = normal(batch, 10, seed=batch)
                assert_predicts_like(served, 2.0 * x - 1.0, x, format)

    @pytest.mark.parametrize("signature", ["InputSpec", "KerasTensor", "dict of InputSpecs"])
    def test_input_signature(self, where, signature):
        """Ports ExportSavedModelTest.test_input_signature (an InputSpec, a
        KerasTensor), ExportONNXTest.test_export_with_input_names (the
        InputSpec's name becomes the ONNX file's input name),
        ExportLitertInterpreterTest.test_export_with_custom_input_signature
        and test_dict_input_with_custom_signature (a dict of InputSpecs for a
        dict-input model, one Dense layer shared by both inputs: ports
        test_dict_input_preserves_variable_sharing too), given through
        export_args. The InputSpec ports ExportTorchTest.test_export_with_custom_input_signature
        and test_export_with_none_in_signature too (a .pt2 is exported for batch 1)."""
        if signature == "InputSpec":
            model = build("sequential", dense_batchnorm_layers())
            specs = [keras.InputSpec(shape=(None, 10), dtype="float32", name="custom_input")]
        elif signature == "KerasTensor":
            model = build("subclass", dense_batchnorm_layers())
            specs = [keras.KerasTensor((None, 10), dtype="float32", name="inputs")]
        else:
            keras.utils.set_random_seed(4)
            shared = keras.layers.Dense(3, activation="relu")
            inputs = {
                "input_x": keras.Input((10,), name="input_x"),
                "input_y": keras.Input((10,), name="input_y"),
            }
            model = keras.Model(
                inputs, keras.layers.Subtract()([shared(inputs["input_x"]), shared(inputs["input_y"])])
            )
            specs = [{name: keras.InputSpec(shape=(None, 10), dtype="float32", name=name) for name in inputs}]
        model = with_moved_batchnorm_statistics(model)

        def example(batch):
            if signature != "dict of InputSpecs":
                return normal(batch, 10, seed=batch)
            return {"input_x": normal(batch, 10, seed=batch), "input_y": normal(batch, 10, seed=batch + 5)}

        for format in WITH_TORCH if signature == "InputSpec" else FORMATS:
            served = save_and_load(model, format, where, export_args={"input_signature": specs})
            if served is None:
                continue
            for batch in (1, 3):
                assert_predicts_like(served, model.predict(example(batch), verbose=0), example(batch), format)
            if signature == "InputSpec" and format == "onnx":
                assert served.input_names == ["custom_input"]
            if signature == "dict of InputSpecs" and format != "tf_saved_model":
                assert sorted(served.input_names) == ["input_x", "input_y"]

    def test_export_errors(self, where):
        """Ports ExportSavedModelTest.test_input_signature_error (an
        input_signature that is no spec), ExportArchiveTest.
        test_export_saved_model_errors (a model never built) and
        ExportLitertBasicTest.test_export_error_handling and
        test_export_invalid_filepath (an unknown format, a LiteRT file not
        named .tflite). What the dataset adds: the export saved before a
        failed save still loads and predicts as before."""
        # Difference from Keras: a wrong format or file name is refused when the
        # catalog entry is built, before any model is exported.
        with pytest.raises(DatasetError, match="choose one of tf_saved_model, onnx, litert"):
            KerasExportDataset(filepath=f"{where}/model", format="invalid_format")
        with pytest.raises(DatasetError, match=re.escape("ends in '.tflite'")):
            KerasExportDataset(filepath=f"{where}/model.txt", format="litert")
        # Difference from Keras: a layer (ExportArchive exports one) is not a model to export.
        with pytest.raises(DatasetError, match="expected a keras.Model"):
            entry("onnx", where).save(keras.layers.BatchNormalization())

        good = build("sequential", [keras.layers.Dense(2)])
        never_built = keras.Sequential([keras.layers.Dense(2)])
        x = normal(3, 10)
        for format in FORMATS:
            if _exported.why_cannot_export(format, BACKEND):
                save_and_load(good, format, where)  # asserts the refusal
                continue
            entry(format, where).save(good)
            for model, export_args, words in [
                (never_built, None, "It must be built before export"),
                (good, {"input_signature": (123,)}, None),
            ]:
                # Difference from Keras: Keras's ValueError or TypeError arrives as a DatasetError.
                with pytest.raises(DatasetError, match="Could not export model") as raised:
                    entry(format, where, export_args=export_args).save(model)
                assert "Any export previously saved there is unchanged" in str(raised.value)
                assert words is None or words in str(raised.value)
            if _exported.why_cannot_load(format, BACKEND):
                continue
            assert_predicts_like(entry(format, where).load(), good.predict(x, verbose=0), x, format)

    def test_opset_version(self, where):
        """Ports ExportONNXTest.test_export_with_opset_version (opset 17,
        verbose on): the file's opset is the one asked for."""
        model = with_moved_batchnorm_statistics(build("sequential", dense_batchnorm_layers()))
        served = save_and_load(model, "onnx", where, export_args={"opset_version": 17, "verbose": True})
        if served is None:  # this backend, or what is installed, cannot write or read ONNX
            return
        import onnx

        with fsspec.open(filepath_for("onnx", f"{where}/model"), "rb") as file:
            opsets = {
                opset.domain: opset.version for opset in onnx.load_model_from_string(file.read()).opset_import
            }
        assert opsets[""] == 17
        x = normal(3, 10)
        assert_predicts_like(served, model.predict(x, verbose=0), x, "onnx")

    def test_dynamic_shapes(self, where):
        """Ports ExportONNXTest.test_multi_input_dynamic_shapes and
        test_dynamic_shapes_export (a sequence of any length, an image of
        any height and width, the batch open): one export predicts for
        inputs of several shapes."""
        keras.utils.set_random_seed(2)
        text, image = keras.Input((None, 6), name="text"), keras.Input((None, None, 3), name="image")
        pooled_text = keras.layers.GlobalAveragePooling1D()(keras.layers.Dense(4, activation="relu")(text))
        features = keras.layers.Conv2D(2, 3, padding="same", activation="relu")(image)
        joined = keras.layers.Concatenate()([pooled_text, keras.layers.GlobalAveragePooling2D()(features)])
        model = keras.Model([text, image], keras.layers.Dense(3, activation="softmax")(joined))
        shapes = [((1, 7, 6), (1, 8, 8, 3)), ((2, 3, 6), (2, 12, 6, 3))]
        for format in FORMATS:
            served = save_and_load(model, format, where)
            if served is None:
                continue
            for seed, (text_shape, image_shape) in enumerate(shapes):
                x = [normal(*text_shape, seed=seed), normal(*image_shape, seed=seed + 1)]
                assert_predicts_like(served, model.predict(x, verbose=0), x, format)
            if format == "onnx":  # the open dimensions are named, the channels fixed
                text_dims, image_dims = served.input_shapes["text"], served.input_shapes["image"]
                assert [type(d) for d in text_dims] == [str, str, int] and text_dims[2] == 6
                assert [type(d) for d in image_dims] == [str, str, str, int] and image_dims[3] == 3

    def test_litert_optimizations(self, where):
        """Ports ExportLitertInterpreterTest.test_export_with_optimizations_default,
        test_export_with_representative_dataset and
        test_export_optimization_file_size_comparison: quantized exports are
        under half the size and predict within 3e-2 of the float model, but
        not as it does (the optimization reached the converter)."""
        keras.utils.set_random_seed(1)
        model = keras.Sequential(
            [
                keras.Input((16,)),
                keras.layers.Dense(64, activation="relu"),
                keras.layers.Dense(64, activation="relu"),
                keras.layers.Dense(2),
            ]
        )
        plain = save_and_load(model, "litert", where, name="plain")
        if plain is None:  # this backend or Keras cannot write LiteRT: the refusal was asserted
            return
        import tensorflow as tf

        def representative_dataset():
            for seed in range(20):
                yield [normal(1, 16, seed=seed)]

        default = {"optimizations": [tf.lite.Optimize.DEFAULT]}
        quantized = {
            "default": save_and_load(model, "litert", where, name="default", export_args=default),
            "calibrated": save_and_load(
                model,
                "litert",
                where,
                name="calibrated",
                export_args={**default, "representative_dataset": representative_dataset},
            ),
        }
        memory_or_disk, _ = fsspec.core.url_to_fs(where)
        size = {
            name: memory_or_disk.size(filepath_for("litert", f"{where}/{name}"))
            for name in ("plain", *quantized)
        }
        x = normal(3, 16, seed=99)
        expected = model.predict(x, verbose=0)
        assert_predicts_like(plain, expected, x, "litert")
        for name, served in quantized.items():
            assert size[name] < 0.5 * size["plain"], (name, size)
            assert_predicts_like(served, expected, x, "litert", tolerance=3e-2)
            assert not np.allclose(predicted(served, x), expected, rtol=1e-6, atol=1e-6), name

    @pytest.mark.parametrize("dtype", ["int32", "float16"])
    def test_input_dtypes(self, where, dtype):
        """Ports ExportSavedModelTest.test_standard_model_export to inputs
        that are not float32 (Keras's export tests feed float32 only):
        integer token ids into an Embedding, and a float16 model, in every
        format."""
        keras.utils.set_random_seed(6)
        if dtype == "int32":
            tokens = keras.Input((5,), dtype="int32", name="tokens")
            pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(20, 4)(tokens))
            model = keras.Model(tokens, keras.layers.Dense(2)(pooled))

            def example(batch):
                return np.random.default_rng(batch).integers(0, 20, size=(batch, 5)).astype("int32")
        else:
            model = keras.Sequential(
                [keras.Input((4,), dtype="float16"), keras.layers.Dense(3, dtype="float16")]
            )

            def example(batch):
                return np.random.default_rng(batch).normal(size=(batch, 4))  # float64, cast as Keras casts

        for format in EVERY_FORMAT:
            if format == "litert" and dtype == "float16" and not _exported.why_cannot_export(format, BACKEND):
                # Difference from Keras: TensorFlow's converter writes float16 matrix products as Flex operators.
                assert_flex_refused(model, format, where)
                continue
            served = save_and_load(model, format, where)
            if served is None:
                continue
            for batch in (1, 3):
                x = example(batch)
                tolerance = TOLERANCE[format] if dtype == "int32" else 1e-2
                assert_predicts_like(served, model.predict(x, verbose=0), x, format, tolerance)
                assert predicted(served, x).dtype == ("float32" if dtype == "int32" else "float16")

    def test_model_fresh_from_a_keras_file(self, where, tmp_path):
        """Ports the second half of test_model_with_input_structure
        (ExportSavedModelTest, ExportONNXTest, ExportLitertInterpreterTest,
        ExportOpenVINOTest):
        a model saved to a .keras file and loaded back exports too. Keras's
        tests call the reloaded model first; the dataset exports it as loaded,
        never called (as a Kedro node gets it from a model entry)."""
        keras.utils.set_random_seed(8)
        x = [normal(2, 4, seed=1), normal(2, 4, seed=2)]
        one, two = keras.Input((4,)), keras.Input((4,))
        functional = keras.Model([one, two], keras.layers.Dense(3)(keras.layers.Subtract()([one, two])))
        subclassed = ListInput()
        subclassed(x)
        for kind, model in (("functional", functional), ("subclass", subclassed)):
            path = str(tmp_path / f"{kind}.keras")
            model.save(path)
            # Difference from Keras: a model never called is called once on zeros first
            # (Keras refuses it: "It must be called at least once before export").
            fresh = keras.saving.load_model(path, custom_objects={"ListInput": ListInput})
            for format in WITH_OPENVINO:
                served = save_and_load(fresh, format, where, name=f"{kind}_{format}")
                if served is None:
                    continue
                for batch in (1, 3):
                    inputs = [normal(batch, 4, seed=batch), normal(batch, 4, seed=batch + 1)]
                    assert_predicts_like(served, model.predict(inputs, verbose=0), inputs, format)

    def test_dynamic_batch(self, where):
        """Ports ExportTorchTest.test_export_with_dynamic_shapes: the batch
        left open in a .pt2 (torch.export.Dim in export_args), one program
        predicts batches of 1, 4 and 8 rows whole, not row by row."""
        keras.utils.set_random_seed(5)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        export_args = None  # without torch there is no Dim to give: the refusal is asserted
        if not _exported.why_cannot_export("torch", BACKEND):
            import torch

            export_args = {"dynamic_shapes": {0: torch.export.Dim("batch", min=1, max=32)}}
        served = save_and_load(model, "torch", where, export_args=export_args)
        if served is None:
            return
        ((batch_dim, features),) = served.input_shapes.values()
        assert isinstance(batch_dim, str) and features == 8
        for batch in (1, 4, 8):
            x = normal(batch, 8, seed=batch)
            assert_predicts_like(served, model.predict(x, verbose=0), x, "torch")

    def test_bidirectional_lstm(self, where):
        """Ports ExportONNXTest.test_standard_model_export's "lstm" model (two
        Bidirectional LSTMs; Keras runs it on PyTorch only), with one small
        Bidirectional LSTM."""
        keras.utils.set_random_seed(10)
        inputs = keras.Input((4, 5))
        lstm = keras.layers.LSTM(3, return_sequences=True)
        model = keras.Model(inputs, keras.layers.Bidirectional(lstm, merge_mode="sum")(inputs))
        for format in FORMATS:
            if format == "litert" and not _exported.why_cannot_export(format, BACKEND):
                # Difference from Keras: TensorFlow's converter keeps the LSTM's loop as Flex operators.
                assert_flex_refused(model, format, where)
                continue
            if format == "onnx" and BACKEND == "jax" and not _exported.why_cannot_export(format, BACKEND):
                # jax2onnx has no reverse scan, which the backward LSTM is (Keras skips this
                # model on JAX): the save fails as a DatasetError and writes nothing.
                dataset = entry(format, where)
                with pytest.raises(DatasetError, match="Could not export model") as raised:
                    dataset.save(model)
                assert "Any export previously saved there is unchanged" in str(raised.value)
                assert not dataset.exists()
                continue
            served = save_and_load(model, format, where)
            if served is None:
                continue
            for batch in (1, 3):
                x = normal(batch, 4, 5, seed=batch)
                assert_predicts_like(served, model.predict(x, verbose=0), x, format)
