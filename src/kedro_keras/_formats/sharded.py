"""Keras's sharded weights on open file objects: a ``.weights.json`` index and
``.weights.h5`` shards. The format half of the I/O layer, as ``_weights`` is
for single files, whose HDF5 machinery (CRC-checked windows, the stores that
read and write arrays) each shard goes through.

Keras's layout (``save_weights("m.weights.json", max_shard_size=...)``):
the index maps each variable group (``/layers/dense/vars``) to the shard
file(s) holding its arrays; each shard is a ``.weights.h5`` file holding
some groups, at the same paths as in a single file. A group larger than
the space left in a shard continues in the next one (its entry is then a
list). Shard names are plain file names in the index's folder, read by
loaders from the index only.

Keras's own ``ShardedH5IOStore`` is not used. Writing, it takes a local
path; given a zip-like ``archive`` instead, it closes, re-sends and reopens
the shard for every array it writes (h5py names an in-memory file by its
repr, which never matches the shard's name), so a save would be quadratic
in the number of arrays. Reading through ``archive`` works, but it reopens
every shard of a group for each array it looks up (43 opens for a model
in 5 shards): the optimizer's one group spans most shards of a large
model. Our reading store (``_keras.stores.sharded.ShardedReadStore``) opens each shard
of a group once.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from typing import IO, TYPE_CHECKING, Any, Callable

from kedro_keras._formats.dtypes import dtype_bytes
from kedro_keras._formats.weights import (
    WEIGHTS_SUFFIX,
    Layout,
    kedro_keras_metadata,
    quiet_absent_optimizer_state,
)
from kedro_keras._io.h5 import (
    CHUNK,
    OPTIMIZER_GROUP,
    ShardReadError,
    h5_window,
    verify,
    without_optimizer_group,
    write_h5_image,
)
from kedro_keras._io.h5_guards import check_all_datasets, stored_variable_groups
from kedro_keras._keras import saving as _keras_saving
from kedro_keras._keras.build import build_optimizer
from kedro_keras._keras.saving import local_copy
from kedro_keras._keras.stores import shard_writer, sharded_read_store

if TYPE_CHECKING:
    import keras

INDEX_SUFFIX = ".weights.json"
# An index is JSON a few MB at most; beyond this it is not one.
_MAX_INDEX_BYTES = 256 * 2**20


class ShardedIndex:
    """A validated ``.weights.json`` index: which shard holds which group."""

    def __init__(self, document: dict[str, Any], weight_map: dict[str, list[str]]) -> None:
        self.document = document
        self.weight_map = weight_map

    @property
    def shards(self) -> list[str]:
        """Every shard the index names, in the order it names them."""
        return list(dict.fromkeys(name for names in self.weight_map.values() for name in names))

    @property
    def model_shards(self) -> list[str]:
        """The shards holding the model's own arrays (not the optimizer's)."""
        return list(
            dict.fromkeys(
                name
                for entry, names in self.weight_map.items()
                if not entry.startswith(f"/{OPTIMIZER_GROUP}/")
                for name in names
            )
        )

    @property
    def architecture(self) -> str | None:
        """The architecture JSON kedro-keras embeds in the index it writes."""
        ours = self.document.get("kedro_keras")
        architecture = ours.get("architecture") if isinstance(ours, dict) else None
        return json.dumps(architecture) if isinstance(architecture, dict) else None


def read_sharded_index(file: IO[bytes]) -> ShardedIndex:
    """Read and check a ``.weights.json`` index.

    Raises:
        ValueError: it is not JSON, does not have Keras's shape, or names a
            shard that is not a plain file name beside the index.
    """
    data = file.read(_MAX_INDEX_BYTES + 1)
    if len(data) > _MAX_INDEX_BYTES:
        raise ValueError(f"it holds over {_MAX_INDEX_BYTES} bytes, far more than an index of shards")
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: nested far too deep
        raise ValueError(f"it is not JSON ({type(exc).__name__}: {exc})") from None
    weight_map = document.get("weight_map") if isinstance(document, dict) else None
    if not isinstance(weight_map, dict):
        raise ValueError(
            "it is not a Keras sharded-weights index: expected a JSON object with a 'weight_map' object"
        )
    checked: dict[str, list[str]] = {}
    for entry, names in weight_map.items():
        names = [names] if isinstance(names, str) else names
        if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
            raise ValueError(
                f"weight_map['{entry}'] must be a shard's file name or a list of them; got {names!r}"
            )
        for name in names:
            check_shard_name(name)
        checked[entry] = names
    return ShardedIndex(document, checked)


def index_base(index_name: str) -> str:
    """``m`` for the index ``m.weights.json``: what its shards' names start with."""
    return index_name[: -len(INDEX_SUFFIX)]


