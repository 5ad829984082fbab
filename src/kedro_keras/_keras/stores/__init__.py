"""The Keras stores the formats ask for, and how an array leaves the backend.

Keras's ``_save_state``/``_load_state`` accept only its own store types,
hence subclasses of its ``H5IOStore``: ``single_file`` (one ``.weights.h5``
image, and a recorder that writes nothing) and ``sharded`` (Keras's sharded
weights). Their base class is Keras's own, so defining them imports Keras;
the formats import this module when ``import kedro_keras`` runs, so it
imports them only when a store is asked for.

Writing, each array leaves the backend with one copy, a large one a slice
at a time (``to_numpy_once``, ``_slices_to_write``). The stores call those
through this module at each write, so that a test can replace them here
(``tests/test_keras_stores.py`` counts the slices a save takes).
"""

from __future__ import annotations

import io
from typing import Any, Callable, NamedTuple

from kedro_keras._keras.saving import available, save_state


def h5_write_store(buffer: io.BytesIO) -> Any:
    """A Keras store writing a ``.weights.h5`` image into ``buffer``."""
    from kedro_keras._keras.stores.single_file import OneCopyWritesH5IOStore

    return OneCopyWritesH5IOStore(buffer, mode="w")


def h5_read_store(reader: io.BytesIO) -> Any:
    """A Keras store reading the ``.weights.h5`` image behind ``reader``."""
    from kedro_keras._keras.stores.single_file import AlignedReadsH5IOStore, H5IOStore

    store = H5IOStore(reader, mode="r")
    if hasattr(store, "_h5_entry_group"):  # the store layout we know
        store.__class__ = AlignedReadsH5IOStore
        store.prefault = getattr(reader, "on_local_disk", False)
    return store


def variable_layout(model: Any) -> dict[str, dict[str, tuple[int, ...]]] | None:
    """``{variable path: {key: shape}}`` of what saving ``model`` would write
    (the optimizer left out), by Keras's own walk, or None if a layer's
    ``save_own_variables`` cannot run on this model (say, unfilled
    variables): then there is nothing to check against."""
    if not available():  # the walk is Keras's private one
        return None
    from kedro_keras._keras.stores.single_file import LayoutRecorder

    recorder = LayoutRecorder()
    try:
        save_state(model, recorder, None, include_optimizer=False)
    except Exception:  # noqa: BLE001 - a check we cannot make is skipped, not failed
        return None
    return recorder.layout


def shard_writer(max_bytes: float, shard_name: Callable[[int], str], open_shard: Callable[[str], Any]) -> Any:
    """A store that writes a model's arrays as shards of at most ``max_bytes``
    of arrays each (``weight_map`` and ``total_size`` say where they went)."""
    from kedro_keras._keras.stores.sharded import ShardWriter

    return ShardWriter(max_bytes, shard_name, open_shard)


def sharded_read_store(
    weight_map: dict[str, list[str]], open_shard: Callable[[str], Any], verified: set[str]
) -> Any:
    """A store over the shards an index names (``verified``: shards whose
    CRC-32 was checked, over both passes of a load)."""
    from kedro_keras._keras.stores.sharded import ShardedReadStore

    return ShardedReadStore(weight_map, open_shard, verified)


# ---------------------------------------------------------------------------
# How an array leaves the backend
# ---------------------------------------------------------------------------


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
# save over its memory budget (make bench --big, "local save" of the 10 GB
# model: 69 MB extra now, docs/performance.md).
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
