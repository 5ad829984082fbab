"""Kedro-Viz previews: what each dataset shows of a stored model, read from
its config and headers without importing Keras or reading a weight."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import s3fs
from kedro.io.core import Version

from kedro_keras import (
    KerasCheckpointDataset,
    KerasExportDataset,
    KerasModelDataset,
    KerasTimestampedModelDataset,
    KerasWeightsDataset,
)
from kedro_keras._dataset import exported as _exported


def trained():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(8, name="hidden")(inputs)
    hidden = keras.layers.BatchNormalization(name="norm")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(1, name="out")(hidden), name="small")
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((8, 4)), np.ones((8, 1)), epochs=1, verbose=0)
    return model


def rows_of(preview):
    assert preview["columns"] == ["property", "value"]
    assert preview["index"] == list(range(len(preview["data"])))
    return dict(preview["data"])


def assert_describes(rows, model):
    assert rows["model"] == "small (Functional)"
    n = model.count_params()
    assert rows["parameters"].startswith(f"{n:,} (")
    assert rows["layer hidden"] == "Dense, 40 parameters"
    assert rows["layer norm"] == "BatchNormalization, 32 parameters"  # gamma, beta, moving mean and variance
    assert rows["layer out"] == "Dense, 9 parameters"
    assert rows["optimizer state"].startswith("Adam: ")


class TestPreview:
    def test_a_model_file_shows_its_layers_parameters_optimizer_and_origin(self, tmp_path):
        model = trained()
        dataset = KerasModelDataset(filepath=str(tmp_path / "m.keras"))
        dataset.save(model)
        rows = rows_of(dataset.preview())
        assert_describes(rows, model)
        assert rows["format"] == ".keras archive"
        size = os.path.getsize(tmp_path / "m.keras")
        assert rows["file size"] == f"{size / 1000:.1f} KB"
        assert (
            rows["saved with"]
            == f"Keras {keras.__version__}, {keras.backend.backend()} backend, kedro-keras 0.1.0"
        )
        assert rows["dtype policy"] == "float32"

    def test_the_layers_shown_are_bounded_by_preview_args(self, tmp_path):
        dataset = KerasModelDataset(filepath=str(tmp_path / "m.keras"))
        dataset.save(trained())
        rows = rows_of(dataset.preview(layers=2))
        assert [name for name in rows if name.startswith("layer ")] == ["layer x", "layer hidden"]
        assert rows["more layers"] == "2 more, 41 parameters"

    def test_nothing_saved_yet_is_a_preview_not_an_error(self, tmp_path):
        assert rows_of(KerasModelDataset(filepath=str(tmp_path / "m.keras")).preview())["stored"] == (
            "nothing saved yet"
        )
        damaged = tmp_path / "bad.keras"
        damaged.write_bytes(b"PK\x03\x04 not really")
        assert "could not read" in rows_of(KerasModelDataset(filepath=str(damaged)).preview())

    def test_versions_are_listed_with_sizes(self, tmp_path):
        history = KerasTimestampedModelDataset(filepath=str(tmp_path / "h"))
        for _ in range(2):
            history.save(trained())
        rows = rows_of(history.preview())
        assert rows["versions"] == "2, newest first"
        for version in history.versions():
            size = os.path.getsize(tmp_path / "h" / f"model_{version}.keras")
            assert rows[f"version {version}"] == f"{size / 1000:.1f} KB"

        versioned = KerasModelDataset(filepath=str(tmp_path / "v.keras"), version=Version(None, None))
        versioned.save(trained())
        assert rows_of(versioned.preview())["versions"] == "1, newest first"

    def test_weights_show_the_architecture_beside_them(self, tmp_path):
        model = trained()
        dataset = KerasWeightsDataset(filepath=str(tmp_path / "m.weights.h5"))
        dataset.save(model)
        rows = rows_of(dataset.preview())
        assert_describes(rows, model)
        assert rows["architecture"] == "m.architecture.json"

    def test_checkpoints_show_the_newest_position_and_the_best(self, tmp_path):
        dataset = KerasCheckpointDataset(filepath=str(tmp_path / "c"), monitor="loss")
        model = trained()
        callback = dataset.load().callback()
        callback.set_model(model)
        for epoch, loss in enumerate([0.5, 0.2, 0.4]):
            callback.on_epoch_end(epoch, {"loss": loss})
        rows = rows_of(dataset.preview())
        assert rows["checkpoints"] == "3: e00003-s0000000, e00002-s0000000, e00001-s0000000"
        assert rows["newest"].startswith("e00003-s0000000: 3 epoch(s) done, saved ")
        assert rows["newest metrics"] == "loss 0.4"
        assert rows["best"] == "e00002-s0000000: loss 0.2"
        assert_describes(rows, model)

    def test_exports_show_their_manifest(self, tmp_path):
        model = trained()
        if _exported.why_cannot_export("tf_saved_model", keras.backend.backend()):
            rows = rows_of(KerasExportDataset(filepath=str(tmp_path / "served")).preview())
            assert rows["stored"] == "nothing saved yet"
            return
        dataset = KerasExportDataset(filepath=str(tmp_path / "served"))
        dataset.save(model)
        rows = rows_of(dataset.preview())
        manifest = json.loads((tmp_path / "served" / "manifest.json").read_text())
        assert rows["files"] == f"{len(manifest['files'])} in {manifest['export']}"
        assert rows["exported with"] == f"Keras {keras.__version__}, {keras.backend.backend()} backend"

    def test_a_preview_of_a_model_in_a_bucket(self, s3_bucket, s3_credentials):
        path = f"{s3_bucket}/m.keras"
        model = trained()
        KerasModelDataset(filepath=path, credentials=s3_credentials).save(model)
        dataset = KerasModelDataset(
            filepath=path, credentials=s3_credentials, fs_args={"skip_instance_cache": True}
        )
        rows = rows_of(dataset.preview())
        assert rows["path"] == path
        assert_describes(rows, model)


@pytest.mark.parametrize("dataset", ["KerasModelDataset", "KerasWeightsDataset"])
def test_a_preview_imports_no_keras(tmp_path, dataset):
    suffix = ".keras" if dataset == "KerasModelDataset" else ".weights.h5"
    path = str(tmp_path / f"m{suffix}")
    model = trained()
    getattr(sys.modules["kedro_keras"], dataset)(filepath=path).save(model)
    code = (
        "import sys, kedro_keras; "
        f"rows = dict(kedro_keras.{dataset}(filepath={path!r}).preview()['data']); "
        "print(rows['parameters'], 'keras' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[-1] == "False" and out[0] == f"{model.count_params():,}"


def test_the_preview_counts_a_version_saved_by_another_process_since_the_last_listing(
    s3_bucket, s3_credentials, trained_model
):
    """`kedro keras list` and Kedro-Viz show the preview's versions: in a
    long-lived process they must not come from s3fs's cached listing."""
    dataset = KerasModelDataset(
        filepath=f"{s3_bucket}/model.keras", credentials=s3_credentials, version=Version(None, None)
    )
    dataset.save(trained_model)
    assert rows_of(dataset.preview())["versions"] == "1, newest first"

    elsewhere = s3fs.S3FileSystem(**s3_credentials, skip_instance_cache=True)
    (first,) = elsewhere.ls(f"{s3_bucket}/model.keras")
    elsewhere.copy(f"{first}/model.keras", f"{s3_bucket}/model.keras/2999-01-01T00.00.00.000Z/model.keras")

    assert rows_of(dataset.preview())["versions"] == "2, newest first"


