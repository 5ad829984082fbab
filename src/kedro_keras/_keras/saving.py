"""Keras's private saving functions: the one module that calls them.

Keras's public ``save_model``/``load_model`` accept only local paths; its
private ``saving_lib`` works on file objects, which lets a model go straight
to any fsspec file with no temp-directory copy. Every private function is
checked here, by name and by the parameters we pass (always by keyword), and
``available()`` says whether the fast path may be used; otherwise the formats
fall back to the public API through a local temporary file, so an unknown
Keras version still works, only slower. ``KEDRO_KERAS_PUBLIC_API_ONLY=1``
switches every Keras internal off (this module's, ``_keras.stores``' and
``_keras.build``'s uninitialised build), and the tests run that way too.

With ``_keras.stores`` (subclasses of Keras's ``H5IOStore``) and
``_keras.build`` (variables created without a value), these are the only
files to re-read when Keras changes.
"""

from __future__ import annotations

import functools
import inspect
import os
import shutil
import tempfile
import zipfile
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    import keras

_PUBLIC_API_ONLY_ENV = "KEDRO_KERAS_PUBLIC_API_ONLY"

# What we call in keras.src.saving.saving_lib, and the parameters we pass.
_SAVING_LIB = {
    "_serialize_model_as_json": {"model"},
    "_save_state": {"saveable", "weights_store", "assets_store", "inner_path", "visited_saveables"},
    "_model_from_config": {"config_json", "custom_objects", "compile", "safe_mode"},
    "_load_state": {
        "saveable",
        "weights_store",
        "assets_store",
        "inner_path",
        "visited_saveables",
        "failed_saveables",
        "error_msgs",
    },
    "H5IOStore": {"path_or_io", "archive", "mode"},
    "DiskIOStore": {"root_path", "archive", "mode"},
}


def public_api_only() -> bool:
    """True when the user (or a test) switched every Keras internal off."""
    return os.environ.get(_PUBLIC_API_ONLY_ENV, "").lower() in ("1", "true", "yes")


