"""KerasExportDataset: SavedModel, ONNX, LiteRT, OpenVINO and PyTorch exports published
atomically on any filesystem, and loaded back as something that predicts.

Runs under every backend: where a backend (or what is installed beside it)
cannot write or read a format, the test asserts the DatasetError that says
what to install or which backend to use, and that what it names is indeed
missing here.
"""

from __future__ import annotations

import importlib.util
import re
import uuid

import keras
import numpy as np
import pytest
from kedro.io import DatasetError
from kedro.io.core import Version

from kedro_keras import KerasExportDataset
from kedro_keras._dataset import exported as _exported

BACKEND = keras.backend.backend()
TRUSTED = {"safe_mode": False}  # a SavedModel is a program: the tests trust their own


def two_input_model():
    keras.utils.set_random_seed(11)
    inputs = {"a": keras.Input((3,), name="a"), "b": keras.Input((2,), name="b")}
    hidden = keras.layers.Dense(4, activation="relu")(keras.layers.Concatenate()([inputs["a"], inputs["b"]]))
    return keras.Model(inputs, keras.layers.Dense(2)(hidden), name="two_inputs")


class TwoArguments(keras.Model):
    """A model called with two positional arguments, model(a, b)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(2)

    def call(self, a, b):
        return self.dense(keras.ops.concatenate([a, b], axis=-1))


def one_input_model():
    keras.utils.set_random_seed(12)
    inputs = keras.Input((3,), name="x")
    return keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(5, activation="tanh")(inputs)))


def example_input(model, batch=1):
    rng = np.random.default_rng(0)
    if isinstance(model.input, dict):
        return {
            name: rng.normal(size=(batch, t.shape[1])).astype("float32") for name, t in model.input.items()
        }
    return rng.normal(size=(batch, model.input.shape[1])).astype("float32")


def filepath_for(format, folder):
    if format in _exported.FOLDER_FORMATS:
        return f"{folder}/model_{format}"
    return f"{folder}/model{_exported.FILE_SUFFIXES[format]}"


@pytest.fixture(params=["local", "memory", "s3"])
def where(request, tmp_path):
    if request.param == "local":
        return {"folder": str(tmp_path), "credentials": None}
    if request.param == "memory":
        return {"folder": f"memory:///export-{uuid.uuid4().hex}", "credentials": None}
    return {
        "folder": request.getfixturevalue("s3_bucket"),
        "credentials": request.getfixturevalue("s3_credentials"),
    }


# The module each package a message may name provides (None: an extra of ours, or an upgrade).
MODULE_OF = {
    "tensorflow-cpu": "tensorflow",
    "tf2onnx": "tf2onnx",
    "onnx": "onnx",
    "onnxscript": "onnxscript",
    "jax2onnx": "jax2onnx",
    "torch-xla": "torch_xla",
    "litert-torch": "litert_torch",
    "onnxruntime": "onnxruntime",
    "torch": "torch",
    "kedro-keras[onnx]": None,
    "kedro-keras[litert]": None,
    "kedro-keras[openvino]": "openvino",
    "-U": None,
    "keras": None,
}


def assert_names_what_is_missing(message, problem):
    """The message gives the reason, and each package it says to install is
    indeed not importable here."""
    assert problem in message
    for packages in re.findall(r"pip install ([^)]+)\)", problem):
        for package in packages.split():
            module = MODULE_OF[package]
            if module is not None:
                assert importlib.util.find_spec(module) is None, package


class TestKerasExportDataset:
    @pytest.mark.parametrize("format", _exported.FORMATS)
    @pytest.mark.parametrize("build", [one_input_model, two_input_model], ids=["one input", "two inputs"])
    def test_each_format_round_trips_or_says_what_is_missing(self, where, format, build):
        model = build()
        dataset = KerasExportDataset(
            filepath=filepath_for(format, where["folder"]),
            format=format,
            credentials=where["credentials"],
            load_args=TRUSTED if format == "tf_saved_model" else None,
        )
        cannot_export = _exported.why_cannot_export(format, BACKEND)
        if cannot_export:
            with pytest.raises(DatasetError, match="Cannot export model") as raised:
                dataset.save(model)
            assert_names_what_is_missing(str(raised.value), cannot_export)
            assert not dataset.exists()
            return
        dataset.save(model)
        assert dataset.exists()
        cannot_load = _exported.why_cannot_load(format, BACKEND)
        if cannot_load:
            with pytest.raises(DatasetError, match="Cannot load the") as raised:
                dataset.load()
            assert cannot_load in str(raised.value)
            return
        served = dataset.load()
        x = example_input(model, batch=1)
        expected = model.predict(x, verbose=0)
        np.testing.assert_allclose(np.asarray(served.predict(x, verbose=0)), expected, rtol=1e-5, atol=1e-5)

    @pytest.mark.parametrize("format", _exported.FORMATS)
    def test_export_args_reach_model_export_as_given_verbose_included(self, tmp_path, format, capsys):
        """export_args: {verbose: true} said "got multiple values for keyword argument 'verbose'" (#29)."""
        model = one_input_model()
        dataset = KerasExportDataset(
            filepath=filepath_for(format, tmp_path),
            format=format,
            export_args={"verbose": True},
            load_args=TRUSTED,
        )
        cannot_export = _exported.why_cannot_export(format, BACKEND)
        if cannot_export:  # as in the round trip above: this backend cannot write the format
            with pytest.raises(DatasetError, match="Cannot export model"):
                dataset.save(model)
            return
        capsys.readouterr()
        dataset.save(model)
        assert dataset.exists()
        if format == "tf_saved_model":  # Keras prints the endpoints it wrote when asked to
            assert "Endpoint 'serve'" in capsys.readouterr().out

    @pytest.mark.parametrize("format", ["onnx", "litert", "openvino", "torch"])
    def test_predict_takes_the_keras_models_own_input_keys(self, tmp_path, format):
        """A dict-input model keyed otherwise than its tensors are named: the
        file names its inputs after the tensors, predict takes the model's keys (#29)."""
        keras.utils.set_random_seed(3)
        inputs = {"x": keras.Input((3,)), "y": keras.Input((2,))}  # tensors named keras_tensor*
        joined = keras.layers.Concatenate()([inputs["x"], inputs["y"]])
        model = keras.Model(inputs, keras.layers.Dense(2)(joined))
        dataset = KerasExportDataset(filepath=filepath_for(format, tmp_path), format=format)
        problem = _exported.why_cannot_export(format, BACKEND) or _exported.why_cannot_load(format, BACKEND)
        if problem:  # as in the round trip above: this backend cannot write or read the format
            with pytest.raises(DatasetError, match="Cannot (export|load)"):
                dataset.save(model)
                dataset.load()
            return
        dataset.save(model)
        served = dataset.load()
        # OpenVINO's IR names the inputs after the keys themselves: nothing to map.
        names_by_key = {key: served.input_keys.get(key, key) for key in ("x", "y")}
        assert set(names_by_key.values()) == set(served.input_names)
        assert format == "openvino" or set(served.input_keys) == {"x", "y"}
        rng = np.random.default_rng(1)
        x = {"x": rng.normal(size=(1, 3)), "y": rng.normal(size=(1, 2))}  # float64: cast as Keras casts
        np.testing.assert_allclose(served.predict(x), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
        by_file_names = {names_by_key[key]: value for key, value in x.items()}
        np.testing.assert_allclose(served.predict(by_file_names), served.predict(x))

    @pytest.mark.parametrize("inputs", ["a tuple", "two positional arguments"])
    def test_a_saved_model_loads_whatever_inputs_it_was_exported_with(self, tmp_path, inputs):
        """Both failed to load through the dataset that wrote them while
        tf.saved_model.load served them (#29)."""
        x = (np.ones((2, 3), "float32"), np.full((2, 2), 2.0, "float32"))
        if inputs == "a tuple":
            one, two = keras.Input((3,)), keras.Input((2,))
            model = keras.Model((one, two), keras.layers.Dense(2)(keras.layers.Concatenate()([one, two])))
            export_args = {}
        else:
            model = TwoArguments()
            model(*x)
            export_args = {
                "input_signature": [
                    keras.InputSpec(shape=(None, 3), dtype="float32"),
                    keras.InputSpec(shape=(None, 2), dtype="float32"),
                ]
            }
        expected = (
            keras.ops.convert_to_numpy(model(*x)) if inputs != "a tuple" else model.predict(x, verbose=0)
        )
        dataset = KerasExportDataset(
            filepath=str(tmp_path / "served"),
            format="tf_saved_model",
            export_args=export_args,
            load_args=TRUSTED,
        )
        problem = _exported.why_cannot_export("tf_saved_model", BACKEND)
        if problem:  # SavedModels are TensorFlow's (PyTorch's through torch-xla): the dataset says so
            with pytest.raises(DatasetError, match="Cannot export"):
                dataset.save(model)
            return
        dataset.save(model)
        served = dataset.load()
        np.testing.assert_allclose(
            np.asarray(served.predict(list(x), verbose=0)), expected, rtol=1e-5, atol=1e-5
        )

    def test_the_format_comes_from_the_suffix_and_must_agree_with_it(self, tmp_path):
        assert KerasExportDataset(filepath=str(tmp_path / "m.onnx"))._format == "onnx"
        assert KerasExportDataset(filepath=str(tmp_path / "m.tflite"))._format == "litert"
        assert KerasExportDataset(filepath=str(tmp_path / "m.pt2"))._format == "torch"
        assert KerasExportDataset(filepath=str(tmp_path / "served"))._format == "tf_saved_model"

    @pytest.mark.parametrize(
        ("options", "words"),
        [
            ({"filepath": "m.onnx", "format": "litert"}, "ends in '.tflite'"),
            ({"filepath": "m.keras", "format": "tf_saved_model"}, "a SavedModel is a folder"),
            (
                {"filepath": "m", "format": "torchscript"},
                "choose one of tf_saved_model, onnx, litert, openvino, torch",
            ),
            ({"filepath": "m.onnx", "format": "torch"}, "ends in '.pt2'"),
            (
                {"filepath": "m.xml", "format": "openvino"},
                "an OpenVINO IR (model.xml and model.bin) is a folder; name it without '.xml'",
            ),
            ({"filepath": "m.onnx", "load_args": {"safe": False}}, "Unknown load_args ['safe'] for 'm.onnx'"),
        ],
    )
    def test_bad_options_fail_when_the_catalog_is_built(self, options, words):
        with pytest.raises(DatasetError, match=re.escape(words)):
            KerasExportDataset(**options)

    def test_a_savedmodel_is_refused_with_safe_mode_on(self, tmp_path):
        folder = tmp_path / "foreign"
        folder.mkdir()
        (folder / "saved_model.pb").write_bytes(b"\x08\x01")  # never read: refused first
        with pytest.raises(DatasetError) as raised:
            KerasExportDataset(filepath=str(folder)).load()
        message = str(raised.value)
        if BACKEND == "tensorflow":
            assert "safe_mode" in message and "TensorFlow program" in message and str(folder) in message
        else:
            assert "loads only under the TensorFlow backend" in message

    def test_saving_something_else_than_a_model_is_refused(self, tmp_path):
        with pytest.raises(DatasetError, match="expected a keras.Model"):
            KerasExportDataset(filepath=str(tmp_path / "m.onnx")).save({"not": "a model"})

    def test_versioned_exports_keep_every_version_and_load_the_newest(self, tmp_path):
        path = str(tmp_path / "m.onnx")
        if _exported.why_cannot_export("onnx", BACKEND) or _exported.why_cannot_load("onnx", BACKEND):
            with pytest.raises(DatasetError, match="needs"):
                KerasExportDataset(filepath=path, version=Version(None, None)).save(one_input_model())
            return
        first, second = one_input_model(), two_input_model()
        KerasExportDataset(filepath=path, version=Version(None, "2026-12-01T00.00.00.000Z")).save(first)
        KerasExportDataset(filepath=path, version=Version(None, "2026-12-01T00.00.01.000Z")).save(second)
        assert len(list((tmp_path / "m.onnx").iterdir())) == 2
        newest = KerasExportDataset(filepath=path, version=Version(None, None)).load()
        assert newest.input_names == ["a", "b"]
        pinned = KerasExportDataset(filepath=path, version=Version("2026-12-01T00.00.00.000Z", None)).load()
        x = example_input(first)
        np.testing.assert_allclose(pinned.predict(x), first.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


class TestOpenVINOAndTorch:
    """The two formats added last: an IR folder committed by its manifest,
    and a .pt2 file checked before torch reads it (docs/export.md)."""

    def test_openvino_computes_in_float32_and_predicts_what_keras_does(self, tmp_path):
        """OpenVINO's CPU plugin computes in bfloat16 where the processor has
        it (outputs 6e-3 off on this machine): the load asks for float32."""
        model = one_input_model()
        dataset = KerasExportDataset(filepath=str(tmp_path / "served"), format="openvino")
        problem = _exported.why_cannot_export("openvino", BACKEND)
        if problem:  # JAX: Keras goes through jax2tf, which needs TensorFlow
            with pytest.raises(DatasetError) as raised:
                dataset.save(model)
            assert_names_what_is_missing(str(raised.value), problem)
            assert BACKEND != "jax" or "through jax2tf" in str(raised.value)
            return
        dataset.save(model)
        assert sorted(p.name for p in next((tmp_path / "served").glob("export-*")).iterdir()) == [
            "model.bin",
            "model.xml",
        ]
        served = dataset.load()
        assert str(served.compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
        x = np.random.default_rng(5).normal(size=(64, 3)).astype("float32")
        # Measured: equal under TensorFlow, within 6e-8 under PyTorch (traced, then converted).
        np.testing.assert_allclose(served.predict(x), model.predict(x, verbose=0), rtol=0, atol=1e-6)
        assert dataset.verify().endswith("2 files against their SHA-256")

    def test_a_failed_upload_leaves_the_previous_openvino_export_loadable(self, tmp_path, monkeypatch):
        from kedro_keras._dataset import export_folder

        first, second = one_input_model(), two_input_model()
        dataset = KerasExportDataset(filepath=str(tmp_path / "served"), format="openvino")
        if _exported.why_cannot_export("openvino", BACKEND):
            with pytest.raises(DatasetError, match="Cannot export model"):
                dataset.save(first)
            return
        dataset.save(first)
        real_copy, copied = export_folder.copy_hashing, []

        def fail_on_the_weights(source, target, **kwargs):
            copied.append(source.name)
            if source.name.endswith("model.bin"):
                raise OSError("injected: the connection dropped")
            return real_copy(source, target, **kwargs)

        monkeypatch.setattr(export_folder, "copy_hashing", fail_on_the_weights)
        with pytest.raises(DatasetError, match="injected: the connection dropped") as raised:
            dataset.save(second)
        monkeypatch.undo()
        assert any(name.endswith("model.bin") for name in copied), "the fault was never reached"
        assert "Any export previously saved there is unchanged" in str(raised.value)
        x = example_input(first, batch=4)
        np.testing.assert_allclose(dataset.load().predict(x), first.predict(x, verbose=0), atol=1e-6)

    @pytest.mark.parametrize("other", ["tensorflow", "jax"])
    def test_a_pt2_loads_where_torch_is_installed_whatever_the_keras_backend(
        self, tmp_path, monkeypatch, other
    ):
        """Exported under PyTorch, loaded as if Keras ran on another backend:
        the program calls PyTorch's operators, so the load asks for torch,
        not for Keras's PyTorch backend (no venv here has torch beside another
        backend; Keras's NumPy backend imports JAX). Exported for one row
        (Keras's default), it predicts any batch."""
        model = two_input_model()
        path = tmp_path / "model.pt2"
        problem = _exported.why_cannot_export("torch", BACKEND)
        if problem:
            with pytest.raises(DatasetError) as raised:
                KerasExportDataset(filepath=str(path)).save(model)
            assert f"the {BACKEND} backend cannot export torch; use the torch backend" in str(raised.value)
            return
        KerasExportDataset(filepath=str(path)).save(model)
        x = example_input(model, batch=5)
        expected = model.predict(x, verbose=0)
        asked = []
        monkeypatch.setattr(keras.backend, "backend", lambda: asked.append(other) or other)

        served = KerasExportDataset(filepath=str(path)).load()

        assert asked, "the load never asked which backend runs"
        assert _exported.why_cannot_load("torch", other) is None
        assert served.input_shapes == {"args_0_a": [1, 3], "args_0_b": [1, 2]}
        np.testing.assert_array_equal(served.predict(x), expected)


class TestBeforeTheRun:
    """A missing export extra failed only when the export node ran, after the
    training before it (67 s lost in the first run of a new project, #30):
    the plugin's hook asks every export entry of the pipeline first."""

    def pipeline_and_catalog(self, tmp_path, trained):
        from kedro.io import DataCatalog, MemoryDataset
        from kedro.pipeline import Pipeline, node

        catalog = DataCatalog(
            {
                "served": KerasExportDataset(filepath=str(tmp_path / "m.onnx")),
                "model": MemoryDataset(),
            }
        )
        pipeline = Pipeline(
            [
                node(lambda: trained.append("trained") or "model", None, "model", name="train"),
                node(lambda model: model, "model", "served", name="export"),
            ]
        )
        return pipeline, catalog

    def test_a_missing_package_stops_the_run_before_any_node(self, tmp_path, monkeypatch):
        import importlib.util

        from kedro_keras.hooks import hooks

        trained = []
        pipeline, catalog = self.pipeline_and_catalog(tmp_path, trained)
        real_find_spec = importlib.util.find_spec
        hidden = []

        def without_onnx(name, *args, **kwargs):
            if name in ("onnx", "tf2onnx", "jax2onnx", "onnxruntime"):
                hidden.append(name)
                return None
            return real_find_spec(name, *args, **kwargs)

        monkeypatch.setattr(importlib.util, "find_spec", without_onnx)
        with pytest.raises(DatasetError) as raised:
            hooks.before_pipeline_run(run_params={}, pipeline=pipeline, catalog=catalog)
        assert hidden, "the check never looked for onnx"
        message = str(raised.value)
        assert message.startswith(
            "Before any node runs: this run cannot write or read these export entries: "
        )
        assert "'served': exporting onnx from the " in message and "pip install" in message
        assert trained == []

    def test_what_the_machine_has_lets_the_run_start(self, tmp_path):
        from kedro_keras.hooks import hooks

        trained = []
        pipeline, catalog = self.pipeline_and_catalog(tmp_path, trained)
        lacks = KerasExportDataset(filepath=str(tmp_path / "m.onnx")).lacks_for_run(saves=True, loads=False)
        if lacks is None:  # this venv can export ONNX from its backend
            assert hooks.before_pipeline_run(run_params={}, pipeline=pipeline, catalog=catalog) is None
        else:  # e.g. the Keras-floor venv, which has no onnx
            with pytest.raises(DatasetError, match="'served': exporting onnx"):
                hooks.before_pipeline_run(run_params={}, pipeline=pipeline, catalog=catalog)
