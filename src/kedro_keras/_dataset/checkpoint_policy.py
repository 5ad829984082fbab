"""When a checkpoint is written and which are kept: the options of a
``KerasCheckpointDataset`` entry, checked when the catalog is built, and the
rules the callback and the pruning follow."""

from __future__ import annotations

import math
from dataclasses import dataclass

from kedro_keras._log import SafeDatasetError

# Metric names for which larger is better when mode is "auto" (Keras's rule, widened).
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
    monitor: str | None = None
    mode: str = "auto"
    save_best_only: bool = False
    remove_when_done: bool = False

    def __post_init__(self) -> None:
        check_keep_last(self.keep_last)
        save_freq = self.save_freq
        if save_freq != "epoch" and (
            isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1
        ):
            raise SafeDatasetError(
                f"save_freq must be 'epoch' or a number of batches of at least 1; got {save_freq!r}."
            )
        if self.mode not in ("auto", "min", "max"):
            raise SafeDatasetError(f"mode must be 'auto', 'min' or 'max'; got {self.mode!r}.")
        if self.save_best_only and self.monitor is None:
            object.__setattr__(self, "monitor", "val_loss")  # as Keras's ModelCheckpoint does

    @property
    def larger_is_better(self) -> bool:
        monitor = self.monitor
        return self.mode == "max" or (
            self.mode == "auto" and monitor is not None and any(word in monitor for word in _LARGER_IS_BETTER)
        )

    def improves(self, value: float, than: float | None) -> bool:
        """Whether ``value`` of the monitored metric is better than ``than``
        (None or NaN: nothing to beat)."""
        if than is None or (isinstance(than, float) and math.isnan(than)):
            return not math.isnan(value)
        return value > than if self.larger_is_better else value < than

    def kept(self, versions: list[str], best: str | None) -> set[str]:
        """Of ``versions`` (newest first), those pruning keeps: the newest
        ``keep_last`` and the best."""
        keep = set(versions if self.keep_last is None else versions[: self.keep_last])
        if best is not None:
            keep.add(best)
        return keep
