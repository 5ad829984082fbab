"""``KerasWeightsDataset``: only a model's weights (``.weights.h5``, or Keras's
sharded ``.weights.json`` index plus shards), rebuilt on load from a builder
named in the catalog or from the architecture saved beside them."""

from __future__ import annotations

import math
import time
from copy import deepcopy
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Callable

from kedro.io.core import AbstractVersionedDataset, Version

from kedro_keras._dataset import architecture as _architecture
from kedro_keras._dataset import failures as _failures
from kedro_keras._dataset import one_writer as _one_writer
from kedro_keras._dataset import orbax_commit as _orbax_commit
from kedro_keras._dataset import preview as _preview
from kedro_keras._dataset import verify as _verify
from kedro_keras._dataset.base import KerasFileDataset
from kedro_keras._dataset.preview import TablePreview
from kedro_keras._dataset.sharded_commit import check_shards_exist, read_index, save_sharded
from kedro_keras._dataset.weights_fill import fill_from_file, fill_from_shards
from kedro_keras._formats import archive as _archive
from kedro_keras._formats import imports as _imports
from kedro_keras._formats import sharded as _sharded
from kedro_keras._formats import weights as _weights
from kedro_keras._formats.orbax_index import ORBAX_SUFFIX
from kedro_keras._formats.sharded import INDEX_SUFFIX
from kedro_keras._formats.weights import WEIGHTS_SUFFIX
from kedro_keras._io import progress as _progress
from kedro_keras._io.files import checked_filepath
from kedro_keras._keras import build as _keras_build
from kedro_keras._log import SafeDatasetError, as_data, get_logger
from kedro_keras.keras_model_dataset import _check_is_model

if TYPE_CHECKING:
    import keras

logger = get_logger(__name__)

# GB of arrays per shard when a .weights.json entry gives no max_shard_size.
# Each shard is laid out in memory before it is written (HDF5 must seek), so
# this is what a save needs beyond the model; Keras's own 5 GB default writes
# to local disk and costs no memory. 0.25 GB (the value in Keras's own
# example) also keeps each shard well under the 512 MB up to which an S3 save
# is one PUT.
DEFAULT_MAX_SHARD_SIZE = 0.25


