"""The Keras callback behind ``Checkpoints.callback()``. Its own module
because it subclasses a Keras class: imported only when a callback is made,
so that ``import kedro_keras`` stays free of Keras."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import keras

from kedro_keras._log import SafeDatasetError

if TYPE_CHECKING:
    from kedro_keras.keras_checkpoint_dataset import KerasCheckpointDataset


class CheckpointCallback(keras.callbacks.Callback):
    """Writes a checkpoint through a ``KerasCheckpointDataset`` at the end of
    every epoch, or every ``save_freq`` batches."""

    def __init__(self, dataset: KerasCheckpointDataset, best: float | None = None) -> None:
        super().__init__()
        self._dataset = dataset
        self._best = best  # carried over from the restored checkpoint
        self._epoch = 0
        self._batches_since_save = 0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        # A finished training's checkpoints make way, also when the node
        # did not call restore() first: new ones must not mix with them.
        self._dataset._settle_finished(continue_finished=False)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._dataset._policy.save_freq == "epoch":
            return
        self._batches_since_save += 1
        if self._batches_since_save >= self._dataset._policy.save_freq:
            self._batches_since_save = 0
            self._checkpoint(self._epoch, batch + 1, logs or {}, at_epoch_end=False)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        monitor = self._dataset._policy.monitor
        if monitor is not None and monitor not in logs:
            hint = (
                " (val_ metrics need validation_data or validation_split in fit)"
                if monitor.startswith("val_")
                else ""
            )
            raise SafeDatasetError(
                f"Checkpoints in '{self._dataset._url()}': monitor '{monitor}' is not among the metrics "
                f"fit logged at the end of epoch {epoch + 1}: {', '.join(sorted(logs)) or 'none'}{hint}."
            )
        if self._dataset._policy.save_freq == "epoch":
            self._checkpoint(epoch + 1, 0, logs, at_epoch_end=True)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        # Keras calls this only when fit ends normally (its epochs done, or
        # stopped by a callback), never after an exception or a kill.
        if self._dataset._policy.remove_when_done:
            self._dataset._remove_all()
        else:
            self._dataset._mark_finished()

    def _checkpoint(self, epochs_done: int, steps: int, logs: dict[str, Any], *, at_epoch_end: bool) -> None:
        dataset = self._dataset
        value = _number(logs.get(dataset._policy.monitor)) if dataset._policy.monitor else None
        improved = value is not None and dataset._policy.improves(value, self._best)
        if dataset._policy.save_best_only and not (at_epoch_end and improved):
            return
        if improved:
            self._best = value
        record = {
            "monitor": dataset._policy.monitor,
            "value": value,
            "best": self._best,
            "logs": {name: _number(number) for name, number in logs.items()},
            "random_states": random_states(self.model),
            "keras_version": keras.__version__,
            "backend": keras.backend.backend(),
        }
        dataset._write_checkpoint(self.model, epochs_done, steps, record)


def _random_state_variables(model: keras.Model) -> list[Any]:
    # ``variables`` is ``weights`` plus the state of every SeedGenerator
    # (Dropout's and the like), which no Keras file keeps: without it, a
    # resumed run would draw other dropout masks than an uninterrupted one.
    weights = {id(variable) for variable in model.weights}
    return [variable for variable in model.variables if id(variable) not in weights]


def random_states(model: keras.Model) -> list[dict[str, Any]]:
    """The model's random-generator states, small enough for the JSON record."""
    return [
        {"dtype": str(keras.ops.convert_to_numpy(v).dtype), "value": keras.ops.convert_to_numpy(v).tolist()}
        for v in _random_state_variables(model)
    ]


def set_random_states(model: keras.Model, states: list[dict[str, Any]]) -> bool:
    """Put recorded states back; False (and nothing changed) if they do not
    fit the model's generators. ValueError for a state that is not one
    ``random_states()`` writes.

    The states come from a file: their dtypes and shapes are checked against
    the model's own variables before NumPy allocates anything, since a
    record of a few bytes can declare gigabytes (dtype 'U50000000').
    """
    import numpy as np

    from kedro_keras._dataset.checkpoint_record import random_state_shape

    variables = _random_state_variables(model)
    if not isinstance(states, list) or len(states) != len(variables):
        return False
    shapes = [random_state_shape(state, f"random_states[{index}]") for index, state in enumerate(states)]
    if any(shape != tuple(variable.shape) for shape, variable in zip(shapes, variables, strict=True)):
        return False
    arrays = [np.asarray(state["value"], dtype=state["dtype"]) for state in states]
    for variable, array in zip(variables, arrays, strict=True):
        variable.assign(array)
    return True


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number
