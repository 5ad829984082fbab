"""Keras's ``H5IOStore`` over one ``.weights.h5`` image: writes that take
each array out of the backend with one copy, reads into aligned memory a new
variable can adopt, and a recorder that lists what a model would store.

Importing this module imports Keras (the base class is Keras's own), so only
the functions of ``kedro_keras._keras.stores`` import it, when a model is
saved or loaded.
"""

from __future__ import annotations

import sys
from typing import Any

from kedro_keras._io.aligned_arrays import read_aligned
from kedro_keras._io.h5_guards import checked_dataset
from kedro_keras._keras.build import offer_for_adoption
from kedro_keras._keras.saving import h5_store_class
from kedro_keras._keras.stores import arrays as _arrays

H5IOStore = h5_store_class()


def _knows_write_store_layout(store: Any) -> bool:
    return all(
        hasattr(store, name) for name in ("_h5_entry_initialized", "_h5_entry_path", "_create_h5_group")
    )


class OneCopyWritesH5IOStore(H5IOStore):  # type: ignore[misc, valid-type]
    """Takes each array out of the backend with one copy: Keras's
    ``convert_to_numpy`` makes two under TensorFlow (``np.array`` of the
    variable's own NumPy copy), each a transient the size of the array, on
    top of the HDF5 image being built."""

    def __setitem__(self, key: str, value: Any) -> None:
        slices = _arrays._slices_to_write(value)
        if slices and self.mode in ("w", "a") and _knows_write_store_layout(self):
            if not self._h5_entry_initialized:
                self._create_h5_group(self._h5_entry_path)
            dataset = self._h5_entry_group.create_dataset(key, shape=slices.shape, dtype=slices.dtype)
            for start in range(0, slices.shape[0], slices.rows):
                stop = min(start + slices.rows, slices.shape[0])
                dataset[start:stop] = _arrays.to_numpy_once(value[start:stop])
            return
        array = _arrays.to_numpy_once(value)
        plain = array.dtype.kind in "biuf"  # not bfloat16 and the like, which Keras tags
        if not (plain and self.mode in ("w", "a") and _knows_write_store_layout(self)):
            super().__setitem__(key, array)  # Keras's own code
            return
        if not self._h5_entry_initialized:
            self._create_h5_group(self._h5_entry_path)
        self._h5_entry_group[key] = array


# ---------------------------------------------------------------------------
# Reading: aligned arrays, adopted by the variable Keras assigns them to
# ---------------------------------------------------------------------------


def _keras_loaders() -> frozenset[Any]:
    """The code of Keras's own ``load_own_variables`` methods that hand each
    array straight to ``variable.assign`` and keep nothing: an array read for
    them may become its variable's memory with no copy. A user's layer may
    keep, slice or reshape what it reads, so it gets a plain array that no
    variable adopts."""
    global _LOADERS
    if _LOADERS is None:
        import keras

        owners = [
            getattr(keras.layers, name, None)
            for name in ("Layer", "Dense", "EinsumDense", "Embedding", "Conv1D")
        ] + [getattr(keras.optimizers, "Optimizer", None)]
        methods = [getattr(owner, "load_own_variables", None) for owner in owners if owner is not None]
        _LOADERS = frozenset(method.__code__ for method in methods if hasattr(method, "__code__"))
    return _LOADERS


_LOADERS: frozenset[Any] | None = None


def called_by_keras_loader(depth: int) -> bool:
    """Whether the function ``depth`` frames up is one of Keras's own loaders."""
    return sys._getframe(depth + 1).f_code in _keras_loaders()


class AlignedReadsH5IOStore(H5IOStore):  # type: ignore[misc, valid-type]
    """Reads arrays into aligned memory.

    What ``load_own_variables`` receives is a ``numpy.ndarray``, as from
    Keras's own store; only those read for Keras's own loaders are offered
    for adoption (``_keras.build.offer_for_adoption``).
    """

    prefault = True  # set per store: only reads from local disk prefault

    def __getitem__(self, key: str) -> Any:
        return self.read(key, adoptable=called_by_keras_loader(1))

    def read(self, key: str, *, adoptable: bool) -> Any:
        import h5py

        group = self._h5_entry_group
        if not isinstance(group, h5py.Group) or "/" in key:  # an absent group, nested names
            return super().__getitem__(key)
        dataset = checked_dataset(group, key)
        if "dtype" in dataset.attrs or dataset.dtype.kind not in "biuf":
            return super().__getitem__(key)  # tagged types (bfloat16): Keras's own code
        array = read_aligned(dataset, prefault=self.prefault)
        if adoptable:
            offer_for_adoption(array)
        return array


# ---------------------------------------------------------------------------
# What a model would store, without writing it
# ---------------------------------------------------------------------------


class LayoutRecorder(H5IOStore):  # type: ignore[misc, valid-type]
    """Keras's walk with each array's shape kept, not written: the check that
    a model can take a weights file needs no HDF5 file of its own."""

    def __init__(self) -> None:  # no HDF5 file: shapes only
        self.mode = "w"
        self.layout: dict[str, dict[str, tuple[int, ...] | None]] = {}
        self.names: dict[str, str] = {}
        self._path = ""

    def __bool__(self) -> bool:
        return True

    def make(self, path: str, metadata: Any = None) -> Any:
        self._path = path
        self.layout.setdefault(path, {})
        return self

    def __setitem__(self, key: str, value: Any) -> None:
        import numpy as np

        if value is None:
            # Keras writes None for a quantized layer's scale when the layer's
            # policy comes from a DTypePolicyMap (a KerasHub backbone rebuilt
            # from its config: Keras 3.15): no shape to check it against. Its
            # load reads the file's scale all the same.
            self.layout[self._path][key] = None
            return
        shape = getattr(value, "shape", None)
        self.layout[self._path][key] = tuple(np.shape(value) if shape is None else shape)
        # A Keras variable's path starts with its layer's name as the user gave it
        # ("hidden/kernel"), where the file's path has Keras's ("layers/dense_1").
        owner = getattr(value, "path", None)
        if isinstance(owner, str) and "/" in owner:
            self.names.setdefault(self._path, owner.rpartition("/")[0])

    def close(self) -> None:
        pass


def read_store(reader: Any) -> Any:
    """Keras's store reading the ``.weights.h5`` image behind ``reader``,
    reading arrays into aligned memory where the store's layout is the one
    we know (else Keras's own store, unchanged)."""
    store = H5IOStore(reader, mode="r")
    if hasattr(store, "_h5_entry_group"):
        store.__class__ = AlignedReadsH5IOStore
        store.prefault = getattr(reader, "on_local_disk", False)
    return store
