"""``KerasModelDataset``: a whole Keras model (architecture, weights, compile and
optimizer state) in one ``.keras`` or legacy ``.h5`` file on any fsspec
filesystem."""

from __future__ import annotations

import re
import time
import warnings
import zipfile
from copy import deepcopy
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from kedro.io.core import AbstractVersionedDataset, Version

from kedro_keras._dataset import failures as _failures
from kedro_keras._dataset import one_writer as _one_writer
from kedro_keras._dataset import preview as _preview
from kedro_keras._dataset.base import KerasFileDataset
from kedro_keras._dataset.migration import take_migration_args
from kedro_keras._dataset.preview import TablePreview
from kedro_keras._formats import archive as _archive
from kedro_keras._formats import imports as _imports
from kedro_keras._formats import legacy_h5 as _legacy_h5
from kedro_keras._formats.weights import WEIGHTS_SUFFIX
from kedro_keras._io import progress as _progress
from kedro_keras._io.files import checked_filepath
from kedro_keras._io.h5 import HDF5_SIGNATURE
from kedro_keras._log import SafeDatasetError, as_data, get_logger

if TYPE_CHECKING:
    import keras

logger = get_logger(__name__)

KERAS_SUFFIX = ".keras"
LEGACY_SUFFIXES = (".h5", ".hdf5")
_SAVE_ATTEMPTS = 100
# Kedro's version folder names: 2026-11-20T09.15.02.114Z
_VERSION_NAME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}\.\d{2}\.\d{2}\.\d{3,6}Z")


