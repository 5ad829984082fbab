"""``model.export`` as ``KerasExportDataset`` runs it, and what a runtime's
error says.

``model.export`` writes local paths only (the dataset publishes the artifact
from there); a model Keras has never called (one fresh from a file) is
called once on zeros of its input shapes (a subclassed model's: the shapes
it was built with) first, as Keras traces only models that have run. The
exporters and the runtimes that load an artifact raise errors that may
quote names from the file: ``first_line`` shows one line of them, as data.
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
        arguments = _zeros_to_call_with(model) if "never called" in str(exc) else None
        if arguments is None:
            raise
        model(*arguments, training=False)
        model.export(local, format=format, **export_args)


def _zeros_to_call_with(model: keras.Model) -> list[Any] | None:
    """The arguments of one call on zeros: shaped as the model's inputs
    (functional and sequential models), else as the shapes its build
    config records (a subclassed model fresh from a file, built but never
    called: one argument per shape it was built with, in order); None if
    neither says."""
    import keras
    import numpy as np

    def zeros(shape: Any, dtype: Any) -> Any:
        return np.zeros([1 if size is None else size for size in shape], dtype=dtype)

    inputs = getattr(model, "inputs", None)
    if inputs:
        try:
            structure = model.input  # a functional model's own nesting (a dict, a list, one tensor)
        except AttributeError:  # a Sequential model: one input
            structure = inputs[0] if len(inputs) == 1 else inputs
        return [keras.tree.map_structure(lambda tensor: zeros(tensor.shape, tensor.dtype), structure)]
    config = model.get_build_config()
    if not isinstance(config, dict):
        return None
    shapes = config.get("shapes_dict") or (
        {"input_shape": config["input_shape"]} if config.get("input_shape") is not None else None
    )
    if not isinstance(shapes, dict) or not shapes:
        return None
    dtype = getattr(model, "input_dtype", None) or "float32"

    def like(structure: Any) -> Any:
        if isinstance(structure, dict):
            return {key: like(value) for key, value in structure.items()}
        if isinstance(structure, (list, tuple)):
            if all(isinstance(size, int) or size is None for size in structure):
                return zeros(structure, dtype)  # a shape
            return type(structure)(like(value) for value in structure)
        raise ValueError(f"not a shape: {structure!r}")

    try:
        return [like(value) for value in shapes.values()]
    except ValueError:
        return None


def first_line(exc: BaseException, limit: int = 500) -> str:
    """A runtime's error, which may quote names from the file, as data."""
    text = str(exc).strip() or type(exc).__name__
    return printable(text.splitlines()[0], limit)
