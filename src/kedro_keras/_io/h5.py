"""HDF5 images inside files: the part of the I/O layer that both Keras
formats share.

A ``.keras`` archive stores its weights as an uncompressed HDF5 member, and
``.h5``/``.weights.h5`` files are HDF5 images followed by our CRC-32
trailer. Either way HDF5 reads through a ``Window`` on the open (local or
remote) file, which checks the CRC-32 as HDF5 reads. Nothing here imports
Keras or knows where a file lives. The header walk and the checks on what
the headers declare are in ``h5_guards``; the arrays HDF5 reads into are
made in ``aligned_arrays``.
"""

from __future__ import annotations

import io
import os
import stat
import struct
from typing import IO, Any

from fsspec.spec import AbstractBufferedFile

# zlib's CRC-32, computed with SIMD: 7x faster than the zlib module here
# (30 GB/s against 4 GB/s), and a load checks every byte it reads.
from zlib_ng.zlib_ng import crc32

# _keras.stores.single_file reads each array through this name.

OPTIMIZER_GROUP = "optimizer"
# How an HDF5 file starts (Keras never writes a user block before it).
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

# Pieces in which a buffer is written out or re-read for its checksum:
# bounds the transient copy each makes.
CHUNK = 64 * 2**20


class CorruptFileError(ValueError):
    """The bytes read do not match the checksum the archive stores."""


# Reads beyond the checked frontier up to this size are kept until the
# frontier reaches them; HDF5 peeks at small headers ahead of the data.
_AHEAD_LIMIT = 2**20


class Window(io.BytesIO):
    """A read-only view of ``size`` bytes of ``file`` starting at ``offset``.

    Keras's HDF5 store accepts only paths and ``BytesIO``; subclassing
    ``BytesIO`` lets it read through this window instead, while HDF5 does its
    own seeks and ``readinto`` calls on the underlying (maybe remote) file.

    Given ``expected_crc`` (the zip's CRC-32 of the member), the window folds
    what HDF5 reads into a running CRC, in file order, and ``verify`` checks
    it: corruption is caught as Keras's own zip reader would catch it, without
    a second pass over the file. Only bytes HDF5 never asks for (free space,
    usually none) are read again.
    """

    def __init__(self, file: IO[bytes], offset: int, size: int, expected_crc: int | None = None) -> None:
        super().__init__()
        self._file, self._offset, self._size, self._position = file, offset, size, 0
        # Local files and remote.RemoteReader read straight into the caller's
        # buffer; fsspec's buffered files implement readinto as read-then-copy.
        self._direct = not isinstance(file, AbstractBufferedFile) and hasattr(file, "readinto")
        self.on_local_disk = _is_regular_file(file)
        self._expected_crc = expected_crc
        self._crc = 0
        self._checked = 0  # bytes [0, _checked) are folded into _crc
        self._ahead: dict[int, bytes] = {}
        self._sizes = (8, 8)  # HDF5's sizes of addresses and lengths, from the superblock

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._position

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + position)
        return self._position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        start = self._position
        done = self._read_at(start, view[: max(0, min(view.nbytes, self._size - start))])
        if start == 0 and done >= 16:
            self._sizes = _field_sizes(view[:done])
        if done >= 8 and view[:4] == _LOCAL_HEAP_SIGNATURE:
            check_local_heap(view[:done], start, self._sizes, self._size, self._read_at)
        self._position += done
        if self._expected_crc is not None:
            self._fold(start, view[:done])
        return done

    def _read_at(self, start: int, view: memoryview) -> int:
        wanted = view.nbytes
        self._file.seek(self._offset + start)
        done = 0
        while done < wanted:
            if self._direct:
                count = self._file.readinto(view[done:wanted])
            else:
                piece = self._file.read(wanted - done)
                count = len(piece)
                view[done : done + count] = piece
            if not count:
                break
            done += count
        return done

    def _fold(self, start: int, data: memoryview) -> None:
        end = start + data.nbytes
        if end <= self._checked:
            return
        if start > self._checked:
            if data.nbytes <= _AHEAD_LIMIT:
                self._ahead[start] = bytes(data)
                return
            self._fold_unread(start)
        self._crc = crc32(data[self._checked - start :], self._crc)
        self._checked = end
        self._fold_ahead()

    def _fold_ahead(self) -> None:
        for start in sorted(self._ahead):
            if start > self._checked:
                return
            data = self._ahead.pop(start)
            if start + len(data) > self._checked:
                self._crc = crc32(memoryview(data)[self._checked - start :], self._crc)
                self._checked = start + len(data)

    def _fold_unread(self, until: int) -> None:
        buffer = bytearray(min(CHUNK, max(0, until - self._checked)))
        while self._checked < until:
            view = memoryview(buffer)[: min(len(buffer), until - self._checked)]
            count = self._read_at(self._checked, view)
            if not count:
                raise CorruptFileError("the weights end early: the file is truncated")
            self._crc = crc32(view[:count], self._crc)
            self._checked += count
            self._fold_ahead()

    def verify(self) -> None:
        """Raise ``CorruptFileError`` unless the member matches its CRC-32."""
        if self._expected_crc is None:
            return
        self._fold_ahead()
        while self._ahead:
            self._fold_unread(min(self._ahead))
        self._fold_unread(self._size)
        if self._crc != self._expected_crc:
            raise CorruptFileError(
                f"the weights do not match their checksum (CRC-32 {self._crc:08x}, "
                f"expected {self._expected_crc:08x}): the file is corrupt"
            )

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self._size - self._position
        buffer = bytearray(max(0, min(size, self._size - self._position)))
        return bytes(memoryview(buffer)[: self.readinto(buffer)])

    def write(self, data: Any) -> int:
        raise io.UnsupportedOperation("read-only")

    def getvalue(self) -> bytes:
        raise io.UnsupportedOperation("a window is not held in memory")

    def getbuffer(self) -> memoryview:
        raise io.UnsupportedOperation("a window is not held in memory")


