"""_h5: an array is read only if it is plain data stored in the file, checked
before anything is allocated (whatever Keras version is installed)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import zipfile
import zlib

import h5py
import numpy as np
import pytest

from kedro_keras._io import aligned_arrays as _aligned_arrays
from kedro_keras._io import h5 as _h5
from kedro_keras._io.h5_guards import checked_dataset


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


def test_a_group_name_heap_whose_free_list_loops_is_refused_in_bounded_memory(tmp_path, trained_model):
    """HDF5 1.14 follows a local heap's free list without checking for a
    loop, allocating until the machine has no memory left (a fuzzed file
    found it). In a child with a 4 GB address-space limit, so a regression
    fails here instead of taking the machine down."""
    from kedro_keras import KerasWeightsDataset

    path = tmp_path / "m.weights.h5"
    KerasWeightsDataset(filepath=str(path)).save(trained_model)
    data = bytearray(path.read_bytes())
    heap = data.index(b"HEAP")  # the root group's name heap: 8-byte lengths and addresses
    address = int.from_bytes(data[heap + 24 : heap + 32], "little")
    data[heap + 16 : heap + 24] = (8).to_bytes(8, "little")  # the free list starts 8 bytes in
    data[address + 8 : address + 16] = (8).to_bytes(8, "little")  # and that block's next is itself
    path.write_bytes(bytes(data))
    code = textwrap.dedent(
        f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))
        from kedro.io.core import DatasetError
        from kedro_keras import KerasWeightsDataset
        try:
            KerasWeightsDataset(filepath={str(path)!r}).load()
        except DatasetError as exc:
            print("ERROR", exc)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "ERROR" in result.stdout, result.stderr[-2000:]
    assert "the free list of a group's name heap" in result.stdout and "is corrupt" in result.stdout


@pytest.mark.private_api  # the public-API fallback saves through model.save_weights and a copy
def test_weights_files_are_written_in_place_and_carry_their_checksum(tmp_path, trained_model, monkeypatch):
    """A local .weights.h5 is written by HDF5 into the file itself (no image
    in memory), followed by the CRC-32 trailer a load checks."""
    import keras

    from kedro_keras import KerasWeightsDataset
    from kedro_keras._formats import weights as _weights

    monkeypatch.setattr(_weights, "weights_image", lambda *a, **k: pytest.fail("an image in memory"))
    path = tmp_path / "m.weights.h5"
    KerasWeightsDataset(filepath=str(path)).save(trained_model)
    data = path.read_bytes()
    image_size = len(data) - _h5._H5_TRAILER.size
    magic, size, crc = _h5._H5_TRAILER.unpack(data[image_size:])
    assert magic == _h5._H5_TRAILER_MAGIC and size == image_size
    assert crc == zlib.crc32(data[:image_size])
    loaded = KerasWeightsDataset(filepath=str(path)).load()
    for ours, theirs in zip(loaded.weights, trained_model.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs))


def test_a_file_region_is_a_file_from_its_start(tmp_path):
    with open(tmp_path / "f", "w+b") as file:
        file.write(b"HEADER")
        region = _h5.FileRegion(file, 6)
        assert region.write(b"abcdef") == 6
        region.seek(2)
        region.write(b"XY")
        assert region.seek(0, io.SEEK_END) == 6 and region.tell() == 6
        region.seek(1)
        assert region.read(4) == b"bXYe"
        region.truncate(10)
        assert region.size == 10
        assert _h5.region_crc32(file, 6, 10) == zlib.crc32(b"abXYef\0\0\0\0")
    assert (tmp_path / "f").read_bytes() == b"HEADERabXYef\0\0\0\0"


@pytest.mark.parametrize("nbytes", [1000, 4 * 2**20, 9 * 2**20 + 12])
def test_arrays_a_load_fills_are_aligned_writable_and_large_ones_are_own_maps(tmp_path, nbytes):
    # Large ones are anonymous maps rather than NumPy's huge-page allocations
    # (slow to fault in where the kernel compacts memory for them); either
    # way they must be aligned for TensorFlow to adopt them, and hold what
    # HDF5 reads into them.
    import mmap

    values = np.arange(nbytes // 4, dtype="<f4")
    with h5py.File(tmp_path / "w.h5", "w") as file:
        file["a"] = values
    with h5py.File(tmp_path / "w.h5", "r") as file:
        array = _aligned_arrays.read_aligned(file["a"])
    np.testing.assert_array_equal(array, values)
    assert array.ctypes.data % 64 == 0 and array.flags.writeable
    owner = array
    while isinstance(owner, np.ndarray) and owner.base is not None:
        owner = owner.base
    if isinstance(owner, memoryview):  # np.frombuffer keeps a view of the buffer
        owner = owner.obj
    own_map = _aligned_arrays._ANONYMOUS is not None and nbytes >= _aligned_arrays._OWN_MAP_FROM
    assert isinstance(owner, mmap.mmap) is own_map


@pytest.mark.private_api  # Keras's H5IOStore, which the public-API-only mode never subclasses
def test_only_windows_on_local_disk_prefault_the_arrays_read_through_them(tmp_path):
    # A network read arrives slower than pages fault in; faulting a whole
    # array in before its bytes arrive raised a moto load's peak memory.
    import fsspec

    from kedro_keras._keras.stores import h5_read_store

    values = np.arange(2**21, dtype="<f4")  # 8 MiB: an own map
    with h5py.File(tmp_path / "w.h5", "w") as file:
        file.create_group("layer/vars")["0"] = values
    memory = fsspec.filesystem("memory")
    memory.pipe("/w.h5", (tmp_path / "w.h5").read_bytes())
    with open(tmp_path / "w.h5", "rb") as local, memory.open("/w.h5", "rb") as remote:
        windows = {"local": _h5.h5_window(local), "remote": _h5.h5_window(remote)}
        assert {name: window.on_local_disk for name, window in windows.items()} == {
            "local": True,
            "remote": False,
        }
        for name, window in windows.items():
            store = h5_read_store(window)
            assert store.prefault is (name == "local")
            np.testing.assert_array_equal(store.get("layer").read("0", adoptable=False), values)
            store.close()
