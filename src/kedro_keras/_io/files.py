"""Files somewhere: the fsspec half of the I/O layer.

The datasets never care which filesystem a path lives on. Everything they
need from one (opening for reading, publishing a finished file in one step,
listing, removing) is here, so that the model formats (``_archive``,
``_legacy_h5``, ``_weights``, ``_sharded``) only ever see open file objects.
"""

from __future__ import annotations

import ctypes
import functools
import io
import os
import sys
import tempfile
import threading
import uuid
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import replace
from pathlib import PurePosixPath
from typing import IO, Any, Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractBufferedFile
from kedro.io.core import Version, get_protocol_and_path

from kedro_keras._io import progress as _progress
from kedro_keras._io.deadlines import bound_waits
from kedro_keras._io.fs_args import checked_part_size, positive_int, refuse_misspelt_fs_args, seconds
from kedro_keras._io.paths import refuse_special_file
from kedro_keras._io.progress import NO_PROGRESS, Transfer, _NoProgress
from kedro_keras._io.remote import FileChangedError, RemoteReader
from kedro_keras._io.s3 import bound_retries, endpoint_of, multipart_put, on_this_host, single_put
from kedro_keras._io.transfer import (
    SINGLE_PUT_LIMIT,
    SINGLE_PUT_LIMIT_ONE_CONNECTION,
    TransferOptions,
)
from kedro_keras._io.upload import GatherBuffer, SpooledUpload, Uploadable
from kedro_keras._log import SafeDatasetError

__all__ = ["FileChangedError", "GatherBuffer", "Location"]

# Object stores whose files upload on ``commit()`` and can be ``discard()``ed:
# writing to them with ``autocommit=False`` is all-or-nothing with no extra copy.
_DEFERRED_COMMIT_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "adl"}

# Bounded waits on S3, unless the entry says otherwise (fs_args or
# credentials' config_kwargs): botocore's defaults (60 s, and s3fs's retries
# on top) let a load of a server that never answers run for minutes.
_S3_CONFIG_DEFAULTS = {"connect_timeout": 10, "read_timeout": 30, "retries": {"max_attempts": 3}}
# A save whose model is larger than this (its weights and optimizer state)
# is written to a local temporary file and uploaded from it, instead of being
# gathered in memory: the memory a save may take beyond the model.
SPOOL_FROM = 256 * 10**6

# A transfer that moves no byte for this long is abandoned (fs_args.stall_timeout).
DEFAULT_STALL_SECONDS = 60.0

# Requests one large read or upload keeps in flight (fs_args.concurrency).
# One connection to an object store carries 85-90 MB/s by AWS's performance
# guidelines for S3; eight take most hosts' links, and stay under botocore's
# pool of ten. A store on this host (s3.on_this_host) gets 1 unless the
# entry says otherwise.
DEFAULT_CONCURRENCY = 8


