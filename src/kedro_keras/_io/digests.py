"""SHA-256 while copying or reading: the one loop behind every checksum a
manifest or index records and every check of one."""

from __future__ import annotations

import hashlib
import re
from typing import IO, Any

from kedro_keras._io.h5 import CHUNK

_SHA256 = re.compile(r"[0-9a-f]{64}")


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


def file_entry_problem(entry: Any, shown: str) -> str | None:
    """Why ``entry``, a manifest's or index's record of the file ``shown``,
    is not the ``{"size": bytes, "sha256": hex}`` this package writes (None: it is)."""
    if not isinstance(entry, dict):
        return f"the entry of '{shown}' is not an object"
    size, sha256 = entry.get("size"), entry.get("sha256")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        return f"the size of '{shown}' is not a number of bytes"
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        return f"the SHA-256 of '{shown}' is not 64 hex digits"
    return None
