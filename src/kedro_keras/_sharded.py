"""Keras's sharded weights on open file objects: a ``.weights.json`` index and
``.weights.h5`` shards. The format half of the I/O layer, as ``_formats`` is
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
model. Our reading store (``_sharded_read_store_class``) opens each shard
of a group once.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from typing import IO, TYPE_CHECKING, Any, Callable

from kedro_keras._formats import (
    OPTIMIZER_GROUP,
    _CHUNK,
    _MAX_JSON_MEMBER,
    CorruptFileError,
    _Window,
    _h5_store,
    _load_state_into,
    _local_copy,
    _one_copy_writes_store_class,
    _private_saving_lib,
    _quiet_unbuilt_optimizer,
    _verify,
    _without_optimizer_group,
    _write_h5_image,
    h5_window,
    kedro_keras_metadata,
    save_state_into,
    stored_weight_shapes,
    to_numpy_once,
)

if TYPE_CHECKING:
    import keras

SHARD_SUFFIX = ".weights.h5"
_ROOT_ENTRY = "/vars"
# Shards kept open while a load walks the model: a group that continues in
# the next shard needs both; more would only hold more read buffers.
_OPEN_SHARDS = 2


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
    data = file.read(_MAX_JSON_MEMBER + 1)
    if len(data) > _MAX_JSON_MEMBER:
        raise ValueError(f"it holds over {_MAX_JSON_MEMBER} bytes, far more than an index of shards")
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"it is not JSON ({exc})") from None
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
        or "\x00" in name
        or name in (".", "..")
        or not name.endswith(SHARD_SUFFIX)
        or len(name) > 255
    ):
        raise ValueError(
            f"refusing shard '{name}': a shard must be a plain file name ending in "
            f"'{SHARD_SUFFIX}' in the index's own folder"
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
    saving_lib = _private_saving_lib()
    if saving_lib is None:
        return _write_sharded_weights_public(model, shard_name, open_shard, max_shard_size, include_optimizer)
    store = _shard_writer_class(_one_copy_writes_store_class(saving_lib.H5IOStore))(max_bytes, shard_name, open_shard)
    try:
        save_state_into(saving_lib, model, store, None, include_optimizer)
    except BaseException:
        store.abandon()
        raise
    store.close()
    return {"metadata": {"total_size": store.total_size}, "weight_map": store.weight_map}


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
                    _write_h5_image(file, self._buffer.getbuffer().toreadonly())
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
    with _local_copy(".weights.json") as local_index:
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
                data = _without_optimizer_group(data)
            renamed[name] = shard_name(position)
            with open_shard(renamed[name]) as file:
                _write_h5_image(file, memoryview(data))
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

    import numpy as np

    try:
        itemsize = np.dtype(variable.dtype).itemsize
    except TypeError:  # a dtype NumPy does not know (bfloat16): no wider than 8 bytes
        itemsize = 8
    return math.prod(variable.shape) * itemsize


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
    _write_h5_image(file, buffer.getbuffer().toreadonly())


class ShardReadError(Exception):
    """Reading one shard failed: ``shard`` names it, ``error`` says why."""

    def __init__(self, shard: str, error: BaseException) -> None:
        super().__init__(f"shard '{shard}': {error}")
        self.shard = shard
        self.error = error


def stored_sharded_weight_shapes(
    index: ShardedIndex, open_shard: Callable[[str], Any]
) -> list[tuple[str, tuple[int, ...]]]:
    """(path, shape) of every model array in the shards, as ``stored_weight_shapes``.

    Only the shards holding model arrays are opened, and only their HDF5
    headers are read.
    """
    found: list[tuple[str, tuple[int, ...]]] = []
    for name in index.model_shards:
        try:
            with open_shard(name) as file:
                window = h5_window(file)
                try:
                    found += stored_weight_shapes(window)
                except Exception as exc:
                    _verify(window, cause=exc)
                    raise
        except Exception as exc:
            raise ShardReadError(name, exc) from exc
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
    saving_lib = _private_saving_lib()
    if saving_lib is None:
        _read_sharded_weights_public(model, index, open_shard, verified)
        return
    store = _sharded_read_store_class(saving_lib.H5IOStore)(saving_lib, index.weight_map, open_shard, verified)
    try:
        with _quiet_unbuilt_optimizer():
            _load_state_into(saving_lib, model, store, None, visited)
    except Exception as exc:
        store.close_after(exc)
        raise
    store.close()


class _OpenShard:
    """One shard open for reading: its file, CRC window and Keras store."""

    def __init__(self, stack: Any, window: _Window, store: Any) -> None:
        self.stack, self.window, self.store = stack, window, store
        self.entry: str | None = None  # the group the store is positioned at
        self.read_values = False


_sharded_read_store_classes: dict[type, type] = {}


def _sharded_read_store_class(store_class: type) -> type:
    """Keras's weights-store interface over the shards an index names.

    Each shard gets the store a single ``.weights.h5`` file gets
    (``_h5_store``: aligned reads, large arrays adopted by their variables); this one
    routes each group and array to the shard holding it, opening shards as
    the walk over the model reaches them and keeping at most two open.
    """
    if store_class not in _sharded_read_store_classes:

        class ShardedReadStore(store_class):  # type: ignore[misc, valid-type]
            def __init__(
                self,
                saving_lib: Any,
                weight_map: dict[str, list[str]],
                open_shard: Callable[[str], Any],
                verified: set[str],
            ) -> None:
                from collections import OrderedDict

                # H5IOStore.__init__ would open one file: shards open on demand.
                self.mode = "r"
                self._saving_lib = saving_lib
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
                shard = self._shard(name)
                shard.read_values = True
                return shard.store[key]

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
                from contextlib import ExitStack

                self._opened.add(name)
                stack = ExitStack()
                try:
                    window = h5_window(stack.enter_context(self._open_shard(name)))
                    store = _h5_store(self._saving_lib, window)
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
                    shard.store.close()  # reads what a layer kept but has not used
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


def _read_sharded_weights_public(
    model: keras.Model, index: ShardedIndex, open_shard: Callable[[str], Any], verified: set[str]
) -> None:
    """Fallback: the index and its shards copied to a temp folder (each shard
    checked against its trailer on the way), then ``model.load_weights``."""
    with _local_copy(".weights.json") as local_index:
        folder = os.path.dirname(local_index)
        for name in index.shards:
            try:
                with open_shard(name) as file, open(os.path.join(folder, name), "wb") as local_file:
                    window = h5_window(file)
                    shutil.copyfileobj(window, local_file, _CHUNK)
                    _verify(window)
            except Exception as exc:
                raise ShardReadError(name, exc) from exc
            verified.add(name)
        # Keras opens '<base>_00000.weights.h5' first, whatever the index names.
        first = os.path.basename(local_index)[: -len(".weights.json")] + "_00000" + SHARD_SUFFIX
        if first not in index.shards:
            with open(os.path.join(folder, first), "wb") as file:
                write_empty_shard(file)
        with open(local_index, "w") as file:
            json.dump({**index.document, "weight_map": index.weight_map}, file)
        with _quiet_unbuilt_optimizer():
            model.load_weights(local_index)
