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
    from kedro_keras import _archive

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
