"""Hand-made zip archives for the integrity tests: bombs, hostile member
names, lying headers. ``zipfile`` normalises or refuses some of these, so the
bytes are laid out here directly (local headers, data, central directory,
end record; no ZIP64, members under 4 GiB)."""

from __future__ import annotations

import functools
import struct
import zipfile
import zlib
from dataclasses import dataclass

STORED, DEFLATED = zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED


@dataclass
class Member:
    name: str
    payload: bytes  # as stored in the archive (compressed if method is DEFLATED)
    method: int = STORED
    size: int | None = None  # uncompressed size the headers declare
    crc: int | None = None

    @classmethod
    def plain(cls, name: str, data: bytes) -> Member:
        return cls(name, data, STORED, len(data), zlib.crc32(data))


def build_zip(members: list[Member]) -> bytes:
    out = bytearray()
    central = bytearray()
    for member in members:
        name = member.name.encode()
        size = len(member.payload) if member.size is None else member.size
        crc = zlib.crc32(member.payload) if member.crc is None else member.crc
        offset = len(out)
        out += struct.pack(
            "<4sHHHHHIIIHH",
            b"PK\x03\x04",
            20,
            0,
            member.method,
            0,
            0x21,
            crc,
            len(member.payload),
            size,
            len(name),
            0,
        )
        out += name + member.payload
        central += struct.pack(
            "<4sHHHHHHIIIHHHHHII",
            b"PK\x01\x02",
            20,
            20,
            0,
            member.method,
            0,
            0x21,
            crc,
            len(member.payload),
            size,
            len(name),
            0,
            0,
            0,
            0,
            0,
            offset,
        )
        central += name
    start = len(out)
    out += central
    out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), start, 0)
    return bytes(out)


@functools.lru_cache(maxsize=4)
def deflated_zeros(size: int) -> tuple[bytes, int]:
    """A raw deflate stream of ``size`` zero bytes, and their CRC-32 (cached:
    a 1.1 GB bomb takes a few seconds to make)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(16 * 2**20)
    parts, crc, left = [], 0, size
    while left:
        piece = chunk[: min(left, len(chunk))]
        parts.append(compressor.compress(piece))
        crc = zlib.crc32(piece, crc)
        left -= len(piece)
    parts.append(compressor.flush())
    return b"".join(parts), crc


def bomb(name: str, size: int) -> Member:
    payload, crc = deflated_zeros(size)
    return Member(name, payload, DEFLATED, size, crc)


def members_of(archive_bytes: bytes) -> list[Member]:
    """The members of a real archive, as stored (for rebuilding it with changes)."""
    import io

    result = []
    with zipfile.ZipFile(io.BytesIO(archive_bytes)) as archive:
        for info in archive.infolist():
            result.append(Member.plain(info.filename, archive.read(info)))
    return result


def member_span(archive_bytes: bytes, name: str) -> tuple[int, int]:
    """(offset, size) of a STORED member's data inside the archive bytes."""
    import io

    with zipfile.ZipFile(io.BytesIO(archive_bytes)) as archive:
        info = archive.getinfo(name)
    header = info.header_offset
    name_length, extra_length = struct.unpack("<HH", archive_bytes[header + 26 : header + 30])
    return header + 30 + name_length + extra_length, info.compress_size
