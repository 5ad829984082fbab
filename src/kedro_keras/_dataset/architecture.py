"""What ``KerasWeightsDataset`` rebuilds a model from before it loads the
weights into it: the architecture JSON saved beside the weights (or embedded
in a sharded index), read bounded and checked as a ``.keras`` archive's
config is, or the builder a catalog entry names.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Callable

from kedro.io.core import DatasetError

from kedro_keras._formats import archive as _archive
from kedro_keras._formats import imports as _imports
from kedro_keras._formats import safe_configs as _safe_configs
from kedro_keras._formats.quantization import cannot_rebuild
from kedro_keras._formats.safe_configs import UnsafeConfigError, refuse_unsafe_config
from kedro_keras._formats.sharded import INDEX_SUFFIX
from kedro_keras._formats.weights import WEIGHTS_SUFFIX
from kedro_keras._io.files import Location
from kedro_keras._keras import build as _keras_build
from kedro_keras._log import SafeDatasetError, as_data

if TYPE_CHECKING:
    import keras

ARCHITECTURE_SUFFIX = ".architecture.json"


def architecture_path(weights_path: PurePosixPath) -> PurePosixPath:
    """``clf.architecture.json`` beside ``clf.weights.h5`` or ``clf.weights.json``."""
    return weights_path.with_name(base_name(weights_path) + ARCHITECTURE_SUFFIX)


def base_name(weights_path: PurePosixPath) -> str:
    """``clf`` for ``clf.weights.h5`` and ``clf.weights.json``."""
    suffix = INDEX_SUFFIX if weights_path.name.endswith(INDEX_SUFFIX) else WEIGHTS_SUFFIX
    return weights_path.name[: -len(suffix)]


def rebuild_from_saved_architecture(
    location: Location,
    weights_path: PurePosixPath,
    fill: Callable[[keras.Model], None],
    load_args: dict[str, Any],
    embedded: str | None = None,
    saved_with: dict[str, Any] | None = None,
) -> keras.Model:
    """Rebuild from ``embedded`` (the architecture a sharded index carries)
    or else from the ``.architecture.json`` beside the weights; what the
    architecture records about its writer goes into ``saved_with``."""
    try:
        custom_objects = _imports.resolve_custom_objects(
            load_args.get("custom_objects"), safe_mode=load_args["safe_mode"]
        )
    except Exception as exc:  # noqa: BLE001 - whatever the named module raises on import, as a DatasetError
        raise SafeDatasetError(f"load_args.custom_objects: {exc}") from as_data(exc)
    if embedded is not None:
        architecture, url = embedded, location.url(weights_path)
    else:
        architecture, url = read_architecture_beside(location, weights_path)
    config: Any = None
    try:
        config = json.loads(architecture)
        if saved_with is not None and isinstance(config, dict):
            saved_with.update(config.get("kedro_keras") or {})
        _safe_configs.check_config_bounds(
            config,
            load_args.get("max_layers", _safe_configs.DEFAULT_MAX_LAYERS),
            load_args.get("max_config_depth", _safe_configs.DEFAULT_MAX_CONFIG_DEPTH),
        )
        if load_args["safe_mode"] is not False:  # anything but a literal false is safe
            refuse_unsafe_config(config, custom_objects)
        return _keras_build.build_model_and_fill(
            architecture, fill, custom_objects=custom_objects, safe_mode=load_args["safe_mode"]
        )
    except DatasetError:
        raise
    except UnsafeConfigError as exc:
        raise SafeDatasetError(f"Refusing the architecture at '{url}': {exc}.") from as_data(exc)
    except Exception as exc:  # noqa: BLE001 - re-raised as a DatasetError, the text escaped
        hint = _imports.unknown_class_hint(exc)
        written_by = (
            (config.get("kedro_keras") or {}).get("keras_version") if isinstance(config, dict) else None
        )
        another_cause = (hint and "DTypePolicy" not in hint) or isinstance(
            exc, _safe_configs.ConfigTooLargeError
        )
        quantized = None if another_cause else cannot_rebuild(config, written_by, exc)
        raise SafeDatasetError(
            f"Cannot rebuild the model from the architecture at '{url}': {quantized or hint or exc}"
        ) from as_data(exc)


def saved_with_beside(location: Location, weights_path: PurePosixPath) -> dict[str, Any]:
    """What wrote the weights, from the architecture saved beside them,
    for the log line of a load that builds the model from a builder.
    Never raises: that file may be absent (weights saved elsewhere)."""
    try:
        config = json.loads(read_architecture_beside(location, weights_path)[0])
        return dict(config.get("kedro_keras") or {})
    except Exception:  # noqa: BLE001 - a log line's detail only
        return {}


def read_architecture_beside(location: Location, weights_path: PurePosixPath) -> tuple[bytes, str]:
    """The architecture saved beside the weights, and its URL."""
    path = architecture_path(weights_path)
    url = location.url(path)
    try:
        with location.open_read(path) as file:
            # As much as a .keras archive's config.json may hold, and no more read.
            architecture = file.read(_archive.MAX_CONFIG_BYTES + 1)
    except FileNotFoundError as exc:
        raise SafeDatasetError(
            f"Cannot rebuild the model for '{location.url(weights_path)}': no "
            f"architecture was saved at '{url}' and the catalog entry gives no "
            "'architecture' builder. Add architecture: <import path to a builder>."
        ) from as_data(exc)
    if len(architecture) > _archive.MAX_CONFIG_BYTES:
        raise SafeDatasetError(
            f"Refusing the architecture at '{url}': it holds more than {_archive.MAX_CONFIG_BYTES} "
            "bytes, far more than a Keras model's configuration."
        )
    return architecture, url


def build_from_builder(builder: str | Callable[..., Any], args: dict[str, Any]) -> keras.Model:
    """The model the catalog entry's ``architecture`` (an import path or a
    callable) builds with ``architecture_args``."""
    name = builder if isinstance(builder, str) else getattr(builder, "__qualname__", repr(builder))
    try:
        if isinstance(builder, str):
            builder = _imports.import_object(builder)
        if not callable(builder):
            raise ValueError(f"'{name}' is a {type(builder).__name__}, not a function or class")
        return _keras_build.build_from_builder(builder, args)
    except Exception as exc:  # noqa: BLE001 - re-raised as a DatasetError, the text escaped
        raise SafeDatasetError(
            f"The architecture builder '{name}' (args {args}) "
            f"did not give a model: {type(exc).__name__}: {exc}"
        ) from as_data(exc)
