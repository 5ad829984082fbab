"""Subclasses of Keras's ``H5IOStore``: how arrays go between Keras's walk
over a model and HDF5, the one place that knows the store's private layout.

Keras's ``_save_state``/``_load_state`` accept only its own store types,
hence subclasses. Writing, each array leaves the backend with one copy
(a large one a slice at a time) and shards are cut where Keras would cut
them; reading, arrays land in aligned memory that a new variable can adopt,
shards open as the walk reaches them, and a recorder lists what a model
would store without writing anything.
"""

from __future__ import annotations

import io
import sys
from collections import OrderedDict
from contextlib import ExitStack
from typing import Any, Callable, NamedTuple

from kedro_keras._io.h5 import (
    CorruptFileError,
    ShardReadError,
    Window,
    h5_window,
    read_aligned,
    write_h5_image,
)
from kedro_keras._io.h5_guards import checked_dataset
from kedro_keras._keras.build import offer_for_adoption
from kedro_keras._keras.saving import available, h5_store_class, save_state


def to_numpy_once(value: Any) -> Any:
    """A backend array or variable as a NumPy array, with one copy.

    Keras's ``convert_to_numpy`` is ``np.array`` under TensorFlow, which
    copies the host copy TensorFlow already made. Other backends' conversions
    copy once, and PyTorch's also brings a GPU tensor to the host, which
    ``np.asarray`` cannot.
    """
    import keras
    import numpy as np

    if keras.backend.backend() == "tensorflow":
        return np.asarray(value)
    return keras.ops.convert_to_numpy(value)


# An array larger than this leaves the backend a slice of whole rows at a
# time, each slice written into the HDF5 dataset before the next is taken:
# one whole copy of a 1.67 GB kernel was the entire excess of a 10 GB model's
# save over its memory budget.
_SLICE_BYTES = 64 * 2**20


class _Slices(NamedTuple):
    shape: tuple[int, ...]
    dtype: Any
    rows: int


