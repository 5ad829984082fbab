"""``KerasExportDataset``: a model exported for serving (TensorFlow
SavedModel, ONNX, LiteRT) on any fsspec filesystem, and the SavedModel
folders Keras 3 itself refuses to load."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from kedro.io.core import AbstractVersionedDataset, DatasetError, Version

from kedro_keras._dataset import exported as _exported
from kedro_keras._dataset import preview as _preview
from kedro_keras._dataset.preview import TablePreview
from kedro_keras._formats import imports as _imports
from kedro_keras._io.files import Location, checked_filepath
from kedro_keras._io.h5 import CHUNK
from kedro_keras._io.progress import transfer_text
from kedro_keras._log import get_logger, printable
from kedro_keras._version import __version__

if TYPE_CHECKING:
    import keras

logger = get_logger(__name__)

MANIFEST = "manifest.json"
_EXPORT_FOLDER = re.compile(r"^export-[0-9a-f]{32}$")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# A manifest lists a SavedModel's few files: a megabyte is thousands of them.
MAX_MANIFEST_BYTES = 2**20
# Manifest fields shown in previews and log lines (as data: escaped, bounded).
_MANIFEST_TEXT = ("export", "model", "keras_version", "backend", "saved_at")


class KerasExportDataset(AbstractVersionedDataset["keras.Model", Any]):
    """A Keras model exported for serving, saved and loaded through the catalog.

    ``save(model)`` runs ``model.export`` (TensorFlow SavedModel, ONNX or
    LiteRT) and publishes the artifact atomically: a ``.onnx`` or
    ``.tflite`` file like any file this package writes; a SavedModel folder
    uploaded under a fresh name and committed by a small ``manifest.json``
    (its files, sizes and SHA-256s, the format, Keras version and backend),
    so that a reader never sees half an export and an interrupted upload
    leaves the previous one loadable. ``load()`` gives something that
    predicts: a Keras model over the SavedModel (TensorFlow backend), or an
    ``OnnxModel`` / ``LiteRTModel`` with ``predict(x)``.

    An ONNX or LiteRT file is checked before its runtime reads it, since a
    file can make a runtime read other files or take the process down:
    tensor data kept in another file (ONNX external data, LiteRT external
    buffers) is refused, as every export this dataset writes is one file;
    any tensor the file declares over ``load_args.max_tensor_bytes``
    (default 1 GiB, more than a self-contained ONNX or LiteRT file can
    hold) is refused before anything is allocated; with ``safe_mode`` on,
    onnxruntime runs without graph optimizations (constant folding would
    compute, when the session is created, whatever a 600-byte file
    describes). LiteRT's interpreter trusts the file and crashes the
    process on some damaged ones, so a LiteRT file's structure is checked
    (every operator a builtin, every index in range, every required input
    present; custom and TensorFlow "Flex" operators are refused with
    ``safe_mode`` on), then, with ``safe_mode`` on, it is run once on zeros
    in a child process, where a crash refuses the file instead of ending
    this process; ``predict`` runs in this process.

    A SavedModel folder written by anyone else (Keras 2's ``model.save``, as
    kedro-datasets' ``TensorFlowModelDataset`` wrote it; ``tf.saved_model.save``;
    Keras 3's ``model.export``) loads too: see docs/migrating.md.

    Example usage for the
    [YAML API](https://docs.kedro.org/en/stable/catalog-data/data_catalog_yaml_examples/):

    ```yaml
    classifier_onnx:
      type: kedro_keras.KerasExportDataset
      filepath: s3://my-bucket/serving/classifier.onnx    # format from the suffix
      versioned: true

    classifier_serving:
      type: kedro_keras.KerasExportDataset
      filepath: data/06_models/classifier_saved_model     # a folder
      format: tf_saved_model
      load_args:
        safe_mode: false    # a SavedModel is a TensorFlow program: trusted folders only
    ```

    Example usage for the
    [Python API](https://docs.kedro.org/en/stable/catalog-data/advanced_data_catalog_usage/):

    ```pycon
    >>> import keras, numpy as np
    >>> from kedro_keras import KerasExportDataset
    >>>
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> dataset = KerasExportDataset(filepath=tmp_path / "model_saved", format="tf_saved_model",
    ...                              load_args={"safe_mode": False})
    >>> dataset.save(model)
    >>> served = dataset.load()
    >>> served.predict(np.ones((1, 3)), verbose=0).shape
    (1, 2)
    ```
    """

    DEFAULT_LOAD_ARGS: dict[str, Any] = {
        "safe_mode": True,
        "max_tensor_bytes": _exported.DEFAULT_MAX_TENSOR_BYTES,
    }
    DEFAULT_EXPORT_ARGS: dict[str, Any] = {}

    def __init__(
        self,
        *,
        filepath: str,
        format: str | None = None,  # model.export's own name
        export_args: dict[str, Any] | None = None,
        load_args: dict[str, Any] | None = None,
        version: Version | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Creates a new ``KerasExportDataset``.

        Args:
            filepath: Where the export goes: a ``.onnx`` or ``.tflite`` file, or
                a folder for a SavedModel (local or any fsspec URL).
            format: ``tf_saved_model``, ``onnx`` or ``litert``. Default: from
                the suffix (``.onnx``, ``.tflite``), else ``tf_saved_model``.
            export_args: Passed to ``model.export`` (``input_signature``,
                ``opset_version``, ...).
            load_args: ``safe_mode`` (default True: a SavedModel, which is a
                TensorFlow program, is refused; ONNX and LiteRT artifacts are
                run by their runtimes' fixed operators), ``endpoint`` (the
                SavedModel endpoint to call; default ``serve``, else
                ``serving_default``), ``providers`` (onnxruntime's),
                ``max_tensor_bytes`` (the largest tensor an ONNX or LiteRT
                file may declare; default 1 GiB).
            version: Set by Kedro for ``versioned: true`` entries.
            credentials: Passed to the fsspec filesystem.
            fs_args: Extra arguments for the fsspec filesystem.
            metadata: Anything you want to keep with the entry.

        Raises:
            DatasetError: an unknown format, or a suffix that contradicts it.
        """
        filepath = checked_filepath(filepath)
        suffix = PurePosixPath(filepath).suffix.lower()
        inferred = next((name for name, end in _exported.FILE_SUFFIXES.items() if end == suffix), None)
        format = format or inferred or "tf_saved_model"
        if format not in _exported.FORMATS:
            raise DatasetError(
                f"'{filepath}': format '{format}' is not one this dataset exports; "
                f"choose one of {', '.join(_exported.FORMATS)}."
            )
        wanted = _exported.FILE_SUFFIXES.get(format)
        if wanted and suffix != wanted:
            raise DatasetError(f"'{filepath}': a {format} export is one file whose name ends in '{wanted}'.")
        if format == "tf_saved_model" and suffix in (".keras", ".h5", ".onnx", ".tflite"):
            raise DatasetError(
                f"'{filepath}': a SavedModel is a folder; name it without '{suffix}' "
                "(e.g. data/06_models/classifier_saved_model)."
            )
        self._format = format
        self._export_args = {**self.DEFAULT_EXPORT_ARGS, **(export_args or {})}
        self._load_args = {**self.DEFAULT_LOAD_ARGS, **(load_args or {})}
        _imports.check_known_args(
            "load_args", self._load_args, {"safe_mode", "endpoint", "providers", "max_tensor_bytes"}, filepath
        )
        budget = self._load_args["max_tensor_bytes"]
        if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
            raise DatasetError(
                f"'{filepath}': load_args.max_tensor_bytes is {budget!r}; give a positive number of bytes "
                f"(default {_exported.DEFAULT_MAX_TENSOR_BYTES})."
            )
        try:
            _imports.check_safe_mode(self._load_args)
        except ValueError as exc:
            raise DatasetError(f"'{filepath}': load_args.{exc}.") from exc
        self._location = Location(filepath, credentials, fs_args, version)
        self.metadata = metadata
        super().__init__(
            filepath=self._location.path,
            version=version,
            exists_function=self._exists_path,
            glob_function=self._location.glob,
        )

    @property
    def _is_folder(self) -> bool:
        return self._format == "tf_saved_model"

    def _exists_path(self, path: str) -> bool:
        if self._is_folder:
            return self._location.exists(PurePosixPath(path) / MANIFEST) or self._location.exists(
                PurePosixPath(path) / "saved_model.pb"
            )
        return self._location.exists(path)

    def _exists(self) -> bool:
        try:
            path = self._get_load_path()
        except DatasetError:
            return False
        return self._exists_path(str(path))

    def _describe(self) -> dict[str, Any]:
        return {
            "filepath": self._location.url(self._filepath),
            "format": self._format,
            "export_args": self._export_args,
            "load_args": self._load_args,
            "version": self._version,
        }

    def preview(self) -> TablePreview:
        """The export for Kedro-Viz: format, size, and for a SavedModel what
        its manifest records (files, Keras version, backend, when)."""
        try:
            path = self._get_load_path()
        except DatasetError as exc:
            return _preview.table([("path", self._location.url(self._filepath)), ("stored", str(exc))])
        rows = [("path", self._location.url(path)), ("format", self._format)]
        return _preview.table(_preview.safely(rows, lambda: self._preview_rows(path)))

    def _preview_rows(self, path: PurePosixPath) -> list[_preview.Row]:
        if not self._is_folder:
            if self._location.kind(path) is None:
                return [("stored", "nothing saved yet")]
            return _preview.size_row(self._location.fs.info(str(path)).get("size"))
        manifest = self._read_manifest(path)
        if manifest is None:
            exists = self._location.exists(path / "saved_model.pb")
            return [
                (
                    "stored",
                    "a SavedModel folder not written by kedro-keras" if exists else "nothing saved yet",
                )
            ]
        files = manifest["files"]
        shown = {key: printable(str(manifest.get(key, "?")), 80) for key in _MANIFEST_TEXT}
        return [
            ("files", f"{len(files)} in {shown['export']}"),
            *_preview.size_row(sum(entry["size"] for entry in files.values())),
            ("model", shown["model"]),
            ("exported with", f"Keras {shown['keras_version']}, {shown['backend']} backend"),
            ("exported at", shown["saved_at"]),
        ]

    # -- save ----------------------------------------------------------------

    def save(self, data: keras.Model) -> None:
        import keras

        path = self._get_save_path()
        url = self._location.url(path)
        if not isinstance(data, keras.Model):
            raise DatasetError(f"Cannot export {type(data).__name__} to '{url}': expected a keras.Model.")
        backend = keras.backend.backend()
        problem = _exported.why_cannot_export(self._format, backend)
        if problem:
            raise DatasetError(f"Cannot export model '{data.name}' to '{url}': {problem}.")
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="kedro-keras-export-") as scratch:
            local = os.path.join(scratch, "model" + _exported.FILE_SUFFIXES.get(self._format, ""))
            try:
                # model.export writes local paths only; the artifact is then published from there.
                _export(data, local, self._format, self._export_args)
            except Exception as exc:
                raise DatasetError(
                    f"Could not export model '{data.name}' as {self._format} (backend {backend}) for "
                    f"'{url}': {_first_line(exc)}. Any export previously saved there is unchanged."
                ) from exc
            try:
                if self._is_folder:
                    self._publish_folder(Path(local), path, data, backend)
                else:
                    with self._location.atomic_write(path, exclusive=self._version is not None) as target:
                        with open(local, "rb") as source:
                            shutil.copyfileobj(source, target, CHUNK)
            except Exception as exc:
                raise DatasetError(
                    f"Could not publish the {self._format} export of '{data.name}' to '{url}': {exc}. "
                    "Any export previously saved there is unchanged."
                ) from exc
        self._location.invalidate_cache(path)
        logger.info(
            "Exported model '%s' as %s to %s in %.1f s",
            data.name,
            self._format,
            url,
            time.monotonic() - start,
        )

    def _publish_folder(self, local: Path, folder: PurePosixPath, model: keras.Model, backend: str) -> None:
        """Upload the files under a fresh name, then commit them with the
        manifest (one small atomic write), then remove the export it replaced."""
        import keras

        export = f"export-{uuid.uuid4().hex}"
        files: dict[str, dict[str, Any]] = {}
        for source in sorted(p for p in local.rglob("*") if p.is_file()):
            name = source.relative_to(local).as_posix()
            digest, size = hashlib.sha256(), 0
            with (
                open(source, "rb") as reading,
                self._location.atomic_write(folder / export / name) as writing,
            ):
                while chunk := reading.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    writing.write(chunk)
            files[name] = {"size": size, "sha256": digest.hexdigest()}
        previous = self._read_manifest(folder, quiet=True)
        manifest = {
            "format": self._format,
            "export": export,
            "files": files,
            "folders": sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_dir()),
            "model": model.name,
            "keras_version": keras.__version__,
            "backend": backend,
            "kedro_keras_version": __version__,
            "saved_at": datetime.now(tz=timezone.utc).isoformat(timespec="seconds"),
        }
        with self._location.atomic_write(folder / MANIFEST) as writing:
            writing.write(json.dumps(manifest, indent=2).encode())
        if previous and _EXPORT_FOLDER.match(str(previous.get("export", ""))):
            try:
                self._location.fs.rm(str(folder / previous["export"]), recursive=True)
            except Exception as exc:  # noqa: BLE001 - the new export is committed; leftovers are only space
                logger.warning("Could not remove the replaced export %s: %s", previous["export"], exc)

    # -- load ----------------------------------------------------------------

    def load(self) -> Any:
        import keras

        path = self._get_load_path()
        url = self._location.url(path)
        problem = _exported.why_cannot_load(self._format, keras.backend.backend())
        if problem:
            raise DatasetError(f"Cannot load the {self._format} export at '{url}': {problem}.")
        start = time.monotonic()
        if self._is_folder:
            return self._load_saved_model(path, url, start)
        kind = self._location.kind(path)
        if kind != "file":
            what = "does not exist" if kind is None else f"is a {kind}, not a file"
            raise DatasetError(f"No {self._format} export at '{url}': the path {what}.")
        safe_mode = self._load_args["safe_mode"] is not False
        budget = self._load_args["max_tensor_bytes"]
        try:
            content = self._location.fs.cat_file(str(path))
            loaded = (
                _exported.OnnxModel(
                    content, self._load_args.get("providers"), safe_mode=safe_mode, max_tensor_bytes=budget
                )
                if self._format == "onnx"
                else _exported.LiteRTModel(content, safe_mode=safe_mode, max_tensor_bytes=budget)
            )
        except _exported.RefusedArtifactError as exc:
            raise DatasetError(f"Refusing to load the {self._format} export at '{url}': {exc}.") from exc
        except Exception as exc:
            raise DatasetError(
                f"Cannot load the {self._format} export at '{url}': {_first_line(exc)}"
            ) from exc
        logger.info(
            "Loaded the %s export at %s, %s: %r",
            self._format,
            url,
            transfer_text(len(content), time.monotonic() - start),
            loaded,
        )
        return loaded

    def _load_saved_model(self, folder: PurePosixPath, url: str, start: float) -> Any:
        if self._load_args["safe_mode"] is not False:  # anything but a literal false is safe
            raise DatasetError(
                f"Refusing to load the SavedModel at '{url}' with safe_mode on: a SavedModel is a "
                "TensorFlow program whose graph can read and write files and more when it is loaded or "
                "called, which no check can vet. Load only folders you trust, with "
                "load_args: {safe_mode: false}."
            )
        manifest = self._read_manifest(folder)
        scratch = tempfile.TemporaryDirectory(prefix="kedro-keras-saved-model-")
        try:
            if manifest is not None:
                local, size = self._fetch_manifest_files(folder, manifest, Path(scratch.name), url)
            else:
                local, size = self._fetch_foreign_folder(folder, Path(scratch.name), url)
            model = _exported.saved_model_as_keras(str(local), self._load_args.get("endpoint"))
        except DatasetError:
            scratch.cleanup()
            raise
        except Exception as exc:
            scratch.cleanup()
            raise DatasetError(f"Cannot load the SavedModel at '{url}': {_first_line(exc)}") from exc
        # TensorFlow may read assets (vocabularies) later: the copy lives as long as the model.
        model._kedro_keras_files = scratch
        saved_with = (
            f" (exported with Keras {printable(str(manifest.get('keras_version', '?')), 40)} on "
            f"{printable(str(manifest.get('backend', '?')), 40)})"
            if manifest
            else ""
        )
        logger.info(
            "Loaded the SavedModel at %s, %s, endpoint '%s'%s",
            url,
            transfer_text(size, time.monotonic() - start),
            printable(str(model.endpoint), 80),
            saved_with,
        )
        return model

    def _read_manifest(self, folder: PurePosixPath, quiet: bool = False) -> dict[str, Any] | None:
        """The folder's manifest, checked to be one this package wrote (None if
        there is none; also if it is unreadable and ``quiet``)."""
        path = folder / MANIFEST
        url = self._location.url(path)
        try:
            if self._location.is_local:
                _check_regular_file(str(path), str(folder), url)
            with self._location.open_read(path) as file:
                text = file.read(MAX_MANIFEST_BYTES + 1)
            if len(text) > MAX_MANIFEST_BYTES:
                raise DatasetError(
                    f"Cannot read '{url}': it is over {MAX_MANIFEST_BYTES} bytes, more than any manifest "
                    "this package writes; it was not written by kedro-keras. Export the model again."
                )
            try:
                manifest = json.loads(text)
            except (ValueError, RecursionError) as exc:
                cause = "its JSON nests too deep" if isinstance(exc, RecursionError) else str(exc)
                raise DatasetError(
                    f"Cannot read '{url}': {printable(cause)}. Export the model again."
                ) from exc
            return _checked_manifest(manifest, url)
        except FileNotFoundError:
            return None
        except (OSError, DatasetError) as exc:
            if quiet:
                return None
            if isinstance(exc, DatasetError):
                raise
            raise DatasetError(f"Cannot read '{url}': {exc}") from exc

    def _fetch_manifest_files(
        self, folder: PurePosixPath, manifest: dict[str, Any], into: Path, url: str
    ) -> tuple[Path, int]:
        """Copy the committed export to local disk (TensorFlow reads local
        folders only), checking every file's size and SHA-256 on the way."""
        export, files = manifest["export"], manifest["files"]
        for name in manifest["folders"]:
            (into / _safe_relative(name, url)).mkdir(parents=True, exist_ok=True)
        total = 0
        for name, expected in files.items():
            target = into / _safe_relative(name, url)
            target.parent.mkdir(parents=True, exist_ok=True)
            source = folder / export / name
            if self._location.is_local:
                _check_regular_file(str(source), str(folder), url)
            digest, size = hashlib.sha256(), 0
            try:
                with (
                    self._location.open_read(source) as reading,
                    open(target, "wb") as writing,
                ):
                    while chunk := reading.read(CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                        writing.write(chunk)
            except FileNotFoundError as exc:
                raise DatasetError(
                    f"The SavedModel at '{url}' is incomplete: '{export}/{name}', listed in its manifest, "
                    "is missing."
                ) from exc
            if size != expected.get("size") or digest.hexdigest() != expected.get("sha256"):
                raise DatasetError(
                    f"The SavedModel at '{url}' is damaged: '{export}/{name}' has {size} bytes and SHA-256 "
                    f"{digest.hexdigest()[:12]}..., its manifest says {expected.get('size')} bytes and "
                    f"{str(expected.get('sha256'))[:12]}.... Export the model again."
                )
            total += size
        return into, total

    def _fetch_foreign_folder(self, folder: PurePosixPath, into: Path, url: str) -> tuple[Path, int]:
        """A SavedModel folder someone else wrote (no manifest): used in place
        on local disk, copied from anywhere else."""
        if not self._location.exists(folder / "saved_model.pb"):
            kind = self._location.kind(folder)
            what = (
                "does not exist"
                if kind is None
                else "is a file"
                if kind == "file"
                else "holds no saved_model.pb"
            )
            raise DatasetError(f"No SavedModel at '{url}': the path {what}.")
        if self._location.is_local:
            local = Path(str(folder))
            return local, sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
        logger.info("'%s' has no manifest (not written by kedro-keras): copying it unchecked", url)
        total = 0
        for remote in self._location.fs.find(str(folder)):
            name = PurePosixPath(remote).relative_to(str(folder))
            target = into / _safe_relative(str(name), url)
            target.parent.mkdir(parents=True, exist_ok=True)
            with self._location.open_read(remote) as reading, open(target, "wb") as writing:
                shutil.copyfileobj(reading, writing, CHUNK)
            total += target.stat().st_size
        (into / "variables").mkdir(exist_ok=True)
        return into, total

    def _release(self) -> None:
        super()._release()
        self._location.invalidate_cache(self._filepath)


def _export(model: keras.Model, local: str, format: str, export_args: dict[str, Any]) -> None:
    try:
        model.export(local, format=format, verbose=False, **export_args)
    except ValueError as exc:
        # Keras traces only models that have run once (a model fresh from a
        # file has not); one call on zeros of the input shapes is harmless.
        if "never called" not in str(exc) or not getattr(model, "inputs", None):
            raise
        _call_once_on_zeros(model)
        model.export(local, format=format, verbose=False, **export_args)


def _call_once_on_zeros(model: keras.Model) -> None:
    import keras
    import numpy as np

    def zeros(tensor: Any) -> Any:
        return np.zeros([1 if size is None else size for size in tensor.shape], dtype=tensor.dtype)

    model(keras.tree.map_structure(zeros, model.input), training=False)


def _checked_manifest(manifest: Any, url: str) -> dict[str, Any]:
    """``manifest`` if it has the shape this package writes, else a
    DatasetError (never a TypeError from a field of the wrong type)."""

    def refuse(cause: str) -> DatasetError:
        return DatasetError(
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
        if not isinstance(entry, dict):
            raise refuse(f"the entry of '{shown}' is not an object")
        size, sha256 = entry.get("size"), entry.get("sha256")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise refuse(f"the size of '{shown}' is not a number of bytes")
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise refuse(f"the SHA-256 of '{shown}' is not 64 hex digits")
    if not isinstance(folders, list) or not all(isinstance(name, str) for name in folders):
        raise refuse("'folders' is not a list of names")
    for name in folders:
        _safe_relative(name, url)
    for key in _MANIFEST_TEXT:
        if key in manifest and not isinstance(manifest[key], str):
            raise refuse(f"'{key}' is not text")
    return {**manifest, "folders": folders}


def _check_regular_file(path: str, folder: str, url: str) -> None:
    """A local file the manifest names must be a regular file inside the
    folder: a symbolic link would fetch a file from elsewhere, a FIFO would
    block the read forever."""
    import stat

    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return  # reported, as missing, when it is opened
    inside = os.path.realpath(path).startswith(os.path.realpath(folder) + os.sep)
    if not stat.S_ISREG(mode) or not inside:
        what = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file" if inside else "outside it"
        raise DatasetError(
            f"The SavedModel at '{url}' has '{printable(os.path.relpath(path, folder), 120)}', which is "
            f"{what}: refused, as a kedro-keras export holds regular files only. Export the model again."
        )


def _safe_relative(name: str, url: str) -> PurePosixPath:
    """A file name from a manifest or listing, refused if it would leave the folder."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise DatasetError(
            f"The export at '{url}' names '{printable(name, 120)}', a path outside its folder: refused."
        )
    return path


def _first_line(exc: BaseException) -> str:
    """A runtime's error, which may quote names from the file, as data."""
    text = str(exc).strip() or type(exc).__name__
    return printable(text.splitlines()[0], 500)
