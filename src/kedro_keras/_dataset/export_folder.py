"""A SavedModel or OpenVINO IR folder as ``KerasExportDataset`` keeps it: the files uploaded
under a fresh ``export-<hex>`` name, then committed by a small manifest
(their sizes and SHA-256s) in one atomic write; read back by checking the
manifest and every file against it. And folders someone else wrote (no
manifest), fetched as they are. Functions of the dataset's ``Location``.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from kedro.io.core import DatasetError

from kedro_keras._dataset import preview as _preview
from kedro_keras._dataset.export_file import checked_signature, signature_of, signature_rows
from kedro_keras._io.digests import copy_hashing, file_entry_problem
from kedro_keras._io.files import Location
from kedro_keras._io.h5 import CHUNK
from kedro_keras._io.paths import NotARegularFileError, inside_folder, require_regular_file
from kedro_keras._log import SafeDatasetError, as_data, get_logger, printable
from kedro_keras._version import __version__

if TYPE_CHECKING:
    import keras

logger = get_logger(__name__)

MANIFEST = "manifest.json"
_EXPORT_FOLDER = re.compile(r"^export-[0-9a-f]{32}$")
# A manifest lists a SavedModel's few files: a megabyte is thousands of them.
MAX_MANIFEST_BYTES = 2**20
# Manifest fields shown in previews and log lines (as data: escaped, bounded).
MANIFEST_TEXT = ("export", "model", "keras_version", "backend", "saved_at")


def publish_folder(
    location: Location,
    local: Path,
    folder: PurePosixPath,
    format: str,
    model: keras.Model,
    backend: str,
    signature_from: str | None = None,
) -> None:
    """Upload the files under a fresh name, then commit them with the
    manifest (one small atomic write), then remove the export it replaced.
    The inputs and outputs are read from ``signature_from`` (a file of the
    export), else they are the model's (a SavedModel serves the model's own)."""
    import keras

    export = f"export-{uuid.uuid4().hex}"
    files: dict[str, dict[str, Any]] = {}
    for source in sorted(p for p in local.rglob("*") if p.is_file()):
        name = source.relative_to(local).as_posix()
        with (
            open(source, "rb") as reading,
            location.atomic_write(folder / export / name) as writing,
        ):
            sha256, size = copy_hashing(reading, writing)
        files[name] = {"size": size, "sha256": sha256}
    previous = read_manifest(location, folder, quiet=True)
    manifest = {
        "format": format,
        "export": export,
        "files": files,
        "folders": sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_dir()),
        "model": model.name,
        "keras_version": keras.__version__,
        "backend": backend,
        **signature_of(model, format, signature_from),
        "kedro_keras_version": __version__,
        "saved_at": datetime.now(tz=timezone.utc).isoformat(timespec="seconds"),
    }
    with location.atomic_write(folder / MANIFEST) as writing:
        writing.write(json.dumps(manifest, indent=2).encode())
    if previous and _EXPORT_FOLDER.match(str(previous.get("export", ""))):
        try:
            location.fs.rm(str(folder / previous["export"]), recursive=True)
        except Exception as exc:  # noqa: BLE001 - the new export is committed; leftovers are only space
            logger.warning("Could not remove the replaced export %s: %s", previous["export"], exc)


def read_manifest(location: Location, folder: PurePosixPath, quiet: bool = False) -> dict[str, Any] | None:
    """The folder's manifest, checked to be one this package wrote (None if
    there is none; also if it is unreadable and ``quiet``)."""
    path = folder / MANIFEST
    url = location.url(path)
    try:
        _check_regular_file(location, path, folder, url)
        with location.open_read(path) as file:
            text = file.read(MAX_MANIFEST_BYTES + 1)
        if len(text) > MAX_MANIFEST_BYTES:
            raise SafeDatasetError(
                f"Cannot read '{url}': it is over {MAX_MANIFEST_BYTES} bytes, more than any manifest "
                "this package writes; it was not written by kedro-keras. Export the model again."
            )
        try:
            manifest = json.loads(text)
        except (ValueError, RecursionError) as exc:
            cause = "its JSON nests too deep" if isinstance(exc, RecursionError) else str(exc)
            raise SafeDatasetError(
                f"Cannot read '{url}': {printable(cause)}. Export the model again."
            ) from as_data(exc)
        return _checked_manifest(manifest, url)
    except FileNotFoundError:
        return None
    except (OSError, DatasetError) as exc:
        if quiet:
            return None
        if isinstance(exc, DatasetError):
            raise
        raise SafeDatasetError(f"Cannot read '{url}': {exc}") from as_data(exc)


def fetch_manifest_files(
    location: Location,
    folder: PurePosixPath,
    manifest: dict[str, Any],
    into: Path,
    url: str,
    kind: str = "SavedModel",
) -> tuple[Path, int]:
    """Copy the committed export to local disk (TensorFlow reads local
    folders only), checking every file's size and SHA-256 on the way.
    ``kind`` names the export in messages."""
    export, files = manifest["export"], manifest["files"]
    for name in manifest["folders"]:
        (into / _safe_relative(name, url)).mkdir(parents=True, exist_ok=True)
    total = 0
    for name, expected in files.items():
        target = into / _safe_relative(name, url)
        target.parent.mkdir(parents=True, exist_ok=True)
        source = folder / export / name
        _check_regular_file(location, source, folder, url, kind)
        try:
            with (
                location.open_read(source) as reading,
                open(target, "wb") as writing,
            ):
                sha256, size = copy_hashing(reading, writing)
        except FileNotFoundError as exc:
            raise SafeDatasetError(
                f"The {kind} at '{url}' is incomplete: '{export}/{name}', listed in its manifest, is missing."
            ) from as_data(exc)
        if size != expected.get("size") or sha256 != expected.get("sha256"):
            raise SafeDatasetError(
                f"The {kind} at '{url}' is damaged: '{export}/{name}' has {size} bytes and SHA-256 "
                f"{sha256[:12]}..., its manifest says {expected.get('size')} bytes and "
                f"{str(expected.get('sha256'))[:12]}.... Export the model again."
            )
        total += size
    return into, total


def fetch_foreign_folder(location: Location, folder: PurePosixPath, into: Path, url: str) -> tuple[Path, int]:
    """A SavedModel folder someone else wrote (no manifest): used in place
    on local disk, copied from anywhere else."""
    if not location.exists(folder / "saved_model.pb"):
        kind = location.kind(folder)
        what = (
            "does not exist" if kind is None else "is a file" if kind == "file" else "holds no saved_model.pb"
        )
        raise SafeDatasetError(f"No SavedModel at '{url}': the path {what}.")
    if location.is_local:
        local = Path(str(folder))
        return local, sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
    logger.info("'%s' has no manifest (not written by kedro-keras): copying it unchecked", url)
    total = 0
    for remote in location.fs.find(str(folder)):
        name = PurePosixPath(remote).relative_to(str(folder))
        target = into / _safe_relative(str(name), url)
        target.parent.mkdir(parents=True, exist_ok=True)
        with location.open_read(remote) as reading, open(target, "wb") as writing:
            shutil.copyfileobj(reading, writing, CHUNK)
        total += target.stat().st_size
    (into / "variables").mkdir(exist_ok=True)
    return into, total


def _checked_manifest(manifest: Any, url: str) -> dict[str, Any]:
    """``manifest`` if it has the shape this package writes, else a
    DatasetError (never a TypeError from a field of the wrong type)."""

    def refuse(cause: str) -> DatasetError:
        return SafeDatasetError(
            f"'{url}' is not a manifest this package wrote: {cause}. Export the model again, or delete "
            "the manifest to load the folder as a SavedModel written elsewhere."
        )

    if not isinstance(manifest, dict):
        raise refuse(f"it holds a JSON {type(manifest).__name__}, not an object")
    export, files, folders = manifest.get("export"), manifest.get("files"), manifest.get("folders", [])
    if not isinstance(export, str) or not _EXPORT_FOLDER.fullmatch(export):
        raise refuse(f"'export' is {printable(repr(export), 80)}, not an export-<32 hex digits> folder")
    if not isinstance(files, dict):
        raise refuse("'files' is not an object")
    for name, entry in files.items():
        shown = printable(name, 120)
        _safe_relative(name, url)
        problem = file_entry_problem(entry, shown)
        if problem:
            raise refuse(problem)
    if not isinstance(folders, list) or not all(isinstance(name, str) for name in folders):
        raise refuse("'folders' is not a list of names")
    for name in folders:
        _safe_relative(name, url)
    for key in MANIFEST_TEXT:
        if key in manifest and not isinstance(manifest[key], str):
            raise refuse(f"'{key}' is not text")
    return {**manifest, "folders": folders}


def _check_regular_file(
    location: Location, path: PurePosixPath, folder: PurePosixPath, url: str, kind: str = "SavedModel"
) -> None:
    """A file the manifest names must be a regular file inside the folder: a
    symbolic link would fetch a file from elsewhere, a FIFO would block the
    read forever. A missing one is reported, as missing, when it is opened.
    Object stores hold only files: nothing to ask them."""
    if not location.is_local:
        return
    try:
        require_regular_file(location, path, within=folder)
    except FileNotFoundError:
        return
    except NotARegularFileError as exc:
        raise SafeDatasetError(
            f"The {kind} at '{url}' has '{path.relative_to(folder)}', which {exc.what}: refused, "
            "as a kedro-keras export holds regular files only. Export the model again."
        ) from as_data(exc)


def _safe_relative(name: str, url: str) -> PurePosixPath:
    """A file name from a manifest or listing, refused if it would leave the folder."""
    try:
        return inside_folder(name)
    except ValueError as exc:
        raise SafeDatasetError(
            f"The export at '{url}' names '{printable(str(name), 120)}', a path outside its folder: refused."
        ) from as_data(exc)


def preview_rows(location: Location, folder: PurePosixPath) -> list[tuple[str, str]]:
    """What a preview says of the SavedModel folder: its files, size, and
    what its manifest records (what exported it, when, its inputs and outputs)."""
    manifest = read_manifest(location, folder)
    if manifest is None:
        exists = location.exists(folder / "saved_model.pb")
        return [
            ("stored", "a SavedModel folder not written by kedro-keras" if exists else "nothing saved yet")
        ]
    files = manifest["files"]
    shown = {key: printable(str(manifest.get(key, "?")), 80) for key in MANIFEST_TEXT}
    return [
        ("files", f"{len(files)} in {shown['export']}"),
        *_preview.size_row(sum(entry["size"] for entry in files.values())),
        ("model", shown["model"]),
        ("exported with", f"Keras {shown['keras_version']}, {shown['backend']} backend"),
        ("exported at", shown["saved_at"]),
        *signature_rows(checked_signature(manifest)),
    ]
