"""_remote: one streaming GET per load, and files gathered by reference for one PUT."""

from __future__ import annotations

import uuid

import pytest

from kedro_keras._io.files import FileChangedError, Location

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
    from kedro_keras._io import remote as _remote

    monkeypatch.setattr(_remote, "_RANGE_PIECE", MB)
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


def test_gather_buffer_is_a_seekable_file_that_zipfile_can_write(tmp_path):
    import zipfile

    from kedro_keras._io.upload import GatherBuffer

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
    from kedro_keras._io.upload import GatherBuffer

    reused = bytearray(b"a" * (2 * MB))
    gathered = GatherBuffer()
    gathered.write(reused)
    reused[:] = b"b" * (2 * MB)
    gathered.write(reused)
    gathered.seek(0)
    assert gathered.read() == b"a" * (2 * MB) + b"b" * (2 * MB)


def test_held_stretches_together_stay_within_a_quarter_of_the_file(remote_bytes, monkeypatch):
    """A walk over headers alone (peek after peek, no array read) must not
    end up holding the whole file."""
    from kedro_keras._io import remote as _remote

    monkeypatch.setattr(_remote, "_RANGE_PIECE", MB)  # the quarter (6 MB) applies
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
    from kedro_keras._io import remote as _remote

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
            assert held() <= len(array) - done - 3 * MB + _remote._HOLD_PIECE
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


def test_collection_pauses_are_counted_across_threads():
    """Two remote reads in threads (ThreadRunner): the first to finish must
    not turn collection back on under the other; the last restores it."""
    import gc
    import threading

    from kedro_keras._io.remote import _garbage_collection_paused

    assert gc.isenabled()
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first():
        with _garbage_collection_paused():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second():
        first_in.wait(10)
        with _garbage_collection_paused():
            second_in.set()
            first_out.wait(10)
            seen["during"] = gc.isenabled()  # the first one has left

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert seen == {"during": False}
    assert gc.isenabled()