def verify(reader: io.BytesIO, cause: BaseException | None = None) -> None:
    if isinstance(reader, Window):
        try:
            reader.verify()
        except CorruptFileError as corrupt:
            raise corrupt from cause


# The .h5 and .weights.h5 files we write end with this trailer, past the end of
# the HDF5 image: HDF5 reads only up to the end address its superblock
# records, so Keras and h5py load the files unchanged. It holds a magic, the
# image's size and its CRC-32, which a load checks as it reads, as for the
# zip's CRC-32 of a .keras archive's weights.
_H5_TRAILER = struct.Struct("<16sQI4x")


_H5_TRAILER_MAGIC = b"kedro-keras:crc\x00"


def write_h5_image(file: IO[bytes], image: memoryview) -> None:
    for start in range(0, image.nbytes, CHUNK):
        file.write(image[start : start + CHUNK])
    file.write(_H5_TRAILER.pack(_H5_TRAILER_MAGIC, image.nbytes, crc32(image)))


# A symbol-table group keeps its member names in a local heap, whose free
# blocks form a linked list. HDF5 1.14 follows that list without checking for
# a loop, allocating as it goes: one damaged offset and a load takes all of
# the machine's memory (found by tests/test_reliability_fuzz.py). So each
# heap HDF5 reads is checked here first.
_LOCAL_HEAP_SIGNATURE = b"HEAP"
_FREE_LIST_END = 1  # HDF5's H5HL_FREE_NULL


def _field_sizes(superblock: memoryview) -> tuple[int, int]:
    """(size of addresses, size of lengths) from an HDF5 superblock."""
    version = superblock[8]
    offsets, lengths = (superblock[13], superblock[14]) if version < 2 else (superblock[9], superblock[10])
    return (offsets, lengths) if offsets in (2, 4, 8) and lengths in (2, 4, 8) else (8, 8)


def check_local_heap(
    prefix: memoryview, at: int, sizes: tuple[int, int], file_size: int, read_at: Any
) -> None:
    """Raise ``CorruptFileError`` unless the local heap at ``at`` (its
    prefix and maybe its data in ``prefix``) has a free list HDF5 can walk:
    inside the heap, without loops."""
    offsets, lengths = sizes
    need = 8 + 2 * lengths + offsets
    if prefix.nbytes < need or prefix[4] != 0:
        return  # a version we do not know, or not all of it in this read: left to HDF5
    data_size = int.from_bytes(prefix[8 : 8 + lengths], "little")
    free = int.from_bytes(prefix[8 + lengths : 8 + 2 * lengths], "little")
    address = int.from_bytes(prefix[8 + 2 * lengths : need], "little")
    if free == _FREE_LIST_END:
        return
    if data_size > file_size or address + data_size > file_size:
        raise CorruptFileError(f"a group's name heap at {at} claims {data_size} bytes: a header is damaged")
    if address == at + need and prefix.nbytes >= need + data_size:
        data = prefix[need : need + data_size]
    else:
        data = memoryview(bytearray(data_size))
        read_at(address, data)
    seen: set[int] = set()
    while free != _FREE_LIST_END:
        if free in seen or free + 2 * lengths > data_size:
            raise CorruptFileError(f"the free list of a group's name heap at {at} is damaged")
        seen.add(free)
        free = int.from_bytes(data[free : free + lengths], "little")


