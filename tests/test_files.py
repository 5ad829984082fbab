"""_files: publishing a file only when it is complete, on every filesystem."""

from __future__ import annotations

import os
import pickle
import threading
import time
import uuid

import pytest

from kedro_keras._io import files as _files
from kedro_keras._io.files import Location


class Boom(Exception):
    pass


@pytest.fixture(params=["local", "memory", "s3"])
def location_and_path(request, tmp_path):
    if request.param == "local":
        return Location(str(tmp_path / "dir" / "model.keras")), str(tmp_path / "dir" / "model.keras")
    if request.param == "memory":
        folder = f"atomic-{uuid.uuid4().hex}"  # the memory filesystem is process-wide
        return Location(f"memory://{folder}/model.keras"), f"/{folder}/model.keras"
    s3_bucket = request.getfixturevalue("s3_bucket")
    credentials = request.getfixturevalue("s3_credentials")
    location = Location(f"{s3_bucket}/model.keras", credentials=credentials)
    return location, str(location.path)


def test_write_publishes_complete_file(location_and_path):
    location, path = location_and_path
    with location.atomic_write(path) as file:
        file.write(b"first")
    location.invalidate_cache(path)
    with location.open_read(path) as file:
        assert file.read() == b"first"


def test_failed_write_leaves_previous_file_and_no_debris(location_and_path):
    location, path = location_and_path
    with location.atomic_write(path) as file:
        file.write(b"good")
    with pytest.raises(Boom):
        with location.atomic_write(path) as file:
            file.write(b"half")
            raise Boom
    location.invalidate_cache(path)
    with location.open_read(path) as file:
        assert file.read() == b"good"
    parent = path.rsplit("/", 1)[0]
    assert [p.rsplit("/", 1)[-1] for p in location.fs.ls(parent, detail=False)] == ["model.keras"]


def test_failed_first_write_creates_nothing(location_and_path):
    location, path = location_and_path
    with pytest.raises(Boom):
        with location.atomic_write(path) as file:
            file.write(b"half")
            raise Boom
    location.invalidate_cache(path)
    assert not location.exists(path)


def test_location_pickles_with_s3(s3_bucket, s3_credentials):
    location = Location(f"{s3_bucket}/m.keras", credentials=s3_credentials)
    clone = pickle.loads(pickle.dumps(location))
    assert clone.url(clone.path) == f"{s3_bucket}/m.keras"


def test_open_args_are_split_from_filesystem_args(tmp_path):
    location = Location(
        str(tmp_path / "m.keras"), fs_args={"open_args_load": {"block_size": 1024}, "open_args_save": {}}
    )
    assert location.open_args_load == {"block_size": 1024}


def test_exclusive_write_never_replaces(location_and_path):
    location, path = location_and_path
    with location.atomic_write(path) as file:
        file.write(b"theirs")
    with pytest.raises(FileExistsError):
        with location.atomic_write(path, exclusive=True) as file:
            file.write(b"ours")
    location.invalidate_cache(path)
    with location.open_read(path) as file:
        assert file.read() == b"theirs"
    parent = path.rsplit("/", 1)[0]
    assert [p.rsplit("/", 1)[-1] for p in location.fs.ls(parent, detail=False)] == ["model.keras"]


def test_exclusive_write_to_a_new_path(location_and_path):
    location, path = location_and_path
    with location.atomic_write(path, exclusive=True) as file:
        file.write(b"new")
    location.invalidate_cache(path)
    with location.open_read(path) as file:
        assert file.read() == b"new"


# --------------------------------------------------------------------------
# Remote reads: one stream for a file read front to back
# --------------------------------------------------------------------------

MB = 2**20


# --------------------------------------------------------------------------
# Remote writes: gathered in memory by reference, sent in one PUT
# --------------------------------------------------------------------------


def _count_s3_calls(location):
    calls = []
    location.fs.s3.meta.events.register("before-call.s3", lambda model=None, **_: calls.append(model.name))
    return calls


def test_s3_write_is_one_put_and_exclusive_is_atomic(s3_bucket, s3_credentials):
    location = Location(f"{s3_bucket}/model.keras", credentials=s3_credentials)
    path = str(location.path)
    calls = _count_s3_calls(location)
    with location.atomic_write(path) as file:
        file.write(memoryview(b"v1" * MB).toreadonly())
    assert calls.count("PutObject") == 1 and "CreateMultipartUpload" not in calls
    # The store itself refuses to replace an object on an exclusive write (If-None-Match),
    # so two savers racing past the existence check cannot both publish.
    from kedro_keras._io import files as _files
    from kedro_keras._io import s3 as _s3

    with pytest.raises(FileExistsError):
        _s3.single_put(location.fs)(path, _files.GatherBuffer(), True, location.transfer)
    location.invalidate_cache(path)
    with location.open_read(path) as file:
        assert file.read() == b"v1" * MB


def test_s3_write_above_the_single_put_limit_is_multipart(s3_bucket, s3_credentials, monkeypatch):
    from kedro_keras._io import files as _files

    monkeypatch.setattr(_files, "SINGLE_PUT_LIMIT", MB)
    monkeypatch.setattr(_files, "SINGLE_PUT_LIMIT_ONE_CONNECTION", 0)  # no probe part
    location = Location(f"{s3_bucket}/model.keras", credentials=s3_credentials)
    path = str(location.path)
    calls = _count_s3_calls(location)
    data = bytes(range(256)) * (64 * 1024 * 2)  # 32 MB: a multipart upload
    with location.atomic_write(path) as file:
        file.write(memoryview(data).toreadonly())
    assert "CompleteMultipartUpload" in calls and "PutObject" not in calls
    location.invalidate_cache(path)
    with location.open_read(path) as file:
        assert file.read() == data


@pytest.mark.skipif(_files._sync_file_range() is None, reason="sync_file_range(2) is Linux's")
def test_local_write_starts_writeback_while_it_writes_and_stops_before_closing(tmp_path, monkeypatch):
    # The publishing fsync then waits only for the last stretch; the thread
    # that asks for it must be gone before the descriptor is closed (and
    # its number reused by another file).
    real = _files._sync_file_range()
    calls = []

    def recording(fd, offset, count, flags):
        calls.append((fd, offset, count, flags, os.fstat(fd).st_size))
        return real(fd, offset, count, flags)

    monkeypatch.setattr(_files, "_sync_file_range", lambda: recording)
    location = Location(str(tmp_path / "m.bin"))
    with location.atomic_write(location.path) as file:
        for _ in range(8):
            file.write(b"\x01" * 2**20)
            file.flush()
            time.sleep(2 * _files._WRITEBACK_EVERY_S)
        descriptor = file.fileno()
    assert {call[:4] for call in calls} == {(descriptor, 0, 0, _files._SYNC_FILE_RANGE_WRITE)}
    assert len(calls) >= 4 and max(call[4] for call in calls) >= 4 * 2**20
    assert not [thread for thread in threading.enumerate() if thread.name == "kedro-keras-writeback"]
    assert (tmp_path / "m.bin").read_bytes() == b"\x01" * 8 * 2**20
