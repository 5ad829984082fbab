"""Files somewhere: the fsspec half of the I/O layer.

The datasets never care which filesystem a path lives on. Everything they need
from one (opening for reading, publishing a finished file in one step,
listing, removing) is here, so that the model formats (``_archive``, ``_legacy_h5``, ``_weights``, ``_sharded``) only ever
see open file objects.
"""

from __future__ import annotations

import gc
import io
import mmap
import os
import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from contextlib import contextmanager
from copy import deepcopy
from pathlib import PurePosixPath
from typing import IO, Any, Callable, Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractBufferedFile
from kedro.io.core import Version, get_protocol_and_path

# Object stores whose files upload on ``commit()`` and can be ``discard()``ed:
# writing to them with ``autocommit=False`` is all-or-nothing with no extra copy.
_DEFERRED_COMMIT_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "adl"}


class Location:
    """A filesystem plus the arguments to open files on it.

    Built from the ``filepath``, ``credentials`` and ``fs_args`` a catalog
    entry gives, as kedro-datasets does. Picklable whenever the fsspec
    filesystem is, which ParallelRunner relies on.
    """

    def __init__(
        self,
        filepath: str,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        version: Version | None = None,
    ) -> None:
        fs_args = deepcopy(fs_args) or {}
        self.open_args_load: dict[str, Any] = fs_args.pop("open_args_load", {})
        self.open_args_save: dict[str, Any] = fs_args.pop("open_args_save", {})
        credentials = deepcopy(credentials) or {}

        self.protocol, path = get_protocol_and_path(filepath, version)
        if self.protocol == "file":
            fs_args.setdefault("auto_mkdir", True)
        self.fs: fsspec.AbstractFileSystem = fsspec.filesystem(self.protocol, **credentials, **fs_args)
        self.path = PurePosixPath(path)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def url(self, path: str | PurePosixPath) -> str:
        """The path as a user would write it (with its protocol), for messages."""
        path = str(path)
        if self.is_local:
            return path
        return f"{self.protocol}://{path}"

    def exists(self, path: str | PurePosixPath) -> bool:
        return self.fs.exists(str(path))

    def glob(self, pattern: str) -> list[str]:
        return self.fs.glob(pattern)

    def names_in(self, directory: str | PurePosixPath) -> set[str]:
        """The names of the files directly in ``directory``, listed afresh
        (one request on an object store, where a check per file is one each)."""
        directory = str(directory)
        self.fs.invalidate_cache(directory)
        try:
            return {PurePosixPath(entry).name for entry in self.fs.ls(directory, detail=False)}
        except FileNotFoundError:
            return set()

    def head(self, path: str | PurePosixPath, size: int) -> bytes:
        """The first ``size`` bytes of a file (one small ranged read remotely)."""
        return self.fs.cat_file(str(path), start=0, end=size)

    def remove(self, path: str | PurePosixPath) -> None:
        self.fs.rm_file(str(path))

    def invalidate_cache(self, path: str | PurePosixPath) -> None:
        self.fs.invalidate_cache(str(path))

    @contextmanager
    def open_read(self, path: str | PurePosixPath) -> Iterator[IO[bytes]]:
        """A seekable binary file with ``readinto``.

        Remote files are wrapped in a ``RemoteReader``: one streaming request
        serves a model read front to back, whatever small jumps the format
        makes.
        """
        args = self.open_args_load
        if self.is_local:
            with self.fs.open(str(path), mode="rb", **args) as file:
                yield file
            return
        # Reads the stream cannot serve (the zip directory at the end, a jump
        # back) go through a small block cache.
        args = {"block_size": 2**20, "cache_type": "blockcache", **args}
        with self.fs.open(str(path), mode="rb", **args) as file:
            if not isinstance(file, AbstractBufferedFile):  # memory://, sftp, ...: its own reads
                yield file
                return
            with RemoteReader(file) as reader:
                yield reader

    @contextmanager
    def atomic_write(self, path: str | PurePosixPath, *, exclusive: bool = False) -> Iterator[IO[bytes]]:
        """A binary file that becomes ``path`` only if the block completes.

        A failed or interrupted write leaves whatever was at ``path`` before
        untouched, so the last good model is never lost. With ``exclusive``,
        an existing ``path`` is never replaced: ``FileExistsError`` instead
        (atomic on local disk; checked just before publishing elsewhere).
        """
        path = str(path)
        if self.is_local:
            with _local_atomic_write(path, exclusive) as file:
                yield file
        elif _protocols(self.fs) & _DEFERRED_COMMIT_PROTOCOLS:
            with self._deferred_commit_write(path, exclusive) as file:
                yield file
        else:
            # A filesystem we cannot write to in one step: build the file in
            # memory and put it with a single call.
            buffer = io.BytesIO()
            yield buffer
            self._refuse_existing(path, exclusive)
            self.fs.pipe_file(path, buffer.getvalue())

    @contextmanager
    def _deferred_commit_write(self, path: str, exclusive: bool) -> Iterator[IO[bytes]]:
        # The file is gathered in memory, mostly as references to the
        # caller's buffers (the model's HDF5 image), and sent once complete.
        gathered = GatherBuffer()
        yield gathered
        self._refuse_existing(path, exclusive)
        put = _single_put(self.fs)
        if put is not None and gathered.size <= _SINGLE_PUT_LIMIT and not self.open_args_save:
            put(path, gathered, exclusive)
            return
        file = self.fs.open(path, mode="wb", autocommit=False, **self.open_args_save)
        try:
            for piece in gathered.pieces():
                file.write(piece)
            file.close()
        except BaseException:
            file.discard()
            raise
        file.commit()

    def _refuse_existing(self, path: str, exclusive: bool) -> None:
        if exclusive:
            self.fs.invalidate_cache(path)
            if self.fs.exists(path):
                raise FileExistsError(path)


