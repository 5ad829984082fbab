"""Keras model formats on open file objects: the format half of the I/O layer.

Nothing here knows where a file lives; ``_files`` hands over open binary
files. Keras is imported inside the functions so that ``import kedro_keras``
stays free of Keras and its backend.

Keras's public ``save_model``/``load_model`` accept only local paths. Its
private ``saving_lib`` works on file objects, which lets a model go straight
to any fsspec file with no temp-directory copy. We use it when the pieces we
need are present with the signatures we tested (``_private_saving_lib``) and
otherwise fall back to the public API through a local temporary file, so an
unknown Keras version still works, only slower.
"""

from __future__ import annotations

import importlib
import inspect
import io
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from collections import Counter
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

CONFIG_MEMBER = "config.json"
METADATA_MEMBER = "metadata.json"
WEIGHTS_MEMBER = "model.weights.h5"
OPTIMIZER_GROUP = "optimizer"

# Only dotted Python names: an import path is imported, never evaluated.
_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)?$")


# --------------------------------------------------------------------------
# Import paths (custom objects and builders written in YAML)
# --------------------------------------------------------------------------


def import_object(import_path: str) -> Any:
    """Import ``package.module.Name`` (or ``package.module:Name``).

    Raises:
        ValueError: the string is not a dotted Python name, or nothing
            importable is at that path.
    """
    if not isinstance(import_path, str) or not _IMPORT_PATH.match(import_path):
        raise ValueError(
            f"'{import_path}' is not an import path: expected dotted Python "
            "names such as 'my_project.layers.Scale'"
        )
    if ":" in import_path:
        module_name, attribute_path = import_path.split(":")
        candidates = [(module_name, attribute_path.split("."))]
    else:
        parts = import_path.split(".")
        # Longest importable module first: 'a.b.C.D' may be class D nested in C.
        candidates = [
            (".".join(parts[:i]), parts[i:]) for i in range(len(parts) - 1, 0, -1)
        ]
    for module_name, attributes in candidates:
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # this prefix is not a module; try a shorter one
            raise  # the module exists but one of its own imports failed
        try:
            for attribute in attributes:
                obj = getattr(obj, attribute)
        except AttributeError:
            raise ValueError(
                f"cannot import '{import_path}': module '{module_name}' has no "
                f"attribute '{'.'.join(attributes)}'"
            ) from None
        return obj
    raise ValueError(f"cannot import '{import_path}': no module of that name")


def resolve_custom_objects(custom_objects: Any) -> dict[str, Any] | None:
    """Turn a YAML-friendly ``custom_objects`` into what Keras expects.

    Accepts a mapping whose values are objects or import-path strings, or a
    list of import paths (each registered under its last name).
    """
    if custom_objects is None:
        return None
    if isinstance(custom_objects, (list, tuple)):
        custom_objects = {
            path.replace(":", ".").rsplit(".", 1)[-1]: path for path in custom_objects
        }
    if not isinstance(custom_objects, dict):
        raise ValueError(
            "custom_objects must be a mapping of names to classes or import "
            f"paths, or a list of import paths; got {type(custom_objects).__name__}"
        )
    return {
        name: import_object(value) if isinstance(value, str) else value
        for name, value in custom_objects.items()
    }


# --------------------------------------------------------------------------
# Keras internals (fast path) and the public fallback
# --------------------------------------------------------------------------

_PRIVATE_API_ENV = "KEDRO_KERAS_PUBLIC_API_ONLY"


def _private_saving_lib() -> Any | None:
    """Keras's file-object saving internals, or None to use the public API.

    Feature-checked rather than version-pinned: every name and parameter we
    call must be there. Setting ``KEDRO_KERAS_PUBLIC_API_ONLY=1`` forces the
    public fallback (the tests run both paths).
    """
    if os.environ.get(_PRIVATE_API_ENV, "").lower() in ("1", "true", "yes"):
        return None
    try:
        from keras.src.saving import saving_lib
    except ImportError:
        return None
    needed = {
        "_serialize_model_as_json": {"model"},
        "_save_state": {"saveable", "weights_store", "assets_store", "inner_path", "visited_saveables"},
        "load_model": {"filepath", "custom_objects", "compile", "safe_mode"},
        "H5IOStore": {"path_or_io", "archive", "mode"},
        "DiskIOStore": {"root_path", "archive", "mode"},
        "_load_state": {"saveable", "weights_store", "assets_store", "inner_path", "visited_saveables", "failed_saveables", "error_msgs"},
    }
    for name, parameters in needed.items():
        target = getattr(saving_lib, name, None)
        if target is None:
            return None
        try:
            present = set(inspect.signature(target).parameters)
        except (TypeError, ValueError):
            return None
        if not parameters <= present:
            return None
    return saving_lib


