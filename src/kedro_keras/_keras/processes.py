"""A node run in several processes joined by ``keras.distribution`` (JAX).

Kedro users who train across processes launch the same node in every one,
so every process calls ``save`` with the same model. A variable whose layout
spans processes holds only this process's shards, and reading it (what every
writer does) fails in JAX with "spans non-addressable devices". So:

- ``host_copies(model)`` gathers each such variable into every process (a
  collective: every process runs it, over the same variables, in the same
  order) and lets the writers read the whole arrays for as long as it lasts;
- ``is_writer()``: process 0 writes, the others do not;
- ``agreed(text)``: process 0's version name, in every process (each
  process's Kedro session picked its own timestamp);
- ``outcome(...)``: process 0's result, in every process, once it has
  published (a barrier: no process returns from ``save`` before the model is
  there, and a failed write fails the save everywhere).

With one process (every other backend, or JAX without ``initialize``) each
is a no-op costing nothing: JAX is imported only when Keras runs on it.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    import keras

# A version name, a status word or an error message travels as this many bytes.
_TEXT_BYTES = 1024

# What a launcher sets in each process (Keras's own names, read by
# keras.distribution.initialize()).
PROCESSES_ENV = "KERAS_DISTRIBUTION_NUM_PROCESSES"


def processes_asked_for() -> int:
    """How many processes the environment says this run is one of (1 if unset)."""
    text = os.environ.get(PROCESSES_ENV, "").strip()
    try:
        return max(int(text), 1) if text else 1
    except ValueError:
        raise ValueError(f"{PROCESSES_ENV}={text!r} is not a whole number of processes") from None


def join_from_environment() -> int:
    """Join the processes the launcher named (Keras reads its
    KERAS_DISTRIBUTION_* variables), once, before anything runs on a device;
    returns how many there are. Only JAX joins processes in Keras 3: any other
    backend is an error that says so, not N processes each writing alone."""
    _refuse_tensorflow_cluster()
    wanted = processes_asked_for()
    if wanted == 1:
        return 1
    import keras

    backend = keras.backend.backend()
    if backend != "jax":
        raise ValueError(
            f"{PROCESSES_ENV}={wanted} asks for a run in {wanted} processes, and Keras 3 joins "
            f"processes (keras.distribution.initialize) only on the JAX backend; this run's backend is "
            f"{backend}. Run with KERAS_BACKEND=jax, or unset {PROCESSES_ENV} and train in one process "
            "(on TensorFlow, tf.distribute.MirroredStrategy spreads one process over its devices)."
        )
    import jax

    if not jax.distributed.is_initialized():
        keras.distribution.initialize()
    return int(jax.process_count())


def _refuse_tensorflow_cluster() -> None:
    """A TF_CONFIG naming several tasks (tf.distribute's
    MultiWorkerMirroredStrategy) starts this run in every worker, each with
    a whole copy of the model: each would save its own. Said before any node
    runs, with what works instead."""
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return
    import keras

    if keras.backend.backend() != "tensorflow":
        return
    try:
        cluster = json.loads(text).get("cluster") or {}
        tasks = sum(len(addresses) for addresses in cluster.values())
    except (ValueError, AttributeError, TypeError):
        raise ValueError("TF_CONFIG is set but is not the JSON tf.distribute reads") from None
    if tasks > 1:
        raise ValueError(
            f"TF_CONFIG describes a cluster of {tasks} tasks (tf.distribute's MultiWorkerMirroredStrategy): "
            "this run would train in every worker and each would write its own copy of every save, and "
            "kedro-keras picks one writer among processes only on the JAX backend. Run with "
            "KERAS_BACKEND=jax and Keras's KERAS_DISTRIBUTION_* variables (see 'Training on several "
            "processes or machines'), or train in one process with tf.distribute.MirroredStrategy"
        )


def _jax() -> Any:
    """JAX when Keras runs on it and it is loaded, else None."""
    if "jax" not in sys.modules:
        return None
    import keras

    if keras.backend.backend() != "jax":
        return None
    return sys.modules["jax"]


def process_count() -> int:
    """How many processes the node runs in (1 unless JAX was joined to others)."""
    jax = _jax()
    return 1 if jax is None else int(jax.process_count())


def process_index() -> int:
    jax = _jax()
    return 0 if jax is None else int(jax.process_index())


def is_writer() -> bool:
    """Whether this process writes the files (process 0 does)."""
    return process_index() == 0


def _variables(model: keras.Model) -> list[Any]:
    """The model's variables, its optimizer's and its metrics', each once, in
    an order every process agrees on (the order the model tracks them)."""
    seen: set[int] = set()
    found = []
    optimizer = getattr(model, "optimizer", None)
    groups = [model.variables, getattr(optimizer, "variables", []) if optimizer is not None else []]
    groups.append(getattr(model, "metrics_variables", []))
    for group in groups:
        for variable in group:
            if id(variable) not in seen:
                seen.add(id(variable))
                found.append(variable)
    return found


@contextmanager
def host_copies(model: keras.Model) -> Iterator[int]:
    """Within it, every variable of ``model`` reads as its whole value in this
    process; yields how many bytes were gathered. Keras keeps a variable's
    value in ``_value``; the gathered copy stands in there and the sharded
    value is put back on the way out, so training goes on as it was."""
    if process_count() == 1:
        yield 0
        return
    import numpy as np
    from jax.experimental import multihost_utils

    swapped: list[tuple[Any, Any]] = []
    gathered = 0
    try:
        for variable in _variables(model):
            value = getattr(variable, "_value", None)
            if value is None or getattr(value, "is_fully_addressable", True):
                continue
            whole = np.asarray(multihost_utils.process_allgather(value, tiled=True))
            swapped.append((variable, value))
            variable._value = whole
            gathered += whole.nbytes
        yield gathered
    finally:
        for variable, value in swapped:
            variable._value = value


@contextmanager
def without_distribution() -> Iterator[None]:
    """Within it, variables made by this process alone stay in this process.
    Keras's saving makes throwaway variables (an optimizer to learn which
    attributes to skip); under a distribution that spans processes each is
    placed on every process's devices, a collective the processes that do
    not write never join."""
    if process_count() == 1:
        yield
        return
    import keras

    current = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(current)


def _broadcast_text(text: str) -> str:
    """Process 0's ``text`` in every process (a collective)."""
    import numpy as np
    from jax.experimental import multihost_utils

    encoded = text.encode("utf-8")[:_TEXT_BYTES]
    buffer = np.zeros(_TEXT_BYTES + 4, dtype=np.uint8)
    buffer[:4] = np.frombuffer(len(encoded).to_bytes(4, "little"), dtype=np.uint8)
    buffer[4 : 4 + len(encoded)] = np.frombuffer(encoded, dtype=np.uint8)
    received = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
    size = int.from_bytes(received[:4].astype(np.uint8).tobytes(), "little")
    return received[4 : 4 + size].astype(np.uint8).tobytes().decode("utf-8", errors="replace")


def agreed(text: str | None) -> str | None:
    """Process 0's ``text`` (a version name) in every process."""
    if text is None or process_count() == 1:
        return text
    return _broadcast_text(text)


def outcome(error: str | None) -> str | None:
    """Process 0's error (None: it published) in every process, once process 0
    has finished: every process waits here for it."""
    if process_count() == 1:
        return error
    said = _broadcast_text("" if error is None else f"!{error}")
    return said[1:] if said.startswith("!") else None


def gathered(text: str) -> list[str]:
    """Every process's ``text``, in process order, in every process (a
    collective): what each process wrote, for process 0 to commit."""
    if process_count() == 1:
        return [text]
    import numpy as np
    from jax.experimental import multihost_utils

    encoded = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([encoded.size], dtype=np.int64)))
    buffer = np.zeros(int(sizes.max()), dtype=np.uint8)
    buffer[: encoded.size] = encoded
    received = np.asarray(multihost_utils.process_allgather(buffer))
    return [
        received[i, : int(sizes[i, 0])].astype(np.uint8).tobytes().decode("utf-8", errors="replace")
        for i in range(received.shape[0])
    ]