class KerasModelDataset(KerasFileDataset, AbstractVersionedDataset["keras.Model", "keras.Model"]):
    """Loads and saves a whole ``keras.Model`` on any filesystem fsspec knows.

    The format follows the extension: ``.keras`` (the Keras 3 archive, the
    default) or ``.h5``/``.hdf5`` (legacy HDF5, with a warning). Models are
    written straight to the target (no temporary folder), published only once
    complete, and read back without importing TensorFlow unless it is Keras's
    backend.

    Example usage for the
    [YAML API](https://docs.kedro.org/en/stable/catalog-data/data_catalog_yaml_examples/):

    ```yaml
    classifier:
      type: kedro_keras.KerasModelDataset
      filepath: data/06_models/classifier.keras
      versioned: true
      load_args:
        custom_objects:
          Scale: my_project.layers.Scale   # import path, resolved at load
      save_args:
        include_optimizer: true

    remote_classifier:
      type: kedro_keras.KerasModelDataset
      filepath: s3://my-bucket/models/classifier.keras
      credentials: s3_creds
    ```

    Example usage for the
    [Python API](https://docs.kedro.org/en/stable/catalog-data/advanced_data_catalog_usage/):

    ```pycon
    >>> import keras, numpy as np
    >>> from kedro_keras import KerasModelDataset
    >>>
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="adam", loss="mse")
    >>> history = model.fit(np.ones((4, 3)), np.ones((4, 1)), verbose=0)
    >>> dataset = KerasModelDataset(filepath=tmp_path / "model.keras")
    >>> dataset.save(model)
    >>> reloaded = dataset.load()
    >>> x = np.ones((2, 3))
    >>> np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0))
    ```
    """

    DEFAULT_LOAD_ARGS: dict[str, Any] = {"compile": True, "safe_mode": True}
    DEFAULT_SAVE_ARGS: dict[str, Any] = {"include_optimizer": True}
    # A checkpoint's model file: the checkpoint's own log line says it was written.
    _quiet_saves = False

    def __init__(
        self,
        *,
        filepath: str,
        load_args: dict[str, Any] | None = None,
        save_args: dict[str, Any] | None = None,
        version: Version | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Creates a new ``KerasModelDataset``.

        Args:
            filepath: Where the model lives, ending in ``.keras`` (recommended)
                or ``.h5``/``.hdf5`` (legacy). A local path or any fsspec URL:
                ``s3://``, ``gs://``, ``abfs://``, ``memory://``, ``file://``.
            load_args: ``custom_objects`` (names to classes, or to import-path
                strings such as ``my_project.layers.Scale``, or a list of import
                paths), ``compile`` (default True), ``safe_mode`` (default
                True: Lambda layers, whose code runs on load, are refused;
                only a literal False turns it off), ``max_layers`` (default
                10,000) and ``max_config_depth`` (default 100): a file whose
                configuration holds more layers or nests deeper is refused
                before anything is built, and ``device`` (e.g. ``"cpu:0"``: where the variables are placed,
                through ``keras.device``; kedro-datasets' ``tf_device`` is read
                as this).
            save_args: ``include_optimizer`` (default True). False writes a
                slim inference file without optimizer state.
            version: Set by Kedro for ``versioned: true`` entries.
            credentials: Passed to the fsspec filesystem (e.g. ``key``,
                ``secret``, ``client_kwargs`` for s3fs).
            fs_args: Extra arguments for the fsspec filesystem; its
                ``open_args_load``/``open_args_save`` go to ``fs.open``.
            metadata: Anything you want to keep with the entry; kedro-viz
                reads its ``kedro-viz`` key. Not used by the dataset.

        Raises:
            DatasetError: the extension is not one Keras can save a whole model in.
        """
        filepath = checked_filepath(filepath)
        self._legacy = self._is_legacy_format(filepath)
        self._load_args = {**self.DEFAULT_LOAD_ARGS, **(load_args or {})}
        self._save_args = {**self.DEFAULT_SAVE_ARGS, **(save_args or {})}
        take_migration_args(
            self._load_args,
            self._save_args,
            filepath,
            keras_suffix=KERAS_SUFFIX,
            legacy_suffixes=LEGACY_SUFFIXES,
        )
        _imports.check_model_load_args(self._load_args, {"compile", "device"}, filepath)
        _imports.check_known_args("save_args", self._save_args, {"include_optimizer"}, filepath)
        self._init_location(filepath, version, credentials, fs_args, metadata)

    @staticmethod
    def _is_legacy_format(filepath: str) -> bool:
        """True for legacy HDF5, False for ``.keras``; anything else is refused."""
        suffix = PurePosixPath(filepath).suffix.lower()
        if filepath.lower().endswith(WEIGHTS_SUFFIX):
            raise SafeDatasetError(
                f"'{filepath}' is a weights-only file name; use "
                f"kedro_keras.KerasWeightsDataset for '{WEIGHTS_SUFFIX}' files, or "
                f"name the whole model '*{KERAS_SUFFIX}'."
            )
        if suffix != KERAS_SUFFIX and suffix not in LEGACY_SUFFIXES:
            raise SafeDatasetError(
                f"KerasModelDataset cannot tell the format of '{filepath}': its "
                f"name must end in '{KERAS_SUFFIX}' (recommended) or "
                f"'{LEGACY_SUFFIXES[0]}' (legacy HDF5)."
            )
        if suffix in LEGACY_SUFFIXES:
            warnings.warn(
                f"'{filepath}' uses the legacy HDF5 format; prefer '{KERAS_SUFFIX}', "
                "which keeps more of the model (custom objects, full optimizer "
                "state) and is what Keras 3 is built around.",
                stacklevel=4,
            )
            return True
        return False

    def _describe(self) -> dict[str, Any]:
        return {
            "filepath": self._location.url(self._filepath),
            "format": "h5 (legacy)" if self._legacy else "keras",
            "version": self._version,
            "load_args": self._load_args,
            "save_args": self._save_args,
        }

    def load(self) -> keras.Model:
        start = time.monotonic()
        path = self._get_load_path()
        url = self._location.url(path)
        args = deepcopy(self._load_args)
        device = args.pop("device", None)
        try:
            args["custom_objects"] = _imports.resolve_custom_objects(
                args.get("custom_objects"), safe_mode=args.get("safe_mode", True)
            )
        except Exception as exc:  # noqa: BLE001 - whatever the named module raises on import, as a DatasetError
            raise SafeDatasetError(
                f"Cannot load the Keras model at '{url}': load_args.custom_objects: {exc}"
            ) from as_data(exc)
        legacy = self._legacy
        try:
            if legacy:  # checked before the HDF5 probe, which costs a child process
                legacy = self._stored_as_legacy(path, url)
            try:
                model, saved_with, size = self._read(path, legacy, args, device)
            except zipfile.BadZipFile:
                # Named .keras but not a zip: legacy HDF5 under that name?
                if legacy or not self._stored_as_legacy(path, url):
                    raise
                legacy = True
                model, saved_with, size = self._read(path, legacy, args, device)
        except Exception as exc:  # noqa: BLE001 - re-raised as a DatasetError, the text escaped
            missing = _failures.file_not_found_in(exc)
            if missing is not None:
                # Also when the file vanished between opening and reading (a
                # concurrent keep_last prune): zipfile reports that as BadZipFile.
                raise SafeDatasetError(
                    f"No Keras model at '{url}': {_failures.missing(self._location, path)}."
                ) from missing
            folder = None if _failures.store_did_not_answer(exc) else self._describe_folder(path, url)
            if folder:
                raise SafeDatasetError(folder) from as_data(exc)
            raise SafeDatasetError(
                _failures.read_failure(
                    url,
                    exc,
                    what="the Keras model",
                    file_format="HDF5" if legacy else ".keras archive",
                    remedy="save the model again",
                )
            ) from as_data(exc)
        logger.info(
            "Loaded Keras model '%s' from %s%s: %s",
            model.name,
            url,
            _preview.saved_with_text(saved_with),
            _progress.transfer_text(size, time.monotonic() - start),
        )
        return model

    def _read(
        self, path: PurePosixPath, legacy: bool, args: dict[str, Any], device: str | None
    ) -> tuple[keras.Model, dict[str, str], int | None]:
        if legacy:
            _legacy_h5.probe_h5_in_child(self._location, str(path))
        read = _legacy_h5.read_legacy_h5 if legacy else _archive.read_keras_archive
        with self._location.open_read(path) as file, _device_scope(device):
            return read(file, **args), _archive.read_saved_with(file), _preview.file_size(file)

    def _describe_folder(self, path: PurePosixPath, url: str) -> str | None:
        """What a folder at the model's path is, and what to do, if it is one
        (asked only after a load failed)."""
        try:
            if not self._location.fs.isdir(str(path)):
                return None
            names = self._location.names_in(path)
        except Exception:  # noqa: BLE001 - only a better message is at stake
            return None
        if "saved_model.pb" in names:
            return (
                f"'{url}' is a TensorFlow SavedModel folder (what TensorFlowModelDataset and Keras 2 "
                "wrote), which Keras 3 cannot load as a Keras model. For predictions, load it with "
                "type: kedro_keras.KerasExportDataset (load_args: {safe_mode: false}, trusted folders "
                "only); to train it again, load it once with Keras 2 (pip install tf-keras; "
                "TF_USE_LEGACY_KERAS=1) and save it as .h5 or .keras. See docs/migrating.md."
            )
        if self._version is None and any(_VERSION_NAME.fullmatch(name) for name in names):
            return (
                f"'{url}' is a folder of versions (written with versioned: true). Add versioned: true "
                "to the catalog entry to load the newest, or point filepath at one version's file."
            )
        return f"'{url}' is a folder, not a model file."

    def _stored_as_legacy(self, path: PurePosixPath, url: str) -> bool:
        """Whether the file holds legacy HDF5, by its first bytes, not its name.

        Under Keras 3, kedro-datasets' ``TensorFlowModelDataset`` writes a
        ``.keras`` archive under a ``.h5`` name; either kind is read whatever
        the name says. A file that is neither is left to the reader its name
        implies, whose error says what is wrong with it.
        """
        head = self._location.head(path, len(HDF5_SIGNATURE))
        if head.startswith(_archive.ZIP_SIGNATURE):
            legacy = False
        elif head.startswith(HDF5_SIGNATURE):
            legacy = True
        else:
            return self._legacy
        if legacy != self._legacy:
            logger.info(
                "'%s' holds a %s although its name ends in '%s'; reading it as what it holds",
                url,
                "legacy HDF5 model" if legacy else ".keras archive",
                PurePosixPath(str(path)).suffix,
            )
        return legacy

    def save(self, data: keras.Model) -> None:
        url = self._location.url(self._filepath)
        _check_is_model(data, url)
        self.resolve_save_version()  # in every process: they agree on it before one of them writes
        _one_writer.save_from_process_zero(data, url, lambda: self._save_here(data))

    def _save_here(self, data: keras.Model) -> None:
        start = time.monotonic()
        path = self._get_save_path()
        write = _legacy_h5.write_legacy_h5 if self._legacy else _archive.write_keras_archive
        size = None
        for _ in range(_SAVE_ATTEMPTS):
            url = self._location.url(path)
            try:
                # A version, once written, is never replaced: two runs that
                # picked the same version cannot overwrite each other.
                with self._location.atomic_write(
                    path,
                    exclusive=self._version is not None,
                    size_hint=_archive.state_bytes(data, self._save_args["include_optimizer"]),
                ) as file:
                    write(data, file, **self._save_args)
                    size = _preview.file_size(file)
                break
            except FileExistsError as exc:
                if self._version is None:  # not a version taken: a file where a folder must go
                    raise SafeDatasetError(
                        f"Could not save Keras model '{data.name}' to '{url}': {exc} (a file is where "
                        "a folder on its path must be). Any model previously saved there is unchanged."
                    ) from as_data(exc)
                path = self._next_save_path(path)
            except Exception as exc:  # noqa: BLE001 - re-raised as a DatasetError, the text escaped
                raise SafeDatasetError(
                    f"Could not save Keras model '{data.name}' to '{url}': {exc}. "
                    "Any model previously saved there is unchanged."
                ) from as_data(exc)
        else:
            raise SafeDatasetError(
                f"Could not save Keras model '{data.name}': every version tried already existed."
            )
        self._location.invalidate_cache(path)
        (logger.debug if self._quiet_saves else logger.info)(
            "Saved Keras model '%s' to %s: %s",
            data.name,
            url,
            _progress.transfer_text(size, time.monotonic() - start),
        )
        self._after_save(path)

    def _next_save_path(self, taken: PurePosixPath) -> PurePosixPath:
        """Where to save when ``taken`` appeared while we wrote; Kedro's own
        versions are fixed, so here that is an error."""
        raise SafeDatasetError(
            f"Save path '{self._location.url(taken)}' was created by another run while "
            "this one was saving; versions are never overwritten."
        )

    def _after_save(self, path: PurePosixPath) -> None:
        """Called once a save is published; subclasses tidy up here."""

    def preview(self, layers: int = _preview.DEFAULT_LAYERS_SHOWN) -> TablePreview:
        """What the stored model is, for Kedro-Viz (``metadata: kedro-viz:
        preview_args: {layers: N}`` sets how many layers are listed): the
        layers with their types and parameter counts, the parameters and
        their bytes, the dtype policy, the optimizer state stored, what it
        was saved with and when, the file size, and the versions. Read from
        the file's config and headers: Keras is not imported, no weight is read."""
        return self._preview_table(lambda path: self._preview_file(path, layers))

    def _preview_file(self, path: PurePosixPath, layers: int) -> list[_preview.Row]:
        if self._location.kind(path) is None:
            return [("stored", "nothing saved yet")]
        rows = _preview.size_row(self._location.fs.info(str(path)).get("size"))
        with self._location.open_read(path) as file:
            if file.read(len(_archive.ZIP_SIGNATURE)) != _archive.ZIP_SIGNATURE:
                return [*rows, ("format", "legacy HDF5 (.h5)")]
            file.seek(0)
            return [("format", ".keras archive"), *rows, *_preview.keras_archive_rows(file, layers)]


def _device_scope(device: str | None) -> Any:
    from contextlib import nullcontext

    if device is None:
        return nullcontext()
    import keras

    return keras.device(device)


def _check_is_model(data: Any, url: str) -> None:
    import keras

    if not isinstance(data, keras.Model):
        raise SafeDatasetError(f"Cannot save {type(data).__name__} to '{url}': expected a keras.Model.")