def test_collection_stays_off_if_it_was_off():
    import gc

    from kedro_keras._io.remote import _garbage_collection_paused

    gc.disable()
    try:
        with _garbage_collection_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_two_concurrent_s3_loads_in_threads(s3_bucket, s3_credentials):
    """Kedro's ThreadRunner loads two models from S3 at once: both come back
    whole, and collection is on again afterwards."""
    import gc
    from concurrent.futures import ThreadPoolExecutor

    import keras
    import numpy as np

    from kedro_keras import KerasModelDataset

    models = []
    for width in (64, 96):
        inputs = keras.Input((128,))
        models.append(keras.Model(inputs, keras.layers.Dense(width)(keras.layers.Dense(2048)(inputs))))
    datasets = [
        KerasModelDataset(filepath=f"{s3_bucket}/m{i}.keras", credentials=s3_credentials) for i in range(2)
    ]
    for dataset, model in zip(datasets, models, strict=True):
        dataset.save(model)
    with ThreadPoolExecutor(2) as pool:
        loaded = list(pool.map(lambda dataset: dataset.load(), datasets * 2))
    x = np.linspace(-1, 1, 256, dtype="float32").reshape(2, 128)
    for model, reloaded in zip(models * 2, loaded, strict=True):
        np.testing.assert_array_equal(reloaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert gc.isenabled()


class TestSpooledUploads:
    """A model larger than a save's memory budget is written to a local
    temporary file (by HDF5, in place) and uploaded from it a part at a
    time, instead of being gathered in memory."""

    @pytest.fixture
    def spool_every_model(self, monkeypatch):
        from kedro_keras._formats import archive as _archive
        from kedro_keras._formats import weights as _weights
        from kedro_keras._io import files as _files

        monkeypatch.setattr(_files, "SPOOL_FROM", 0)
        monkeypatch.setattr(_archive, "SMALL_STATE_BYTES", 0)  # the test's models are small
        for module in (_archive, _weights):
            monkeypatch.setattr(module, "weights_image", never_in_memory)

    def test_a_model_goes_up_from_local_disk(
        self, spool_every_model, monkeypatch, s3_bucket, s3_credentials, trained_model, data
    ):
        import zipfile

        import fsspec
        import keras
        import numpy as np

        from conftest import assert_same_predictions
        from kedro_keras import KerasModelDataset
        from kedro_keras._io import upload as _upload

        monkeypatch.setattr(_upload.GatherBuffer, "__init__", never_in_memory)
        dataset = KerasModelDataset(filepath=f"{s3_bucket}/m.keras", credentials=s3_credentials)
        dataset.save(trained_model)
        loaded = dataset.load()
        assert_same_predictions(loaded, trained_model, data[0])
        for ours, theirs in zip(loaded.optimizer.variables, trained_model.optimizer.variables, strict=True):
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs)
            )
        with fsspec.open(f"{s3_bucket}/m.keras", "rb", **s3_credentials) as file:
            assert zipfile.ZipFile(file).testzip() is None

    def test_in_parts_when_larger_than_one_put(
        self, spool_every_model, monkeypatch, s3_bucket, s3_credentials, data
    ):
        import keras
        import numpy as np
        import s3fs

        from kedro_keras import KerasWeightsDataset
        from kedro_keras._io import files as _files
        from kedro_keras._io import transfer as _transfer

        monkeypatch.setattr(_files, "SINGLE_PUT_LIMIT", 5 * MB)
        monkeypatch.setattr(_files, "SINGLE_PUT_LIMIT_ONE_CONNECTION", 0)  # no probe part
        monkeypatch.setattr(_transfer, "PART_SIZE", 5 * MB)
        inputs = keras.Input((1024,))
        model = keras.Model(inputs, keras.layers.Dense(3072)(inputs))  # 12.6 MB of weights
        path = f"{s3_bucket}/m.weights.h5"
        KerasWeightsDataset(filepath=path, credentials=s3_credentials).save(model)

        fs = s3fs.S3FileSystem(**s3_credentials)
        assert fs.info(path)["ETag"].strip('"').endswith("-3")  # three parts
        loaded = KerasWeightsDataset(filepath=path, credentials=s3_credentials).load()
        x = np.random.default_rng(0).normal(size=(2, 1024)).astype("float32")
        np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)

    def test_small_models_are_still_gathered_in_memory(
        self, s3_bucket, s3_credentials, trained_model, monkeypatch
    ):
        from kedro_keras import KerasModelDataset
        from kedro_keras._io import upload as _upload

        made = []
        init = _upload.GatherBuffer.__init__
        monkeypatch.setattr(_upload.GatherBuffer, "__init__", lambda self: made.append(1) or init(self))
        KerasModelDataset(filepath=f"{s3_bucket}/m.keras", credentials=s3_credentials).save(trained_model)
        assert made == [1]


def never_in_memory(*args, **kwargs):
    raise AssertionError("the model was gathered in memory")


