"""_files: publishing a file only when it is complete, on every filesystem."""

from __future__ import annotations

import pickle
import uuid

import pytest

from kedro_keras._files import FileChangedError, Location


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


def _count_get_requests(location):
    calls = []
    location.fs.s3.meta.events.register(
        "before-call.s3.GetObject",
        lambda **kwargs: calls.append(kwargs["params"].get("headers", {}).get("Range")),
    )
    return calls


@pytest.fixture
def remote_bytes(s3_bucket, s3_credentials):
    """A 24 MB object of random bytes on the loopback S3 server."""
    import numpy as np

    data = np.random.default_rng(7).bytes(24 * MB)
    location = Location(f"{s3_bucket}/blob.bin", credentials=s3_credentials)
    location.fs.pipe_file(str(location.path), data)
    location.invalidate_cache(location.path)
    return location, data


def test_hdf5_like_reads_are_served_by_one_stream(remote_bytes):
    """The access pattern of a model load: the zip directory at the end, then
    forward reads with small look-backs and a peek past a large array before
    reading it. Every byte must be right, with one ranged read for the end
    of the file and one stream for the rest."""
    location, data = remote_bytes
    calls = _count_get_requests(location)
    reads = [
        (len(data) - 22, 22),  # zip directory: a ranged read
        (len(data) - 300, 278),
        (0, 30),
        (30, 4000),
        (2000, 100),  # look back into what was read
        (4500, 512),  # skip a little
        (4200, 200),  # look back into the skipped stretch
        (12 * MB, 328),  # peek past a 12 MB array
        (5000, 512),  # metadata just before the array...
        (5512, 12 * MB - 5512),  # ...and the array: held while peeking
        (5000, 100),  # look back at the metadata after the array was read
        (12 * MB + 328, 8 * MB),
        (20 * MB + 328, 4 * MB - 328 - 400),
    ]
    with location.open_read(location.path) as file:
        for start, size in reads:
            file.seek(start)
            assert file.read(size) == data[start : start + size], (start, size)
    stream_calls = [r for r in calls if r and r.endswith("-")]
    assert len(stream_calls) == 1, calls
    assert len(calls) == 2, calls


def test_a_dropped_stream_resumes_where_it_stopped(remote_bytes):
    location, data = remote_bytes
    calls = _count_get_requests(location)
    with location.open_read(location.path) as file:
        assert file.read(10 * MB) == data[: 10 * MB]
        file._stream.close()  # the connection drops mid-body
        assert file.read(4 * MB) == data[10 * MB : 14 * MB]
    assert [r for r in calls if r and r.endswith("-")] == ["bytes=0-", f"bytes={10 * MB}-"]


def test_a_read_far_ahead_of_the_stream_is_a_ranged_read(remote_bytes, monkeypatch):
    """Holding what lies between is bounded: a quarter of the file (or 64 MB,
    lowered here so that the quarter applies to a small file)."""
    from kedro_keras import _files

    monkeypatch.setattr(_files, "_RANGE_PIECE", MB)
    location, data = remote_bytes
    calls = _count_get_requests(location)
    with location.open_read(location.path) as file:
        assert file.read(100) == data[:100]
        file.seek(20 * MB)
        assert file.read(1000) == data[20 * MB : 20 * MB + 1000]
        assert file.read(1000) == data[20 * MB + 1000 : 20 * MB + 2000]
        file.seek(100)
        assert file.read(MB) == data[100 : 100 + MB]
    assert calls[0] == "bytes=0-" and len(calls) == 2, calls


def test_an_object_replaced_while_streaming_is_an_error_not_a_mix(remote_bytes):
    location, data = remote_bytes
    with location.open_read(location.path) as file:
        assert file.read(MB) == data[:MB]
        file._stream.close()
        location.fs.pipe_file(str(location.path), b"x" * len(data))
        with pytest.raises(FileChangedError, match="replaced while it was being read"):
            file.read(4 * MB)


# --------------------------------------------------------------------------
# Remote writes: gathered in memory by reference, sent in one PUT
# --------------------------------------------------------------------------


