"""A one-file export (ONNX, LiteRT) as ``KerasExportDataset`` keeps it: the
artifact, published in one step, and beside it ``<name>.manifest.json`` with
its size and SHA-256 (and what exported it), so that ``verify`` and every
load find a file cut short or with a flipped byte. Neither format records a
checksum of its own.

A save removes the old manifest first, then publishes the artifact, then
its manifest: a run killed in between leaves an artifact without a manifest
(unverifiable, not reported damaged), never a manifest that describes
another artifact.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from kedro_keras._io.files import Location
from kedro_keras._io.h5 import CHUNK, CorruptFileError
from kedro_keras._io.paths import NotARegularFileError, require_regular_file
from kedro_keras._log import printable
from kedro_keras._version import __version__

if TYPE_CHECKING:
    import keras

MANIFEST_SUFFIX = ".manifest.json"
# A manifest holds a digest and a few names: anything larger is not ours.
_MAX_MANIFEST_BYTES = 64 * 2**10
_TEXT_FIELDS = ("format", "model", "keras_version", "backend", "saved_at")


def manifest_path(path: PurePosixPath) -> PurePosixPath:
    return path.with_name(path.name + MANIFEST_SUFFIX)


def publish_file(
    location: Location, local: str, path: PurePosixPath, *, exclusive: bool, about: dict[str, str]
) -> None:
    """Publish the exported file at ``local`` as ``path``, then its manifest."""
    try:
        location.remove(manifest_path(path))
    except FileNotFoundError:
        pass
    digest, size = hashlib.sha256(), 0
    with location.atomic_write(path, exclusive=exclusive) as target, open(local, "rb") as source:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            target.write(chunk)
    manifest = {
        **about,
        "size": size,
        "sha256": digest.hexdigest(),
        "kedro_keras_version": __version__,
        "saved_at": datetime.now(tz=timezone.utc).isoformat(timespec="seconds"),
    }
    with location.atomic_write(manifest_path(path)) as file:
        file.write(json.dumps(manifest, indent=2).encode())


def about_export(model: keras.Model, format: str, backend: str) -> dict[str, str]:
    import keras

    return {"format": format, "model": model.name, "keras_version": keras.__version__, "backend": backend}


def read_file_manifest(location: Location, path: PurePosixPath) -> dict[str, Any] | None:
    """The manifest beside the export at ``path``, checked to be one this
    package writes; None if there is none. ``ValueError`` for one that is
    not ours (a file planted there)."""
    where = manifest_path(path)
    try:
        require_regular_file(location, where)
        with location.open_read(where) as file:
            raw = file.read(_MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        return None
    except NotARegularFileError as exc:
        raise ValueError(f"its manifest: {exc}") from exc
    if len(raw) > _MAX_MANIFEST_BYTES:
        raise ValueError(f"its manifest is over {_MAX_MANIFEST_BYTES} bytes: not one kedro-keras writes")
    try:
        manifest = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"its manifest is not JSON ({printable(str(exc), 120)})") from exc
    size, sha256 = (
        (manifest.get("size"), manifest.get("sha256")) if isinstance(manifest, dict) else (None, None)
    )
    if (
        isinstance(size, bool)
        or not isinstance(size, int)
        or size < 0
        or not isinstance(sha256, str)
        or len(sha256) != 64
        or any(c not in "0123456789abcdef" for c in sha256)
    ):
        raise ValueError("its manifest has no size and SHA-256 of the kind kedro-keras writes")
    return {
        **{key: printable(str(manifest.get(key, "?")), 80) for key in _TEXT_FIELDS},
        "size": size,
        "sha256": sha256,
    }


def check_content(content: bytes, manifest: dict[str, Any] | None) -> None:
    """``CorruptFileError`` if ``content`` is not what ``manifest`` recorded."""
    if manifest is None:
        return
    if len(content) != manifest["size"]:
        raise CorruptFileError(f"it holds {len(content)} bytes, its manifest says {manifest['size']}")
    if hashlib.sha256(content).hexdigest() != manifest["sha256"]:
        raise CorruptFileError("it does not match the SHA-256 its manifest records")


def verify_file(location: Location, path: PurePosixPath, manifest: dict[str, Any] | None) -> str:
    """What was checked of the export at ``path``, read front to back once."""
    if manifest is None:
        return (
            "no checksum is recorded beside it (exported before kedro-keras recorded one): nothing to check"
        )
    digest, size = hashlib.sha256(), 0
    with location.open_read(path) as file:
        while size <= manifest["size"] and (chunk := file.read(CHUNK)):
            digest.update(chunk)
            size += len(chunk)
    if size != manifest["size"]:
        has = f"more than {manifest['size']}" if size > manifest["size"] else f"only {size}"
        raise CorruptFileError(f"it has {has} bytes, its manifest says {manifest['size']}: it is damaged")
    if digest.hexdigest() != manifest["sha256"]:
        raise CorruptFileError("it does not match the SHA-256 its manifest records: it is damaged")
    return f"{size:,} bytes against their SHA-256"
