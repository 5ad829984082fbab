"""How an array leaves the backend on a save: with one copy, and a large
one a slice of rows at a time. The stores call these through this module at
each write, so that a test can replace them here (``tests/test_keras_stores.py``
counts the slices a save takes). Imports no Keras until called."""

from __future__ import annotations

from typing import Any, NamedTuple


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
