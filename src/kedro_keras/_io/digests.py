"""SHA-256 while copying or reading: the one loop behind every checksum a
manifest or index records and every check of one."""

from __future__ import annotations

import hashlib
from typing import IO

from kedro_keras._io.h5 import CHUNK


def copy_hashing(
    reading: IO[bytes], writing: IO[bytes] | None = None, limit: int | None = None
) -> tuple[str, int]:
    """Read ``reading`` to its end (or to one byte past ``limit``, which
    tells a longer file from an intact one), writing each chunk to
    ``writing`` if given; returns the SHA-256 (hex) and the bytes read."""
    digest, size = hashlib.sha256(), 0
    while limit is None or size <= limit:
        wanted = CHUNK if limit is None else min(CHUNK, limit + 1 - size)
        chunk = reading.read(wanted)
        if not chunk:
            break
        digest.update(chunk)
        size += len(chunk)
        if writing is not None:
            writing.write(chunk)
    return digest.hexdigest(), size
