"""``KerasExportDataset``: a model exported for serving (TensorFlow
SavedModel, ONNX, LiteRT, OpenVINO IR, PyTorch ``.pt2``) on any fsspec
filesystem, and the SavedModel folders Keras 3 itself refuses to load."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from kedro.io.core import AbstractVersionedDataset, DatasetError, Version

from kedro_keras._dataset import export_file as _export_file
from kedro_keras._dataset import export_folder as _export_folder
from kedro_keras._dataset import exported as _exported
from kedro_keras._dataset import one_writer as _one_writer
from kedro_keras._dataset import preview as _preview
from kedro_keras._dataset import verify as _verify
from kedro_keras._dataset.base import KerasFileDataset
from kedro_keras._dataset.export_file import (
    about_export,
    check_content,
    publish_file,
    read_file_manifest,
)
from kedro_keras._dataset.export_folder import (
    MANIFEST,
    fetch_foreign_folder,
    fetch_manifest_files,
    publish_folder,
    read_manifest,
)
from kedro_keras._dataset.export_run import export_model, first_line
from kedro_keras._dataset.failures import corrupt
from kedro_keras._dataset.preview import TablePreview
from kedro_keras._formats import imports as _imports
from kedro_keras._formats.artifact import DEFAULT_MAX_TENSOR_BYTES, RefusedArtifactError
from kedro_keras._io.files import checked_filepath
from kedro_keras._io.h5 import CorruptFileError
from kedro_keras._io.progress import transfer_text
from kedro_keras._log import SafeDatasetError, as_data, get_logger, printable

if TYPE_CHECKING:
    import keras

logger = get_logger(__name__)

# An ONNX file is one protobuf and a LiteRT file one flatbuffer: neither holds over 2 GiB.
_MAX_ARTIFACT_BYTES = 2**31
# A .pt2 archive stores each weight as its own member (a zip64 archive past 4 GiB); it is read whole.
_MAX_PT2_BYTES = 2**34
# Suffixes of one-file formats and of Keras files: a folder export is not named so.
_FILE_LIKE = (".keras", ".h5", ".onnx", ".tflite", ".pt2", ".xml")


@contextmanager
def _load_errors(format: str, url: str) -> Iterator[None]:
    """A failed load as one DatasetError: a refused or damaged artifact named
    so, anything else as the runtime's first line (its text escaped)."""
    try:
        yield
    except RefusedArtifactError as exc:
        raise SafeDatasetError(f"Refusing to load the {format} export at '{url}': {exc}.") from as_data(exc)
    except CorruptFileError as exc:
        raise SafeDatasetError(corrupt(url, exc, "export the model again")) from as_data(exc)
    except Exception as exc:  # noqa: BLE001 - re-raised as a DatasetError, the text escaped
        raise SafeDatasetError(f"Cannot load the {format} export at '{url}': {first_line(exc)}") from as_data(
            exc
        )


