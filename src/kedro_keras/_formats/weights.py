"""``.weights.h5`` files on open file objects, and the check that a model
can take them.

Keras's layout: one HDF5 group per object holding state
(``layers/dense/vars``, ``optimizer/vars``), one array per key. The files we
write end with our CRC-32 trailer, which Keras and h5py ignore.
"""

from __future__ import annotations

import io
import shutil
import warnings
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any, Iterator

from kedro_keras._formats.layer_names import shown
from kedro_keras._io.h5 import (
    CHUNK,
    FileRegion,
    finish_h5_in_place,
    h5_window,
    verify,
    without_optimizer_group,
    write_h5_image,
    writes_in_place,
)
from kedro_keras._io.h5_guards import check_all_datasets
from kedro_keras._keras import saving as _keras_saving
from kedro_keras._keras.build import build_optimizer
from kedro_keras._keras.saving import local_copy
from kedro_keras._keras.stores import h5_read_store, h5_write_store, variable_layout
from kedro_keras._version import __version__

if TYPE_CHECKING:
    import keras

# Keras's weights file, and each shard of sharded weights.
WEIGHTS_SUFFIX = ".weights.h5"
# Per-variable-group layout: {"layers/dense": {"0": (4, 8), "1": (8,)}}.
Layout = dict[str, dict[str, tuple[int, ...]]]


def kedro_keras_metadata(include_optimizer: bool) -> dict[str, Any]:
    """What we add to a saved model's metadata, for describe and debugging."""
    from datetime import datetime, timezone

    import keras

    return {
        "keras_version": keras.version(),
        "backend": keras.backend.backend(),
        "kedro_keras_version": __version__,
        "include_optimizer": include_optimizer,
        # UTC with its offset, as every time we write (Keras's own date_saved is the saving machine's local time).
        "saved_at": datetime.now(tz=timezone.utc).isoformat(timespec="seconds"),
    }


def weights_image(model: keras.Model, assets_store: Any, *, include_optimizer: bool) -> io.BytesIO:
    """The model's state as an HDF5 file in memory.

    HDF5 must seek while it writes, which an object-store upload cannot, so
    for those the weights are laid out in memory once (as Keras does) and
    then streamed out without a second copy; local files get
    ``write_weights_in_place`` instead.
    """
    buffer = io.BytesIO()
    store = h5_write_store(buffer)
    try:
        _keras_saving.save_state(model, store, assets_store, include_optimizer=include_optimizer)
    finally:
        store.close()
    return buffer


def write_weights_in_place(
    model: keras.Model, assets_store: Any, file: IO[bytes], *, include_optimizer: bool
) -> int:
    """The model's state as an HDF5 image written by HDF5 straight into
    ``file`` from its current position; returns the image's size. Memory:
    one array at a time, whatever the model's size."""
    region = FileRegion(file, file.tell())
    store = h5_write_store(region)
    try:
        _keras_saving.save_state(model, store, assets_store, include_optimizer=include_optimizer)
    finally:
        store.close()
    return region.size


def write_weights(model: keras.Model, file: IO[bytes], *, include_optimizer: bool = True) -> None:
    """Write the weights (and optimizer state) in Keras's ``.weights.h5`` layout."""
    if _keras_saving.available() and writes_in_place(file):
        start = file.tell()
        size = write_weights_in_place(model, None, file, include_optimizer=include_optimizer)
        finish_h5_in_place(file, start, size)
        return
    if _keras_saving.available():
        image = weights_image(model, None, include_optimizer=include_optimizer)
        write_h5_image(file, image.getbuffer().toreadonly())
        return
    with local_copy(WEIGHTS_SUFFIX) as local_path:
        model.save_weights(local_path)
        with open(local_path, "rb") as local_file:
            data = local_file.read()
    write_h5_image(file, memoryview(data if include_optimizer else without_optimizer_group(data)))


def architecture_json(model: keras.Model, include_optimizer: bool = True) -> str:
    """``model.to_json()`` plus a ``kedro_keras`` record of what wrote the
    weights (Keras, backend, when): a weights file has no metadata of its
    own, and ``model_from_json`` ignores keys it does not know."""
    import json

    config = json.loads(model.to_json())
    config["kedro_keras"] = kedro_keras_metadata(include_optimizer)
    return json.dumps(config)


