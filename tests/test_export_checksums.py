"""ONNX and LiteRT exports carry a checksum beside them (#29): `verify` and
every load find a file cut short or with a flipped byte, which neither
format records itself; a missing version is not reported as damage."""

from __future__ import annotations

import importlib.util
import json

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from kedro.io import DatasetError
from kedro.io.core import Version, VersionNotFoundError

from kedro_keras import KerasExportDataset, cli
from kedro_keras._dataset import exported as _exported

BACKEND = keras.backend.backend()
FILE_FORMATS = [name for name in _exported.FORMATS if name in _exported.FILE_SUFFIXES]


def model():
    keras.utils.set_random_seed(5)
    inputs = keras.Input((3,), name="x")
    return keras.Model(inputs, keras.layers.Dense(2)(inputs), name="served")


# The formats this backend writes and reads; the others say why not (tested
# in test_keras_export_dataset.py). Each test runs over these, so none is skipped.
ROUND_TRIP = [
    format
    for format in FILE_FORMATS
    if not (_exported.why_cannot_export(format, BACKEND) or _exported.why_cannot_load(format, BACKEND))
]


def exports(tmp_path):
    """A fresh export of each format that round-trips here: (dataset, path)."""
    for format in ROUND_TRIP:
        path = tmp_path / format / f"m{_exported.FILE_SUFFIXES[format]}"
        dataset = KerasExportDataset(filepath=str(path))
        dataset.save(model())
        yield dataset, path


def test_the_formats_that_do_not_round_trip_here_say_why(tmp_path):
    installed = all(importlib.util.find_spec(module) for module in ("onnx", "ai_edge_litert"))
    if BACKEND == "tensorflow" and installed:  # where the tests below must not run over nothing
        assert ROUND_TRIP == ["onnx", "litert"]
    for format in set(FILE_FORMATS) - set(ROUND_TRIP):
        dataset = KerasExportDataset(filepath=str(tmp_path / f"m{_exported.FILE_SUFFIXES[format]}"))
        with pytest.raises(DatasetError, match="Cannot (export|load)"):
            dataset.save(model())
            dataset.load()


def test_an_intact_export_verifies_and_its_preview_says_what_exported_it(tmp_path):
    for dataset, path in exports(tmp_path):
        manifest = json.loads(path.with_name(path.name + ".manifest.json").read_text())
        assert manifest["size"] == path.stat().st_size and len(manifest["sha256"]) == 64
        assert dataset.verify().endswith(f"{path.stat().st_size:,} bytes against their SHA-256")
        rows = dict(dataset.preview()["data"])
        assert rows["model"] == "served" and rows["exported with"].startswith(f"Keras {keras.__version__}, ")
        assert rows["checksum"].startswith("SHA-256 recorded")
        # What a server feeds and gets back, under the file's own names (#29).
        # torch.export names a positional input args_<i>, not the Keras input's name.
        named = "args_0" if path.suffix == ".pt2" else "x"
        assert rows["inputs"].startswith(f"{named}: float32[") and rows["inputs"].endswith(", 3]"), rows
        assert rows["outputs"].count(": float32[") == 1 and rows["outputs"].endswith(", 2]"), rows
        x = np.ones((1, 3), "float32")
        np.testing.assert_allclose(
            dataset.load().predict(x), model().predict(x, verbose=0), rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize("damage", ["cut to a third", "one flipped byte"])
def test_a_damaged_export_is_found_by_verify_and_refused_by_a_load(tmp_path, damage):
    for dataset, path in exports(tmp_path):
        data = bytearray(path.read_bytes())
        if damage == "cut to a third":
            data = data[: len(data) // 3]
        else:
            data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))

        with pytest.raises(DatasetError, match="SHA-256|bytes, its manifest says") as raised:
            dataset.verify()
        assert "damaged" in str(raised.value)
        with pytest.raises(
            DatasetError, match=r"is corrupt: .*Restore it from a good copy or export the model again"
        ):
            dataset.load()