def _protocols(fs: fsspec.AbstractFileSystem) -> set[str]:
    protocol = fs.protocol
    return {protocol} if isinstance(protocol, str) else set(protocol)


@contextmanager
def _local_atomic_write(path: str, exclusive: bool = False) -> Iterator[IO[bytes]]:
    # The temporary file sits beside the target so the final rename stays on
    # one filesystem and is atomic; its dot-name keeps it out of our globs.
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temp_path = os.path.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temp_path, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        if exclusive:
            os.link(temp_path, path)  # fails, atomically, if path exists
            os.remove(temp_path)
        else:
            os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise


# --------------------------------------------------------------------------
# Remote reads
# --------------------------------------------------------------------------

# A read this far past the stream is served by a ranged request instead of
# holding everything in between (the zip directory at the end of the file).
_HOLD_LIMIT = 1024 * 2**20
# Skipped or small stretches of the stream kept for HDF5's look-backs.
_SMALL = 2**20
# Skipped stretches are held in pieces of this size (see _skip_stream_to).
_HOLD_PIECE = 4 * 2**20
_SMALL_CACHE_BYTES = 16 * 2**20
# Reads past the stream and block cache are made in pieces this large.
_RANGE_PIECE = 64 * 2**20
_STREAM_PIECE = 8 * 2**20
_STREAM_ATTEMPTS = 3


class _SizedFile(io.RawIOBase):
    """A seekable binary file of ``size`` bytes whose reads go through ``readinto``."""

    size: int
    _position: int

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}[whence]
        self._position = max(0, base + position)
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self.size - self._position
        buffer = bytearray(max(0, min(size, self.size - self._position)))
        return bytes(memoryview(buffer)[: self.readinto(buffer)])


class FileChangedError(OSError):
    """The object was replaced between two reads of one load."""


