"""Checkpoints written while training goes on (``background: true``).

A checkpoint is a copy of the training state taken between two steps, and
only taking the copy has to stop training. So the first checkpoint of a fit
is written as usual, then loaded back once as the *shadow*: the same model,
built from the file the way ``restore()`` builds it. At each later
checkpoint the live variables are copied into the shadow's (the only part
training waits for) and a thread writes the shadow, with the same atomic
publish, record and pruning as a checkpoint written in the foreground.

- Memory: one copy of the model's state (weights and optimizer), the shadow,
  held for as long as the fit runs. At most one write is in flight: a
  checkpoint due while the previous one is still being written waits for it.
- A failed write is raised, as a ``DatasetError``, at the next checkpoint or
  when ``fit`` ends, whichever comes first.
- When ``fit`` returns, the last checkpoint is complete (the callback waits).
- A process killed during a write leaves the previous checkpoint as the
  newest complete one: the file is published whole or not at all, and the
  record after it.
- Where the shadow cannot stand in for the model (its variables differ from
  the trained model's in number, shape or type), checkpoints are written in
  the foreground, with a warning that says why.

In a node run in several processes (``keras.distribution``, JAX), process 0
alone holds the shadow, built outside the distribution on its own devices.
At each checkpoint every process first learns how process 0's previous
write went (a failure is raised in every process, in process 0's words),
then gathers the variables that span processes (a collective, the part
training waits for, as in the foreground); process 0 copies them into the
shadow and its thread writes, with no collective, while every process
trains on.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from kedro.io.core import DatasetError

from kedro_keras._dataset.one_writer import alone, in_process_zero, shared_outcome
from kedro_keras._keras import processes
from kedro_keras._log import SafeDatasetError, as_data, get_logger

if TYPE_CHECKING:
    import keras

logger = get_logger("kedro_keras.keras_checkpoint_dataset")


def state_variables(model: keras.Model) -> list[Any]:
    """What a checkpoint holds: the model's variables, then its optimizer's."""
    optimizer = getattr(model, "optimizer", None)
    return list(model.variables) + (list(optimizer.variables) if optimizer is not None else [])


def _why_not_a_shadow(live: list[Any], shadow: list[Any]) -> str | None:
    if len(live) != len(shadow):
        return f"the restored model has {len(shadow)} variables, the trained one {len(live)}"
    for mine, theirs in zip(live, shadow, strict=True):
        if tuple(mine.shape) != tuple(theirs.shape) or mine.dtype != theirs.dtype:
            return (
                f"variable '{mine.path}' is {tuple(mine.shape)} {mine.dtype} in the trained model, "
                f"{tuple(theirs.shape)} {theirs.dtype} in the restored one"
            )
    return None


def _copied(value: Any) -> Any:
    """``value`` as an array of its own. TensorFlow's and PyTorch's assign
    copy into the variable; JAX's keeps the array it is given, and the
    training step donates the live arrays' buffers to the next step's."""
    import keras

    return keras.ops.copy(value) if keras.backend.backend() == "jax" else value


class BackgroundWriter:
    """The writes of one fit's checkpoints, each but the first in a thread."""

    def __init__(
        self,
        url: str,
        write: Callable[[keras.Model, int, int, dict[str, Any]], str],
        load: Callable[[str], keras.Model],
    ) -> None:
        self._url = url
        self._write = write  # the dataset's own write: (model, epochs, steps, record) -> version
        self._load = load  # a written checkpoint's model, as restore() builds it
        self._shadow: keras.Model | None = None
        self._pairs: list[tuple[Any, Any]] = []
        self._foreground_only = False
        self._pairs_ready = False  # several processes: whether process 0 holds a shadow (all agree)
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._writing: str = ""
        self.blocked_seconds: list[float] = []  # how long each checkpoint stopped training

    def checkpoint(self, model: keras.Model, epochs_done: int, steps: int, record: dict[str, Any]) -> None:
        if processes.process_count() > 1:
            self._checkpoint_across_processes(model, epochs_done, steps, record)
            return
        start = time.monotonic()
        self.wait()
        if self._foreground_only or self._shadow is None:
            version = self._write(model, epochs_done, steps, record)
            self.blocked_seconds.append(time.monotonic() - start)
            if not self._foreground_only:
                self._make_shadow(model, version)
            return
        for live, shadow in self._pairs:
            shadow.assign(_copied(live.value))
        self._start_writing(epochs_done, steps, record)
        self.blocked_seconds.append(time.monotonic() - start)
        logger.debug(
            "Checkpoint %s: training waited %.3f s for the copy; written in the background",
            self._writing,
            self.blocked_seconds[-1],
        )

    def finish(self) -> None:
        """When ``fit`` ends: the last write complete, its failure raised
        (in every process of a multi-process node)."""
        if processes.process_count() > 1:
            self._settle_across_processes()
        else:
            self.wait()

    def _start_writing(self, epochs_done: int, steps: int, record: dict[str, Any]) -> None:
        self._writing = f"e{epochs_done:05d}-s{steps:07d}"
        self._thread = threading.Thread(
            target=self._run,
            args=(epochs_done, steps, record),
            name=f"kedro-keras checkpoint {self._writing}",
            daemon=False,  # a node that raises still lets the write finish before the process ends
        )
        self._thread.start()

    def _checkpoint_across_processes(
        self, model: keras.Model, epochs_done: int, steps: int, record: dict[str, Any]
    ) -> None:
        start = time.monotonic()
        self._settle_across_processes()
        if self._foreground_only or not self._pairs_ready:
            version = in_process_zero(
                self._url, lambda: self._write(model, epochs_done, steps, record), model
            )
            self.blocked_seconds.append(time.monotonic() - start)
            if not self._foreground_only:
                why = ""  # text in every process: agreed() is a collective only for text
                if processes.is_writer():
                    with processes.without_distribution():  # process 0's own devices: no collective
                        self._make_shadow(model, version)
                    why = "foreground" if self._foreground_only else ""
                self._foreground_only = bool(processes.agreed(why))
                self._pairs_ready = not self._foreground_only
            return
        with processes.host_copies(model):
            if processes.is_writer():
                for live, shadow in self._pairs:
                    shadow.assign(_copied(live.value))
                self._start_writing(epochs_done, steps, record)
        self.blocked_seconds.append(time.monotonic() - start)

    def _settle_across_processes(self) -> None:
        """Process 0's write in flight, finished; its failure raised in every process."""
        failure: DatasetError | None = None
        if processes.is_writer():
            try:
                self.wait()
            except DatasetError as exc:
                failure = exc
        shared_outcome(
            failure,
            f"This node runs in {processes.process_count()} processes, process 0 writes the checkpoints, "
            "and it failed",
        )

    def wait(self) -> None:
        """Until the write in flight is done; its failure as a DatasetError."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        failure, self._failure = self._failure, None
        if failure is not None:
            said = str(failure)
            if "unchanged" not in said:
                said += ". The checkpoints before it are unchanged."
            raise SafeDatasetError(
                f"Could not write checkpoint {self._writing} to '{self._url}' in the background: {said}"
            ) from as_data(failure)

    def _run(self, epochs_done: int, steps: int, record: dict[str, Any]) -> None:
        try:
            with alone():  # every process gathered the state already: no collective from this thread
                self._write(self._shadow, epochs_done, steps, record)
        except BaseException as exc:  # noqa: BLE001 - raised in the training's thread, at the next wait
            self._failure = exc

    def _make_shadow(self, model: keras.Model, version: str) -> None:
        try:
            shadow = self._load(version)
            live, copy = state_variables(model), state_variables(shadow)
            why = _why_not_a_shadow(live, copy)
        except Exception as exc:  # noqa: BLE001 - the checkpoints go on, in the foreground
            why = f"the checkpoint could not be loaded back to hold the copy ({exc})"
        if why is not None:
            self._foreground_only = True
            logger.warning(
                "Checkpoints in %s are written in the foreground, not in the background: %s",
                self._url,
                why,
            )
            return
        self._shadow = shadow
        self._pairs = list(zip(live, copy, strict=True))
