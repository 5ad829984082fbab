"""When a checkpoint is written and which are kept: the options of a
``KerasCheckpointDataset`` entry, checked when the catalog is built, and the
rules the callback and the pruning follow."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kedro_keras._log import SafeDatasetError

# Metric names for which larger is better, for records that do not say (written
# by kedro-keras before the direction was recorded): the model's own metric
# decides otherwise, as in Keras's MonitorCallback.
_LARGER_IS_BETTER = ("acc", "auc", "precision", "recall", "f1", "fmeasure")


def check_keep_last(keep_last: object) -> None:
    """``keep_last`` of a history or of checkpoints: a whole number >= 1, or None."""
    if keep_last is not None and (
        isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1
    ):
        raise SafeDatasetError(
            f"keep_last must be a whole number of at least 1 (or null); got {keep_last!r}."
        )


@dataclass(frozen=True)
class CheckpointPolicy:
    """The entry's checkpoint options (see ``KerasCheckpointDataset``)."""

    keep_last: int | None = 3
    save_freq: str | int = "epoch"
    every_n_epochs: int = 1
    monitor: str | None = None
    mode: str = "auto"
    save_best_only: bool = False
    initial_value_threshold: float | None = None
    remove_when_done: bool = False
    background: bool = False

    def __post_init__(self) -> None:
        check_keep_last(self.keep_last)
        if not isinstance(self.background, bool):
            raise SafeDatasetError(f"background must be true or false; got {self.background!r}.")
        save_freq = self.save_freq
        if save_freq != "epoch" and (
            isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1
        ):
            raise SafeDatasetError(
                f"save_freq must be 'epoch' or a number of batches of at least 1; got {save_freq!r}."
            )
        every = self.every_n_epochs
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise SafeDatasetError(f"every_n_epochs must be a whole number of at least 1; got {every!r}.")
        if every != 1 and save_freq != "epoch":
            raise SafeDatasetError(
                f"every_n_epochs ({every}) is for save_freq: epoch; with save_freq {save_freq!r} a "
                "checkpoint comes every that many batches. Choose one."
            )
        if self.mode not in ("auto", "min", "max"):
            raise SafeDatasetError(f"mode must be 'auto', 'min' or 'max'; got {self.mode!r}.")
        threshold = self.initial_value_threshold
        if threshold is not None and (
            isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or math.isnan(threshold)
        ):
            raise SafeDatasetError(f"initial_value_threshold must be a number; got {threshold!r}.")
        if self.save_best_only and self.monitor is None:
            object.__setattr__(self, "monitor", "val_loss")  # as Keras's ModelCheckpoint does
        if threshold is not None and self.monitor is None:
            raise SafeDatasetError(
                "initial_value_threshold is a value of the monitored metric: set monitor (or save_best_only) too."
            )

    def at_epoch_end(self, epochs_done: int) -> bool:
        """Whether the end of an epoch, ``epochs_done`` in all, takes a checkpoint."""
        return self.save_freq == "epoch" and epochs_done % self.every_n_epochs == 0

    def larger_is_better(self, found: bool | None = None) -> bool:
        """The monitored metric's direction: ``mode`` if it says one, else
        ``found`` (what the model's metric says, as Keras reads it), else, for
        records written before directions were recorded, the metric's name."""
        if self.mode != "auto":
            return self.mode == "max"
        if found is not None:
            return found
        monitor = self.monitor or ""
        return monitor.removeprefix("val_") != "loss" and any(word in monitor for word in _LARGER_IS_BETTER)

    def improves(self, value: float, than: float | None, larger_is_better: bool) -> bool:
        """Whether ``value`` of the monitored metric is better than ``than``
        (None or NaN: nothing to beat)."""
        if than is None or (isinstance(than, float) and math.isnan(than)):
            return not math.isnan(value)
        return value > than if larger_is_better else value < than

    def best(self, records: list[tuple[str, dict[str, Any]]], found: bool | None) -> str | None:
        """The version whose record's value is best, by the direction
        ``found`` on the model, else the one the newest record holds (as
        the training that wrote it found it). ``records`` come newest first;
        of equal values the earliest is the best, as for Keras's
        ``ModelCheckpoint``, to which a later equal value is no improvement."""
        if found is None:
            found = next(
                (r["larger_is_better"] for _, r in records if isinstance(r.get("larger_is_better"), bool)),
                None,
            )
        larger_is_better = self.larger_is_better(found)
        best, best_value = None, None
        for version, record in reversed(records):
            value = record.get("value")
            if value is not None and (
                best_value is None or self.improves(value, best_value, larger_is_better)
            ):
                best, best_value = version, value
        return best

    def kept(self, versions: list[str], best: str | None) -> set[str]:
        """Of ``versions`` (newest first), those pruning keeps: the newest
        ``keep_last`` and the best."""
        keep = set(versions if self.keep_last is None else versions[: self.keep_last])
        if best is not None:
            keep.add(best)
        return keep