def test_the_cli_says_damaged_for_damage_and_no_such_version_for_a_typo(tmp_path, monkeypatch):
    for dataset, path in exports(tmp_path):
        monkeypatch.setattr(cli, "_entry", lambda name, env, version, d=dataset: d)
        assert CliRunner().invoke(cli.commands, ["keras", "verify", "m"]).output.startswith("m: intact (")
        path.write_bytes(path.read_bytes()[:100])
        damaged = CliRunner().invoke(cli.commands, ["keras", "verify", "m"])
        assert damaged.exit_code == 1 and "m: DAMAGED: " in damaged.output

        versioned = KerasExportDataset(
            filepath=str(path.parent / "v" / path.name), version=Version(None, None)
        )
        versioned.save(model())
        monkeypatch.setattr(cli, "_entry", lambda name, env, version, d=versioned: d)
        typo = CliRunner().invoke(
            cli.commands, ["keras", "verify", "m", "--version", "2030-01-01T00.00.00.000Z"]
        )
        assert typo.exit_code == 1 and "DAMAGED" not in typo.output and "has no version" in typo.output
        with pytest.raises(VersionNotFoundError):
            versioned.stored_path("2030-01-01T00.00.00.000Z")


def test_an_export_without_a_manifest_loads_and_says_there_is_nothing_to_check(tmp_path):
    for dataset, path in exports(tmp_path):
        path.with_name(path.name + ".manifest.json").unlink()
        assert "no manifest beside it, so no checksum to check" in dataset.verify()
        assert dict(dataset.preview()["data"])["checksum"].startswith("no manifest beside it")
        x = np.ones((1, 3), "float32")
        np.testing.assert_allclose(
            dataset.load().predict(x), model().predict(x, verbose=0), rtol=1e-5, atol=1e-5
        )


def test_a_planted_manifest_is_refused_not_trusted(tmp_path):
    for dataset, path in exports(tmp_path):
        path.with_name(path.name + ".manifest.json").write_text('{"size": "big", "sha256": "x\\n"}')
        with pytest.raises(DatasetError, match="no size and SHA-256 of the kind kedro-keras writes"):
            dataset.load()
        with pytest.raises(DatasetError, match="no size and SHA-256 of the kind kedro-keras writes"):
            dataset.verify()


def test_a_new_save_never_leaves_a_manifest_of_the_old_export(tmp_path, monkeypatch):
    """The old manifest goes first: a save killed after publishing the new
    artifact leaves it unverifiable, not reported as damaged."""
    for dataset, path in exports(tmp_path):
        from kedro_keras._dataset import export_file

        calls = []

        class KilledBeforeTheManifest:  # the manifest's time is taken once the artifact is published
            @staticmethod
            def now(tz=None):
                calls.append(tz)  # noqa: B023 - used before the loop moves on
                raise KeyboardInterrupt  # the process dies between the artifact and its manifest

        monkeypatch.setattr(export_file, "datetime", KilledBeforeTheManifest)
        with pytest.raises(KeyboardInterrupt):
            dataset.save(model())
        assert len(calls) == 1  # the fault was reached: after the artifact, before its manifest
        monkeypatch.undo()
        assert not path.with_name(path.name + ".manifest.json").exists()
        assert "no manifest beside it, so no checksum to check" in dataset.verify()


def test_a_saved_model_preview_lists_the_inputs_and_outputs_it_serves(tmp_path):
    if BACKEND != "tensorflow":  # SavedModel exports are TensorFlow's: the dataset says so elsewhere
        assert _exported.why_cannot_export("tf_saved_model", BACKEND) or _exported.why_cannot_load(
            "tf_saved_model", BACKEND
        )
        return
    dataset = KerasExportDataset(filepath=str(tmp_path / "served"), format="tf_saved_model")
    dataset.save(model())
    rows = dict(dataset.preview()["data"])
    assert rows["inputs"] == "x: float32[None, 3]"
    assert rows["outputs"].endswith(": float32[None, 2]"), rows
