"""_archive: a .keras file's zip directory is checked before any member is read:
a few bytes of directory must not make a load inflate gigabytes."""

from __future__ import annotations

import io
import struct
import zipfile

import keras
import pytest
from kedro.io.core import DatasetError

from kedro_keras import KerasModelDataset


@pytest.fixture(scope="module")
def archive_bytes(tmp_path_factory):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    path = tmp_path_factory.mktemp("archive") / "model.keras"
    KerasModelDataset(filepath=str(path)).save(model)
    return path.read_bytes()


def with_directory_entry_repeated(data: bytes, member: str, as_names: list[str]) -> bytes:
    """The archive with ``member``'s central-directory entry listed again under
    each of ``as_names`` (same length), pointing at the same bytes: how an
    overlapping-entries zip bomb is built."""
    assert all(len(name) == len(member) for name in as_names)
    times = len(as_names)
    end = data.rindex(b"PK\x05\x06")
    entries, size, offset = struct.unpack("<HII", data[end + 10 : end + 20])
    directory = data[offset : offset + size]
    position = 0
    while position < len(directory):
        name_length, extra_length, comment_length = struct.unpack(
            "<HHH", directory[position + 28 : position + 34]
        )
        record_end = position + 46 + name_length + extra_length + comment_length
        record = directory[position:record_end]
        if record[46 : 46 + name_length].decode() == member:
            break
        position = record_end
    else:
        raise AssertionError(f"no {member} in the archive")
    for name in as_names:
        directory += record[:46] + name.encode() + record[46 + name_length :]
    trailer = data[end : end + 22]
    trailer = (
        trailer[:8]
        + struct.pack("<HHII", entries + times, entries + times, len(directory), offset)
        + trailer[20:]
    )
    return data[:offset] + directory + trailer + data[end + 22 :]


def load(tmp_path, data):
    path = tmp_path / "model.keras"
    path.write_bytes(data)
    return KerasModelDataset(filepath=str(path)).load()


def test_the_archive_as_saved_loads(tmp_path, archive_bytes):
    assert load(tmp_path, archive_bytes).count_params() == 8


def test_one_member_listed_under_many_names_is_refused(tmp_path, archive_bytes):
    bomb = with_directory_entry_repeated(
        archive_bytes, "model.weights.h5", [f"assets/aaaaaaaa{i}" for i in range(8)]
    )
    assert len(zipfile.ZipFile(io.BytesIO(bomb)).namelist()) == 3 + 8  # what zipfile sees
    with pytest.raises(DatasetError, match=r"members '.*' and '.*' overlap .*decompression bomb"):
        load(tmp_path, bomb)


def test_a_repeated_name_is_refused(tmp_path, archive_bytes):
    repeated = with_directory_entry_repeated(archive_bytes, "config.json", ["config.json"])
    with pytest.raises(DatasetError, match=r"lists 'config.json' more than once"):
        load(tmp_path, repeated)


def test_compressed_members_declaring_too_much_in_all_are_refused(tmp_path, archive_bytes, monkeypatch):
    """Each member within the per-member limits, together over the budget
    (lowered here from 1 GiB so that the test inflates nothing large)."""
    from kedro_keras._formats import archive as _archive

    monkeypatch.setattr(_archive, "_MAX_INFLATED_TOTAL", 10 * 2**20)
    source = zipfile.ZipFile(io.BytesIO(archive_bytes))
    target_buffer = io.BytesIO()
    with zipfile.ZipFile(target_buffer, "w") as target:
        for info in source.infolist():
            target.writestr(info, source.read(info))
        for index in range(3):  # 3 x 4 MB of zeros, a few KB each deflated
            target.writestr(f"assets/zeros_{index}.bin", bytes(4 * 2**20), compress_type=zipfile.ZIP_DEFLATED)
    with pytest.raises(DatasetError, match=r"compressed members declare 12582\d+ bytes in all"):
        load(tmp_path, target_buffer.getvalue())