def test_gather_buffer_is_a_seekable_file_that_zipfile_can_write(tmp_path):
    import zipfile

    from kedro_keras._files import GatherBuffer

    big = memoryview(bytes(range(256)) * (8 * 1024)).toreadonly()  # 2 MB, read-only
    gathered = GatherBuffer()
    with zipfile.ZipFile(gathered, "w") as archive:
        archive.writestr("small.json", b'{"a": 1}')
        with archive.open(zipfile.ZipInfo("big.bin"), "w") as member:
            member.write(big)
    data = b"".join(bytes(piece) for piece in gathered.pieces())
    assert len(data) == gathered.size
    gathered.seek(0)
    assert gathered.read() == data
    with zipfile.ZipFile(gathered) as archive:  # the rewritten local headers are right
        assert archive.testzip() is None
        assert archive.read("big.bin") == bytes(big)
    # The large read-only write was kept by reference, not copied.
    assert any(isinstance(piece, memoryview) and piece.obj is big.obj for piece in gathered._pieces)


def test_gather_buffer_copies_writable_buffers():
    """A caller may reuse a writable buffer after write() returns."""
    from kedro_keras._files import GatherBuffer

    reused = bytearray(b"a" * (2 * MB))
    gathered = GatherBuffer()
    gathered.write(reused)
    reused[:] = b"b" * (2 * MB)
    gathered.write(reused)
    gathered.seek(0)
    assert gathered.read() == b"a" * (2 * MB) + b"b" * (2 * MB)


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
    from kedro_keras import _files

    with pytest.raises(FileExistsError):
        _files._single_put(location.fs)(path, _files.GatherBuffer(), True)
    location.invalidate_cache(path)
    with location.open_read(path) as file:
        assert file.read() == b"v1" * MB


def test_s3_write_above_the_single_put_limit_is_multipart(s3_bucket, s3_credentials, monkeypatch):
    from kedro_keras import _files

    monkeypatch.setattr(_files, "_SINGLE_PUT_LIMIT", MB)
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


def test_held_stretches_together_stay_within_a_quarter_of_the_file(remote_bytes, monkeypatch):
    """A walk over headers alone (peek after peek, no array read) must not
    end up holding the whole file."""
    from kedro_keras import _files

    monkeypatch.setattr(_files, "_RANGE_PIECE", MB)  # the quarter (6 MB) applies
    location, data = remote_bytes
    calls = _count_get_requests(location)
    with location.open_read(location.path) as file:
        for start in (0, 4 * MB, 8 * MB):  # two 4 MB stretches skipped: 8 MB > 6 MB
            file.seek(start)
            assert file.read(100) == data[start : start + 100]
        assert sum(held.nbytes for held in file._held.values()) <= 6 * MB
        file.seek(200)
        assert file.read(5 * MB) == data[200 : 200 + 5 * MB]
    assert calls[0] == "bytes=0-" and len([c for c in calls if c.endswith("-")]) == 1, calls


def test_a_held_stretch_shrinks_as_it_is_read(remote_bytes):
    """HDF5 reads an array it peeked past into a new array: the held copy is
    given back piece by piece as that array fills, so the two together stay
    near one copy, and what is read back is every byte."""
    from kedro_keras import _files

    location, data = remote_bytes
    with location.open_read(location.path) as file:
        assert file.read(100) == data[:100]  # a header, from the stream
        file.seek(16 * MB)
        assert file.read(100) == data[16 * MB : 16 * MB + 100]  # the peek: 16 MB held
        held = lambda: sum(piece.nbytes for piece in file._held.values())  # noqa: E731
        assert held() == 16 * MB - 100
        array = bytearray(16 * MB - 100)
        file.seek(100)
        for done in range(0, len(array), 3 * MB):  # HDF5's reads, in any sizes
            assert file.readinto(memoryview(array)[done : done + 3 * MB]) == min(3 * MB, len(array) - done)
            assert held() <= len(array) - done - 3 * MB + _files._HOLD_PIECE
        assert held() == 0
        assert bytes(array) == data[100 : 16 * MB]


def test_large_reads_on_a_filesystem_without_ranged_requests():
    """memory:// (like sftp) has no fsspec buffered file: it keeps its own reads."""
    data = bytes(range(256)) * (12 * 1024)  # 3 MB
    location = Location(f"memory://large-{uuid.uuid4().hex}/blob.bin")
    with location.atomic_write(location.path) as file:
        file.write(data)
    with location.open_read(location.path) as file:
        file.seek(100)
        assert file.read(2 * MB) == data[100 : 100 + 2 * MB]
