"""Catalog entries moved over from kedro-datasets' ``TensorFlowModelDataset``:
the arguments it took that ``KerasModelDataset`` does not, each accepted with
a warning that says what it becomes here, or refused with a way forward.

See docs/migrating.md for the whole move.
"""

from __future__ import annotations

import warnings
from typing import Any

from kedro_keras._log import SafeDatasetError

# Arguments kedro-datasets' TensorFlowModelDataset takes, for entries moved
# over from it: what each becomes here.
_IGNORED_SAVE_ARGS = {
    "overwrite": "a save always replaces the file, in one step (and a versioned save writes a new version)",
}


def take_migration_args(
    load_args: dict[str, Any],
    save_args: dict[str, Any],
    filepath: str,
    *,
    keras_suffix: str,
    legacy_suffixes: tuple[str, ...],
) -> None:
    """Accept the harmless arguments of ``tensorflow.TensorFlowModelDataset``
    with a warning, and map ``tf_device`` to the backend-neutral ``device``.

    ``keras_suffix`` and ``legacy_suffixes`` are the names the dataset reads
    a format from (``.keras``; ``.h5`` and ``.hdf5``): a ``save_format`` that
    names another format is refused. Called from the dataset's ``__init__``,
    so each warning points at whoever made the dataset.
    """
    if "tf_device" in load_args:
        device = load_args.pop("tf_device")
        load_args.setdefault("device", device.lstrip("/") if isinstance(device, str) else device)
        warnings.warn(
            f"'{filepath}': load_args.tf_device is TensorFlowModelDataset's name; it is read as "
            f"load_args.device: {load_args['device']!r} (keras.device, every backend). Rename it.",
            stacklevel=4,
        )
    for key, reason in _IGNORED_SAVE_ARGS.items():
        if key in save_args:
            save_args.pop(key)
            warnings.warn(
                f"'{filepath}': save_args.{key} is not needed and is ignored: {reason}.", stacklevel=4
            )
    save_format = save_args.pop("save_format", None)
    if save_format is None:
        return
    named = "h5" if filepath.lower().endswith(legacy_suffixes) else "keras"
    if str(save_format).lower() in (named, "hdf5" if named == "h5" else named):
        warnings.warn(
            f"'{filepath}': save_args.save_format is not needed and is ignored: the format follows "
            "the file name.",
            stacklevel=4,
        )
        return
    raise SafeDatasetError(
        f"'{filepath}': save_args.save_format: {save_format!r} does not match the file name, which "
        f"decides the format here ('{keras_suffix}', or '{legacy_suffixes[0]}' for legacy HDF5). "
        "Keras 3 no longer saves TensorFlow SavedModel folders with model.save; remove save_format "
        "and name the file for the format you want."
    )
