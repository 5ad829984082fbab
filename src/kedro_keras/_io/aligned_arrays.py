"""The arrays a load reads weights into: new, native-order, 64-byte aligned
(so that the backend adopts them without a copy), large ones in anonymous
maps of their own.

Nothing here imports Keras or knows where a file lives; NumPy is imported
when an array is made.
"""

from __future__ import annotations

import mmap
from typing import Any

# TensorFlow makes a variable from a NumPy array without an intermediate copy
# only if the array is 64-byte aligned (Eigen's alignment); NumPy's own large
# arrays start 16 bytes into a page, which costs a second copy of every array
# while a model loads. JAX's CPU client likewise aliases only aligned buffers.
_ALIGNMENT = 64


def read_aligned(dataset: Any, prefault: bool = True) -> Any:
    """An HDF5 dataset's values in a new, 64-byte aligned, native-order array.

    ``prefault=False`` for reads that arrive slower than pages fault in (from
    a network): the array's pages then become resident as the bytes arrive,
    not all at once while the reader still holds what it has received.
    """
    dtype = dataset.dtype.newbyteorder("=")
    array = aligned_empty(dataset.shape, dtype, prefault)
    if array.size:
        dataset.read_direct(array)
    return array


# NumPy asks the kernel for huge pages for every array of 4 MiB or more.
# Where the kernel then compacts memory on demand to find them (THP defrag
# "madvise", a common default), filling a fresh 1.2 GB array took 2.7 s
# instead of 0.7 s on our bench machine. An array read once from a file gains
# nothing from huge pages, so large ones are plain anonymous maps instead
# (page-aligned, so 64-byte aligned too, and returned to the system the
# moment the array goes).
_OWN_MAP_FROM = 4 * 2**20
# Every page is about to be written: faulting them all in at once is cheaper
# than one fault per page as a local read goes (0.46 s against 0.73 s for
# 1.2 GB). A network read arrives slower than pages fault in, and faulting
# them in early made a moto load hold 1.20x the weights instead of 1.04x.
# (Windows has no anonymous-map flags; there NumPy's allocation stays.)
_ANONYMOUS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS if hasattr(mmap, "MAP_ANONYMOUS") else None
_PREFAULTED = getattr(mmap, "MAP_POPULATE", 0)


def aligned_empty(shape: tuple[int, ...], dtype: Any, prefault: bool = True) -> Any:
    import numpy as np

    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes >= _OWN_MAP_FROM and _ANONYMOUS is not None:
        pages = mmap.mmap(-1, nbytes, flags=_ANONYMOUS | (_PREFAULTED if prefault else 0))
        return np.frombuffer(pages, dtype=dtype).reshape(shape)
    raw = np.empty(nbytes + _ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % _ALIGNMENT
    return raw[start : start + nbytes].view(dtype).reshape(shape)
