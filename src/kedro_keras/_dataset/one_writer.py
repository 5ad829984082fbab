"""Saves from a node that runs in several processes: one writes, all agree.

Every process calls the dataset's ``save`` with its part of the same model
(see ``_keras.processes``). The variables are gathered in every process,
process 0 writes and publishes as a single process would (the same atomic
publish, so a reader never sees a partial model and a process that dies
mid-save leaves the previous version loadable), and every process returns
only once process 0 has published, or raises the error process 0 met.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Callable, Iterator, TypeVar

from kedro_keras._keras import processes
from kedro_keras._log import SafeDatasetError

if TYPE_CHECKING:
    import keras

logger = logging.getLogger("kedro_keras")

T = TypeVar("T")


_state = threading.local()


def in_process_zero(url: str, action: Callable[[], T], model: keras.Model | None = None) -> T | None:
    """``action()`` in process 0 only (with every variable of ``model`` whole,
    when given); None elsewhere, once process 0 is done. Within an action,
    another call runs its own at once: a checkpoint's model file is written
    by a model dataset inside the checkpoint's own action."""
    count = processes.process_count()
    if count == 1 or getattr(_state, "inside", False):
        return action()
    result: T | None = None
    failure: BaseException | None = None
    gathering = processes.host_copies(model) if model is not None else nullcontext(0)
    with gathering as gathered:
        if processes.is_writer():
            _state.inside = True
            try:
                with processes.without_distribution():
                    result = action()
            except Exception as exc:  # noqa: BLE001 - told to the other processes, then raised here
                failure = exc
            finally:
                _state.inside = False
        shared_outcome(
            failure,
            f"Could not write to '{url}': this node runs in {count} processes, process 0 writes, and it failed",
        )
    if not processes.is_writer() and model is not None:
        logger.info(
            "Process %d of %d: %s written by process 0 (%d bytes gathered here)",
            processes.process_index(),
            count,
            url,
            gathered,
        )
    return result


def shared_outcome(failure: BaseException | None, telling: str) -> None:
    """Process 0's ``failure`` (None: it succeeded) in every process, once
    process 0 is done (a collective): raised as it is in process 0, as
    ``telling: <its message>`` in the others."""
    said = processes.outcome(None if failure is None else str(failure))
    if failure is not None:
        raise failure
    if said is not None:
        raise SafeDatasetError(f"{telling}: {said}")


@contextmanager
def alone() -> Iterator[None]:
    """Within it, this thread writes as if its process were the only one
    (no collective): process 0's background checkpoint writer, whose state
    the training thread of every process gathered beforehand."""
    _state.inside = True
    try:
        yield
    finally:
        _state.inside = False


def save_from_process_zero(model: keras.Model, url: str, save: Callable[[], T]) -> T | None:
    """A dataset's ``save()``: in process 0, with every variable whole."""
    return in_process_zero(url, save, model)