class KerasExportDataset(KerasFileDataset, AbstractVersionedDataset["keras.Model", Any]):
    """A Keras model exported for serving, saved and loaded through the catalog.

    ``save(model)`` runs ``model.export`` (TensorFlow SavedModel, ONNX,
    LiteRT, OpenVINO IR or PyTorch ``.pt2``) and publishes the artifact
    atomically: a ``.onnx``, ``.tflite`` or ``.pt2`` file like any file this
    package writes; a SavedModel or OpenVINO IR folder uploaded under a
    fresh name and committed by a small ``manifest.json`` (its files, sizes
    and SHA-256s, the format, Keras version and backend), so that a reader
    never sees half an export and an interrupted upload leaves the previous
    one loadable. ``load()`` gives something that predicts: a Keras model
    over the SavedModel (TensorFlow backend), or an ``OnnxModel`` /
    ``LiteRTModel`` / ``OpenVINOModel`` / ``PT2Model`` with ``predict(x)``.

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
    this process; ``predict`` runs in this process. An OpenVINO IR's XML
    is checked (no entities, only OpenVINO's standard opsets, every
    constant inside the weights, sizes) before OpenVINO reads it from
    memory. A ``.pt2`` archive, which ``torch.export.load`` would unpickle,
    is checked with ``safe_mode`` on before torch reads it: no pickled or
    custom objects, no compiled libraries, only ATen operators (none that
    reads files), plain symbolic sizes (docs/export.md says why).

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
        "max_tensor_bytes": DEFAULT_MAX_TENSOR_BYTES,
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
            filepath: Where the export goes: a ``.onnx``, ``.tflite`` or ``.pt2``
                file, or a folder for a SavedModel or an OpenVINO IR (local
                or any fsspec URL).
            format: ``tf_saved_model``, ``onnx``, ``litert``, ``openvino`` or
                ``torch``. Default: from the suffix (``.onnx``, ``.tflite``,
                ``.pt2``), else ``tf_saved_model``.
            export_args: Passed to ``model.export`` (``input_signature``,
                ``opset_version``, ...).
            load_args: ``safe_mode`` (default True: a SavedModel, which is a
                TensorFlow program, is refused; ONNX and LiteRT artifacts are
                run by their runtimes' fixed operators; a ``.pt2`` archive is
                checked for what can run code), ``endpoint`` (the
                SavedModel endpoint to call; default ``serve``, else
                ``serving_default``), ``providers`` (onnxruntime's),
                ``max_tensor_bytes`` (the largest tensor an ONNX, LiteRT,
                OpenVINO or ``.pt2`` file may declare; default 1 GiB).
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
            raise SafeDatasetError(
                f"'{filepath}': format '{format}' is not one this dataset exports; "
                f"choose one of {', '.join(_exported.FORMATS)}."
            )
        wanted = _exported.FILE_SUFFIXES.get(format)
        if wanted and suffix != wanted:
            raise SafeDatasetError(
                f"'{filepath}': a {format} export is one file whose name ends in '{wanted}'."
            )
        if format in _exported.FOLDER_FORMATS and suffix in _FILE_LIKE:
            what = (
                "a SavedModel" if format == "tf_saved_model" else "an OpenVINO IR (model.xml and model.bin)"
            )
            raise SafeDatasetError(
                f"'{filepath}': {what} is a folder; name it without '{suffix}' "
                f"(e.g. data/06_models/classifier_{'saved_model' if format == 'tf_saved_model' else format})."
            )
        self._format = format
        self._export_args = {**self.DEFAULT_EXPORT_ARGS, **(export_args or {})}
        self._load_args = {**self.DEFAULT_LOAD_ARGS, **(load_args or {})}
        _imports.check_known_args(
            "load_args", self._load_args, {"safe_mode", "endpoint", "providers", "max_tensor_bytes"}, filepath
        )
        budget = self._load_args["max_tensor_bytes"]
        if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
            raise SafeDatasetError(
                f"'{filepath}': load_args.max_tensor_bytes is {budget!r}; give a positive number of bytes "
                f"(default {DEFAULT_MAX_TENSOR_BYTES})."
            )
        try:
            _imports.check_safe_mode(self._load_args)
        except ValueError as exc:
            raise SafeDatasetError(f"'{filepath}': load_args.{exc}.") from as_data(exc)
        self._init_location(filepath, version, credentials, fs_args, metadata)

    @property
    def _is_folder(self) -> bool:
        return self._format in _exported.FOLDER_FORMATS

    def _exists_file(self, path: str) -> bool:
        if self._is_folder:
            return self._location.exists(PurePosixPath(path) / MANIFEST) or self._location.exists(
                PurePosixPath(path) / "saved_model.pb"
            )
        return self._location.exists(path)

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
        return self._preview_table(self._preview_rows, first=(("format", self._format),))

    def _preview_rows(self, path: PurePosixPath) -> list[_preview.Row]:
        if self._is_folder:
            return _export_folder.preview_rows(self._location, path)
        return _export_file.preview_rows(self._location, path)

    # -- save ----------------------------------------------------------------

    def lacks_for_run(self, *, saves: bool, loads: bool) -> str | None:
        """What this machine lacks to save and/or load the entry (a package
        to install, a backend), or None: the plugin's hook asks before any node runs."""
        return _exported.what_a_run_lacks(self._format, saves=saves, loads=loads)

    def save(self, data: keras.Model) -> None:
        import keras

        url = self._location.url(self._filepath)
        if not isinstance(data, keras.Model):
            raise SafeDatasetError(f"Cannot export {type(data).__name__} to '{url}': expected a keras.Model.")
        self.resolve_save_version()  # in every process: they agree on it before one of them exports
        _one_writer.save_from_process_zero(data, url, lambda: self._save_here(data))

    def _save_here(self, data: keras.Model) -> None:
        import keras

        path = self._get_save_path()
        url = self._location.url(path)
        backend = keras.backend.backend()
        problem = _exported.why_cannot_export(self._format, backend)
        if problem:
            raise SafeDatasetError(f"Cannot export model '{data.name}' to '{url}': {problem}.")
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="kedro-keras-export-") as scratch:
            local = os.path.join(scratch, "model" + _exported.FILE_SUFFIXES.get(self._format, ""))
            inside = _exported.FOLDER_FORMATS.get(self._format)
            if inside:  # the folder holds what model.export writes beside the file it is given
                os.mkdir(local)
            target = os.path.join(local, inside) if inside else local
            try:
                # model.export writes local paths only; the artifact is then published from there.
                export_model(data, target, self._format, self._export_args)
            except Exception as exc:  # noqa: BLE001 - re-raised as a DatasetError, the text escaped
                raise SafeDatasetError(
                    f"Could not export model '{data.name}' as {self._format} (backend {backend}) for "
                    f"'{url}': {first_line(exc)}. Any export previously saved there is unchanged."
                ) from as_data(exc)
            try:
                if self._is_folder:
                    publish_folder(
                        self._location,
                        Path(local),
                        path,
                        self._format,
                        data,
                        backend,
                        signature_from=target if inside else None,
                    )
                else:
                    publish_file(
                        self._location,
                        local,
                        path,
                        exclusive=self._version is not None,
                        about=about_export(data, self._format, backend, local),
                    )
            except Exception as exc:  # noqa: BLE001 - re-raised as a DatasetError, the text escaped
                raise SafeDatasetError(
                    f"Could not publish the {self._format} export of '{data.name}' to '{url}': {exc}. "
                    "Any export previously saved there is unchanged."
                ) from as_data(exc)
        self._location.invalidate_cache(path)
        logger.info(
            "Exported model '%s' as %s to %s in %.1f s",
            data.name,
            self._format,
            url,
            time.monotonic() - start,
        )

    # -- load ----------------------------------------------------------------

    def load(self) -> Any:
        import keras

        path = self._get_load_path()
        url = self._location.url(path)
        problem = _exported.why_cannot_load(self._format, keras.backend.backend())
        if problem:
            raise SafeDatasetError(f"Cannot load the {self._format} export at '{url}': {problem}.")
        start = time.monotonic()
        if self._format == "openvino":
            return self._load_openvino(path, url, start)
        if self._is_folder:
            return self._load_saved_model(path, url, start)
        kind = self._location.kind(path)
        if kind != "file":
            what = "does not exist" if kind is None else f"is a {kind}, not a file"
            raise SafeDatasetError(f"No {self._format} export at '{url}': the path {what}.")
        safe_mode = self._load_args["safe_mode"] is not False
        budget = self._load_args["max_tensor_bytes"]
        size = self._location.fs.info(str(path)).get("size")
        largest = _MAX_PT2_BYTES if self._format == "torch" else _MAX_ARTIFACT_BYTES
        if isinstance(size, int) and size > largest:
            # Read whole below: protobuf (ONNX) and flatbuffers (LiteRT) cannot hold more anyway.
            raise SafeDatasetError(
                f"Refusing to load the {self._format} export at '{url}': it holds {size} bytes, more than "
                f"the {largest} a self-contained {self._format} file can."
            )
        with _load_errors(self._format, url):
            content = self._location.fs.cat_file(str(path))
            manifest = read_file_manifest(self._location, path)
            check_content(content, manifest)
            if self._format == "onnx":
                loaded = _exported.OnnxModel(
                    content, self._load_args.get("providers"), safe_mode=safe_mode, max_tensor_bytes=budget
                )
            elif self._format == "torch":
                loaded = _exported.PT2Model(content, safe_mode=safe_mode, max_tensor_bytes=budget)
            else:
                loaded = _exported.LiteRTModel(content, safe_mode=safe_mode, max_tensor_bytes=budget)
            if manifest is not None:
                loaded.input_keys = manifest["input_keys"]
                if sorted(manifest["input_order"]) == sorted(loaded.input_names):  # LiteRT's: see export_file
                    loaded.input_names = manifest["input_order"]
        logger.info(
            "Loaded the %s export at %s, %s: %r",
            self._format,
            url,
            transfer_text(len(content), time.monotonic() - start),
            loaded,
        )
        return loaded

    def _load_openvino(self, folder: PurePosixPath, url: str, start: float) -> Any:
        """An IR folder this package committed: its two files fetched against
        the manifest's checksums, checked, then given to OpenVINO as bytes."""
        manifest = read_manifest(self._location, folder)
        if manifest is None:
            kind = self._location.kind(folder)
            what = "does not exist" if kind is None else f"holds no {MANIFEST} (not written by kedro-keras)"
            raise SafeDatasetError(f"No openvino export at '{url}': the path {what}.")
        if manifest.get("format") != "openvino" or sorted(manifest["files"]) != sorted(
            _exported.OPENVINO_FILES
        ):
            raise SafeDatasetError(
                f"The export at '{url}' is not an OpenVINO IR: its manifest records "
                f"{printable(str(manifest.get('format')), 40)} with {len(manifest['files'])} files, not "
                f"{' and '.join(_exported.OPENVINO_FILES)}. Export the model again with format: openvino."
            )
        with tempfile.TemporaryDirectory(prefix="kedro-keras-openvino-") as scratch:
            local, size = fetch_manifest_files(
                self._location, folder, manifest, Path(scratch), url, kind="OpenVINO IR"
            )
            xml, weights = ((local / name).read_bytes() for name in _exported.OPENVINO_FILES)
        with _load_errors(self._format, url):
            loaded = _exported.OpenVINOModel(
                xml, weights, max_tensor_bytes=self._load_args["max_tensor_bytes"]
            )
        keys = manifest.get("input_keys")
        if isinstance(keys, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in keys.items()):
            loaded.input_keys = keys
        logger.info(
            "Loaded the openvino export at %s, %s: %r",
            url,
            transfer_text(size, time.monotonic() - start),
            loaded,
        )
        return loaded

    def _load_saved_model(self, folder: PurePosixPath, url: str, start: float) -> Any:
        if self._load_args["safe_mode"] is not False:  # anything but a literal false is safe
            raise SafeDatasetError(
                f"Refusing to load the SavedModel at '{url}' with safe_mode on: a SavedModel is a "
                "TensorFlow program whose graph can read and write files and more when it is loaded or "
                "called, which no check can vet. Load only folders you trust, with "
                "load_args: {safe_mode: false}."
            )
        manifest = read_manifest(self._location, folder)
        scratch = tempfile.TemporaryDirectory(prefix="kedro-keras-saved-model-")
        try:
            if manifest is not None:
                local, size = fetch_manifest_files(self._location, folder, manifest, Path(scratch.name), url)
            else:
                local, size = fetch_foreign_folder(self._location, folder, Path(scratch.name), url)
            model = _exported.saved_model_as_keras(str(local), self._load_args.get("endpoint"))
        except DatasetError:
            scratch.cleanup()
            raise
        except Exception as exc:  # noqa: BLE001 - re-raised as a DatasetError, the text escaped
            scratch.cleanup()
            raise SafeDatasetError(f"Cannot load the SavedModel at '{url}': {first_line(exc)}") from as_data(
                exc
            )
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

    # -- the protocol of kedro keras and verify ------------------------------

    def verify(self, version: str | None = None) -> str:
        if self._is_folder:
            return _verify.verify_export_folder(self._location, self.stored_path(version))
        return _verify.verify_export_file(self._location, self.stored_path(version))

    def compare(self, first: str, second: str) -> list[dict[str, str]]:
        raise SafeDatasetError(
            f"'{self._location.url(self._filepath)}' holds {self._format} exports; diff compares the "
            "weights of Keras models, which an export does not keep as such. Compare the model or "
            "weights entry the export was made from."
        )