class TestParallelTransfers:
    """One connection to an object store carries a fraction of the host's
    link: large reads go as concurrent ranged GETs, large uploads as
    concurrent parts, each written straight where it belongs. That is the
    default for a store elsewhere; a store on this host (moto on loopback
    here) gets one stream and one PUT unless the entry asks for more, so
    the tests that want ranges or parts set ``concurrency``."""

    @staticmethod
    def _in_flight(monkeypatch):
        """How many parts were being filled at the same time, at most."""
        from kedro_keras._io import s3 as _s3

        counts = {"now": 0, "most": 0}
        get = _s3._get_range_into

        async def counted(*args):
            counts["now"] += 1
            counts["most"] = max(counts["most"], counts["now"])
            try:
                return await get(*args)
            finally:
                counts["now"] -= 1

        monkeypatch.setattr(_s3, "_get_range_into", counted)
        return counts

    def test_a_large_read_is_concurrent_ranged_gets_and_the_stream_resumes_after_it(
        self, remote_bytes, monkeypatch
    ):
        location, data = remote_bytes
        location = Location(
            f"s3://{location.path}", credentials=_credentials_of(location), fs_args={"concurrency": 4}
        )
        calls = _count_get_requests(location)
        counts = self._in_flight(monkeypatch)
        with location.open_read(location.path) as file:
            assert file.read(30) == data[:30]
            assert file.read(20 * MB) == data[30 : 20 * MB + 30]  # an array
            assert file.read(1000) == data[20 * MB + 30 : 20 * MB + 1030]
        # The stream serves the first bytes; the array comes in concurrent
        # parts of 8 MiB, the smallest worth a request; the stream resumes after it.
        first, end = 30, 20 * MB + 30
        parts = [f"bytes={a}-{min(a + 8 * MB, end) - 1}" for a in range(first, end, 8 * MB)]
        assert calls == ["bytes=0-", *parts, f"bytes={20 * MB + 30}-"]
        assert 1 < counts["most"] <= 3

    @pytest.mark.parametrize("concurrency", [None, 1])
    def test_a_store_on_this_host_serves_large_reads_by_one_stream(self, remote_bytes, concurrency):
        """By default (decided from the endpoint's address, not from timing:
        on a busy CPU a timed probe took moto for a slow link and read a
        386 MB model by ranges, 8.2 s instead of 3.6 s), and with concurrency 1."""
        location, data = remote_bytes
        fs_args = {} if concurrency is None else {"concurrency": concurrency}
        location = Location(f"s3://{location.path}", credentials=_credentials_of(location), fs_args=fs_args)
        assert location.transfer.concurrency == 1
        calls = _count_get_requests(location)
        with location.open_read(location.path) as file:
            assert file.read(30) == data[:30]
            assert file.read(20 * MB) == data[30 : 20 * MB + 30]
        assert calls == ["bytes=0-"]

    def test_the_choice_holds_with_both_cores_busy(self, remote_bytes):
        """The same requests with the CPU loaded: nothing in the choice is timed."""
        import subprocess
        import sys

        location, data = remote_bytes
        location = Location(f"s3://{location.path}", credentials=_credentials_of(location))
        calls = _count_get_requests(location)
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
        try:
            with location.open_read(location.path) as file:
                assert file.read() == data
            assert all(process.poll() is None for process in busy)  # busy all along
        finally:
            for process in busy:
                process.kill()
                process.wait()
        assert calls[-1] == "bytes=0-" and len(calls) <= 2, calls  # the directory's range, then one stream

    @pytest.mark.parametrize(
        ("endpoint", "expected"),
        [
            ("http://127.0.0.1:5000", 1),
            ("http://localhost:9000", 1),
            ("http://[::1]:9000", 1),
            ("http://127.0.0.2", 1),
            ("https://minio.example.internal:9000", 8),
            ("http://10.0.0.5:9000", 8),
            ("https://s3.eu-west-1.amazonaws.com", 8),
            (None, 8),
        ],
    )
    def test_the_default_concurrency_follows_where_the_endpoint_is(self, endpoint, expected, monkeypatch):
        monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
        monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        credentials = {"key": "k", "secret": "s"}
        if endpoint:
            credentials["client_kwargs"] = {"endpoint_url": endpoint}
        location = Location("s3://bucket/m.keras", credentials=credentials)
        assert location.transfer.concurrency == expected
        explicit = Location("s3://bucket/m.keras", credentials=credentials, fs_args={"concurrency": 3})
        assert explicit.transfer.concurrency == 3

    def test_botocores_endpoint_setting_counts_too(self, monkeypatch):
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000")
        location = Location("s3://bucket/m.keras", credentials={"key": "k", "secret": "s"})
        assert location.transfer.concurrency == 1

    def test_a_failed_range_is_the_reads_error(self, remote_bytes, monkeypatch):
        from kedro_keras._io import s3 as _s3

        reached = []

        async def refused(*args):
            reached.append(args[3])
            raise PermissionError("AccessDenied on the range")

        monkeypatch.setattr(_s3, "_get_range_into", refused)
        location, _ = remote_bytes
        location = Location(
            f"s3://{location.path}", credentials=_credentials_of(location), fs_args={"concurrency": 4}
        )
        with location.open_read(location.path) as file, pytest.raises(PermissionError, match="AccessDenied"):
            file.read(20 * MB)
        assert reached and reached[0] == 0  # the fault was a range's

    def test_a_part_whose_connection_drops_is_asked_for_again_from_where_it_stopped(
        self, remote_bytes, s3_endpoint
    ):
        from reliability_helpers.faulty_proxy import FaultyProxy

        location, data = remote_bytes
        host, port = s3_endpoint.removeprefix("http://").split(":")
        proxy = FaultyProxy((host, int(port))).start()
        try:
            credentials = {**_credentials_of(location), "client_kwargs": {"endpoint_url": proxy.endpoint}}
            location = Location(
                f"s3://{location.path}",
                credentials=credentials,
                fs_args={"concurrency": 3, "part_size": 6 * MB, "skip_instance_cache": True},
            )
            calls = _count_get_requests(location)
            with location.open_read(location.path) as file:
                proxy.cut_after(8 * MB, direction="down")  # 2 to 3 MiB into one of the three parts
                assert file.read() == data
        finally:
            proxy.close()
        retried = [r for r in calls if r and not r.endswith("-") and int(r[6:].split("-")[0]) % (6 * MB)]
        assert len(retried) == 1, calls  # the dropped part, from the byte it had reached

    def test_an_object_replaced_during_a_parallel_read_is_an_error_not_a_mix(self, remote_bytes):
        location, data = remote_bytes
        location = Location(
            f"s3://{location.path}", credentials=_credentials_of(location), fs_args={"concurrency": 4}
        )
        with location.open_read(location.path) as file:
            assert file.read(MB) == data[:MB]
            location.fs.pipe_file(str(location.path), b"x" * len(data))
            with pytest.raises(FileChangedError, match="replaced while it was being read"):
                file.read(20 * MB)

    def test_parts_go_up_concurrently_and_the_object_is_exact(self, s3_bucket, s3_credentials):
        import numpy as np

        from kedro_keras._io.progress import Transfer

        location = Location(
            f"{s3_bucket}/big.bin",
            credentials=s3_credentials,
            fs_args={"concurrency": 4, "part_size": 5 * MB, "progress": True},
        )
        events = []
        for when in ("before", "after"):
            location.fs.s3.meta.events.register(
                f"{when}-call.s3.UploadPart",
                lambda when=when, **kwargs: events.append(when),
            )
        seen = []
        at = Transfer.at
        data = np.random.default_rng(3).bytes(32 * MB)
        try:
            Transfer.at = lambda self, done: seen.append(done) or at(self, done)
            with location.atomic_write(location.path) as file:
                file.write(memoryview(data).toreadonly())
        finally:
            Transfer.at = at
        assert events.count("before") == 7  # 32 MiB in parts of 5
        most, now = 0, 0
        for event in events:
            now += 1 if event == "before" else -1
            most = max(most, now)
        assert 1 < most <= 4
        assert max(seen) == len(data) == seen[-1]
        location.invalidate_cache(location.path)
        with location.open_read(location.path) as file:
            assert file.read() == data

    @pytest.mark.parametrize("concurrency", [None, 8])
    def test_an_upload_is_one_put_to_a_store_on_this_host_and_parts_elsewhere(
        self, s3_bucket, s3_credentials, concurrency
    ):
        """80 MB: one PUT to moto on loopback by default; in parts of 10 MiB
        with concurrency 8, the default for a store elsewhere."""
        import numpy as np

        fs_args = {} if concurrency is None else {"concurrency": concurrency}
        location = Location(f"{s3_bucket}/uploaded.bin", credentials=s3_credentials, fs_args=fs_args)
        calls = []
        location.fs.s3.meta.events.register(
            "before-call.s3", lambda model=None, **_: calls.append(model.name)
        )
        data = np.random.default_rng(4).bytes(80 * MB)
        with location.atomic_write(location.path) as file:
            file.write(memoryview(data).toreadonly())
        if concurrency is None:
            assert calls == ["PutObject"]
        else:
            assert calls[0] == "CreateMultipartUpload" and calls[-1] == "CompleteMultipartUpload"
            assert calls.count("UploadPart") == 8 and "PutObject" not in calls
        location.invalidate_cache(location.path)
        with location.open_read(location.path) as file:
            assert file.read() == data

    @pytest.mark.parametrize(
        ("fs_args", "message"),
        [
            ({"concurrency": 0}, "fs_args.concurrency of '.*m.keras' must be a whole number of at least 1"),
            ({"concurrency": "8"}, "fs_args.concurrency .* not '8'"),
            ({"part_size": 2**20}, "fs_args.part_size .* at least 5 MiB"),
        ],
    )
    def test_bad_transfer_options_name_the_entry_and_the_rule(self, fs_args, message):
        from kedro.io import DatasetError

        from kedro_keras import KerasModelDataset

        with pytest.raises(DatasetError, match=message):
            KerasModelDataset(filepath="s3://bucket/m.keras", fs_args=fs_args)


def _credentials_of(location):
    return {
        "key": location.fs.key,
        "secret": location.fs.secret,
        "client_kwargs": location.fs.client_kwargs,
    }