@pytest.mark.private_api  # the public-API fallback saves through model.save and a copy
class TestWeightsWrittenInPlace:
    """A local save has HDF5 write the weights member straight into the file:
    no image of the model in memory, whatever its size."""

    def test_a_local_save_builds_no_image_in_memory(self, tmp_path, trained_model, data, monkeypatch):
        from kedro_keras._formats import archive as _archive

        def no_image(*args, **kwargs):
            raise AssertionError("the weights image was built in memory")

        monkeypatch.setattr(_archive, "SMALL_STATE_BYTES", 0)  # the test's model is small
        monkeypatch.setattr(_archive, "weights_image", no_image)
        path = tmp_path / "model.keras"
        KerasModelDataset(filepath=str(path)).save(trained_model)

        assert_same_state(KerasModelDataset(filepath=str(path)).load(), trained_model, data)
        assert_same_state(keras.saving.load_model(path), trained_model, data)  # and plain Keras reads it
        with zipfile.ZipFile(path) as archive:
            assert archive.testzip() is None  # every member matches its CRC-32
            weights = archive.getinfo("model.weights.h5")
            assert weights.compress_type == zipfile.ZIP_STORED and weights.file_size > 0

    def test_elsewhere_the_image_is_built_in_memory_as_before(self, trained_model, data, monkeypatch):
        from kedro_keras._formats import archive as _archive

        built = []
        image = _archive.weights_image
        monkeypatch.setattr(_archive, "weights_image", lambda *a, **k: built.append(1) or image(*a, **k))
        dataset = KerasModelDataset(filepath="memory://in-place/model.keras")
        dataset.save(trained_model)
        assert built == [1]
        assert_same_state(dataset.load(), trained_model, data)

    def test_a_small_state_is_built_in_memory_and_written_in_one_go(
        self, tmp_path, trained_model, data, monkeypatch
    ):
        """As Keras does: HDF5 writing a small model's image in place, seek by
        seek, made a checkpoint each epoch slower than Keras's (#29)."""
        from kedro_keras._formats import archive as _archive

        built = []
        image = _archive.weights_image
        monkeypatch.setattr(_archive, "weights_image", lambda *a, **k: built.append(1) or image(*a, **k))
        path = tmp_path / "model.keras"
        assert _archive.state_bytes(trained_model) <= _archive.SMALL_STATE_BYTES
        KerasModelDataset(filepath=str(path)).save(trained_model)
        assert built == [1]
        assert_same_state(keras.saving.load_model(path), trained_model, data)

    def test_zip64_headers_when_the_weights_may_pass_4_gib(self, tmp_path, trained_model, data, monkeypatch):
        from kedro_keras._formats import archive as _archive

        monkeypatch.setattr(_archive, "_ZIP64_MARGIN", 0)
        monkeypatch.setattr(_archive, "SMALL_STATE_BYTES", 0)  # the in-place writer's headers
        path = tmp_path / "model.keras"
        KerasModelDataset(filepath=str(path)).save(trained_model)
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("model.weights.h5")
            assert archive.testzip() is None
        header = path.read_bytes()[info.header_offset :]
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        extra = header[30 + name_length : 30 + name_length + extra_length]
        assert extra[:2] == b"\x01\x00"  # the member's local header has the ZIP64 extra field
        assert_same_state(keras.saving.load_model(path), trained_model, data)

    def test_without_zipfiles_member_sizes_the_image_goes_through_memory(
        self, tmp_path, trained_model, data, monkeypatch
    ):
        from kedro_keras._formats import archive as _archive

        monkeypatch.setattr(_archive, "_ZIPFILE_MEMBER_SIZES_SETTABLE", False)
        path = tmp_path / "model.keras"
        KerasModelDataset(filepath=str(path)).save(trained_model)
        assert_same_state(KerasModelDataset(filepath=str(path)).load(), trained_model, data)


def assert_same_state(loaded, model, data):
    import numpy as np

    from conftest import assert_same_predictions

    assert_same_predictions(loaded, model, data[0])
    for ours, theirs in zip(
        loaded.weights + loaded.optimizer.variables, model.weights + model.optimizer.variables, strict=True
    ):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs))
