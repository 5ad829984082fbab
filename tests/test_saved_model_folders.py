"""KerasExportDataset's SavedModel folders: committed by a manifest, never
seen half-written, checked file by file when read. TensorFlow suite only
(the Makefile leaves it out of the JAX and PyTorch runs): only TensorFlow
reads a SavedModel; test_keras_export_dataset.py checks the other backends'
errors."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from kedro.io import DatasetError

from kedro_keras import KerasExportDataset
from kedro_keras._io.files import Location

TRUSTED = {"safe_mode": False}


def model_of(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((3,), name="x")
    return keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(4, activation="relu")(inputs)))


X = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")


def exports_in(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("export-"))


def assert_predicts_like(served, model):
    np.testing.assert_allclose(
        served.predict(X, verbose=0), model.predict(X, verbose=0), rtol=1e-5, atol=1e-6
    )


class TestSavedModelFolders:
    def test_the_manifest_lists_every_file_with_its_checksum(self, tmp_path):
        folder = tmp_path / "served"
        KerasExportDataset(filepath=str(folder)).save(model_of(1))
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["format"] == "tf_saved_model" and manifest["backend"] == "tensorflow"
        assert manifest["keras_version"] == keras.__version__
        exported = folder / manifest["export"]
        on_disk = {p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file()}
        assert on_disk == set(manifest["files"]) and "saved_model.pb" in on_disk
        for name, entry in manifest["files"].items():
            assert entry["size"] == (exported / name).stat().st_size
            assert len(entry["sha256"]) == 64

    def test_an_upload_cut_short_leaves_the_previous_export(self, tmp_path, monkeypatch):
        folder = tmp_path / "served"
        dataset = KerasExportDataset(filepath=str(folder), load_args=TRUSTED)
        first, second = model_of(1), model_of(2)
        dataset.save(first)
        before = exports_in(folder)

        real_write, calls = Location.atomic_write, []

        def failing_third_file(self, path, **kwargs):
            calls.append(path)
            if len(calls) == 3:
                raise ConnectionError("the link went down")
            return real_write(self, path, **kwargs)

        monkeypatch.setattr(Location, "atomic_write", failing_third_file)
        with pytest.raises(
            DatasetError, match="the link went down. Any export previously saved there is unchanged"
        ):
            dataset.save(second)
        monkeypatch.undo()

        assert_predicts_like(KerasExportDataset(filepath=str(folder), load_args=TRUSTED).load(), first)
        dataset.save(second)
        after = exports_in(folder)
        # The committed export replaced the first; the abandoned upload is left (and never read).
        assert before[0] not in after and len(after) == 2
        assert_predicts_like(KerasExportDataset(filepath=str(folder), load_args=TRUSTED).load(), second)

    def test_a_damaged_file_is_named(self, tmp_path):
        folder = tmp_path / "served"
        dataset = KerasExportDataset(filepath=str(folder), load_args=TRUSTED)
        dataset.save(model_of(1))
        manifest = json.loads((folder / "manifest.json").read_text())
        data = next(name for name in manifest["files"] if name.startswith("variables/variables.data"))
        damaged = folder / manifest["export"] / data
        content = bytearray(damaged.read_bytes())
        content[len(content) // 2] ^= 0xFF
        damaged.write_bytes(bytes(content))
        with pytest.raises(DatasetError, match=rf"is damaged: '{manifest['export']}/{data}' has"):
            dataset.load()

    def test_a_missing_file_is_named(self, tmp_path):
        folder = tmp_path / "served"
        dataset = KerasExportDataset(filepath=str(folder), load_args=TRUSTED)
        dataset.save(model_of(1))
        manifest = json.loads((folder / "manifest.json").read_text())
        (folder / manifest["export"] / "saved_model.pb").unlink()
        with pytest.raises(DatasetError, match="is incomplete: .*saved_model.pb', listed in its manifest"):
            dataset.load()

    def test_a_manifest_naming_a_path_outside_the_folder_is_refused(self, tmp_path):
        folder = tmp_path / "served"
        dataset = KerasExportDataset(filepath=str(folder), load_args=TRUSTED)
        dataset.save(model_of(1))
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["files"]["../../escaped.txt"] = {"size": 1, "sha256": "0" * 64}
        (folder / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(DatasetError, match=r"names '\.\./\.\./escaped.txt', a path outside its folder"):
            dataset.load()
        assert not (tmp_path / "escaped.txt").exists()

    def test_the_endpoint_can_be_chosen_and_a_wrong_one_is_named(self, tmp_path):
        folder = tmp_path / "served"
        model = model_of(3)
        KerasExportDataset(filepath=str(folder)).save(model)
        served = KerasExportDataset(
            filepath=str(folder), load_args={**TRUSTED, "endpoint": "serving_default"}
        ).load()
        assert served.endpoint == "serving_default"
        assert_predicts_like(served, model)
        with pytest.raises(
            DatasetError,
            match=r"no endpoint 'predict' in the SavedModel; its signatures: \['serve', 'serving_default'\]",
        ):
            KerasExportDataset(filepath=str(folder), load_args={**TRUSTED, "endpoint": "predict"}).load()

    def test_nothing_there_says_so(self, tmp_path):
        with pytest.raises(DatasetError, match="No SavedModel at .*: the path does not exist"):
            KerasExportDataset(filepath=str(tmp_path / "nothing"), load_args=TRUSTED).load()


EXPORTER = r"""
import sys
import keras
from kedro_keras import KerasExportDataset

keras.utils.set_random_seed(int(sys.argv[2]))
inputs = keras.Input((3,), name="x")
hidden = keras.layers.Dense(8192)(keras.layers.Dense(4096)(inputs))  # ~135 MB of variables
model = keras.Model(inputs, keras.layers.Dense(2)(hidden))
model.save(sys.argv[3])
KerasExportDataset(filepath=sys.argv[1]).save(model)
"""


def test_an_export_killed_mid_upload_leaves_the_previous_one_loadable(tmp_path):
    """SIGKILL while the new export's variables are being written: the
    previous export still loads, and the half-written one is never read."""
    import os
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "served"
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run(
        [sys.executable, "-c", EXPORTER, str(folder), "1", str(tmp_path / "first.keras")], env=env, check=True
    )
    (committed,) = exports_in(folder)

    process = subprocess.Popen(
        [sys.executable, "-c", EXPORTER, str(folder), "2", str(tmp_path / "second.keras")], env=env
    )
    deadline = time.monotonic() + 300
    writing = []
    while not writing and process.poll() is None and time.monotonic() < deadline:
        writing = [p for p in folder.glob("export-*/variables/.variables.data*.tmp") if p.stat().st_size > 0]
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert writing and process.returncode == -signal.SIGKILL, "killed while writing the variables"

    assert json.loads((folder / "manifest.json").read_text())["export"] == committed
    half = [name for name in exports_in(folder) if name != committed]
    assert len(half) == 1 and not (folder / half[0] / "variables" / "variables.index").exists()
    first = keras.saving.load_model(tmp_path / "first.keras")
    x = np.random.default_rng(1).normal(size=(2, 3)).astype("float32")
    served = KerasExportDataset(filepath=str(folder), load_args=TRUSTED).load()
    np.testing.assert_allclose(
        served.predict(x, verbose=0), first.predict(x, verbose=0), rtol=1e-5, atol=1e-5
    )