def shard_name(base: str, position: int, save_id: str | None = None) -> str:
    """The name a save of ``<base>.weights.json`` gives its shard at ``position``:
    Keras's ``<base>_00000.weights.h5``, or ``<base>_<save_id>_00000.weights.h5``
    for a save whose shard names must be its own (``save_id``: 8 hex digits)."""
    prefix = f"{base}_" if save_id is None else f"{base}_{save_id}_"
    return f"{prefix}{position:05}{WEIGHTS_SUFFIX}"


def first_shard_name(index_name: str) -> str:
    """``m_00000.weights.h5`` for the index ``m.weights.json``: the shard plain
    Keras's loader opens first, whatever the index names."""
    return shard_name(index_base(index_name), 0)


def is_shard_name_of(name: str, base: str) -> bool:
    """Whether ``name`` is one a save of ``<base>.weights.json`` gives a shard:
    ``<base>_00000.weights.h5`` (Keras's names, and ours in a version folder)
    or ``<base>_<8 hex>_00000.weights.h5`` (ours beside an older index)."""
    pattern = rf"{re.escape(base)}_([0-9a-f]{{8}}_)?\d{{5}}{re.escape(WEIGHTS_SUFFIX)}"
    return re.fullmatch(pattern, name) is not None


def check_shard_name(name: str) -> None:
    """Refuse a shard name that could reach outside the index's folder.

    Loaders join the name to the index's folder, so only a plain file name
    is safe: no separators (``../x``, absolute paths, URLs), and the
    ``.weights.h5`` ending Keras gives shards, so that an index cannot make
    a load read any other file beside it either.
    """
    if (
        "/" in name
        or "\\" in name
        or not name.isprintable()
        or name in (".", "..")
        or not name.endswith(WEIGHTS_SUFFIX)
        or len(name) > 255
    ):
        raise ValueError(
            f"refusing shard '{name}': a shard must be a plain file name ending in "
            f"'{WEIGHTS_SUFFIX}' in the index's own folder"
        )


def sharded_index_json(index: dict[str, Any], architecture: str, *, include_optimizer: bool) -> str:
    """The index file for ``index``, with the architecture embedded.

    Keras reads only ``weight_map`` (and writes ``metadata``); our
    ``kedro_keras`` entry carries the architecture, so a model is rebuilt
    from the same file that names its weights, whatever happened to the
    ``.architecture.json`` beside it.
    """
    document = {
        **index,
        "kedro_keras": {**kedro_keras_metadata(include_optimizer), "architecture": json.loads(architecture)},
    }
    return json.dumps(document, indent=4)


def write_sharded_weights(
    model: keras.Model,
    *,
    shard_name: Callable[[int], str],
    open_shard: Callable[[str], Any],
    max_shard_size: float,
    include_optimizer: bool = True,
) -> dict[str, Any]:
    """Write the weights as shards; return the index (``metadata`` and ``weight_map``).

    ``shard_name(i)`` names the i-th shard and ``open_shard(name)`` gives a
    context manager with a binary file to write it to. Each shard is laid
    out in memory (HDF5 must seek) and written as soon as it is full, with
    our CRC-32 trailer, so a save holds one shard beyond the model. A
    variable larger than ``max_shard_size`` (GB) gets a shard of its own,
    where Keras would refuse to save.
    """
    max_bytes = float(max_shard_size) * 1024**3  # Keras's GB
    if not _keras_saving.available():
        return _write_sharded_weights_public(model, shard_name, open_shard, max_shard_size, include_optimizer)
    store = shard_writer(max_bytes, shard_name, open_shard)
    try:
        _keras_saving.save_state(model, store, None, include_optimizer=include_optimizer)
    except BaseException:
        store.abandon()
        raise
    store.close()
    return {"metadata": {"total_size": store.total_size}, "weight_map": store.weight_map}


