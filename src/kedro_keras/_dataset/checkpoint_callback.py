"""The Keras callback behind ``Checkpoints.callback()``. Its own module
because it subclasses a Keras class: imported only when a callback is made,
so that ``import kedro_keras`` stays free of Keras."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import keras

from kedro_keras._dataset.checkpoint_background import BackgroundWriter
from kedro_keras._dataset.checkpoint_series import set_aside_unrestored
from kedro_keras._dataset.one_writer import in_process_zero
from kedro_keras._log import SafeDatasetError, get_logger

if TYPE_CHECKING:
    from kedro_keras.keras_checkpoint_dataset import KerasCheckpointDataset

# The dataset's logger: users' logging configs and filters name that one.
logger = get_logger("kedro_keras.keras_checkpoint_dataset")


class CheckpointCallback(keras.callbacks.Callback):
    """Writes a checkpoint through a ``KerasCheckpointDataset`` as its
    policy says: at the end of every (n-th) epoch, or every ``save_freq``
    batches, counted and judged as Keras's ``ModelCheckpoint`` does."""

    def __init__(self, dataset: KerasCheckpointDataset, best: float | None = None) -> None:
        super().__init__()
        self._dataset = dataset
        policy = dataset._policy
        # Carried over from the restored checkpoint, else the value to beat.
        self._best = best if best is not None else policy.initial_value_threshold
        self._epoch = 0
        self._background: BackgroundWriter | None = None
        self._batches_since_save = 0
        self._last_batch_seen: int | None = None
        self._warned_unmonitored = False
        self._validated_this_epoch = self._validated_in_fit = False

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        # A finished training's checkpoints make way, also when the node
        # did not call restore() first: new ones must not mix with them.
        # Once per dataset: a second fit in the same node (fine-tuning
        # after the head) goes on with the series the first one wrote.
        dataset = self._dataset
        unrestored = not dataset._settled  # neither restore() nor an earlier fit looked at the folder

        def settle() -> None:
            dataset._settle_finished(continue_finished=dataset._settled)
            if unrestored:
                set_aside_unrestored(dataset._location, dataset._folder)

        in_process_zero(dataset._url(), settle)
        dataset._settled = True
        if dataset._policy.background and not dataset._weights_only and not dataset._orbax:
            self._background = BackgroundWriter(
                dataset._url(),
                dataset._write_checkpoint,
                lambda version: dataset._full_dataset(dataset._model_path(version)).load(),
            )
        elif dataset._policy.background:
            logger.warning(
                "Checkpoints in %s are written in the foreground: background writes are for full-model "
                "checkpoints (save_weights_only: false, format: keras)",
                dataset._url(),
            )

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch
        self._validated_this_epoch = False

    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        # fit's validation runs evaluate() with fit's callbacks: this tells an
        # epoch without validation (validation_freq) from a mistyped val_ metric.
        self._validated_this_epoch = self._validated_in_fit = True

    def _batch_checkpoint_due(self, batch: int) -> bool:
        # With steps_per_execution above 1, Keras calls this once per
        # execution, with the index of its last batch: count the batches, not
        # the calls (as ModelCheckpoint does).
        save_freq = self._dataset._policy.save_freq
        if save_freq == "epoch":
            return False
        if self._last_batch_seen is None or batch <= self._last_batch_seen:  # a new epoch
            self._batches_since_save += batch + 1
        else:
            self._batches_since_save += batch - self._last_batch_seen
        self._last_batch_seen = batch
        if self._batches_since_save < save_freq:
            return False
        self._batches_since_save = 0
        return True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        self._last_batch_seen = None
        monitor = self._dataset._policy.monitor
        if monitor is not None and monitor not in logs:
            if not (monitor.startswith("val_") and not self._validated_this_epoch):
                raise SafeDatasetError(
                    f"Checkpoints in '{self._dataset._url()}': monitor '{monitor}' is not among the metrics "
                    f"fit logged at the end of epoch {epoch + 1}: {', '.join(sorted(logs)) or 'none'}."
                )
            # No validation ran in this epoch (validation_freq above 1, or no
            # validation data at all): as Keras does, a warning, not an error.
            if not self._validated_in_fit and not self._warned_unmonitored:
                self._warned_unmonitored = True
                logger.warning(
                    "Checkpoints in %s: monitor '%s' is not in the logs of epoch %d: no validation has run "
                    "in this fit yet (val_ metrics need validation_data or validation_split, and come only "
                    "every validation_freq epochs); checkpoints without it are not ranked%s",
                    self._dataset._url(),
                    monitor,
                    epoch + 1,
                    " (save_best_only writes them, as Keras does)"
                    if self._dataset._policy.save_best_only
                    else "",
                )
        if monitor is not None:
            _monitored(logs, monitor, self._dataset._url())  # not a single number: an error every epoch
        if self._dataset._policy.at_epoch_end(epoch + 1):
            self._checkpoint(epoch + 1, 0, logs, at_epoch_end=True)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        # Keras calls this only when fit ends normally (its epochs done, or
        # stopped by a callback), never after an exception or a kill.
        dataset = self._dataset
        if self._background is not None:
            self._background.finish()  # the last checkpoint complete before fit returns
        in_process_zero(
            dataset._url(),
            dataset._remove_all if dataset._policy.remove_when_done else dataset._mark_finished,
        )

    def _larger_is_better(self) -> bool:
        dataset = self._dataset
        if dataset._found_direction is None and dataset._policy.mode == "auto":
            dataset._found_direction = _direction_of(self.model, dataset._policy.monitor, dataset._url())
        return dataset._policy.larger_is_better(dataset._found_direction)

    def _checkpoint(self, epochs_done: int, steps: int, logs: dict[str, Any], *, at_epoch_end: bool) -> None:
        dataset = self._dataset
        policy = dataset._policy
        value = _monitored(logs, policy.monitor, dataset._url()) if policy.monitor else None
        larger_is_better = self._larger_is_better() if policy.monitor else None
        improved = value is not None and policy.improves(value, self._best, bool(larger_is_better))
        if policy.save_best_only and policy.monitor in logs and value is None:
            return  # NaN: no improvement (as Keras), never a diverged model as the newest checkpoint
        if policy.save_best_only and value is None:
            if not self._warned_unmonitored:  # Keras's ModelCheckpoint warns and saves, too
                self._warned_unmonitored = True
                logger.warning(
                    "Checkpoints in %s: save_best_only, but '%s' is not in the logs of %s: "
                    "every checkpoint is written",
                    dataset._url(),
                    policy.monitor,
                    "an epoch" if at_epoch_end else "a batch (val_ metrics come at the end of an epoch)",
                )
        elif policy.save_best_only and not improved:
            return
        if improved:
            self._best = value
        record = {
            "monitor": policy.monitor,
            "value": value,
            "best": self._best,
            "larger_is_better": larger_is_better,
            "logs": {name: _number(number) for name, number in logs.items()},
            "random_states": random_states(self.model),
            "keras_version": keras.__version__,
            "backend": keras.backend.backend(),
        }
        if self._background is not None:
            self._background.checkpoint(self.model, epochs_done, steps, record)
            return
        if dataset._orbax:  # every process writes its own shards
            dataset._write_checkpoint(self.model, epochs_done, steps, record)
            return
        in_process_zero(
            dataset._url(),
            lambda: dataset._write_checkpoint(self.model, epochs_done, steps, record),
            self.model,
        )