def test_every_saved_at_is_utc_with_its_offset_and_keras_own_time_is_said_to_be_local(tmp_path):
    """Times appeared with and without a zone: ours as Keras's naive
    '%Y-%m-%d@%H:%M:%S', the exports' as UTC with '+00:00' (#30)."""
    model = trained()
    ours = KerasModelDataset(filepath=str(tmp_path / "ours.keras"))
    ours.save(model)
    weights = KerasWeightsDataset(filepath=str(tmp_path / "w.weights.h5"))
    weights.save(model)
    for dataset in (ours, weights):
        saved_at = dict(dataset.preview()["data"])["saved at"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", saved_at), saved_at
    model.save(tmp_path / "plain.keras")  # Keras's date_saved: the machine's local time, no zone
    plain = dict(KerasModelDataset(filepath=str(tmp_path / "plain.keras")).preview()["data"])["saved at"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d@\d\d:\d\d:\d\d \(local time where it was saved\)", plain), plain


def quantized(mode):
    """A trained model of Embedding, EinsumDense and Dense layers, quantized."""
    import quantized_models

    return quantized_models.build("layers_stack", mode, trained=True)


@pytest.mark.parametrize(
    "mode, shown",
    [("int8", "int8 (4 layers)"), ("int4", "int4/128 (4 layers)"), ("float8", "float8 (3 layers)")],
)
def test_a_quantized_model_shows_its_quantization_mode_beside_the_float_policy(tmp_path, mode, shown):
    """float8 leaves the Embedding as it is (Keras has no float8 Embedding):
    three layers. The policy row shows the float policy quantized from, as
    the layers' config records it (``source_name``)."""
    model = quantized(mode)
    for dataset in (
        KerasModelDataset(filepath=str(tmp_path / "m.keras")),
        KerasWeightsDataset(filepath=str(tmp_path / "m.weights.h5")),
    ):
        dataset.save(model)
        rows = rows_of(dataset.preview())
        assert rows["quantization"] == shown
        assert rows["dtype policy"] == "float32"
    assert "quantization" not in rows_of(KerasModelDataset(filepath=str(tmp_path / "f.keras")).preview())


def test_quantization_modes_are_read_from_every_form_keras_wrote_as_data():
    """A KerasHub backbone's DTypePolicyMap (one policy per layer path),
    Keras 3.3's policy names (``int8_from_float32``), GPTQ's and AWQ's
    modes, and a mode no Keras knows (shown, cut short: it came from the
    file). Nothing is built: the config is only walked."""
    from kedro_keras._formats.quantization import describe, quantization_modes

    def policy(class_name, **config):
        return {"module": "keras.dtype_policies", "class_name": class_name, "config": config}

    backbone = {
        "class_name": "GemmaBackbone",
        "config": {
            "dtype": policy(
                "DTypePolicyMap",
                default_policy=None,
                policy_map={
                    "decoder_block_0/attention/query": policy("GPTQDTypePolicy", mode="gptq/4/128"),
                    "decoder_block_0/ffw_linear": policy("GPTQDTypePolicy", mode="gptq/4/128"),
                    "token_embedding": policy("QuantizedDTypePolicy", mode="int8", source_name=None),
                },
            )
        },
    }
    assert describe(quantization_modes(backbone)) == "gptq/4/128 (2 layers), int8 (1 layer)"
    old = {"layers": [{"config": {"dtype": policy("QuantizedDTypePolicy", name="int8_from_float32")}}]}
    assert describe(quantization_modes(old)) == "int8 (1 layer)"
    as_names = {
        "layers": [{"config": {"dtype": "float8_from_mixed_bfloat16"}}, {"config": {"dtype": "float32"}}]
    }
    assert describe(quantization_modes(as_names)) == "float8 (1 layer)"
    awq = {"dtype": policy("AWQDTypePolicy", mode="awq/4/-1", source_name="bfloat16")}
    assert describe(quantization_modes(awq)) == "awq/4/-1 (1 layer)"
    unknown = {"dtype": policy("QuantizedDTypePolicy", mode="int2\x1b[31m" + "x" * 100)}
    (mode,) = quantization_modes(unknown)
    assert "\x1b" not in mode and len(mode) < 50  # escaped, and cut at 40 characters
    assert not quantization_modes({"dtype": policy("DTypePolicy", name="mixed_float16")})