def writes_in_place(file: IO[bytes]) -> bool:
    """Whether HDF5 may write straight into ``file`` (a local file open for
    reading and writing), instead of into an image in memory first: the
    arrays then go to disk one at a time (a large one a slice at a time,
    ``_keras.stores.arrays._slices_to_write``), so a save's memory does not grow
    with the model."""
    return isinstance(file, io.BufferedRandom)


class FileRegion(io.BytesIO):
    """The part of ``file`` from ``start`` on, as a file of its own, for
    h5py to write an HDF5 image into in place.

    A ``BytesIO`` subclass only because Keras's ``H5IOStore`` accepts no
    other file object; every method h5py uses goes to ``file``, none to
    the ``BytesIO`` buffer. ``size`` is the image's size so far.
    """

    def __init__(self, file: IO[bytes], start: int) -> None:
        super().__init__()
        self._file, self._start = file, start
        self._position = 0
        self.size = 0

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}[whence]
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._file.seek(self._start + self._position)
        self._file.write(view)
        self._position += view.nbytes
        self.size = max(self.size, self._position)
        return view.nbytes

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")[: max(0, self.size - self._position)]
        self._file.seek(self._start + self._position)
        count = self._file.readinto(view) or 0
        self._position += count
        return count

    def read(self, size: int | None = -1) -> bytes:
        wanted = self.size - self._position if size is None or size < 0 else size
        buffer = bytearray(max(0, min(wanted, self.size - self._position)))
        return bytes(buffer[: self.readinto(buffer)])

    def truncate(self, size: int | None = None) -> int:
        size = self._position if size is None else size
        self._file.truncate(self._start + size)
        self.size = size
        return size

    def flush(self) -> None:
        self._file.flush()

    def getvalue(self) -> bytes:  # pragma: no cover - only an in-memory image has one
        raise io.UnsupportedOperation("the image is in the file, not in memory")


def bounded(file: IO[bytes]) -> IO[bytes]:
    """``file`` as h5py should read it: through a ``Window``, which checks
    each group-name heap HDF5 reads before HDF5 walks it."""
    if isinstance(file, Window):
        return file
    size = file.seek(0, io.SEEK_END)
    file.seek(0)
    return Window(file, 0, size)


def region_crc32(file: IO[bytes], start: int, size: int) -> int:
    """The CRC-32 of ``size`` bytes of ``file`` from ``start``, read back a
    piece at a time (from the page cache: they were just written)."""
    buffer = bytearray(min(CHUNK, size))
    crc, done = 0, 0
    file.seek(start)
    while done < size:
        view = memoryview(buffer)[: min(len(buffer), size - done)]
        count = file.readinto(view)
        if not count:
            raise OSError(f"the file ended {size - done} bytes before the HDF5 image did")
        crc = crc32(view[:count], crc)
        done += count
    return crc


def finish_h5_in_place(file: IO[bytes], start: int, size: int) -> None:
    """Append the trailer of an HDF5 image HDF5 wrote into ``file`` itself."""
    crc = region_crc32(file, start, size)
    file.seek(start + size)
    file.truncate()
    file.write(_H5_TRAILER.pack(_H5_TRAILER_MAGIC, size, crc))


def _is_regular_file(file: IO[bytes]) -> bool:
    try:
        return stat.S_ISREG(os.fstat(file.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):  # remote readers have no descriptor
        return False


def h5_window(file: IO[bytes]) -> Window:
    """A window on the HDF5 image in ``file`` that checks its CRC-32 while
    HDF5 reads, if the file has our trailer (files from elsewhere do not)."""
    size = file.seek(0, io.SEEK_END)
    if size > _H5_TRAILER.size:
        file.seek(size - _H5_TRAILER.size)
        magic, image_size, crc = _H5_TRAILER.unpack(file.read(_H5_TRAILER.size))
        if magic == _H5_TRAILER_MAGIC and image_size == size - _H5_TRAILER.size:
            return Window(file, 0, image_size, expected_crc=crc)
    return Window(file, 0, size)


def without_optimizer_group(h5_bytes: bytes) -> bytes:
    import h5py

    source_buffer, target_buffer = io.BytesIO(h5_bytes), io.BytesIO()
    with h5py.File(source_buffer, "r") as source, h5py.File(target_buffer, "w") as target:
        for key, value in source.attrs.items():
            target.attrs[key] = value
        for name in source:
            if name != OPTIMIZER_GROUP:
                source.copy(source[name], target, name=name)
    return target_buffer.getvalue()


class ShardReadError(Exception):
    """Reading one shard of sharded weights failed: ``shard`` names it, ``error`` says why."""

    def __init__(self, shard: str, error: BaseException) -> None:
        super().__init__(f"shard '{shard}': {error}")
        self.shard = shard
        self.error = error
