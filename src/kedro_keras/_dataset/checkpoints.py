"""``Checkpoints``: what a ``KerasCheckpointDataset`` entry gives a node.

``restore()`` the newest complete checkpoint (skipping damaged ones, with a
warning), ``best()`` by the monitored metric, and ``callback()`` for ``fit``.
The handle asks its dataset for records and models; the dataset owns the
folder, its names and the policy of which checkpoints to keep.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from kedro.io.core import DatasetError

from kedro_keras._dataset.failures import corrupt
from kedro_keras._dataset.one_writer import in_process_zero
from kedro_keras._formats.weights import describe_weight_mismatch, read_weights_into
from kedro_keras._io.files import Location
from kedro_keras._io.h5 import CorruptFileError
from kedro_keras._io.h5_guards import stored_variable_groups
from kedro_keras._log import SafeDatasetError, as_data, get_logger

if TYPE_CHECKING:
    import keras

# The dataset's logger: users' logging configs and filters name that one.
logger = get_logger("kedro_keras.keras_checkpoint_dataset")


class NotSkippable(DatasetError):
    """Not a damaged checkpoint but a wrong call or model: restoring an older
    checkpoint would not help, so ``restore()`` stops at it."""


class Checkpoints:
    """What a ``KerasCheckpointDataset`` entry gives a node: restore the
    newest checkpoint, and a callback for ``fit`` that writes new ones."""

    def __init__(self, dataset: Any) -> None:
        self._dataset = dataset
        self.initial_epoch = 0
        """Epochs the restored checkpoint had done: pass it to ``fit``. 0
        until ``restore()`` has restored one (call ``restore()`` first)."""
        self.restored: str | None = None
        """The version ``restore()`` gave, or None."""
        self.best_value: float | None = None

    def versions(self) -> list[str]:
        """The complete checkpoints, newest first."""
        return self._dataset.versions()

    def restore(
        self, model: keras.Model | None = None, *, continue_finished: bool = False
    ) -> keras.Model | None:
        """The newest complete checkpoint of an interrupted training (or the
        pinned one), or None if there is none: a training whose ``fit`` ended
        normally is finished, and the next one starts anew (its checkpoints
        are moved to a ``finished-<time>`` folder beside the new ones). If the
        newest cannot be read (corrupt, cut short), the one before it is
        restored instead, with a warning.

        Args:
            model: With ``save_weights_only``, the model (built and compiled as
                in training) to restore the weights and optimizer state into.
            continue_finished: Continue a finished training too (to train it
                for more epochs): its newest checkpoint is restored, and new
                checkpoints go on from it.
        """
        dataset = self._dataset
        # A pinned checkpoint is restored whether its training finished or
        # not, and the training goes on from it: as if asked to continue.
        finish = continue_finished or dataset._pinned is not None
        in_process_zero(dataset._url(), lambda: dataset._settle_finished(finish))
        dataset._settled = True
        versions = dataset.versions()
        if dataset._pinned is not None:
            if dataset._pinned not in versions:
                listed = ", ".join(versions[:5]) if versions else "none"
                raise SafeDatasetError(
                    f"Checkpoint '{dataset._pinned}' is not in '{dataset._url()}'. Checkpoints there: {listed}."
                )
            return self._restore_version(dataset._pinned, model)
        failures = []
        for version in versions:
            try:
                restored = self._restore_version(version, model)
            except NotSkippable:
                raise
            except DatasetError as exc:
                logger.warning("Skipping checkpoint %s of %s: %s", version, dataset._url(), exc)
                failures.append(f"{version}: {exc}")
                continue
            if failures:
                logger.warning(
                    "Restored checkpoint %s instead of the newer one(s) that could not be read", version
                )
            return restored
        if failures:
            raise SafeDatasetError(
                f"None of the {len(failures)} checkpoint(s) in '{dataset._url()}' could be read; "
                f"newest: {failures[0]}"
            )
        logger.info("No checkpoint in %s yet: training starts from epoch 0", dataset._url())
        return None

    def best(self, model: keras.Model | None = None) -> keras.Model | None:
        """The checkpoint best by ``monitor`` (None if there is none)."""
        dataset = self._dataset
        if dataset._policy.monitor is None:
            raise SafeDatasetError(f"'{dataset._url()}': best() needs monitor: in the catalog entry.")
        version = dataset._best_version(dataset.versions())
        return None if version is None else self._read(version, model)

    def _restore_version(self, version: str, model: keras.Model | None) -> keras.Model:
        dataset = self._dataset
        record = dataset._record(version)
        restored = self._read(version, model)
        if record.get("random_states") is not None:
            from kedro_keras._dataset.checkpoint_callback import set_random_states

            if not set_random_states(restored, record["random_states"]):  # already checked: no ValueError
                logger.warning(
                    "Checkpoint %s: the model's random generators (Dropout's, ...) differ from the "
                    "recorded ones; training goes on with fresh ones",
                    version,
                )
        self.initial_epoch = int(record["epoch"])
        self.best_value = record.get("best")
        self.restored = version
        logger.warning(
            "Resuming from checkpoint %s of %s: %d epoch(s) done%s",
            version,
            dataset._url(),
            self.initial_epoch,
            f", {record['step']} batch(es) into the next (that epoch restarts)" if record["step"] else "",
        )
        return restored

    def _read(self, version: str, model: keras.Model | None) -> keras.Model:
        dataset = self._dataset
        path = dataset._model_path(version)
        if dataset._orbax:
            if model is not None:
                raise NotSkippable(
                    f"The checkpoints in '{dataset._url()}' are Orbax folders that rebuild their model: call "
                    "restore() without a model."
                )
            return dataset._orbax_dataset(path).load()
        if not dataset._weights_only:
            if model is not None:
                raise NotSkippable(
                    f"The checkpoints in '{dataset._url()}' are whole models: call restore() without a "
                    "model, or set save_weights_only: true to restore weights into a model you build."
                )
            return dataset._full_dataset(path).load()
        if model is None:
            raise NotSkippable(
                f"The checkpoints in '{dataset._url()}' hold weights only (save_weights_only: true): "
                "pass the model to restore them into, e.g. checkpoints.restore(build_model(params)), "
                "compiled as in training so that the optimizer state comes back too."
            )
        restore_weights(dataset._location, path, model)
        return model

    def callback(self) -> keras.callbacks.Callback:
        """A Keras callback that writes a checkpoint as the entry says."""
        from kedro_keras._dataset.checkpoint_callback import BatchCheckpointCallback, CheckpointCallback

        by_batches = self._dataset._policy.save_freq != "epoch"
        return (BatchCheckpointCallback if by_batches else CheckpointCallback)(self._dataset, self.best_value)


def restore_weights(location: Location, path: PurePosixPath, model: keras.Model) -> None:
    """Read a weights-only checkpoint into ``model``: a damaged file is a
    ``DatasetError`` (``restore()`` tries the one before), a model it does
    not fit is ``NotSkippable``."""
    url = location.url(path)
    try:
        with location.open_read(path) as file:
            mismatch = describe_weight_mismatch(model, stored_variable_groups(file))
            if mismatch:
                raise NotSkippable(
                    f"Checkpoint '{url}' does not fit the model '{model.name}': {mismatch} "
                    "Was it written by another architecture? Point the entry at a new folder, "
                    "or build the model as in the run that wrote it."
                )
            read_weights_into(model, file)
    except DatasetError:
        raise
    except CorruptFileError as exc:
        raise SafeDatasetError(corrupt(url, exc, "let the next checkpoint replace it")) from as_data(exc)
    except OSError as exc:  # unreadable: an older checkpoint may do
        raise SafeDatasetError(f"Cannot read checkpoint '{url}': {exc}") from as_data(exc)
    except Exception as exc:  # noqa: BLE001 - re-raised as a DatasetError, the text escaped
        # The checksum held, so the file is whole: it is the model that
        # differs (what Keras says when our own check could not run).
        raise NotSkippable(
            f"Checkpoint '{url}' does not fit the model '{model.name}': {exc}. Was it written by "
            "another architecture? Point the entry at a new folder, or build the model as in "
            "the run that wrote it."
        ) from as_data(exc)