def _slices_to_write(value: Any) -> _Slices | None:
    """How to take ``value`` out of the backend in slices along its first
    axis, or ``None`` to take it whole: NumPy arrays (already in memory),
    small ones, and types Keras tags (bfloat16), which its own code writes."""
    import keras
    import numpy as np

    if isinstance(value, np.ndarray) or not hasattr(value, "shape") or not hasattr(value, "__getitem__"):
        return None
    try:
        dtype = np.dtype(keras.backend.standardize_dtype(value.dtype))
        shape = tuple(int(size) for size in value.shape)
    except (TypeError, ValueError):  # an unknown dimension or dtype
        return None
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    if not shape or dtype.kind not in "biuf" or row_bytes * shape[0] <= _SLICE_BYTES:
        return None
    return _Slices(shape, dtype, max(1, _SLICE_BYTES // max(1, row_bytes)))


def _knows_write_store_layout(store: Any) -> bool:
    return all(
        hasattr(store, name) for name in ("_h5_entry_initialized", "_h5_entry_path", "_create_h5_group")
    )


_one_copy_store_classes: dict[type, type] = {}


def _one_copy_writes_store_class(store_class: type) -> type:
    """A subclass of Keras's ``H5IOStore`` that takes each array out of the
    backend with one copy: Keras's ``convert_to_numpy`` makes two under
    TensorFlow (``np.array`` of the variable's own NumPy copy), each a
    transient the size of the array, on top of the HDF5 image being built."""
    if store_class not in _one_copy_store_classes:

        class OneCopyWritesH5IOStore(store_class):  # type: ignore[misc, valid-type]
            def __setitem__(self, key: str, value: Any) -> None:
                slices = _slices_to_write(value)
                if slices and self.mode in ("w", "a") and _knows_write_store_layout(self):
                    if not self._h5_entry_initialized:
                        self._create_h5_group(self._h5_entry_path)
                    dataset = self._h5_entry_group.create_dataset(key, shape=slices.shape, dtype=slices.dtype)
                    for start in range(0, slices.shape[0], slices.rows):
                        stop = min(start + slices.rows, slices.shape[0])
                        dataset[start:stop] = to_numpy_once(value[start:stop])
                    return
                array = to_numpy_once(value)
                plain = array.dtype.kind in "biuf"  # not bfloat16 and the like, which Keras tags
                if not (plain and self.mode in ("w", "a") and _knows_write_store_layout(self)):
                    super().__setitem__(key, array)  # Keras's own code
                    return
                if not self._h5_entry_initialized:
                    self._create_h5_group(self._h5_entry_path)
                self._h5_entry_group[key] = array

        _one_copy_store_classes[store_class] = OneCopyWritesH5IOStore
    return _one_copy_store_classes[store_class]


def h5_write_store(buffer: io.BytesIO) -> Any:
    """A Keras store writing a ``.weights.h5`` image into ``buffer``."""
    return _one_copy_writes_store_class(h5_store_class())(buffer, mode="w")


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


_aligned_store_classes: dict[type, type] = {}


def _aligned_reads_store_class(store_class: type) -> type:
    """A subclass of Keras's ``H5IOStore`` that reads arrays into aligned memory.

    What ``load_own_variables`` receives is a ``numpy.ndarray``, as from
    Keras's own store; only those read for Keras's own loaders are offered
    for adoption (``_keras_build.offer_for_adoption``).
    """
    if store_class not in _aligned_store_classes:

        class AlignedReadsH5IOStore(store_class):  # type: ignore[misc, valid-type]
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

        _aligned_store_classes[store_class] = AlignedReadsH5IOStore
    return _aligned_store_classes[store_class]


def h5_read_store(reader: io.BytesIO) -> Any:
    """A Keras store reading the ``.weights.h5`` image behind ``reader``."""
    store_class = h5_store_class()
    store = store_class(reader, mode="r")
    if hasattr(store, "_h5_entry_group"):  # the store layout we know
        store.__class__ = _aligned_reads_store_class(store_class)
        store.prefault = getattr(reader, "on_local_disk", False)
    return store


def _read(store: Any, key: str, adoptable: bool) -> Any:
    return store.read(key, adoptable=adoptable) if hasattr(store, "read") else store[key]


# ---------------------------------------------------------------------------
# What a model would store, without writing it
# ---------------------------------------------------------------------------


def variable_layout(model: Any) -> dict[str, dict[str, tuple[int, ...]]] | None:
    """``{variable path: {key: shape}}`` of what saving ``model`` would write
    (the optimizer left out), by Keras's own walk, or None if a layer's
    ``save_own_variables`` cannot run on this model (say, unfilled
    variables): then there is nothing to check against."""
    if not available():  # the walk is Keras's private one
        return None
    recorder = _layout_recorder_class(h5_store_class())()
    try:
        save_state(model, recorder, None, include_optimizer=False)
    except Exception:  # noqa: BLE001 - a check we cannot make is skipped, not failed
        return None
    return recorder.layout


_layout_recorder_classes: dict[type, type] = {}


def _layout_recorder_class(store_class: type) -> type:
    if store_class not in _layout_recorder_classes:

        class LayoutRecorder(store_class):  # type: ignore[misc, valid-type]
            def __init__(self) -> None:  # no HDF5 file: shapes only
                self.mode = "w"
                self.layout: dict[str, dict[str, tuple[int, ...]]] = {}
                self._path = ""

            def __bool__(self) -> bool:
                return True

            def make(self, path: str, metadata: Any = None) -> Any:
                self._path = path
                self.layout.setdefault(path, {})
                return self

            def __setitem__(self, key: str, value: Any) -> None:
                import numpy as np

                shape = getattr(value, "shape", None)
                self.layout[self._path][key] = tuple(np.shape(value) if shape is None else shape)

            def close(self) -> None:
                pass

        _layout_recorder_classes[store_class] = LayoutRecorder
    return _layout_recorder_classes[store_class]


# ---------------------------------------------------------------------------
# Sharded weights: a new in-memory shard when one is full; reads routed by the index
# ---------------------------------------------------------------------------

_shard_writer_classes: dict[type, type] = {}


def _shard_writer_class(store_class: type) -> type:
    """A Keras ``H5IOStore`` that starts a new in-memory shard when one is full.

    Keras's ``_save_state`` accepts only its own store types, hence a
    subclass. Groups, their metadata and bfloat16 arrays are Keras's own
    code; only where each array goes is ours, recorded in Keras's
    ``weight_map`` format.
    """
    if store_class not in _shard_writer_classes:

        class ShardWriter(store_class):  # type: ignore[misc, valid-type]
            def __init__(
                self, max_bytes: float, shard_name: Callable[[int], str], open_shard: Callable[[str], Any]
            ) -> None:
                self._max_bytes = max_bytes
                self._shard_name = shard_name
                self._open_shard = open_shard
                self._index = 0
                self._filled = 0  # array bytes in the current shard
                self.total_size = 0.0
                self.weight_map: dict[str, Any] = {}
                self._buffer = io.BytesIO()
                super().__init__(self._buffer, mode="w")

            def __setitem__(self, key: str, value: Any) -> None:
                value = to_numpy_once(value)
                if self._filled and self._filled + value.nbytes > self._max_bytes:
                    self._next_shard()
                self._filled += value.nbytes
                self.total_size += value.nbytes
                super().__setitem__(key, value)
                self._record(self._h5_entry_group.name, self._shard_name(self._index))

            def _record(self, group: str, shard: str) -> None:
                # As Keras's ShardedH5IOStore records it: a name, then a list
                # once the group has a second array.
                if group not in self.weight_map:
                    self.weight_map[group] = shard
                    return
                if not isinstance(self.weight_map[group], list):
                    self.weight_map[group] = [self.weight_map[group]]
                if shard not in self.weight_map[group]:
                    self.weight_map[group].append(shard)

            def _next_shard(self) -> None:
                import h5py

                self._write_shard()
                self._index += 1
                self._filled = 0
                self._buffer = io.BytesIO()
                self.h5_file = h5py.File(self._buffer, mode="w")
                self._h5_entry_initialized = False  # the group continues in the new shard

            def _write_shard(self) -> None:
                self.h5_file.close()
                with self._open_shard(self._shard_name(self._index)) as file:
                    write_h5_image(file, self._buffer.getbuffer().toreadonly())
                self._buffer = None  # the shard is written: free it before the next

            def close(self) -> None:
                self._write_shard()

            def abandon(self) -> None:
                try:
                    self.h5_file.close()
                except Exception:  # noqa: BLE001 - already failing; the shard is dropped
                    pass
                self._buffer = None

        _shard_writer_classes[store_class] = ShardWriter
    return _shard_writer_classes[store_class]


def shard_writer(max_bytes: float, shard_name: Callable[[int], str], open_shard: Callable[[str], Any]) -> Any:
    """A store that writes a model's arrays as shards of at most ``max_bytes``
    of arrays each (``weight_map`` and ``total_size`` say where they went)."""
    return _shard_writer_class(_one_copy_writes_store_class(h5_store_class()))(
        max_bytes, shard_name, open_shard
    )


# Shards kept open while a load walks the model: a group that continues in
# the next shard needs both; more would only hold more read buffers.
_OPEN_SHARDS = 2
# The index's entry for the model's own arrays (Keras's root "vars" group).
_ROOT_ENTRY = "/vars"


class _OpenShard:
    """One shard open for reading: its file, CRC window and Keras store."""

    def __init__(self, stack: Any, window: Window, store: Any) -> None:
        self.stack, self.window, self.store = stack, window, store
        self.entry: str | None = None  # the group the store is positioned at
        self.read_values = False


_sharded_read_store_classes: dict[type, type] = {}


def _sharded_read_store_class(store_class: type) -> type:
    """Keras's weights-store interface over the shards an index names.

    Each shard gets the store a single ``.weights.h5`` file gets
    (``h5_read_store``: aligned reads, large arrays adopted by their variables); this one
    routes each group and array to the shard holding it, opening shards as
    the walk over the model reaches them and keeping at most two open.
    """
    if store_class not in _sharded_read_store_classes:

        class ShardedReadStore(store_class):  # type: ignore[misc, valid-type]
            def __init__(
                self,
                weight_map: dict[str, list[str]],
                open_shard: Callable[[str], Any],
                verified: set[str],
            ) -> None:
                # H5IOStore.__init__ would open one file: shards open on demand.
                self.mode = "r"
                self._weight_map = weight_map
                self._open_shard = open_shard
                self._verified = verified
                self._open: OrderedDict[str, _OpenShard] = OrderedDict()
                self._opened: set[str] = set()  # in this pass, for blaming a shard after a failure
                self._failed_open: ShardReadError | None = None
                self._entry = ""
                self._entry_shards: list[str] = []
                self._entry_keys: dict[str, str] | None = None

            def __bool__(self) -> bool:
                return True

            def get(self, path: str) -> Any:
                self._entry = path
                self._entry_shards = self._weight_map.get(f"/{path}/vars" if path else _ROOT_ENTRY, [])
                self._entry_keys = None
                return self

            def has_path(self, path: str) -> bool:
                # As Keras's ShardedH5IOStore answers it: from the index.
                return any(entry == f"/{path}" or entry.startswith(f"/{path}/") for entry in self._weight_map)

            def keys(self) -> list[str]:
                return list(self._keys())

            def __len__(self) -> int:
                return len(self._keys())

            def __contains__(self, key: object) -> bool:
                return key in self._keys()

            def __getitem__(self, key: str) -> Any:
                name = self._keys().get(key)
                if name is None:
                    raise KeyError(f"Key '{key}' not found in any of the shards: {self._entry_shards}")
                adoptable = called_by_keras_loader(1)
                shard = self._shard(name)
                shard.read_values = True
                return _read(shard.store, key, adoptable)

            def _keys(self) -> dict[str, str]:
                if self._entry_keys is None:
                    found: dict[str, str] = {}
                    for name in self._entry_shards:
                        for key in self._shard(name).store.keys():
                            found.setdefault(key, name)
                    self._entry_keys = found
                return self._entry_keys

            def _shard(self, name: str) -> _OpenShard:
                """The open shard ``name``, positioned at the current group."""
                shard = self._open.get(name)
                if shard is None:
                    while len(self._open) >= _OPEN_SHARDS:
                        self._close_shard(next(iter(self._open)))
                    shard = self._open[name] = self._open_new(name)
                self._open.move_to_end(name)
                if shard.entry != self._entry:
                    shard.store.get(self._entry)
                    shard.entry = self._entry
                return shard

            def _open_new(self, name: str) -> _OpenShard:
                self._opened.add(name)
                stack = ExitStack()
                try:
                    window = h5_window(stack.enter_context(self._open_shard(name)))
                    store = h5_read_store(window)
                except Exception as exc:
                    stack.close()
                    # Keras records a layer's failure and carries on; the
                    # shard's own error is what to report.
                    self._failed_open = self._failed_open or ShardReadError(name, exc)
                    raise self._failed_open from exc
                return _OpenShard(stack, window, store)

            def _close_shard(self, name: str) -> None:
                shard = self._open.pop(name)
                try:
                    shard.store.close()
                    if shard.read_values and name not in self._verified:
                        try:
                            shard.window.verify()
                        except CorruptFileError as exc:
                            raise ShardReadError(name, exc) from exc
                        self._verified.add(name)
                finally:
                    shard.stack.close()

            def close(self) -> None:
                try:
                    while self._open:
                        self._close_shard(next(iter(self._open)))
                finally:
                    self._abandon_open()

            def close_after(self, cause: BaseException) -> None:
                """Close everything after a failed load; raise the shard to blame, if any.

                A damaged shard most often shows as an HDF5 error or as a layer
                finding the wrong number of arrays: each shard this pass opened
                and has not yet checked is checked in full, so damage is
                reported as such.
                """
                self._abandon_open()
                for name in sorted(self._opened - self._verified):
                    try:
                        with self._open_shard(name) as file:
                            h5_window(file).verify()
                    except CorruptFileError as exc:
                        raise ShardReadError(name, exc) from cause
                    except Exception:  # noqa: BLE001 - missing or unreadable: reported below
                        continue
                if self._failed_open is not None:
                    raise self._failed_open from cause

            def _abandon_open(self) -> None:
                while self._open:
                    shard = self._open.popitem(last=False)[1]
                    try:
                        shard.store.close()
                    except Exception:  # noqa: BLE001 - closing after a failure
                        pass
                    finally:
                        shard.stack.close()

        _sharded_read_store_classes[store_class] = ShardedReadStore
    return _sharded_read_store_classes[store_class]


def sharded_read_store(
    weight_map: dict[str, list[str]], open_shard: Callable[[str], Any], verified: set[str]
) -> Any:
    """A store over the shards an index names (``verified``: shards whose
    CRC-32 was checked, over both passes of a load)."""
    return _sharded_read_store_class(h5_store_class())(weight_map, open_shard, verified)