@contextmanager
def _local_copy(suffix: str) -> Iterator[str]:
    """A path in a fresh temporary folder, removed afterwards (fallback only)."""
    folder = tempfile.mkdtemp(prefix="kedro-keras-")
    try:
        yield os.path.join(folder, f"model{suffix}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def kedro_keras_metadata(include_optimizer: bool) -> dict[str, Any]:
    """What we add to a saved model's metadata, for describe and debugging."""
    import keras

    from kedro_keras import __version__

    return {
        "keras_version": keras.version(),
        "backend": keras.backend.backend(),
        "kedro_keras_version": __version__,
        "include_optimizer": include_optimizer,
    }


# --------------------------------------------------------------------------
# .keras archives
# --------------------------------------------------------------------------


def write_keras_archive(model: keras.Model, file: IO[bytes], *, include_optimizer: bool = True) -> None:
    """Write ``model`` as a ``.keras`` archive into an open binary file.

    Byte-compatible with ``model.save``: the same members, weights stored
    uncompressed. ``metadata.json`` gains a ``kedro_keras`` entry that Keras
    ignores.
    """
    saving_lib = _private_saving_lib()
    if saving_lib is None:
        _write_keras_archive_public(model, file, include_optimizer=include_optimizer)
        return

    config_json, metadata_json = saving_lib._serialize_model_as_json(model)
    metadata = json.loads(metadata_json)
    metadata["kedro_keras"] = kedro_keras_metadata(include_optimizer)

    with zipfile.ZipFile(file, "w") as archive:
        archive.writestr(METADATA_MEMBER, json.dumps(metadata))
        archive.writestr(CONFIG_MEMBER, config_json)
        weights_store = saving_lib.H5IOStore(WEIGHTS_MEMBER, archive=archive, mode="w")
        assets_store = saving_lib.DiskIOStore("assets", archive=archive, mode="w")
        try:
            saving_lib._save_state(
                model,
                weights_store=weights_store,
                assets_store=assets_store,
                inner_path="",
                visited_saveables=_skipped_saveables(model, include_optimizer),
            )
        except BaseException:
            weights_store.archive = None  # do not add a half-written member
            raise
        finally:
            weights_store.close()
            assets_store.close()


def _write_keras_archive_public(model: keras.Model, file: IO[bytes], *, include_optimizer: bool) -> None:
    """Fallback: ``model.save`` to a temp file, then copy it member by member.

    The copy is where we add our metadata and, for ``include_optimizer=False``,
    drop the optimizer's group from the weights.
    """
    with _local_copy(".keras") as local_path:
        model.save(local_path)
        with zipfile.ZipFile(local_path) as source, zipfile.ZipFile(file, "w") as target:
            for info in source.infolist():
                data = source.read(info)
                if info.filename == METADATA_MEMBER:
                    metadata = json.loads(data)
                    metadata["kedro_keras"] = kedro_keras_metadata(include_optimizer)
                    data = json.dumps(metadata).encode()
                elif info.filename == WEIGHTS_MEMBER and not include_optimizer:
                    data = _without_optimizer_group(data)
                target.writestr(info, data)


def _without_optimizer_group(h5_bytes: bytes) -> bytes:
    import h5py

    source_buffer, target_buffer = io.BytesIO(h5_bytes), io.BytesIO()
    with h5py.File(source_buffer, "r") as source, h5py.File(target_buffer, "w") as target:
        for key, value in source.attrs.items():
            target.attrs[key] = value
        for name in source:
            if name != OPTIMIZER_GROUP:
                source.copy(source[name], target, name=name)
    return target_buffer.getvalue()


def read_archive_metadata(file: IO[bytes]) -> dict[str, Any]:
    """``metadata.json`` of a ``.keras`` archive, without reading the weights."""
    with zipfile.ZipFile(file) as archive:
        return json.loads(archive.read(METADATA_MEMBER))


def read_keras_archive(
    file: IO[bytes],
    *,
    custom_objects: dict[str, Any] | None = None,
    compile: bool = True,  # noqa: A002 - Keras's own name for it
    safe_mode: bool = True,
) -> keras.Model:
    """Build the model stored in an open ``.keras`` archive."""
    with zipfile.ZipFile(file) as archive:
        names = set(archive.namelist())
        missing = {CONFIG_MEMBER, WEIGHTS_MEMBER} - names
        if missing:
            raise ValueError(
                f"not a Keras model archive: it has no {', '.join(sorted(missing))}"
            )
        metadata = json.loads(archive.read(METADATA_MEMBER)) if METADATA_MEMBER in names else {}
    file.seek(0)
    slim = metadata.get("kedro_keras", {}).get("include_optimizer") is False

    with warnings.catch_warnings():
        if slim:
            # Saved without optimizer state on purpose: Keras's warning that it
            # skips the optimizer would only alarm the user.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        saving_lib = _private_saving_lib()
        if saving_lib is not None:
            return saving_lib.load_model(
                file, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
            )
        import keras

        with _local_copy(".keras") as local_path:
            with open(local_path, "wb") as local_file:
                shutil.copyfileobj(file, local_file)
            return keras.saving.load_model(
                local_path, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
            )


# --------------------------------------------------------------------------
# Legacy .h5 whole models
# --------------------------------------------------------------------------


def write_legacy_h5(model: keras.Model, file: IO[bytes], *, include_optimizer: bool = True) -> None:
    """Write ``model`` in the legacy HDF5 format (HDF5 needs a seekable file)."""
    import h5py

    try:
        from keras.src.legacy.saving import legacy_h5_format
    except ImportError:  # pragma: no cover - depends on the Keras version
        legacy_h5_format = None

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # We warn once, at construction, about the legacy format.
        warnings.filterwarnings("ignore", message=".*HDF5 file via `model.save\\(\\)`")
        if legacy_h5_format is not None:
            with h5py.File(buffer, "w") as h5_file:
                legacy_h5_format.save_model_to_hdf5(model, h5_file, include_optimizer=include_optimizer)
        else:
            with _local_copy(".h5") as local_path:
                model.save(local_path, include_optimizer=include_optimizer)
                with open(local_path, "rb") as local_file:
                    shutil.copyfileobj(local_file, buffer)
    file.write(buffer.getbuffer())


def read_legacy_h5(
    file: IO[bytes],
    *,
    custom_objects: dict[str, Any] | None = None,
    compile: bool = True,  # noqa: A002
    safe_mode: bool = True,
) -> keras.Model:
    """Build the model stored in a legacy HDF5 file.

    Keras's legacy loader does not apply ``safe_mode`` to Lambda layers, so we
    check the stored config ourselves before deserializing anything.
    """
    import h5py

    with h5py.File(file, "r") as h5_file:
        model_config = h5_file.attrs.get("model_config")
        if model_config is None:
            raise ValueError(
                "not a Keras HDF5 model: it has no model_config (is it a weights-only file?)"
            )
        if safe_mode:
            _refuse_lambda_layers(json.loads(model_config))
        try:
            return _load_legacy_h5(h5_file, file, custom_objects, compile, safe_mode)
        except Exception as exc:
            if not compile or "deserialize" not in str(exc):
                raise
            # Keras 3 cannot rebuild some Keras 2 training configs (such as the
            # 'mse' metric alias). The architecture and weights are fine.
            logger.warning(
                "Could not restore the training configuration of this legacy "
                "HDF5 model (%s); loaded it uncompiled. Compile it before "
                "training, or set load_args: {compile: false} to skip this.",
                exc,
            )
            return _load_legacy_h5(h5_file, file, custom_objects, False, safe_mode)


def _load_legacy_h5(
    h5_file: Any, file: IO[bytes], custom_objects: Any, compile: bool, safe_mode: bool  # noqa: A002
) -> keras.Model:
    try:
        from keras.src.legacy.saving import legacy_h5_format
    except ImportError:  # pragma: no cover - depends on the Keras version
        import keras

        file.seek(0)
        with _local_copy(".h5") as local_path:
            with open(local_path, "wb") as local_file:
                shutil.copyfileobj(file, local_file)
            return keras.saving.load_model(
                local_path, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
            )
    return legacy_h5_format.load_model_from_hdf5(
        h5_file, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
    )


def _refuse_lambda_layers(config: Any) -> None:
    """Raise if a (nested) Keras config holds a Lambda layer."""
    if isinstance(config, dict):
        if config.get("class_name") == "Lambda":
            raise ValueError(
                "the model contains a Lambda layer, whose code runs when the "
                "model is loaded; refused because safe_mode is on. Load it with "
                "load_args: {safe_mode: false} only if you trust the file"
            )
        for value in config.values():
            _refuse_lambda_layers(value)
    elif isinstance(config, list):
        for value in config:
            _refuse_lambda_layers(value)


# --------------------------------------------------------------------------
# .weights.h5 files and the architecture saved beside them
# --------------------------------------------------------------------------


def write_weights(model: keras.Model, file: IO[bytes], *, include_optimizer: bool = True) -> None:
    """Write the weights (and optimizer state) in Keras's ``.weights.h5`` layout.

    HDF5 needs a seekable file, which object-store uploads are not, so the
    file is built in memory and then written in one go.
    """
    saving_lib = _private_saving_lib()
    buffer = io.BytesIO()
    if saving_lib is not None:
        store = saving_lib.H5IOStore(buffer, mode="w")
        try:
            saving_lib._save_state(
                model,
                weights_store=store,
                assets_store=None,
                inner_path="",
                visited_saveables=_skipped_saveables(model, include_optimizer),
            )
        finally:
            store.close()
        file.write(buffer.getbuffer())
        return
    with _local_copy(".weights.h5") as local_path:
        model.save_weights(local_path)
        with open(local_path, "rb") as local_file:
            data = local_file.read()
    file.write(data if include_optimizer else _without_optimizer_group(data))


def _skipped_saveables(model: keras.Model, include_optimizer: bool) -> set[int]:
    """The ``visited_saveables`` that make Keras leave the optimizer out."""
    optimizer = getattr(model, "optimizer", None)
    if include_optimizer or optimizer is None:
        return set()
    return {id(optimizer)}


def architecture_json(model: keras.Model) -> str:
    return model.to_json()


def model_from_architecture(
    architecture: str | bytes,
    *,
    custom_objects: dict[str, Any] | None = None,
    safe_mode: bool = True,
) -> keras.Model:
    import keras

    config = json.loads(architecture)
    return keras.saving.deserialize_keras_object(config, custom_objects=custom_objects, safe_mode=safe_mode)


def build_from_builder(builder: Callable[..., Any], builder_args: dict[str, Any]) -> keras.Model:
    """Call a builder function or Model class and check it gave a model."""
    import keras

    model = builder(**builder_args)
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"the architecture builder returned {type(model).__name__}, not a keras.Model"
        )
    return model


