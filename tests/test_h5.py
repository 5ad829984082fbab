"""_h5: an array is read only if it is plain data stored in the file, checked
before anything is allocated (whatever Keras version is installed)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import zipfile

import h5py
import numpy as np
import pytest

from kedro_keras._h5 import checked_dataset


@pytest.fixture
def h5(tmp_path):
    outside = tmp_path / "outside.h5"
    with h5py.File(outside, "w") as file:
        file["secret"] = np.arange(4.0)
    (tmp_path / "raw.bin").write_bytes(np.arange(4.0).tobytes())
    with h5py.File(tmp_path / "model.h5", "w") as file:
        vars_ = file.create_group("layers/dense/vars")
        vars_["0"] = np.arange(6.0).reshape(2, 3)
        vars_["soft"] = h5py.SoftLink("/layers/dense/vars/0")
        vars_["external_link"] = h5py.ExternalLink(str(outside), "/secret")
        vars_.create_dataset(
            "external_storage", shape=(4,), dtype="f8", external=[(str(tmp_path / "raw.bin"), 0, 32)]
        )
        layout = h5py.VirtualLayout(shape=(4,), dtype="f8")
        layout[:] = h5py.VirtualSource(str(outside), "secret", shape=(4,))
        vars_.create_virtual_dataset("virtual", layout)
        vars_.create_dataset("bomb", shape=(32000, 32768), dtype="f4")  # declared, never written
    with h5py.File(tmp_path / "model.h5", "r") as file:
        yield file["layers/dense/vars"]


def test_plain_data_is_read(h5):
    np.testing.assert_array_equal(checked_dataset(h5, "0")[()], np.arange(6.0).reshape(2, 3))


@pytest.mark.parametrize(
    "key, cause",
    [
        ("soft", "it is a SoftLink"),
        ("external_link", "it is a ExternalLink"),
        ("external_storage", "its data lives outside this file"),
        ("virtual", "its data lives outside this file"),
        ("bomb", r"declares 4194304000 bytes \(\(32000, 32768\)\) but the file stores 0"),
    ],
)
def test_anything_else_is_refused(h5, key, cause):
    with pytest.raises(ValueError, match=cause):
        checked_dataset(h5, key)
    with pytest.raises(KeyError):
        checked_dataset(h5, "missing")


def shape_bomb_archive() -> bytes:
    """A 10 KB .keras whose config declares a 32000 x 32768 float32 kernel
    (3.9 GiB) that its weights member declares but does not store."""
    config = {
        "module": "keras",
        "class_name": "Sequential",
        "config": {
            "name": "bomb",
            "layers": [
                {
                    "module": "keras.layers",
                    "class_name": "InputLayer",
                    "config": {"batch_shape": [None, 32000], "dtype": "float32", "name": "input"},
                },
                {
                    "module": "keras.layers",
                    "class_name": "Dense",
                    "config": {"name": "dense", "units": 32768, "dtype": "float32"},
                    "build_config": {"input_shape": [None, 32000]},
                },
            ],
        },
        "build_config": {"input_shape": [None, 32000]},
    }
    weights = io.BytesIO()
    with h5py.File(weights, "w") as file:
        vars_ = file.create_group("layers/dense/vars")
        vars_.create_dataset("0", shape=(32000, 32768), dtype="f4")
        vars_.create_dataset("1", shape=(32768,), dtype="f4")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        zf.writestr("config.json", json.dumps(config))
        zf.writestr("model.weights.h5", weights.getvalue())
    return archive.getvalue()


def test_a_shape_bomb_is_refused_before_anything_is_allocated(tmp_path):
    """In a child, so its peak memory is its own: the load fails with the
    cause, and the 3.9 GiB kernel is neither read nor randomly initialised."""
    path = tmp_path / "bomb.keras"
    path.write_bytes(shape_bomb_archive())
    assert path.stat().st_size < 100_000
    code = textwrap.dedent(
        f"""
        import resource, keras
        from kedro.io.core import DatasetError
        from kedro_keras import KerasModelDataset
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            KerasModelDataset(filepath={str(path)!r}).load()
        except DatasetError as exc:
            print("ERROR", exc)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print("GROWN_KB", grown)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "ERROR" in result.stdout, result.stderr[-2000:]
    assert "declares 4194304000 bytes" in result.stdout
    grown_kb = int(result.stdout.split("GROWN_KB")[1].split()[0])
    assert grown_kb < 512 * 1024, f"the refused load grew the process by {grown_kb // 1024} MB"