class KerasWeightsDataset(KerasFileDataset, AbstractVersionedDataset["keras.Model", "keras.Model"]):
    """Saves a model's weights, and loads them into a freshly built model.

    Save writes ``<name>.weights.h5`` (Keras's own weights format) and, beside
    it, ``<name>.architecture.json`` (``model.to_json()``), so the file can be
    turned back into a model with no code at all. Load builds the model from
    ``architecture`` (an import path to a builder function or a Model class,
    called with ``architecture_args``) or, when none is given, from the saved
    architecture, then loads the weights into it. A model that does not match
    the weights is refused with the difference named, never half-loaded.

    The loaded model is compiled as it was saved when it is rebuilt from the
    saved architecture (optimizer state included); a builder's model is not
    compiled: compile it before training.

    A folder name ending in ``.orbax`` saves an Orbax checkpoint (JAX
    backend, ``pip install 'kedro-keras[orbax]'``): when the node runs in
    several processes joined by ``keras.distribution``, each process writes
    only the shards it holds, and a load reads each variable onto the layout
    in force then (see "Training on several processes or machines").

    A file name ending in ``.weights.json`` saves Keras's sharded weights,
    for models too big for one file: a JSON index plus shards of at most
    ``save_args.max_shard_size`` GB of arrays each (0.25 GB by default), all
    in the index's folder. Plain Keras loads them with
    ``model.load_weights("<name>.weights.json")``, and the dataset loads what
    Keras's ``save_weights(..., max_shard_size=...)`` writes. A save replaces
    the previous one only once it is complete: the new shards get names of
    their own, the index is published last, and the shards it no longer
    names are removed afterwards.

    Example usage for the
    [YAML API](https://docs.kedro.org/en/stable/catalog-data/data_catalog_yaml_examples/):

    ```yaml
    classifier_weights:
      type: kedro_keras.KerasWeightsDataset
      filepath: data/06_models/classifier.weights.h5
      architecture: my_project.models.build_classifier   # optional
      architecture_args:
        n_classes: 10

    large_model_weights:               # an index plus shards of up to 2 GB each
      type: kedro_keras.KerasWeightsDataset
      filepath: s3://my-bucket/models/large.weights.json
      save_args:
        max_shard_size: 2
    ```

    Example usage for the
    [Python API](https://docs.kedro.org/en/stable/catalog-data/advanced_data_catalog_usage/):

    ```pycon
    >>> import keras, numpy as np
    >>> from kedro_keras import KerasWeightsDataset
    >>>
    >>> def build(units=1):
    ...     return keras.Sequential([keras.Input((3,)), keras.layers.Dense(units)])
    >>> dataset = KerasWeightsDataset(
    ...     filepath=tmp_path / "model.weights.h5", architecture=build, architecture_args={"units": 1}
    ... )
    >>> model = build()
    >>> dataset.save(model)
    >>> reloaded = dataset.load()
    >>> np.testing.assert_allclose(reloaded.get_weights()[0], model.get_weights()[0])
    >>>
    >>> sharded = KerasWeightsDataset(  # shards of at most 10 bytes: one per array here
    ...     filepath=tmp_path / "big.weights.json", architecture=build, save_args={"max_shard_size": 1e-8}
    ... )
    >>> sharded.save(model)
    >>> np.testing.assert_allclose(sharded.load().get_weights()[0], model.get_weights()[0])
    >>> same = build()
    >>> same.load_weights(tmp_path / "big.weights.json")  # plain Keras reads them too
    >>> np.testing.assert_allclose(same.get_weights()[0], model.get_weights()[0])
    ```
    """

    DEFAULT_LOAD_ARGS: dict[str, Any] = {"safe_mode": True}
    DEFAULT_SAVE_ARGS: dict[str, Any] = {"include_optimizer": True}

    def __init__(  # noqa: PLR0913
        self,
        *,
        filepath: str,
        architecture: str | Callable[..., Any] | None = None,
        architecture_args: dict[str, Any] | None = None,
        load_args: dict[str, Any] | None = None,
        save_args: dict[str, Any] | None = None,
        version: Version | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Creates a new ``KerasWeightsDataset``.

        Args:
            filepath: Where the weights live: ``<name>.weights.h5`` for one
                file, ``<name>.weights.json`` for an index plus shards beside
                it, ``<name>.orbax`` for an Orbax folder. Local or any fsspec URL.
            architecture: How to rebuild the model on load: an import path
                (``my_project.models.build_classifier``) to a function or a
                Model class, or the callable itself. None rebuilds from the
                architecture JSON saved beside the weights.
            architecture_args: Keyword arguments for ``architecture``.
            load_args: ``custom_objects`` (as for ``KerasModelDataset``) and
                ``safe_mode`` (default True), ``max_layers`` and
                ``max_config_depth`` (as for ``KerasModelDataset``) for the saved architecture.
            save_args: ``include_optimizer`` (default True, as Keras's
                ``save_weights``); for ``.weights.json`` only,
                ``max_shard_size``: GB of arrays per shard (default 0.25). A
                variable larger than that gets a shard of its own. For
                ``.orbax`` on an object store only, ``staging``: a local
                folder where Orbax writes before the upload (default: the
                temporary folder; across hosts, one they all mount).
            version: Set by Kedro for ``versioned: true`` entries.
            credentials: Passed to the fsspec filesystem.
            fs_args: Extra arguments for the fsspec filesystem.
            metadata: Anything you want to keep with the entry.

        Raises:
            DatasetError: ``filepath`` does not end in ``.weights.h5`` or
                ``.weights.json``, ``max_shard_size`` is given for a
                ``.weights.h5`` file or is not a positive number, or
                ``architecture`` is neither an import path nor a callable.
        """
        filepath = checked_filepath(filepath)
        self._sharded = filepath.endswith(INDEX_SUFFIX)
        self._orbax = filepath.endswith(ORBAX_SUFFIX)
        if not (filepath.endswith(WEIGHTS_SUFFIX) or self._sharded or self._orbax):
            raise SafeDatasetError(
                f"KerasWeightsDataset needs a file name ending in '{WEIGHTS_SUFFIX}' "
                f"(Keras's weights format), '{INDEX_SUFFIX}' (sharded weights) or '{ORBAX_SUFFIX}' (an "
                f"Orbax folder: each process of a multi-process run writes its own shards); got '{filepath}'."
            )
        if architecture is not None and not (isinstance(architecture, str) or callable(architecture)):
            raise SafeDatasetError(
                "architecture must be an import path such as "
                f"'my_project.models.build_model' or a callable; got {architecture!r}."
            )
        self._architecture = architecture
        self._architecture_args = deepcopy(architecture_args) or {}
        self._load_args = {**self.DEFAULT_LOAD_ARGS, **(load_args or {})}
        self._save_args = {**self.DEFAULT_SAVE_ARGS, **(save_args or {})}
        _imports.check_model_load_args(self._load_args, set(), filepath)
        # A typo fails when the catalog is built, not after the training.
        try:
            if isinstance(architecture, str):
                _imports.check_import_path(architecture)
        except ValueError as exc:
            raise SafeDatasetError(f"'{filepath}': architecture: {exc}.") from as_data(exc)
        if self._orbax:
            _imports.check_known_args(
                "save_args", self._save_args, {"include_optimizer", "staging"}, filepath
            )
        elif self._sharded:
            self._save_args.setdefault("max_shard_size", DEFAULT_MAX_SHARD_SIZE)
            _imports.check_known_args(
                "save_args", self._save_args, {"include_optimizer", "max_shard_size"}, filepath
            )
            _check_max_shard_size(self._save_args["max_shard_size"], filepath)
        elif "max_shard_size" in self._save_args:
            raise SafeDatasetError(
                f"save_args.max_shard_size is for sharded weights, but '{filepath}' is one "
                f"'{WEIGHTS_SUFFIX}' file. Name it '...{INDEX_SUFFIX}' to save an index plus "
                "shards, or remove max_shard_size."
            )
        else:
            _imports.check_known_args("save_args", self._save_args, {"include_optimizer"}, filepath)

        self._init_location(filepath, version, credentials, fs_args, metadata)

    def _describe(self) -> dict[str, Any]:
        architecture = self._architecture
        if callable(architecture):
            architecture = f"{architecture.__module__}.{architecture.__qualname__}"
        description = {
            "filepath": self._location.url(self._filepath),
            "architecture": architecture or "saved beside the weights",
            "architecture_args": self._architecture_args,
            "version": self._version,
            "load_args": self._load_args,
            "save_args": self._save_args,
        }
        if self._sharded:
            description["shards"] = (
                f"beside the index, up to {self._save_args['max_shard_size']} GB of arrays each"
            )
        return description

    def load(self) -> keras.Model:
        if self._sharded:
            return self._load_sharded()
        if self._orbax:
            return self._load_orbax()
        weights_path = self._get_load_path()
        url = self._location.url(weights_path)
        kind = self._location.kind(weights_path)
        if kind is None:
            raise SafeDatasetError(
                f"No Keras weights at '{url}': {_failures.missing(self._location, weights_path)}."
            )
        if kind == "directory":
            raise SafeDatasetError(
                f"'{url}' is a folder, not a weights file"
                + (
                    " (a folder of versions: add versioned: true to the catalog entry)."
                    if self._version is None
                    else "."
                )
            )

        start, sizes = time.monotonic(), []
        saved_with: dict[str, Any] = {}
        fill = fill_from_file(self._location, weights_path, url, sizes)

        if self._architecture is not None:
            # A user's builder may call its model on data or set weights
            # itself: build it exactly as written.
            model = _keras_build.build_and_fill(self._build_from_builder, fill, skip_initialisation=False)
            saved_with.update(_architecture.saved_with_beside(self._location, weights_path))
        else:
            model = _architecture.rebuild_from_saved_architecture(
                self._location, weights_path, fill, self._load_args, saved_with=saved_with
            )
        logger.info(
            "Loaded weights from %s%s into model '%s': %s",
            url,
            _preview.saved_with_text(saved_with),
            model.name,
            _progress.transfer_text(sizes[0] if sizes else None, time.monotonic() - start),
        )
        return model

    def _build_from_builder(self) -> keras.Model:
        return _architecture.build_from_builder(self._architecture, self._architecture_args)

    def save(self, data: keras.Model) -> None:
        url = self._location.url(self._filepath)
        _check_is_model(data, url)
        self.resolve_save_version()  # in every process: they agree on it before one of them writes
        if self._orbax:  # every process writes its own shards
            _orbax_commit.save_orbax(
                self._location,
                data,
                self._get_save_path(),
                include_optimizer=self._save_args["include_optimizer"],
                staging=self._save_args.get("staging"),
                quiet=getattr(self, "_quiet_saves", False),
            )
            return
        _one_writer.save_from_process_zero(data, url, lambda: self._save_here(data))

    def _save_here(self, data: keras.Model) -> None:
        weights_path = self._get_save_path()
        url = self._location.url(weights_path)
        if not data.built:
            raise SafeDatasetError(
                f"Cannot save the weights of model '{data.name}' to '{url}': the model "
                "is not built yet, so it has no weights. Call it on data first."
            )
        if self._sharded:
            save_sharded(
                self._location,
                data,
                weights_path,
                _architecture.architecture_path(weights_path),
                versioned=self._version is not None,
                max_shard_size=self._save_args["max_shard_size"],
                include_optimizer=self._save_args["include_optimizer"],
            )
            return
        architecture_path = _architecture.architecture_path(weights_path)
        start = time.monotonic()
        try:
            # Both files are published only if both were written in full.
            with (
                self._location.atomic_write(architecture_path) as architecture_file,
                self._location.atomic_write(
                    weights_path,
                    size_hint=_archive.state_bytes(data, self._save_args["include_optimizer"]),
                ) as weights_file,
            ):
                architecture_file.write(
                    _weights.architecture_json(data, self._save_args["include_optimizer"]).encode()
                )
                _weights.write_weights(data, weights_file, **self._save_args)
                size = _preview.file_size(weights_file)
        except Exception as exc:  # noqa: BLE001 - re-raised as a DatasetError, the text escaped
            raise SafeDatasetError(
                f"Could not save the weights of model '{data.name}' to '{url}': {exc}. "
                "Any weights previously saved there are unchanged."
            ) from as_data(exc)
        self._location.invalidate_cache(weights_path)
        logger.info(
            "Saved weights of model '%s' to %s: %s",
            data.name,
            url,
            _progress.transfer_text(size, time.monotonic() - start),
        )

    # Sharded weights: a .weights.json index plus shards beside it ---------

    def _load_sharded(self) -> keras.Model:
        index_path = self._get_load_path()
        url = self._location.url(index_path)
        index = self._read_index(index_path)
        directory = index_path.parent
        check_shards_exist(self._location, index, directory, url)
        saved_with: dict[str, Any] = {}
        fill = fill_from_shards(self._location, index, directory, url)

        if self._architecture is not None:
            model = _keras_build.build_and_fill(self._build_from_builder, fill, skip_initialisation=False)
        else:
            model = _architecture.rebuild_from_saved_architecture(
                self._location, index_path, fill, self._load_args, index.architecture, saved_with
            )
        logger.info(
            "Loaded weights from %s (%d shards)%s into model '%s'",
            url,
            len(index.shards),
            _preview.saved_with_text(saved_with),
            model.name,
        )
        return model

    def _load_orbax(self) -> keras.Model:
        builder = self._build_from_builder if self._architecture is not None else None
        return _orbax_commit.load_orbax(self._location, self._get_load_path(), builder, self._load_args)

    def _stored_size(self, path: PurePosixPath) -> int | None:
        if self._orbax:  # a folder: the files its index commits
            return _orbax_commit.stored_bytes(self._location, path)
        return super()._stored_size(path)

    def _exists_file(self, path: str) -> bool:
        if self._orbax:  # a folder whose save did not finish has no index
            return _orbax_commit.has_index(self._location, PurePosixPath(path))
        return super()._exists_file(path)

    def _read_index(self, index_path: PurePosixPath) -> _sharded.ShardedIndex:
        return read_index(self._location, index_path)

    def preview(self, layers: int = _preview.DEFAULT_LAYERS_SHOWN) -> TablePreview:
        """What the stored weights are, for Kedro-Viz (as ``KerasModelDataset.preview``):
        read from the HDF5 headers and the architecture saved beside them."""
        return self._preview_table(lambda path: self._preview_file(path, layers))

    def _preview_file(self, path: PurePosixPath, layers: int) -> list[_preview.Row]:
        if self._orbax:
            return _orbax_commit.preview_rows(self._location, path)
        if self._location.kind(path) is None:
            return [("stored", "nothing saved yet")]
        rows = _preview.size_row(self._location.fs.info(str(path)).get("size"))
        if self._sharded:
            index = self._read_index(path)
            return [("format", f"sharded {INDEX_SUFFIX}"), *rows, ("shards", str(len(index.shards)))]
        config = None
        if self._location.exists(
            _architecture.architecture_path(path)
        ):  # written beside the weights by every save
            # Within a preview's budget, as an archive's config is: a preview reads files from anyone.
            config = _preview.bounded_json(
                _architecture.read_architecture_beside(self._location, path)[0], "the architecture"
            )
            rows.append(("architecture", _architecture.architecture_path(path).name))
            if isinstance(config, dict) and config.get("kedro_keras"):
                record = config["kedro_keras"]
                rows += _preview.saved_with_rows({"kedro_keras": record})
        if self._architecture is not None:
            rows.append(("loaded into", f"the model {self._architecture} builds"))
        with self._location.open_read(path) as file:
            return [("format", WEIGHTS_SUFFIX), *rows, *_preview.weights_rows(file, config, layers)]

    # -- the protocol of kedro keras and verify ------------------------------

    def verify(self, version: str | None = None) -> str:
        if self._orbax:
            folder = self.stored_path(version)
            index = _orbax_commit.read_orbax_index(self._location, folder)
            checked = _orbax_commit.check_state(self._location, folder, index)
            return f"{len(index['files'])} files ({checked:,} bytes) against their SHA-256"
        if not self._sharded:
            return super().verify(version)
        index_path = self.stored_path(version)
        return _verify.verify_sharded(self._location, index_path, lambda: self._read_index(index_path))

    def compare(self, first: str, second: str) -> list[dict[str, str]]:
        if self._sharded or self._orbax:
            raise SafeDatasetError(
                f"'{self._location.url(self._filepath)}': diff compares single weights files; "
                "sharded weights and Orbax folders are not compared yet."
            )
        return super().compare(first, second)


def _check_max_shard_size(value: Any, filepath: str) -> None:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or value <= 0:
        raise SafeDatasetError(
            f"save_args.max_shard_size for '{filepath}' must be a positive number of GB "
            f"(such as 0.5 or 2); got {value!r}."
        )