def describe_weight_mismatch(model: keras.Model, stored: Layout) -> str | None:
    """Why ``model`` cannot take the stored weights, or None if it can.

    The model's side is what saving it would write, by Keras's own walk, so
    a layer that saves its own state (derived arrays, lookup tables) is
    compared on what it saves, not on its variables. Only what would make
    Keras load wrong or nothing is refused: a group the model writes that
    the file lacks or holds otherwise. Groups the model does not write
    (Keras 2's ``metrics/``) are ignored, as ``load_weights`` ignores them.
    """
    recorded = variable_layout(model)
    if recorded is None:
        return None
    expected = recorded.arrays
    aliased = _filled_under_another_name(model, expected, stored)
    problems: list[str] = []
    unbuilt: list[str] = []
    for path, arrays in expected.items():
        held = stored.get(path)
        # The user's layer name first, Keras's path in the file beside it.
        name = shown(path, recorded.names) if path else "the model itself"
        if path in aliased:
            continue
        if not arrays:
            if held:
                unbuilt.append(name)
                problems.append(f"{name} has no variables in the model but {len(held)} array(s) in the file")
        elif held is None:
            problems.append(f"the file holds nothing for {name} ({len(arrays)} array(s) in the model)")
        elif set(held) != set(arrays):
            problems.append(f"{name} has {len(arrays)} array(s) in the model but {len(held)} in the file")
        else:
            problems += [
                f"{name}: array {key} has shape {arrays[key]} in the model but {held[key]} in the file"
                for key in sorted(arrays)
                if arrays[key] is not None and tuple(arrays[key]) != tuple(held[key])
            ]
    if not problems:
        return None
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    message = "; ".join(problems[:3]) + more + "."
    if unbuilt:
        message += (
            " A layer without variables was never built: call the model on a batch of data, "
            "or build it with an input shape, inside the builder."
        )
    return message


def _filled_under_another_name(model: keras.Model, expected: Layout, stored: Layout) -> set[str]:
    """The model's paths that the file lacks but Keras's load walk fills
    anyway: the same layer is an attribute of its parent under a second
    name (a property returning it) that the file holds, with the same
    arrays. Saving walks one name, loading finds the other (Keras's
    ``test_redefinition_of_trackable``)."""
    others: dict[str, list[str]] = {}  # the file's paths the model does not write, by parent
    for path in stored:
        if path not in expected:
            parent, _, name = path.rpartition("/")
            others.setdefault(parent, []).append(name)
    filled = set()
    for path, arrays in expected.items():
        if path in stored or not arrays:
            continue
        parent_path, _, name = path.rpartition("/")
        parent = _attribute_path(model, parent_path)
        target = _attribute_path(parent, name) if parent is not None else None
        if target is None:
            continue
        for other_name in others.get(parent_path, []):
            other = f"{parent_path}/{other_name}" if parent_path else other_name
            if _attribute_path(parent, other_name) is target and {
                key: tuple(shape) for key, shape in stored[other].items()
            } == {key: None if shape is None else tuple(shape) for key, shape in arrays.items()}:
                filled.add(path)
                break
    return filled


def _attribute_path(obj: Any, path: str) -> Any:
    """``obj.a.b`` for ``"a/b"`` (``obj`` for ``""``), or None where an
    attribute is missing or raises: a path in a file is a name, not code."""
    for name in filter(None, path.split("/")):
        if name.startswith("__"):  # Keras's walk never follows dunder names; neither do we
            return None
        try:
            obj = getattr(obj, name, None)
        except Exception:  # noqa: BLE001 - a property that fails is no alias
            return None
        if obj is None:
            return None
    return obj


def read_weights_into(model: keras.Model, file: IO[bytes], visited: set[int] | None = None) -> None:
    """Load the weights in an open ``.weights.h5`` file into a built model.

    Pass the same ``visited`` set to a second call (after compiling) to load
    only the optimizer state.
    """
    # The first pass checks the file's checksum; a second (the optimizer's
    # state, after compiling) reads what the first already checked.
    first_pass = not visited
    build_optimizer(model)
    window = h5_window(file)
    if _keras_saving.available():
        try:
            store = h5_read_store(window)
            try:
                with quiet_absent_optimizer_state():
                    _keras_saving.load_state(model, store, None, set() if visited is None else visited)
            finally:
                store.close()
        except Exception as exc:
            verify(window, cause=exc)
            raise
        if first_pass:
            verify(window)
        return
    check_all_datasets(window)
    with local_copy(WEIGHTS_SUFFIX) as local_path:
        with open(local_path, "wb") as local_file:
            shutil.copyfileobj(window, local_file, CHUNK)  # checks the checksum on the way
        verify(window)
        with quiet_absent_optimizer_state():
            model.load_weights(local_path)


@contextmanager
def quiet_absent_optimizer_state() -> Iterator[None]:
    # A file saved with include_optimizer=False holds no optimizer state, and
    # Keras warns that it skips it: expected. Any other skip (a real mismatch)
    # still warns.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Skipping variable loading for optimizer.*the saved optimizer has 0 variables"
        )
        yield