def checked_filepath(filepath: Any) -> str:
    """A dataset's ``filepath`` as a string, once it names something: an
    empty value would become the current folder, and ``None`` a folder named
    'None', so both are refused when the catalog is built.

    Raises:
        DatasetError: naming what was given.
    """
    if not isinstance(filepath, (str, os.PathLike)) or not str(filepath).strip():
        raise SafeDatasetError(
            f"filepath must name a file or folder (a local path or an fsspec URL), got {filepath!r}"
        )
    return str(filepath)


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
        self.protocol, path = get_protocol_and_path(filepath, version)
        refuse_misspelt_fs_args(fs_args, self.protocol, filepath)
        self.open_args_load: dict[str, Any] = fs_args.pop("open_args_load", {})
        self.open_args_save: dict[str, Any] = fs_args.pop("open_args_save", {})
        credentials = deepcopy(credentials) or {}

        concurrency = fs_args.pop("concurrency", None)
        self.transfer = TransferOptions(
            stall_seconds=seconds(
                fs_args.pop("stall_timeout", DEFAULT_STALL_SECONDS), "stall_timeout", filepath
            ),
            concurrency=DEFAULT_CONCURRENCY
            if concurrency is None
            else positive_int(concurrency, "concurrency", filepath),
            part_size=checked_part_size(fs_args.pop("part_size", None), filepath),
        )
        self.shows_progress = _progress.wanted(fs_args.pop("progress", True))

        if self.protocol == "file":
            fs_args.setdefault("auto_mkdir", True)
        if self.protocol in ("s3", "s3a"):
            given = {**(credentials.get("config_kwargs") or {}), **(fs_args.get("config_kwargs") or {})}
            # Enough pooled connections for every request a transfer has in flight.
            pool = {"max_pool_connections": max(10, self.transfer.concurrency + 2)}
            fs_args["config_kwargs"] = {**_S3_CONFIG_DEFAULTS, **pool, **given}
            credentials.pop("config_kwargs", None)
        self.fs: fsspec.AbstractFileSystem = fsspec.filesystem(self.protocol, **credentials, **fs_args)
        if self.protocol in ("s3", "s3a"):
            bound_retries(self.fs)
            if concurrency is None and on_this_host(self.fs):
                self.transfer = replace(self.transfer, concurrency=1)
        self._bound_waits()
        if self.protocol == "memory":
            # Kedro reads "memory://a/b.keras" as "/b.keras" (the "a" taken
            # for a host), so two entries could share one file; fsspec's
            # memory filesystem itself means "/a/b.keras".
            path = self.fs._strip_protocol(filepath)
        self.path = PurePosixPath(path)

    def _bound_waits(self) -> None:
        endpoint = endpoint_of(self.fs) if self.protocol in ("s3", "s3a") else f"{self.protocol}://"
        bound_waits(self.fs, self.transfer.stall_seconds, endpoint)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # An unpickled filesystem (ParallelRunner's workers) is a new instance: bound it too.
        self.__dict__.update(state)
        self._bound_waits()

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
        if self.is_local:
            refuse_special_file(str(path))  # a FIFO would block this read too
        return self.fs.cat_file(str(path), start=0, end=size)

    def kind(self, path: str | PurePosixPath) -> str | None:
        """ "file", "directory", or None if nothing is at ``path`` (one request)."""
        try:
            return self.fs.info(str(path)).get("type")
        except FileNotFoundError:
            return None

    def missing_bucket(self, path: str | PurePosixPath) -> str | None:
        """On an object store, the bucket of ``path`` if it does not exist (asked
        only after a path was not found, to say which of the two is missing)."""
        if self.is_local or not str(path):
            return None
        bucket = str(path).split("/", 1)[0]
        try:
            self.fs.invalidate_cache(bucket)
            return None if self.fs.exists(bucket) else bucket
        except Exception:  # noqa: BLE001 - only a better message is at stake
            return None

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
            refuse_special_file(str(path))
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
            with (
                RemoteReader(file, self.transfer) as reader,
                self._progress("Loading", path, reader.size) as progress,
            ):
                reader.progress = progress
                yield reader

    @contextmanager
    def atomic_write(
        self, path: str | PurePosixPath, *, exclusive: bool = False, size_hint: int | None = None
    ) -> Iterator[IO[bytes]]:
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
            with self._deferred_commit_write(path, exclusive, size_hint) as file:
                yield file
        else:
            # A filesystem we cannot write to in one step: build the file in
            # memory and put it with a single call.
            buffer = io.BytesIO()
            yield buffer
            self._refuse_existing(path, exclusive)
            self.fs.pipe_file(path, buffer.getvalue())

    @contextmanager
    def _deferred_commit_write(
        self, path: str, exclusive: bool, size_hint: int | None
    ) -> Iterator[IO[bytes]]:
        if size_hint is not None and size_hint > SPOOL_FROM:
            # Too large to gather in memory: written to local disk (HDF5
            # writes there in place), then sent from it a part at a time.
            with tempfile.TemporaryFile(prefix="kedro-keras-") as local:
                yield local
                self._upload(path, SpooledUpload(local), exclusive)
            return
        # The file is gathered in memory, mostly as references to the
        # caller's buffers (the model's HDF5 image), and sent once complete.
        gathered = GatherBuffer()
        yield gathered
        self._upload(path, gathered, exclusive)

    def _upload(self, path: str, gathered: Uploadable, exclusive: bool) -> None:
        self._refuse_existing(path, exclusive)
        with self._progress("Saving", path, gathered.size) as progress:
            gathered.progress = progress
            limit = self.transfer.part_size or (
                SINGLE_PUT_LIMIT if self.transfer.concurrency > 1 else SINGLE_PUT_LIMIT_ONE_CONNECTION
            )
            put = (single_put if gathered.size <= limit else multipart_put)(self.fs)
            if put is not None and not self.open_args_save:
                put(path, gathered, exclusive, self.transfer)
                return
            file = self.fs.open(path, mode="wb", autocommit=False, **self.open_args_save)
            try:
                for piece in gathered.pieces():
                    file.write(piece)
                    progress.at(file.tell())
                file.close()
            except BaseException:
                file.discard()
                raise
            file.commit()

    def _progress(self, verb: str, path: str | PurePosixPath, size: int) -> Transfer | _NoProgress:
        if not self.shows_progress or self.is_local:
            return NO_PROGRESS
        return Transfer(verb, self.url(path), size)

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
    if os.path.isdir(path):  # said now, not as a failed rename of our temporary file
        raise IsADirectoryError(f"'{path}' is a folder; a model is saved as a file")
    temp_path = os.path.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
    try:
        # Readable too: HDF5 writes a model straight into it, and reads back.
        with open(temp_path, "w+b") as file:
            with _written_back_as_it_goes(file.fileno()):
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


# sync_file_range(2)'s flag that starts writing dirty pages out without
# waiting for them.
_SYNC_FILE_RANGE_WRITE = 2
_WRITEBACK_EVERY_S = 0.05


@functools.cache  # looked up once per process, not on every local save
def _sync_file_range() -> Any:
    """libc's sync_file_range, or None where there is none (not Linux):
    Python's os module does not offer it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return function


@contextmanager
def _written_back_as_it_goes(fd: int) -> Iterator[None]:
    """While a model is written, have the kernel start writing what is
    already written out to disk, so the fsync that publishes the model
    waits only for the last stretch (it was a fifth of a 400 MB save)."""
    start_writeback = _sync_file_range()
    if start_writeback is None:
        yield
        return
    done = threading.Event()

    def write_back() -> None:
        while not done.wait(_WRITEBACK_EVERY_S):
            start_writeback(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # a failure only means no head start

    thread = threading.Thread(target=write_back, name="kedro-keras-writeback", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()  # before the file (and its descriptor number) is closed