def _has_parameters(target: Any, parameters: set[str]) -> bool:
    try:
        return parameters <= set(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return False


def _saving_lib() -> Any | None:
    if public_api_only():
        return None
    try:
        from keras.src.saving import saving_lib
    except ImportError:
        return None
    targets = tuple(getattr(saving_lib, name, None) for name in _SAVING_LIB)
    return saving_lib if _signatures_fit(targets) else None


@functools.lru_cache(maxsize=16)
def _signatures_fit(targets: tuple[Any, ...]) -> bool:
    # Read once per set of functions: every save and load asks, a checkpoint
    # each epoch (reading the signatures each time cost ~1 ms a checkpoint on
    # a small model); a function replaced (another Keras, a test) is read anew.
    return all(
        target is not None and _has_parameters(target, parameters)
        for target, parameters in zip(targets, _SAVING_LIB.values(), strict=True)
    )


def available() -> bool:
    """Whether the file-object fast path can be used with this Keras."""
    return _saving_lib() is not None


def _lib() -> Any:
    saving_lib = _saving_lib()
    if saving_lib is None:  # callers check available() first
        raise RuntimeError("Keras's saving internals are not available")
    return saving_lib


def serialize_model(model: keras.Model) -> tuple[str, str]:
    """The model's ``config.json`` and Keras's ``metadata.json``, as ``model.save`` writes them."""
    return _lib()._serialize_model_as_json(model=model)


def model_from_config(
    config_json: str, custom_objects: dict[str, Any] | None, safe_mode: bool
) -> keras.Model:
    """Keras's own rebuild from ``config.json`` (it also restores objects shared
    between layers), never compiling: the caller compiles after the build."""
    return _lib()._model_from_config(
        config_json=config_json, custom_objects=custom_objects, compile=False, safe_mode=safe_mode
    )


def save_state(model: keras.Model, weights_store: Any, assets_store: Any, *, include_optimizer: bool) -> None:
    """Keras's walk over the model's state, writing each array into ``weights_store``."""
    optimizer = getattr(model, "optimizer", None) if include_optimizer else None
    with _optimizer_handing_over_variables(optimizer):
        _lib()._save_state(
            saveable=model,
            weights_store=weights_store,
            assets_store=assets_store,
            inner_path="",
            visited_saveables=skipped_saveables(model, include_optimizer),
        )
    _keep_attribute_skipsets()


# The object types whose attribute skip-sets Keras's walk computes.
_SKIPSET_TYPES = (
    "Operation",
    "Layer",
    "Functional",
    "Sequential",
    "Metric",
    "Optimizer",
    "Loss",
    "Cross",
    "Feature",
)


def _keep_attribute_skipsets() -> None:
    """Keras's ``get_attr_skipset`` stores each skip-set under one key
    (``saving_attr_skipset_<type>``) and looks it up under another
    (``saving_attr_skiplist_<type>``), so every save and load builds a
    reference Layer, Optimizer, Metric, ... again: 8 ms of a small model's
    20 ms checkpoint (profiled, Keras 3.15). The sets depend on the type
    alone; storing each under the key looked up makes Keras find it. A Keras
    that fixes the keys finds its own, and this does nothing."""
    try:
        from keras.src.backend.common import global_state
    except ImportError:
        return
    for obj_type in _SKIPSET_TYPES:
        stored = global_state.get_global_attribute(f"saving_attr_skipset_{obj_type}", None)
        if (
            stored is not None
            and global_state.get_global_attribute(f"saving_attr_skiplist_{obj_type}", None) is None
        ):
            global_state.set_global_attribute(f"saving_attr_skiplist_{obj_type}", stored)


@contextmanager
def _optimizer_handing_over_variables(optimizer: Any) -> Iterator[None]:
    """While a save runs, a Keras optimizer hands the store its variables
    rather than ``variable.numpy()`` (same keys, same values).

    Keras's own ``save_own_variables`` makes a whole copy of each slot before
    the store sees it, and Adam keeps two slots the size of each kernel; the
    store takes a large variable out of the backend a slice at a time. An
    optimizer with its own ``save_own_variables`` is left alone.
    """
    import keras

    if (
        optimizer is None
        or type(optimizer).save_own_variables is not keras.optimizers.Optimizer.save_own_variables
    ):
        yield
        return

    def save_own_variables(store: Any) -> None:
        for index, variable in enumerate(optimizer.variables):
            store[str(index)] = variable

    optimizer.save_own_variables = save_own_variables
    try:
        yield
    finally:
        del optimizer.save_own_variables


def skipped_saveables(model: keras.Model, include_optimizer: bool) -> set[int]:
    """The ``visited_saveables`` that make Keras leave the optimizer out."""
    optimizer = getattr(model, "optimizer", None)
    if include_optimizer or optimizer is None:
        return set()
    return {id(optimizer)}


def load_state(model: keras.Model, weights_store: Any, assets_store: Any, visited: set[int]) -> None:
    """Fill ``model`` from the stores; refuse a partial load as Keras does.

    ``visited`` carries over between calls, so a second call after compiling
    loads only what compiling added (the optimizer).
    """
    failed: set[int] = set()
    errors: dict[int, Any] = {}
    visited.discard(id(model))  # walk the model again; its loaded parts stay skipped
    _lib()._load_state(
        saveable=model,
        weights_store=weights_store,
        assets_store=assets_store,
        inner_path="",
        visited_saveables=visited,
        failed_saveables=failed,
        error_msgs=errors,
    )
    _keep_attribute_skipsets()
    if failed:
        saveable, error = next(iter(errors.values()))
        raise ValueError(
            f"{len(errors)} part(s) of the model could not be loaded; the first, "
            f"{getattr(saveable, 'name', type(saveable).__name__)}, failed with: {error}"
        )


def h5_store_class() -> type:
    """Keras's ``H5IOStore``, which ``_save_state``/``_load_state`` require."""
    return _lib().H5IOStore


def assets_writer(archive: zipfile.ZipFile) -> Any:
    """Keras's asset store writing ``assets/`` members into ``archive``; close it to add them."""
    return _lib().DiskIOStore(root_path="assets", archive=archive, mode="w")


@contextmanager
def assets_reader(archive: zipfile.ZipFile) -> Iterator[Any]:
    """Keras's asset store over only the ``assets/`` members.

    Keras's own loader extracts the whole archive, weights included, to a
    temporary folder; assets are small (vocabularies), so we take just them.
    """
    assets = [
        info for info in archive.infolist() if info.filename.startswith("assets/") and not info.is_dir()
    ]
    if not assets:
        yield None
        return
    folder = tempfile.mkdtemp(prefix="kedro-keras-assets-")
    try:
        root = os.path.realpath(folder)
        for info in assets:
            target = os.path.realpath(os.path.join(root, info.filename))
            if not target.startswith(root + os.sep):
                raise ValueError(f"refusing archive member '{info.filename}': it points outside the archive")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with archive.open(info) as source, open(target, "wb") as destination:
                shutil.copyfileobj(source, destination)
        yield _lib().DiskIOStore(root_path=os.path.join(root, "assets"), mode="r")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def safe_mode_scope(safe_mode: bool) -> Any:
    """Keras's scope that makes nested deserialisation honour ``safe_mode``
    (compiling from a config deserialises losses and metrics)."""
    try:
        from keras.src.saving.serialization_lib import SafeModeScope
    except ImportError:  # pragma: no cover - depends on the Keras version
        return nullcontext()
    return SafeModeScope(safe_mode)


def legacy_h5_format() -> Any | None:
    """Keras's legacy HDF5 module, if it reads from an open h5py file and
    honours ``safe_mode`` (Keras 3.11.3 on); None to use the public API."""
    if public_api_only():
        return None
    try:
        from keras.src.legacy.saving import legacy_h5_format as module
    except ImportError:
        return None
    loads = getattr(module, "load_model_from_hdf5", None)
    saves = getattr(module, "save_model_to_hdf5", None)
    if not (
        loads is not None
        and saves is not None
        and _has_parameters(loads, {"filepath", "custom_objects", "compile", "safe_mode"})
        and _has_parameters(saves, {"model", "filepath", "include_optimizer"})
    ):
        return None
    return module


@contextmanager
def local_copy(suffix: str) -> Iterator[str]:
    """A path in a fresh temporary folder, removed afterwards: where the
    public-API fallbacks let Keras read or write a local file."""
    folder = tempfile.mkdtemp(prefix="kedro-keras-")
    try:
        yield os.path.join(folder, f"model{suffix}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