class BatchCheckpointCallback(CheckpointCallback):
    """The callback for a ``save_freq`` counted in batches. Apart, because a
    callback that has a batch hook at all makes Keras hand it every batch's
    logs in step (no asynchronous dispatch where the backend allows it):
    checkpoints at epoch ends should not pay that on every batch."""

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._batch_checkpoint_due(batch):
            self._checkpoint(self._epoch, batch + 1, logs or {}, at_epoch_end=False)


def _direction_of(model: keras.Model, monitor: str, url: str) -> bool:
    """Whether larger values of ``monitor`` are better, the way Keras's
    ``MonitorCallback`` reads it: a loss is minimised; another metric goes
    the direction the model's metric of that name declares."""
    name = monitor.removeprefix("val_")
    if name == "loss":
        return False
    metrics: list[Any] = []
    for metric in getattr(model, "metrics", []):
        inner = getattr(metric, "metrics", None)  # the compiled metrics' containers
        metrics.extend(inner if isinstance(inner, list) else [metric])
    for metric in metrics:
        if getattr(metric, "name", None) == name and hasattr(metric, "_direction"):
            return metric._direction == "up"
    raise SafeDatasetError(
        f"Checkpoints in '{url}': monitor '{monitor}' is not a metric whose direction the model's metrics "
        "declare (as Keras's ModelCheckpoint, this needs it). Set mode: max or mode: min in the entry."
    )


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


def _monitored(logs: dict[str, Any], monitor: str, url: str) -> float | None:
    """The monitored metric's value in ``logs``: None if it is not there or
    NaN; a ``DatasetError`` if it is not a single number (an F1Score with
    ``average=None`` logs one per class), which no checkpoint can be ranked
    by: taken for NaN, it would never be an improvement, and
    ``save_best_only`` would write nothing, silently."""
    import numpy as np

    if monitor not in logs:
        return None
    raw = logs[monitor]
    try:
        shape = np.shape(raw)
        value = float(raw) if shape == () else None
    except (TypeError, ValueError):
        shape, value = (), None
    if value is None:
        logged = f"an array of shape {shape}" if shape else f"a {type(raw).__name__}"
        raise SafeDatasetError(
            f"Checkpoints in '{url}': monitor '{monitor}' is not a single number; fit logged {logged} "
            "for it. Monitor a metric that is one number (e.g. F1Score with average='macro')."
        )
    return None if math.isnan(value) else value


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number
