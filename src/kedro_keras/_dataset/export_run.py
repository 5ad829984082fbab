"""``model.export`` as ``KerasExportDataset`` runs it, and what a runtime's
error says.

``model.export`` writes local paths only (the dataset publishes the artifact
from there); a model Keras has never called (one fresh from a file) is
called once on zeros of its input shapes first, as Keras traces only models
that have run. The exporters and the runtimes that load an artifact raise
errors that may quote names from the file: ``first_line`` shows one line of
them, as data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kedro_keras._log import printable

if TYPE_CHECKING:
    import keras


def export_model(model: keras.Model, local: str, format: str, export_args: dict[str, Any]) -> None:
    """``model.export(local, format=format, **export_args)``, calling the
    model once first if Keras says it was never called. Quiet unless the
    entry's ``export_args`` say ``verbose`` (which reaches Keras as given)."""
    export_args = {"verbose": False, **export_args}
    try:
        model.export(local, format=format, **export_args)
    except ValueError as exc:
        # Keras traces only models that have run once (a model fresh from a
        # file has not); one call on zeros of the input shapes is harmless.
        if "never called" not in str(exc) or not getattr(model, "inputs", None):
            raise
        _call_once_on_zeros(model)
        model.export(local, format=format, **export_args)


def _call_once_on_zeros(model: keras.Model) -> None:
    import keras
    import numpy as np

    def zeros(tensor: Any) -> Any:
        return np.zeros([1 if size is None else size for size in tensor.shape], dtype=tensor.dtype)

    model(keras.tree.map_structure(zeros, model.input), training=False)


def first_line(exc: BaseException) -> str:
    """A runtime's error, which may quote names from the file, as data."""
    text = str(exc).strip() or type(exc).__name__
    return printable(text.splitlines()[0], 500)
