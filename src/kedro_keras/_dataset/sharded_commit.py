"""Sharded weights (a ``.weights.json`` index plus shards) at a ``Location``:
a save that replaces the previous one only once it is complete, and what a
load checks of the index it finds.

The index is the commit point (docs/design.md, "Sharded weights"): the new
shards get names of their own, the index is published last in one
``atomic_write``, and only then are the shards the replaced index named,
and the new one does not, removed. Shard names and the files' layout are
``_formats.sharded``'s; where the files live is the ``Location``'s.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from pathlib import PurePosixPath
from typing import IO, TYPE_CHECKING, Iterator

from kedro.io.core import DatasetError

from kedro_keras._dataset.failures import corrupt
from kedro_keras._formats import sharded as _sharded
from kedro_keras._formats import weights as _weights
from kedro_keras._io.files import Location
from kedro_keras._io.h5 import CorruptFileError, ShardReadError
from kedro_keras._log import SafeDatasetError, as_data, get_logger

if TYPE_CHECKING:
    import keras

logger = get_logger(__name__)


def save_sharded(
    location: Location,
    data: keras.Model,
    index_path: PurePosixPath,
    architecture_path: PurePosixPath,
    *,
    versioned: bool,
    max_shard_size: float,
    include_optimizer: bool,
) -> None:
    """Write shards, then publish the index, then tidy up.

    Nothing the current index names is touched until the new index
    replaces it in one step: the new shards have names of their own (a
    new version's folder is empty, so there they get Keras's own names).
    Only then are the shards the old index named, and the new one does
    not, removed. A save that fails or dies before the index is
    published leaves the previous weights loadable as they were, plus
    shard files that no index names.

    Raises:
        DatasetError: the save failed before the index was published; any
            weights previously saved there are unchanged.
    """
    url = location.url(index_path)
    directory = index_path.parent
    base = _sharded.index_base(index_path.name)
    save_id = None if versioned else uuid.uuid4().hex[:8]
    # Plain Keras opens this name first, whatever the index says.
    first = _sharded.first_shard_name(index_path.name)
    written: list[str] = []

    @contextmanager
    def open_shard(name: str) -> Iterator[IO[bytes]]:
        with location.atomic_write(directory / name, exclusive=True) as file:
            yield file
        written.append(name)

    try:
        index = _sharded.write_sharded_weights(
            data,
            shard_name=lambda position: _sharded.shard_name(base, position, save_id),
            open_shard=open_shard,
            max_shard_size=max_shard_size,
            include_optimizer=include_optimizer,
        )
        architecture = _weights.architecture_json(data, include_optimizer)
        index_json = _sharded.sharded_index_json(index, architecture, include_optimizer=include_optimizer)
        replaced = shards_named_by(location, index_path)
        # Unless a shard of ours has that name, an empty file stands
        # there; if the current index (from plain Keras) has weights
        # under it, only once that index is replaced.
        placeholder_needed = first not in written
        placeholder_after_publishing = placeholder_needed and first in (replaced or ())
        if placeholder_needed and not placeholder_after_publishing:
            write_empty_shard(location, directory / first)
        with location.atomic_write(index_path) as file:
            file.write(index_json.encode())
    except Exception as exc:  # noqa: BLE001 - re-raised as a DatasetError, the text escaped
        remove_quietly(location, directory, written)
        raise SafeDatasetError(
            f"Could not save the weights of model '{data.name}' to '{url}': {exc}. "
            "Any weights previously saved there are unchanged."
        ) from as_data(exc)
    location.invalidate_cache(index_path)
    after_publishing(
        location,
        data,
        index_path,
        architecture_path,
        architecture,
        replaced,
        written,
        write_placeholder=placeholder_after_publishing,
    )
    logger.info("Saved weights of model '%s' to %s (%d shards)", data.name, url, len(written))


def after_publishing(
    location: Location,
    data: keras.Model,
    index_path: PurePosixPath,
    architecture_path: PurePosixPath,
    architecture: str,
    replaced: set[str] | None,
    written: list[str],
    *,
    write_placeholder: bool,
) -> None:
    """The steps after the new index is published: none of them can
    change what loads, so a failure is a warning, not a failed save.

    ``write_placeholder``: the empty first shard waited for the index that
    kept weights under its name to be replaced, and is written now.
    """
    directory = index_path.parent
    url = location.url(index_path)
    try:
        # For plain Keras users (keras.models.model_from_json); the
        # dataset rebuilds from the copy inside the index.
        with location.atomic_write(architecture_path) as file:
            file.write(architecture.encode())
    except Exception as exc:  # noqa: BLE001
        logger.warning(
            "Saved the weights of model '%s' to %s, but not its architecture to %s (%s); the "
            "dataset rebuilds the model from the copy in the index.",
            data.name,
            url,
            location.url(architecture_path),
            exc,
        )
    first = _sharded.first_shard_name(index_path.name)
    if write_placeholder:
        try:
            write_empty_shard(location, directory / first)
        except Exception as exc:  # noqa: BLE001
            logger.warning("Could not empty %s, a shard of the previous save: %s", first, exc)
    if replaced is None:
        logger.warning(
            "The index %s replaced was unreadable, so the shards it named (if any) are left in place.",
            url,
        )
        return
    remove_quietly(location, directory, sorted(replaced - set(written) - {first}))


def shards_named_by(location: Location, index_path: PurePosixPath) -> set[str] | None:
    """The shards the index at ``index_path`` names: empty if there is
    none, None if it cannot be read."""
    try:
        with location.open_read(index_path) as file:
            named = _sharded.read_sharded_index(file).shards
    except FileNotFoundError:
        return set()
    except Exception:  # noqa: BLE001 - a damaged index names nothing we can trust
        return None
    # Only names a save of this index gives its shards: an index planted
    # beside it cannot make a save delete another model's file.
    base = _sharded.index_base(index_path.name)
    ours = {name for name in named if _sharded.is_shard_name_of(name, base)}
    if len(ours) < len(named):
        logger.warning(
            "The index %s named files that are not its shards (%s); they are left in place.",
            location.url(index_path),
            ", ".join(sorted(set(named) - ours)),
        )
    return ours


def write_empty_shard(location: Location, path: PurePosixPath) -> None:
    """The placeholder first shard (see ``_sharded.write_empty_shard``)."""
    with location.atomic_write(path) as file:
        _sharded.write_empty_shard(file)


def remove_quietly(location: Location, directory: PurePosixPath, names: list[str]) -> None:
    """Remove the files ``names`` in ``directory``; one that cannot be is logged and left."""
    for name in names:
        try:
            location.remove(directory / name)
        except FileNotFoundError:
            pass
        except Exception as exc:  # noqa: BLE001 - left behind, named by no index
            logger.warning("Could not remove %s: %s", location.url(directory / name), exc)
    location.invalidate_cache(directory)


def read_index(location: Location, index_path: PurePosixPath) -> _sharded.ShardedIndex:
    """The index at ``index_path``, checked (``_sharded.read_sharded_index``)."""
    url = location.url(index_path)
    try:
        with location.open_read(index_path) as file:
            return _sharded.read_sharded_index(file)
    except FileNotFoundError as exc:
        raise SafeDatasetError(f"No Keras weights at '{url}': the file does not exist.") from as_data(exc)
    except ValueError as exc:
        raise SafeDatasetError(f"'{url}' is not a valid sharded-weights index: {exc}.") from as_data(exc)


def check_shards_exist(
    location: Location, index: _sharded.ShardedIndex, directory: PurePosixPath, url: str
) -> None:
    """Refuse an index naming a shard that is not in ``directory`` (one listing)."""
    present = location.names_in(directory)
    missing = [name for name in index.shards if name not in present]
    if missing:
        raise SafeDatasetError(
            f"'{url}' names shards that do not exist: "
            f"{', '.join(repr(location.url(directory / name)) for name in missing)}. "
            "The files were moved or deleted: restore them or save the weights again."
        )


def shard_error(location: Location, exc: ShardReadError, directory: PurePosixPath, url: str) -> DatasetError:
    """What a load says of a shard it could not read."""
    shard_url = location.url(directory / exc.shard)
    error = exc.error
    if isinstance(error, CorruptFileError):
        return SafeDatasetError(corrupt(shard_url, error, "save the weights again", part_of=url))
    if isinstance(error, FileNotFoundError):
        # A save removes the shards of the index it replaced once it is published.
        return SafeDatasetError(
            f"'{shard_url}', a shard named by '{url}', does not exist (was the model saved "
            "again while it was being loaded?)."
        )
    if isinstance(error, OSError):
        return SafeDatasetError(
            f"'{shard_url}' (a shard of '{url}') is not a valid {_weights.WEIGHTS_SUFFIX} file ({error}): "
            "the file is truncated, corrupt, or in another format."
        )
    return SafeDatasetError(f"Cannot load the shard '{shard_url}' of '{url}': {error}")
