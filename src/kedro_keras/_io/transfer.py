"""How bytes move to and from an object store, whatever the store: the
options an entry sets (``TransferOptions``), how a large read or upload is
cut into parts, when one connection or one PUT is enough, and the sized
file both directions read through. Nothing here knows s3fs (``s3``) or
which file is moved (``remote``, ``upload``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass


@dataclass(frozen=True)
class TransferOptions:
    """How an entry moves bytes to and from an object store (its ``fs_args``)."""

    stall_seconds: float
    # Requests in flight at once for one large read or upload (1: one stream).
    concurrency: int = 8
    # Bytes per ranged GET or uploaded part; None: chosen from the size.
    part_size: int | None = None


# Bytes moved per read of a stream: a GET's body, or a spooled file's piece.
STREAM_PIECE = 8 * 2**20


# Parts of a multipart upload: S3 takes at most 10,000, each at least 5 MiB.
PART_SIZE = 64 * 2**20
_MIN_PART_SIZE = 8 * 2**20
_MAX_PARTS = 10_000


def part_size(size: int, concurrency: int, chosen: int | None = None) -> int:
    """Parts (uploaded, or ranges read) small enough that every connection
    has one, large enough that requests stay few: 8 to 64 MiB unless the
    entry chose (and never more than S3's 10,000 parts).

    Beyond one round of 64 MiB parts, the size is cut so that every
    connection takes the same number of parts: a 668 MB array in 64 MiB
    ranges was 8 parts and then 2.4, the second round on three connections,
    and took 1.6x the link's time; in 16 parts of 42 MB it takes two full
    rounds (make bench --big, "S3 link load" of the 4 GB model: now 1.15x
    the link's floor, docs/performance.md).
    """
    if chosen is None:
        per_connection = -(-size // max(1, concurrency))
        rounds = max(1, -(-per_connection // PART_SIZE))
        chosen = min(PART_SIZE, max(_MIN_PART_SIZE, -(-per_connection // rounds)))
    return max(chosen, -(-size // _MAX_PARTS), 5 * 2**20)


# Up to this size an object goes up in one PUT: all or nothing by itself,
# one request, and no orphaned parts (which stay billed) if the process dies
# mid-upload. Beyond it, a multipart upload's concurrent parts win: one
# connection carries a fraction of a real store's link. With concurrency 1
# (the default for a store on this host: moto copies the parts again on
# completion) there is nothing to win below 512 MiB; with fs_args.part_size,
# anything larger than one part goes in parts.
SINGLE_PUT_LIMIT = 64 * 2**20
SINGLE_PUT_LIMIT_ONE_CONNECTION = 512 * 2**20


class SizedFile(io.RawIOBase):
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
