"""One member of a zip (a ``.keras`` archive) at a time, with no copy of it
in memory: a stored member written from a buffer in chunks, a stored member
read in place through a CRC-checked ``Window``, and the members read whole
(config, metadata) bounded by what they declare.

Knows the zip format, not what a Keras archive holds: which members there
are and what is in them is ``archive``'s.
"""

from __future__ import annotations

import io
import struct
import threading
import time
import zipfile
from contextlib import contextmanager
from typing import IO, Any, Iterator

from zlib_ng.zlib_ng import crc32

from kedro_keras._io.h5 import CHUNK, Window

# Members we read whole (config, metadata) are JSON a few MB at most; a
# declared size beyond this is a zip bomb or not a Keras file.
MAX_JSON_MEMBER = 256 * 2**20


def write_stored_member(archive: zipfile.ZipFile, name: str, data: memoryview) -> None:
    """Add a STORED member from a buffer, in chunks, with no copy of it."""
    info = zipfile.ZipInfo(name, date_time=time.localtime(time.time())[:6])
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = data.nbytes  # lets zipfile choose ZIP64 for models over 4 GiB
    with _zipfile_checksums_by_zlib_ng(), archive.open(info, "w") as member:
        for start in range(0, data.nbytes, CHUNK):
            member.write(data[start : start + CHUNK])


_zipfile_crc32_lock = threading.Lock()


_zipfile_crc32_users = 0


_zipfile_crc32_original: Any = None


@contextmanager
def _zipfile_checksums_by_zlib_ng() -> Iterator[None]:
    """zipfile computes a member's CRC-32 with the ``zlib`` module's function
    (its module-level ``crc32``); zlib-ng's is the same function, 7x faster
    (0.1 s of a 400 MB save). Swapped in while weights are written: another
    zipfile user meanwhile gets the same values, only sooner."""
    global _zipfile_crc32_users, _zipfile_crc32_original
    if getattr(zipfile, "crc32", None) is None:  # a zipfile without that name: leave it be
        yield
        return
    with _zipfile_crc32_lock:
        if _zipfile_crc32_users == 0:
            _zipfile_crc32_original = zipfile.crc32
            zipfile.crc32 = crc32
        _zipfile_crc32_users += 1
    try:
        yield
    finally:
        with _zipfile_crc32_lock:
            _zipfile_crc32_users -= 1
            if _zipfile_crc32_users == 0:
                zipfile.crc32 = _zipfile_crc32_original


def read_small_member(archive: zipfile.ZipFile, name: str) -> bytes:
    size = archive.getinfo(name).file_size
    if size > MAX_JSON_MEMBER:
        raise ValueError(f"refusing to read '{name}': it declares {size} bytes, far more than a Keras config")
    return archive.read(name)


@contextmanager
def member_reader(archive: zipfile.ZipFile, file: IO[bytes], name: str) -> Iterator[io.BytesIO]:
    """A seekable reader over one member, without reading it into memory."""
    info = archive.getinfo(name)
    if info.compress_type == zipfile.ZIP_STORED:
        yield Window(file, _member_data_offset(file, info), info.file_size, expected_crc=info.CRC)
        return
    # Not written by Keras (it stores members uncompressed): inflate it.
    if info.file_size > 100 * max(info.compress_size, 1) and info.file_size > MAX_JSON_MEMBER:
        raise ValueError(
            f"refusing to inflate '{name}': {info.compress_size} bytes claim to hold {info.file_size}"
        )
    yield io.BytesIO(archive.read(info))


def _member_data_offset(file: IO[bytes], info: zipfile.ZipInfo) -> int:
    # The local header repeats the name and has its own extra field, whose
    # length can differ from the central directory's: read it from the file.
    file.seek(info.header_offset)
    header = file.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"bad local header for member '{info.filename}'")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_length + extra_length
