"""The Keras stores the formats ask for, and how an array leaves the backend.

Keras's ``_save_state``/``_load_state`` accept only its own store types,
hence subclasses of its ``H5IOStore``: ``single_file`` (one ``.weights.h5``
image, and a recorder that writes nothing) and ``sharded`` (Keras's sharded
weights). Their base class is Keras's own, so defining them imports Keras;
the formats import this module when ``import kedro_keras`` runs, so it
imports them only when a store is asked for.

Writing, each array leaves the backend with one copy, a large one a slice
at a time (``arrays``).
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
    from kedro_keras._keras.stores.single_file import read_store

    return read_store(reader)


class ModelLayout(NamedTuple):
    """What saving a model would write, by Keras's own walk."""

    # {variable path: {key: shape}} (``layers/dense_1``: Keras's names, by class);
    # None where the layer saves None (see LayoutRecorder): no shape to check
    arrays: dict[str, dict[str, tuple[int, ...] | None]]
    # {variable path: the layer's own name} (``hidden``), where its variables say it
    names: dict[str, str]


def variable_layout(model: Any) -> ModelLayout | None:
    """What saving ``model`` would write (the optimizer left out), by
    Keras's own walk, or None if a layer's ``save_own_variables`` cannot
    run on this model (say, unfilled variables): then there is nothing to
    check against."""
    if not available():  # the walk is Keras's private one
        return None
    from kedro_keras._keras.stores.single_file import LayoutRecorder

    recorder = LayoutRecorder()
    try:
        save_state(model, recorder, None, include_optimizer=False)
    except Exception:  # noqa: BLE001 - a check we cannot make is skipped, not failed
        return None
    # Layers built inside the model's own scope (a Sequential's, a subclassed
    # model's) have its name first in their paths: the user's layer name is after it.
    scope = f"{getattr(model, 'name', '')}/"
    names = {path: name.removeprefix(scope) for path, name in recorder.names.items()}
    return ModelLayout(recorder.layout, names)


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