class RemoteReader(_SizedFile):
    """A remote fsspec file read as one stream where the reads allow it.

    A model file is read almost front to back: the zip directory at the end
    first, then the config, then the weights, with HDF5 peeking a little
    ahead (at the header after an array) before it reads the array. On object
    stores each ranged request costs a round trip, so reads at or ahead of the
    stream are served by a single streaming GET: skipped stretches are kept
    (small ones in an LRU cache, a large one, the array HDF5 peeked past,
    until it is read), and bytes are copied straight into the caller's
    buffer. Anything else falls back to the file's ordinary ranged reads.
    Filesystems without a streaming read use ranged reads only.
    """

    def __init__(self, file: Any) -> None:
        super().__init__()
        self._file = file
        self.size: int = file.size
        self._position = 0
        self._open_stream = _stream_opener(file)
        self._stream: Any = None
        self._stream_position = 0  # the next byte the stream gives
        self._small: OrderedDict[int, bytes] = OrderedDict()
        self._small_bytes = 0
        self._held: dict[int, memoryview] = {}

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        view = view[: max(0, min(view.nbytes, self.size - self._position))]
        with _garbage_collection_paused():
            self._read_at(self._position, view)
        self._position += view.nbytes
        return view.nbytes

    def close(self) -> None:
        self._close_stream()
        self._held.clear()
        self._small.clear()
        super().close()

    # Where each byte comes from ------------------------------------------

    def _read_at(self, start: int, view: memoryview) -> None:
        position, end = start, start + view.nbytes
        while position < end:
            target = view[position - start :]
            done = self._from_memory(position, target)
            if not done and self._may_stream_to(position):
                self._skip_stream_to(position)
                done = self._from_stream(target)
            if not done:
                done = self._from_ranged_reads(position, target[: self._ranged_read_size(position, end)])
            position += done

    def _may_stream_to(self, position: int) -> bool:
        if self._open_stream is None or position < self._stream_position:
            return False
        gap = position - self._stream_position
        if self._stream is None and self._stream_position == 0:
            return gap <= _SMALL  # start at the front, not at the zip directory
        if gap <= _SMALL:
            return True
        # Holding a skipped stretch costs memory; the stretch is an array
        # HDF5 is about to read anyway, but all held stretches together never
        # exceed a share of the file (a walk over the headers alone skips
        # every array and reads none).
        held = sum(data.nbytes for data in self._held.values())
        return held + gap <= min(_HOLD_LIMIT, max(_RANGE_PIECE, self.size // 4))

    def _from_memory(self, position: int, target: memoryview) -> int:
        for start, data in self._held.items():
            if start <= position < start + data.nbytes:
                count = min(target.nbytes, start + data.nbytes - position)
                target[:count] = data[position - start : position - start + count]
                if count <= _SMALL:  # metadata inside the stretch; HDF5 may look again
                    self._remember_small(position, bytes(target[:count]))
                if position + count == start + data.nbytes:
                    del self._held[start]  # read to its end: HDF5 reads an array once
                return count
        for start, data in self._small.items():
            if start <= position < start + len(data):
                self._small.move_to_end(start)
                count = min(target.nbytes, start + len(data) - position)
                target[:count] = memoryview(data)[position - start : position - start + count]
                return count
        return 0

    def _ranged_read_size(self, position: int, end: int) -> int:
        """Up to the next byte held in memory or the stream, so those are not read twice."""
        limit = end
        for start in [*self._held, *self._small]:
            if position < start < limit:
                limit = start
        if (
            self._open_stream is not None
            and self._stream is not None
            and position < self._stream_position < limit
        ):
            limit = self._stream_position
        return limit - position

    def _from_ranged_reads(self, position: int, target: memoryview) -> int:
        done = 0
        while done < target.nbytes:
            first = position + done
            if target.nbytes - done >= _SMALL:
                # Past the block cache, which suits small reads only.
                piece = self._file._fetch_range(first, first + min(_RANGE_PIECE, target.nbytes - done))
            else:
                self._file.seek(first)
                piece = self._file.read(target.nbytes - done)
            if not piece:
                raise EOFError(f"{self._file.path} ended early at byte {first} of {self.size}")
            target[done : done + len(piece)] = piece
            done += len(piece)
        return done

    # The stream ------------------------------------------------------------

    def _skip_stream_to(self, position: int) -> None:
        gap = position - self._stream_position
        if gap <= 0:
            return
        if gap <= _SMALL:
            start, data = self._stream_position, bytearray(gap)
            self._fill_from_stream(memoryview(data))
            self._remember_small(start, bytes(data))
            return
        # Held in pieces, each freed once read: the array HDF5 then reads out
        # of the stretch grows as the stretch shrinks, instead of both being
        # whole at once. The pieces are anonymous maps, unmapped when dropped:
        # malloc would keep freed pieces of this size in its heap.
        for start in range(self._stream_position, position, _HOLD_PIECE):
            data = memoryview(mmap.mmap(-1, min(_HOLD_PIECE, position - start)))
            self._fill_from_stream(data)
            self._held[start] = data

    def _from_stream(self, target: memoryview) -> int:
        count = min(target.nbytes, self.size - self._stream_position)
        start = self._stream_position
        self._fill_from_stream(target[:count])
        if count <= _SMALL:
            self._remember_small(start, bytes(target[:count]))
        return count

    def _fill_from_stream(self, target: memoryview) -> None:
        done = 0
        failures = 0
        while done < target.nbytes:
            try:
                if self._stream is None:
                    self._stream = self._open_stream(self._stream_position)
                count = self._stream.readinto(target[done : done + _STREAM_PIECE])
                failures = 0  # a stream that moves on is healthy again
            except Exception as exc:  # a dropped connection: resume where it stopped
                self._close_stream()
                if "pre-condition" in str(exc):  # If-Match failed: not the object we started
                    raise FileChangedError(f"{self._file.path} was replaced while it was being read") from exc
                failures += 1
                if failures >= _STREAM_ATTEMPTS:
                    raise
                continue
            if not count:
                raise EOFError(
                    f"{self._file.path} ended early at byte {self._stream_position} of {self.size}"
                )
            done += count
            self._stream_position += count

    def _remember_small(self, start: int, data: bytes) -> None:
        previous = self._small.pop(start, None)
        if previous is not None:
            self._small_bytes -= len(previous)
        self._small[start] = data
        self._small_bytes += len(data)
        while self._small_bytes > _SMALL_CACHE_BYTES and len(self._small) > 1:
            _, dropped = self._small.popitem(last=False)
            self._small_bytes -= len(dropped)

    def _close_stream(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            try:
                stream.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass


_gc_pause_lock = threading.Lock()
_gc_pause_users = 0
_gc_was_enabled = False


@contextmanager
def _garbage_collection_paused() -> Iterator[None]:
    """No garbage collection while this thread waits on the network.

    h5py holds its global lock while it calls back into our reads. If another
    thread (the event loop's, one the server or a proxy starts) runs a
    collection meanwhile and frees an h5py object, that object's destructor
    waits for h5py's lock while holding the GIL: the event loop never runs
    again, and the read never finishes. Seen as a load frozen in the tests.

    The switch is process-wide, so pauses are counted: with two remote loads
    in threads (Kedro's ThreadRunner), the first to finish must not turn
    collection back on under the other; the last one restores what it found.
    """
    global _gc_pause_users, _gc_was_enabled
    with _gc_pause_lock:
        if _gc_pause_users == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pause_users += 1
    try:
        yield
    finally:
        with _gc_pause_lock:
            _gc_pause_users -= 1
            if _gc_pause_users == 0 and _gc_was_enabled:
                gc.enable()


def _stream_opener(file: Any) -> Callable[[int], Any] | None:
    """How to open one streaming GET from a byte onwards, if the filesystem has one."""
    fs = file.fs
    if not (callable(getattr(fs, "_call_s3", None)) and hasattr(file, "bucket") and hasattr(file, "key")):
        return None
    from fsspec.asyn import sync

    extra = dict(getattr(file, "read_kw", None) or {})
    if getattr(file, "version_id", None):
        extra["VersionId"] = file.version_id
    etag = (getattr(file, "details", None) or {}).get("ETag")
    if etag and not extra.get("VersionId"):
        # Every byte must come from the object we started reading.
        extra["IfMatch"] = etag

    def open_at(position: int) -> _S3Stream:
        response = sync(
            fs.loop,
            fs._call_s3,
            "get_object",
            Bucket=file.bucket,
            Key=file.key,
            Range=f"bytes={position}-",
            **extra,
        )
        return _S3Stream(fs.loop, response["Body"])

    return open_at


class _S3Stream:
    """The body of one GET, read synchronously from s3fs's event loop."""

    def __init__(self, loop: Any, body: Any) -> None:
        self._loop, self._body = loop, body

    def readinto(self, target: memoryview) -> int:
        from fsspec.asyn import sync

        return sync(self._loop, self._fill, target)

    async def _fill(self, target: memoryview) -> int:
        # The body hands out what the socket has (often 64 KiB): gather a
        # whole piece per trip to the event loop's thread.
        done = 0
        while done < target.nbytes:
            chunk = await self._body.read(target.nbytes - done)
            if not chunk:
                break
            target[done : done + len(chunk)] = chunk
            done += len(chunk)
        return done

    def close(self) -> None:
        from fsspec.asyn import sync

        sync(self._loop, self._close)

    async def _close(self) -> None:
        # aiohttp's objects belong to the event loop's thread.
        self._body.close()


# --------------------------------------------------------------------------
# Remote writes
# --------------------------------------------------------------------------

# Up to this size an object goes up in one PUT: all or nothing by itself, one
# request, and no orphaned parts (which stay billed) if the process dies
# mid-upload. Beyond it, a multipart upload's parallel parts win.
_SINGLE_PUT_LIMIT = 512 * 2**20
# Writes at least this large are kept by reference when the buffer is read-only.
_BY_REFERENCE = 2**20


class GatherBuffer(_SizedFile):
    """A seekable in-memory file that keeps large read-only writes by reference.

    Writing a model's archive copies its small parts (zip headers, config)
    and only references the weights' read-only buffer, so sending the file
    needs no second copy of the model in memory.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pieces: list[bytes | bytearray | memoryview] = []
        self._starts: list[int] = []
        self.size = 0
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self._position < self.size:
            self._overwrite(view)  # zipfile rewrites a member's local header
            return view.nbytes
        if self._position > self.size:
            self.write_zeros(self._position - self.size)
        if isinstance(data, bytes) or (view.readonly and view.nbytes >= _BY_REFERENCE):
            self._append(view)
        elif self._pieces and isinstance(self._pieces[-1], bytearray):
            self._pieces[-1] += view
            self.size += view.nbytes
        else:
            self._append(bytearray(view))
        self._position = self.size
        return view.nbytes

    def write_zeros(self, count: int) -> None:
        self._position = self.size
        self.write(bytearray(count))

    def _append(self, piece: Any) -> None:
        self._pieces.append(piece)
        self._starts.append(self.size)
        self.size += len(piece) if not isinstance(piece, memoryview) else piece.nbytes
        self._position = self.size

    def _overwrite(self, view: memoryview) -> None:
        end = self._position + view.nbytes
        if end > self.size:
            raise io.UnsupportedOperation("a rewrite may not extend the file")
        for index, start in enumerate(self._starts):
            piece = self._pieces[index]
            piece_end = start + (piece.nbytes if isinstance(piece, memoryview) else len(piece))
            if piece_end <= self._position or start >= end:
                continue
            if not isinstance(piece, bytearray):
                piece = self._pieces[index] = bytearray(piece)  # rare: small pieces only
            lo, hi = max(start, self._position), min(piece_end, end)
            piece[lo - start : hi - start] = view[lo - self._position : hi - self._position]
        self._position = end

    def pieces(self) -> Iterator[memoryview]:
        """The file's bytes, in order, without copying them."""
        for piece in self._pieces:
            yield memoryview(piece)

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        done = 0
        for index in range(self._piece_at(self._position), len(self._pieces)):
            if done == target.nbytes:
                break
            piece = memoryview(self._pieces[index])
            offset = self._position - self._starts[index]
            count = min(target.nbytes - done, piece.nbytes - offset)
            target[done : done + count] = piece[offset : offset + count]
            done += count
            self._position += count
        return done

    def _piece_at(self, position: int) -> int:
        import bisect

        return max(0, bisect.bisect_right(self._starts, position) - 1)


_PUT_ATTEMPTS = 3


async def _put_object(
    fs: Any, bucket: str, key: str, gathered: GatherBuffer, conditions: dict[str, str]
) -> None:
    """PutObject with the body rewound before every attempt.

    s3fs's own retry loop would call again with the body already read to its
    end; botocore's retries (inside one call) do rewind it.
    """
    import asyncio

    await fs.set_session()
    client = await fs.get_s3(bucket)
    kwargs = fs._get_s3_method_kwargs(
        client.put_object, Bucket=bucket, Key=key, Body=gathered, ContentLength=gathered.size, **conditions
    )
    for attempt in range(1, _PUT_ATTEMPTS + 1):
        gathered.seek(0)
        try:
            await client.put_object(**kwargs)
            return
        except Exception as exc:  # noqa: BLE001 - sorted below
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            transient = not code or code in {
                "SlowDown",
                "InternalError",
                "ServiceUnavailable",
                "RequestTimeout",
            }
            if attempt == _PUT_ATTEMPTS or not transient or code == "PreconditionFailed":
                raise
            await asyncio.sleep(0.2 * attempt)


def _single_put(fs: Any) -> Callable[[str, GatherBuffer, bool], None] | None:
    """One PutObject of a gathered file, if the filesystem is s3fs."""
    needed = ("_call_s3", "split_path", "set_session", "get_s3", "_get_s3_method_kwargs")
    if not all(callable(getattr(fs, name, None)) for name in needed):
        return None
    from fsspec.asyn import sync

    def put(path: str, gathered: GatherBuffer, exclusive: bool) -> None:
        bucket, key, _ = fs.split_path(path)
        conditions = {"IfNoneMatch": "*"} if exclusive else {}  # atomic where the store supports it
        try:
            sync(fs.loop, _put_object, fs, bucket, key, gathered, conditions)
        except Exception as exc:
            if exclusive and ("PreconditionFailed" in str(exc) or "pre-condition" in str(exc)):
                raise FileExistsError(path) from exc
            raise
        fs.invalidate_cache(path)

    return put


@contextmanager
def local_copy(suffix: str) -> Iterator[str]:
    """A path in a fresh temporary folder, removed afterwards: where the
    public-API fallbacks let Keras read or write a local file."""
    folder = tempfile.mkdtemp(prefix="kedro-keras-")
    try:
        yield os.path.join(folder, f"model{suffix}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
