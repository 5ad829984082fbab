"""``KerasExportDataset``: a model exported for serving (TensorFlow
SavedModel, ONNX, LiteRT) on any fsspec filesystem, and the SavedModel
folders Keras 3 itself refuses to load."""

from __future__ import annotations

import hashlib
import json
import logging
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

from kedro_keras import _exported, _imports, _preview
from kedro_keras._files import Location
from kedro_keras._h5 import CHUNK
from kedro_keras._preview import TablePreview

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_EXPORT_FOLDER = re.compile(r"^export-[0-9a-f]{32}$")


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

    DEFAULT_LOAD_ARGS: dict[str, Any] = {"safe_mode": True}
    DEFAULT_EXPORT_ARGS: dict[str, Any] = {}

    def __init__(  # noqa: PLR0913
        self,
        *,
        filepath: str,
        format: str | None = None,  # noqa: A002 - model.export's own name
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
                ``serving_default``), ``providers`` (onnxruntime's).
            version: Set by Kedro for ``versioned: true`` entries.
            credentials: Passed to the fsspec filesystem.
            fs_args: Extra arguments for the fsspec filesystem.
            metadata: Anything you want to keep with the entry.

        Raises:
            DatasetError: an unknown format, or a suffix that contradicts it.
        """
        filepath = str(filepath)
        suffix = PurePosixPath(filepath).suffix.lower()
        inferred = next((name for name, end in _exported.FILE_SUFFIXES.items() if end == suffix), None)
        format = format or inferred or "tf_saved_model"  # noqa: A001
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
        unknown = set(self._load_args) - {"safe_mode", "endpoint", "providers"}
        if unknown:
            raise DatasetError(
                f"'{filepath}': load_args {sorted(unknown)} are not known; known: safe_mode, endpoint, providers."
            )
        try:
            _imports.check_safe_mode(self._load_args)
        except ValueError as exc:
            raise DatasetError(f"'{filepath}': load_args.safe_mode: {exc}.") from exc
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
        files = manifest.get("files") or {}
        return [
            ("files", f"{len(files)} in {manifest.get('export')}"),
            *_preview.size_row(sum(int(entry.get("size", 0)) for entry in files.values())),
            ("model", str(manifest.get("model", "?"))),
            (
                "exported with",
                f"Keras {manifest.get('keras_version', '?')}, {manifest.get('backend', '?')} backend",
            ),
            ("exported at", str(manifest.get("saved_at", "?"))),
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

        import kedro_keras

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
            "kedro_keras_version": kedro_keras.__version__,
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
        if self._is_folder:
            return self._load_saved_model(path, url)
        if self._location.kind(path) is None:
            raise DatasetError(f"No {self._format} export at '{url}': the file does not exist.")
        try:
            content = self._location.fs.cat_file(str(path))
            loaded = (
                _exported.OnnxModel(content, self._load_args.get("providers"))
                if self._format == "onnx"
                else _exported.LiteRTModel(content)
            )
        except Exception as exc:
            raise DatasetError(
                f"Cannot load the {self._format} export at '{url}': {_first_line(exc)}"
            ) from exc
        logger.info("Loaded the %s export at %s: %r", self._format, url, loaded)
        return loaded

    def _load_saved_model(self, folder: PurePosixPath, url: str) -> Any:
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
                local = self._fetch_manifest_files(folder, manifest, Path(scratch.name), url)
            else:
                local = self._fetch_foreign_folder(folder, Path(scratch.name), url)
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
            f" (exported with Keras {manifest['keras_version']} on {manifest['backend']})" if manifest else ""
        )
        logger.info("Loaded the SavedModel at %s, endpoint '%s'%s", url, model.endpoint, saved_with)
        return model

    def _read_manifest(self, folder: PurePosixPath, quiet: bool = False) -> dict[str, Any] | None:
        path = folder / MANIFEST
        try:
            with self._location.open_read(path) as file:
                manifest = json.loads(file.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            if quiet:
                return None
            raise DatasetError(f"Cannot read '{self._location.url(path)}': {exc}") from exc
        return manifest

    def _fetch_manifest_files(
        self, folder: PurePosixPath, manifest: dict[str, Any], into: Path, url: str
    ) -> Path:
        """Copy the committed export to local disk (TensorFlow reads local
        folders only), checking every file's size and SHA-256 on the way."""
        export = str(manifest.get("export", ""))
        files = manifest.get("files")
        if not _EXPORT_FOLDER.match(export) or not isinstance(files, dict):
            raise DatasetError(f"'{url}/{MANIFEST}' is not a manifest this package wrote.")
        for name in manifest.get("folders", []):
            (into / _safe_relative(name, url)).mkdir(parents=True, exist_ok=True)
        for name, expected in files.items():
            target = into / _safe_relative(name, url)
            target.parent.mkdir(parents=True, exist_ok=True)
            digest, size = hashlib.sha256(), 0
            try:
                with (
                    self._location.open_read(folder / export / name) as reading,
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
        return into

    def _fetch_foreign_folder(self, folder: PurePosixPath, into: Path, url: str) -> Path:
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
            return Path(str(folder))
        logger.info("'%s' has no manifest (not written by kedro-keras): copying it unchecked", url)
        for remote in self._location.fs.find(str(folder)):
            name = PurePosixPath(remote).relative_to(str(folder))
            target = into / _safe_relative(str(name), url)
            target.parent.mkdir(parents=True, exist_ok=True)
            with self._location.open_read(remote) as reading, open(target, "wb") as writing:
                shutil.copyfileobj(reading, writing, CHUNK)
        (into / "variables").mkdir(exist_ok=True)
        return into

    def _release(self) -> None:
        super()._release()
        self._location.invalidate_cache(self._filepath)


def _export(model: keras.Model, local: str, format: str, export_args: dict[str, Any]) -> None:  # noqa: A002
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


def _safe_relative(name: str, url: str) -> PurePosixPath:
    """A file name from a manifest or listing, refused if it would leave the folder."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise DatasetError(f"The export at '{url}' names '{name}', a path outside its folder: refused.")
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