def stored_weight_shapes(file: IO[bytes]) -> list[tuple[str, tuple[int, ...]]]:
    """(path, shape) of every model array in a ``.weights.h5`` file.

    The optimizer's group is left out: a builder's model is compared on its
    own variables.
    """
    import h5py

    found: list[tuple[str, tuple[int, ...]]] = []

    def visit(name: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset) and not name.startswith(f"{OPTIMIZER_GROUP}/"):
            found.append((name, tuple(item.shape)))

    with h5py.File(file, "r") as h5_file:
        h5_file.visititems(visit)
    file.seek(0)
    return found


def describe_weight_mismatch(model: keras.Model, stored: list[tuple[str, tuple[int, ...]]]) -> str | None:
    """Why ``model`` cannot take the stored weights, or None if it can.

    Keras itself ignores arrays that no layer asks for and loads nothing into
    sublayers that were never built, so we compare before loading.
    """
    model_shapes = sorted(tuple(v.shape) for v in model.weights)
    stored_shapes = sorted(shape for _, shape in stored)
    if model_shapes == stored_shapes:
        return None
    if len(model_shapes) != len(stored_shapes):
        hint = ""
        if len(model_shapes) < len(stored_shapes):
            hint = (
                " Is every sublayer built? Call the model on a batch of data, or "
                "build it with an input shape, inside the builder."
            )
        return (
            f"the model has {len(model_shapes)} weight arrays but the file holds "
            f"{len(stored_shapes)}.{hint}"
        )
    only_model = Counter(model_shapes) - Counter(stored_shapes)
    only_file = Counter(stored_shapes) - Counter(model_shapes)
    return (
        "weight shapes differ: the model has "
        f"{_shape_list(only_model)} where the file has {_shape_list(only_file)}"
    )