def _write_sharded_weights_public(
    model: keras.Model,
    shard_name: Callable[[int], str],
    open_shard: Callable[[str], Any],
    max_shard_size: float,
    include_optimizer: bool,
) -> dict[str, Any]:
    """Fallback: ``save_weights(max_shard_size=)`` to a temp folder, then each
    shard copied out under our name, with our trailer (and without the
    optimizer's group for ``include_optimizer=False``)."""
    with local_copy(INDEX_SUFFIX) as local_index:
        # Keras refuses a variable larger than a shard: raise the limit to the
        # largest variable (the fast path gives such a variable its own shard).
        largest = max((_variable_bytes(variable) for variable in model.weights), default=0)
        model.save_weights(local_index, max_shard_size=max(float(max_shard_size), largest / 1024**3))
        with open(local_index, "rb") as file:
            index = json.load(file)
        weight_map = {
            entry: names
            for entry, names in index["weight_map"].items()
            if include_optimizer or not entry.startswith(f"/{OPTIMIZER_GROUP}/")
        }
        renamed: dict[str, str] = {}
        used = dict.fromkeys(
            name for names in weight_map.values() for name in ([names] if isinstance(names, str) else names)
        )
        for position, name in enumerate(sorted(used)):  # Keras numbers its shards in order
            with open(os.path.join(os.path.dirname(local_index), name), "rb") as file:
                data = file.read()
            if not include_optimizer:
                data = without_optimizer_group(data)
            renamed[name] = shard_name(position)
            with open_shard(renamed[name]) as file:
                write_h5_image(file, memoryview(data))
            del data
    return {
        "metadata": index.get("metadata", {}),
        "weight_map": {
            entry: renamed[names] if isinstance(names, str) else [renamed[name] for name in names]
            for entry, names in weight_map.items()
        },
    }


def _variable_bytes(variable: Any) -> int:
    import math

    return math.prod(variable.shape) * dtype_bytes(variable.dtype)


def write_empty_shard(file: IO[bytes]) -> None:
    """An HDF5 file with nothing in it, with our trailer.

    Keras's loader opens ``<base>_00000.weights.h5`` before it reads the
    index's ``weight_map``, so that name must exist even when our shards
    have other names; an empty file makes every lookup go to the shards the
    index names.
    """
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, mode="w"):
        pass
    write_h5_image(file, buffer.getbuffer().toreadonly())


def stored_sharded_variable_groups(index: ShardedIndex, open_shard: Callable[[str], Any]) -> Layout:
    """The model's arrays in the shards, by variable path, as ``stored_variable_groups``.

    Only the shards holding model arrays are opened, and only their HDF5
    headers are read. A group continuing into the next shard is merged.
    """
    found: Layout = {}
    for name in index.model_shards:
        try:
            with open_shard(name) as file:
                window = h5_window(file)
                try:
                    groups = stored_variable_groups(window)
                except Exception as exc:
                    verify(window, cause=exc)
                    raise
        except Exception as exc:
            raise ShardReadError(name, exc) from exc
        for path, arrays in groups.items():
            found.setdefault(path, {}).update(arrays)
    return found


def read_sharded_weights_into(
    model: keras.Model,
    index: ShardedIndex,
    open_shard: Callable[[str], Any],
    visited: set[int] | None = None,
    verified: set[str] | None = None,
) -> None:
    """Load the weights of sharded files into a built model.

    Pass the same ``visited`` and ``verified`` sets to a second call (after
    compiling) to load only the optimizer state. Each shard is checked
    against its CRC-32 trailer once, as the arrays are read from it.

    Raises:
        ShardReadError: a shard is missing, damaged or not HDF5.
    """
    visited = set() if visited is None else visited
    verified = set() if verified is None else verified
    build_optimizer(model)
    if not _keras_saving.available():
        _read_sharded_weights_public(model, index, open_shard, verified)
        return
    store = sharded_read_store(index.weight_map, open_shard, verified)
    try:
        with quiet_absent_optimizer_state():
            _keras_saving.load_state(model, store, None, visited)
    except Exception as exc:
        store.close_after(exc)
        raise
    store.close()


def _read_sharded_weights_public(
    model: keras.Model, index: ShardedIndex, open_shard: Callable[[str], Any], verified: set[str]
) -> None:
    """Fallback: the index and its shards copied to a temp folder (each shard
    checked against its trailer on the way), then ``model.load_weights``."""
    with local_copy(INDEX_SUFFIX) as local_index:
        folder = os.path.dirname(local_index)
        for name in index.shards:
            try:
                with open_shard(name) as file, open(os.path.join(folder, name), "wb") as local_file:
                    window = h5_window(file)
                    check_all_datasets(window)
                    shutil.copyfileobj(window, local_file, CHUNK)
                    verify(window)
            except Exception as exc:
                raise ShardReadError(name, exc) from exc
            verified.add(name)
        # Keras opens '<base>_00000.weights.h5' first, whatever the index names.
        first = first_shard_name(os.path.basename(local_index))
        if first not in index.shards:
            with open(os.path.join(folder, first), "wb") as file:
                write_empty_shard(file)
        with open(local_index, "w") as file:
            json.dump({**index.document, "weight_map": index.weight_map}, file)
        with quiet_absent_optimizer_state():
            model.load_weights(local_index)
