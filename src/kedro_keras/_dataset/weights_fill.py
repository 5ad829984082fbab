"""How ``KerasWeightsDataset`` fills the model it built, from one
``.weights.h5`` file or from the shards a ``.weights.json`` index names.

Each ``fill`` is what ``_keras.build`` calls once the model exists (twice
when the optimizer is built after a first pass: the second loads only its
state). The first pass checks that the stored weights fit the model, so a
model that does not match them is refused with the difference named, never
half-loaded; a failure to read is one message that names the file.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Callable

from kedro.io.core import DatasetError

from kedro_keras._dataset import failures as _failures
from kedro_keras._dataset import preview as _preview
from kedro_keras._dataset.sharded_commit import shard_error
from kedro_keras._formats import sharded as _sharded
from kedro_keras._formats import weights as _weights
from kedro_keras._formats.weights import WEIGHTS_SUFFIX
from kedro_keras._io.files import Location
from kedro_keras._io.h5 import ShardReadError
from kedro_keras._io.h5_guards import stored_variable_groups
from kedro_keras._log import SafeDatasetError, as_data

if TYPE_CHECKING:
    import keras


def fill_from_file(
    location: Location, weights_path: PurePosixPath, url: str, sizes: list[int | None]
) -> Callable[[keras.Model], None]:
    """A fill that reads the weights at ``weights_path`` into the model;
    each pass appends the file's size to ``sizes`` (for the load's log line)."""
    visited: set[int] = set()

    def fill(model: keras.Model) -> None:
        try:
            with location.open_read(weights_path) as file:
                sizes.append(_preview.file_size(file))
                if not visited:  # the first pass; a second loads only the optimizer
                    mismatch = _weights.describe_weight_mismatch(model, stored_variable_groups(file))
                    if mismatch:
                        raise SafeDatasetError(
                            f"The weights at '{url}' do not fit the model '{model.name}': {mismatch}"
                        )
                _weights.read_weights_into(model, file, visited)
        except DatasetError:
            raise
        except Exception as exc:  # noqa: BLE001 - re-raised as a DatasetError, the text escaped
            raise SafeDatasetError(
                _failures.read_failure(
                    url,
                    exc,
                    what="the weights",
                    file_format=WEIGHTS_SUFFIX,
                    remedy="save the weights again",
                    into=model.name,
                )
            ) from as_data(exc)

    return fill


def fill_from_shards(
    location: Location, index: _sharded.ShardedIndex, directory: PurePosixPath, url: str
) -> Callable[[keras.Model], None]:
    """A fill that reads the weights from the shards ``index`` names, in
    ``directory``; each shard is checked against its CRC-32 once, over both
    passes."""

    def open_shard(name: str) -> Any:
        return location.open_read(directory / name)

    visited: set[int] = set()
    verified: set[str] = set()  # shards checked against their CRC-32, over both passes

    def fill(model: keras.Model) -> None:
        try:
            if not visited:  # the first pass; a second loads only the optimizer
                stored = _sharded.stored_sharded_variable_groups(index, open_shard)
                mismatch = _weights.describe_weight_mismatch(model, stored)
                if mismatch:
                    raise SafeDatasetError(
                        f"The weights at '{url}' do not fit the model '{model.name}': {mismatch}"
                    )
            _sharded.read_sharded_weights_into(model, index, open_shard, visited, verified)
        except DatasetError:
            raise
        except ShardReadError as exc:
            raise shard_error(location, exc, directory, url) from as_data(exc)
        except Exception as exc:  # noqa: BLE001 - re-raised as a DatasetError, the text escaped
            raise SafeDatasetError(
                f"Cannot load the weights at '{url}' into model '{model.name}': {exc}"
            ) from as_data(exc)

    return fill