def _shape_list(shapes: Counter) -> str:
    return ", ".join(str(shape) for shape in sorted(shapes.elements())) or "nothing"


def read_weights_into(model: keras.Model, file: IO[bytes]) -> None:
    """Load the weights in an open ``.weights.h5`` file into a built model."""
    saving_lib = _private_saving_lib()
    if saving_lib is not None:
        buffer = io.BytesIO(file.read())
        store = saving_lib.H5IOStore(buffer, mode="r")
        failed: set[int] = set()
        errors: dict[int, Any] = {}
        try:
            with _quiet_unbuilt_optimizer():
                saving_lib._load_state(
                    model,
                    weights_store=store,
                    assets_store=None,
                    inner_path="",
                    visited_saveables=set(),
                    failed_saveables=failed,
                    error_msgs=errors,
                )
        finally:
            store.close()
        if failed:
            saveable, error = next(iter(errors.values()))
            raise ValueError(f"could not load weights into {getattr(saveable, 'name', saveable)}: {error}")
        return
    with _local_copy(".weights.h5") as local_path:
        with open(local_path, "wb") as local_file:
            shutil.copyfileobj(file, local_file)
        with _quiet_unbuilt_optimizer():
            model.load_weights(local_path)


@contextmanager
def _quiet_unbuilt_optimizer() -> Iterator[None]:
    # A rebuilt model's optimizer has no slots until it trains; Keras then
    # skips the saved optimizer state with a warning that is expected here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        yield
