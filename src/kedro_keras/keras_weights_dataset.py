"""``KerasWeightsDataset``: only a model's weights (``.weights.h5``), rebuilt on
load from a builder named in the catalog or from the architecture saved beside
them."""

from __future__ import annotations

import logging
from copy import deepcopy
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Callable

from kedro.io.core import AbstractVersionedDataset, DatasetError, Version

from kedro_keras import _formats
from kedro_keras._files import Location
from kedro_keras.keras_model_dataset import _check_args, _check_is_model

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

WEIGHTS_SUFFIX = ".weights.h5"
ARCHITECTURE_SUFFIX = ".architecture.json"


class KerasWeightsDataset(AbstractVersionedDataset["keras.Model", "keras.Model"]):
    """Saves a model's weights, and loads them into a freshly built model.

    Save writes ``<name>.weights.h5`` (Keras's own weights format) and, beside
    it, ``<name>.architecture.json`` (``model.to_json()``), so the file can be
    turned back into a model with no code at all. Load builds the model from
    ``architecture`` (an import path to a builder function or a Model class,
    called with ``architecture_args``) or, when none is given, from the saved
    architecture, then loads the weights into it. A model that does not match
    the weights is refused with the difference named, never half-loaded.

    The loaded model is not compiled: compile it before training.

    Example usage for the
    `YAML API <https://docs.kedro.org/en/stable/catalog-data/data_catalog_yaml_examples/>`_:

    .. code-block:: yaml

        classifier_weights:
          type: kedro_keras.KerasWeightsDataset
          filepath: data/06_models/classifier.weights.h5
          architecture: my_project.models.build_classifier   # optional
          architecture_args:
            n_classes: 10

    Example usage for the
    `Python API <https://docs.kedro.org/en/stable/catalog-data/advanced_data_catalog_usage/>`_:

    .. code-block:: pycon

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
            filepath: Where the weights live; must end in ``.weights.h5``.
                Local or any fsspec URL.
            architecture: How to rebuild the model on load: an import path
                (``my_project.models.build_classifier``) to a function or a
                Model class, or the callable itself. None rebuilds from the
                architecture JSON saved beside the weights.
            architecture_args: Keyword arguments for ``architecture``.
            load_args: ``custom_objects`` (as for ``KerasModelDataset``) and
                ``safe_mode`` (default True) for the saved architecture.
            save_args: ``include_optimizer`` (default True, as Keras's
                ``save_weights``).
            version: Set by Kedro for ``versioned: true`` entries.
            credentials: Passed to the fsspec filesystem.
            fs_args: Extra arguments for the fsspec filesystem.
            metadata: Anything you want to keep with the entry.

        Raises:
            DatasetError: ``filepath`` does not end in ``.weights.h5``, or
                ``architecture`` is neither an import path nor a callable.
        """
        filepath = str(filepath)
        if not filepath.endswith(WEIGHTS_SUFFIX):
            raise DatasetError(
                f"KerasWeightsDataset needs a file name ending in '{WEIGHTS_SUFFIX}' "
                f"(Keras's weights format); got '{filepath}'."
            )
        if architecture is not None and not (isinstance(architecture, str) or callable(architecture)):
            raise DatasetError(
                "architecture must be an import path such as "
                f"'my_project.models.build_model' or a callable; got {architecture!r}."
            )
        self._architecture = architecture
        self._architecture_args = deepcopy(architecture_args) or {}
        self._location = Location(filepath, credentials, fs_args, version)
        self._fs = self._location.fs
        self._protocol = self._location.protocol
        self.metadata = metadata
        self._load_args = {**self.DEFAULT_LOAD_ARGS, **(load_args or {})}
        self._save_args = {**self.DEFAULT_SAVE_ARGS, **(save_args or {})}
        _check_args("load_args", self._load_args, {"custom_objects", "safe_mode"})
        _check_args("save_args", self._save_args, {"include_optimizer"})

        super().__init__(
            filepath=self._location.path,
            version=version,
            exists_function=self._exists_file,
            glob_function=self._glob,
        )

    def _exists_file(self, path: str) -> bool:
        return self._location.exists(path)

    def _glob(self, pattern: str) -> list[str]:
        return self._location.glob(pattern)

    def _describe(self) -> dict[str, Any]:
        architecture = self._architecture
        if callable(architecture):
            architecture = f"{architecture.__module__}.{architecture.__qualname__}"
        return {
            "filepath": self._location.url(self._filepath),
            "architecture": architecture or "saved beside the weights",
            "architecture_args": self._architecture_args,
            "version": self._version,
            "load_args": self._load_args,
            "save_args": self._save_args,
        }

    def load(self) -> keras.Model:
        weights_path = self._get_load_path()
        url = self._location.url(weights_path)
        if not self._location.exists(weights_path):
            raise DatasetError(f"No Keras weights at '{url}': the file does not exist.")

        visited: set[int] = set()

        def fill(model: keras.Model) -> None:
            try:
                with self._location.open_read(weights_path) as file:
                    if not visited:  # the first pass; a second loads only the optimizer
                        mismatch = _formats.describe_weight_mismatch(model, _formats.stored_weight_shapes(file))
                        if mismatch:
                            raise DatasetError(
                                f"The weights at '{url}' do not fit the model '{model.name}': {mismatch}"
                            )
                    _formats.read_weights_into(model, file, visited)
            except DatasetError:
                raise
            except _formats.CorruptFileError as exc:
                raise DatasetError(
                    f"'{url}' is corrupt: {exc}. Restore it from a good copy or save the weights again."
                ) from exc
            except OSError as exc:
                raise DatasetError(
                    f"'{url}' is not a valid .weights.h5 file ({exc}): the file is truncated, "
                    "corrupt, or in another format."
                ) from exc
            except Exception as exc:
                raise DatasetError(f"Cannot load the weights at '{url}' into model '{model.name}': {exc}") from exc

        if self._architecture is not None:
            # A user's builder may call its model on data or set weights
            # itself: build it exactly as written.
            model = _formats.build_and_fill(self._build_from_builder, fill, skip_initialisation=False)
        else:
            model = self._rebuild_from_saved_architecture(weights_path, fill)
        logger.info("Loaded weights from %s into model '%s'", url, model.name)
        return model

    def _rebuild_from_saved_architecture(
        self, weights_path: PurePosixPath, fill: Callable[[keras.Model], None]
    ) -> keras.Model:
        try:
            custom_objects = _formats.resolve_custom_objects(self._load_args.get("custom_objects"))
        except (ValueError, ImportError) as exc:
            raise DatasetError(f"load_args.custom_objects: {exc}") from exc
        architecture_path = _architecture_path(weights_path)
        url = self._location.url(architecture_path)
        try:
            with self._location.open_read(architecture_path) as file:
                architecture = file.read()
        except FileNotFoundError as exc:
            raise DatasetError(
                f"Cannot rebuild the model for '{self._location.url(weights_path)}': no "
                f"architecture was saved at '{url}' and the catalog entry gives no "
                "'architecture' builder. Add architecture: <import path to a builder>."
            ) from exc
        try:
            return _formats.build_model_and_fill(
                architecture, fill, custom_objects=custom_objects, safe_mode=self._load_args["safe_mode"]
            )
        except DatasetError:
            raise
        except Exception as exc:
            raise DatasetError(f"Cannot rebuild the model from the architecture at '{url}': {exc}") from exc

    def _build_from_builder(self) -> keras.Model:
        builder = self._architecture
        name = builder if isinstance(builder, str) else getattr(builder, "__qualname__", repr(builder))
        try:
            if isinstance(builder, str):
                builder = _formats.import_object(builder)
            if not callable(builder):
                raise ValueError(f"'{name}' is a {type(builder).__name__}, not a function or class")
            return _formats.build_from_builder(builder, self._architecture_args)
        except Exception as exc:
            raise DatasetError(
                f"The architecture builder '{name}' (args {self._architecture_args}) "
                f"did not give a model: {type(exc).__name__}: {exc}"
            ) from exc

    def save(self, data: keras.Model) -> None:
        weights_path = self._get_save_path()
        url = self._location.url(weights_path)
        _check_is_model(data, url)
        if not data.built:
            raise DatasetError(
                f"Cannot save the weights of model '{data.name}' to '{url}': the model "
                "is not built yet, so it has no weights. Call it on data first."
            )
        architecture_path = _architecture_path(weights_path)
        try:
            # Both files are published only if both were written in full.
            with self._location.atomic_write(architecture_path) as architecture_file, self._location.atomic_write(
                weights_path
            ) as weights_file:
                architecture_file.write(_formats.architecture_json(data).encode())
                _formats.write_weights(data, weights_file, **self._save_args)
        except Exception as exc:
            raise DatasetError(
                f"Could not save the weights of model '{data.name}' to '{url}': {exc}. "
                "Any weights previously saved there are unchanged."
            ) from exc
        self._location.invalidate_cache(weights_path)
        logger.info("Saved weights of model '%s' to %s", data.name, url)

    def _exists(self) -> bool:
        try:
            path = self._get_load_path()
        except DatasetError:
            return False
        return self._location.exists(path)

    def _release(self) -> None:
        super()._release()
        self._location.invalidate_cache(self._filepath)


def _architecture_path(weights_path: PurePosixPath) -> PurePosixPath:
    return weights_path.with_name(weights_path.name[: -len(WEIGHTS_SUFFIX)] + ARCHITECTURE_SUFFIX)
