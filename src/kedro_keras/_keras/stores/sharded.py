"""Keras's ``H5IOStore`` for sharded weights: writing, a new in-memory shard
when one is full; reading, each group and array routed to the shard the
index names, shards opened as Keras's walk over the model reaches them.

Importing this module imports Keras (the base classes are Keras's own), so
only the functions of ``kedro_keras._keras.stores`` import it, when a model
is saved or loaded.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from contextlib import ExitStack
from typing import Any, Callable

from kedro_keras._io.h5 import CorruptFileError, ShardReadError, Window, h5_window, write_h5_image
from kedro_keras._keras.stores import arrays as _arrays
from kedro_keras._keras.stores.single_file import (
    H5IOStore,
    OneCopyWritesH5IOStore,
    called_by_keras_loader,
    read_store,
)


class ShardWriter(OneCopyWritesH5IOStore):
    """Starts a new in-memory shard when one is full.

    Groups, their metadata and bfloat16 arrays are Keras's own code; only
    where each array goes is ours, recorded in Keras's ``weight_map`` format.
    """

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
        value = _arrays.to_numpy_once(value)
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


def _read(store: Any, key: str, adoptable: bool) -> Any:
    return store.read(key, adoptable=adoptable) if hasattr(store, "read") else store[key]


class ShardedReadStore(H5IOStore):  # type: ignore[misc, valid-type]
    """Keras's weights-store interface over the shards an index names.

    Each shard gets the store a single ``.weights.h5`` file gets
    (``h5_read_store``: aligned reads, large arrays adopted by their variables); this one
    routes each group and array to the shard holding it, opening shards as
    the walk over the model reaches them and keeping at most two open.
    """

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
            store = read_store(window)
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
