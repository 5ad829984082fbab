"""What the processes forked by ``forkserver`` do (one function per job).

Each job gets ``say(line)``, which appends a line to its output file, and the
JSON arguments the test gave. S3 jobs get the endpoint URL of the loopback
server (``endpoint``); the credentials are the test ones.
"""

from __future__ import annotations

import os
import time
from typing import Callable

Say = Callable[[str], None]


def _credentials(endpoint: str | None) -> dict | None:
    if not endpoint:
        return None
    return {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint}}


def _set_marker(model, generation: int) -> None:
    import numpy as np

    marker = model.get_layer("marker")
    marker.bias.assign(np.full(tuple(marker.bias.shape), generation, dtype="float32"))


def _wait_for(path: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.0005)


def kill_saver(
    say: Say, base: str, target: str, history: str, generation: int, endpoint: str | None = None
) -> None:
    """Save the model again and again until killed (the kill -9 test).

    Loads the reference model ``base`` (a local ``.keras`` written by plain
    Keras), says ``ready``, then forever sets the ``marker`` bias to the
    generation number and saves through ``KerasModelDataset(target)`` and
    ``KerasTimestampedModelDataset(history, keep_last=2)``, saying each step
    (``start g``, ``plain g``, ``stamped g``).
    """
    import keras

    from kedro_keras import KerasModelDataset, KerasTimestampedModelDataset

    credentials = _credentials(endpoint)
    model = keras.saving.load_model(base)
    plain = KerasModelDataset(filepath=target, credentials=credentials)
    stamped = KerasTimestampedModelDataset(filepath=history, keep_last=2, credentials=credentials)
    say("ready")
    while True:
        _set_marker(model, generation)
        say(f"start {generation}")
        plain.save(model)
        say(f"plain {generation}")
        stamped.save(model)
        say(f"stamped {generation}")
        generation += 1


def kill_sharded_saver(say: Say, base: str, target: str, generation: int, max_shard_size: float) -> None:
    """Save the model's weights as an index plus shards, again and again until
    killed (the kill -9 test of sharded saves): ``start g``, then ``plain g``."""
    import keras

    from kedro_keras import KerasWeightsDataset

    model = keras.saving.load_model(base)
    dataset = KerasWeightsDataset(filepath=target, save_args={"max_shard_size": max_shard_size})
    say("ready")
    while True:
        _set_marker(model, generation)
        say(f"start {generation}")
        dataset.save(model)
        say(f"plain {generation}")
        generation += 1


def _freeze_clock() -> None:
    """Every save picks the same first timestamp, as saves within one clock tick would."""
    from datetime import datetime, timezone

    from kedro_keras import keras_timestamped_model_dataset

    class FrozenClock(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 11, 21, 12, 0, 0, 500000, tzinfo=timezone.utc)

    keras_timestamped_model_dataset.datetime = FrozenClock


def barrier_saver(
    say: Say,
    base: str,
    history: str,
    generation: int,
    barrier: str,
    endpoint: str | None = None,
    frozen_clock: bool = False,
) -> None:
    """Save one model into a shared history at the moment ``barrier`` appears.

    Says ``ready`` once the model is loaded, then ``saved``.
    """
    import keras

    from kedro_keras import KerasTimestampedModelDataset

    if frozen_clock:
        _freeze_clock()
    model = keras.saving.load_model(base)
    _set_marker(model, generation)
    dataset = KerasTimestampedModelDataset(filepath=history, credentials=_credentials(endpoint))
    dataset.versions()  # connect (S3) before the barrier, not after
    say("ready")
    _wait_for(barrier)
    dataset.save(model)
    say("saved")


def pruning_writer(
    say: Say, base: str, history: str, seconds: float, keep_last: int = 2, endpoint: str | None = None
) -> None:
    """Save generation 1, 2, ... into ``history`` with ``keep_last`` for ``seconds``."""
    import keras

    from kedro_keras import KerasTimestampedModelDataset

    model = keras.saving.load_model(base)
    dataset = KerasTimestampedModelDataset(
        filepath=history, keep_last=keep_last, credentials=_credentials(endpoint)
    )
    say("ready")
    deadline = time.monotonic() + seconds
    generation = 1
    while time.monotonic() < deadline:
        _set_marker(model, generation)
        dataset.save(model)
        say(f"saved {generation}")
        generation += 1
    say("done")


def newest_reader(
    say: Say, base: str, history: str, stop: str, fresh: bool = True, endpoint: str | None = None
) -> None:
    """Load the newest model from ``history`` again and again until ``stop`` appears.

    ``fresh``: a new dataset per load (a new Kedro run each time); otherwise
    one dataset object for all loads, as one long-lived session would.
    Checks every load against ``base`` (all weights but the marker bias equal)
    and says ``loaded <generation>``, or ``failed <error>`` and stops.
    """
    import keras
    import numpy as np

    from kedro_keras import KerasTimestampedModelDataset

    reference = keras.saving.load_model(base)
    paths = [variable.path for variable in reference.weights]
    bias_index = paths.index(reference.get_layer("marker").bias.path)
    expected = reference.get_weights()
    credentials = _credentials(endpoint)
    dataset = KerasTimestampedModelDataset(filepath=history, credentials=credentials)
    say("ready")
    while not os.path.exists(stop):
        if fresh:
            dataset = KerasTimestampedModelDataset(filepath=history, credentials=credentials)
        try:
            model = dataset.load()
        except Exception as exc:  # noqa: BLE001 - reported to the test
            cause = exc.__cause__
            say(
                f"failed {type(exc).__name__}: {exc} (cause: {type(cause).__name__}: {cause})".replace(
                    "\n", " "
                )
            )
            return
        weights = model.get_weights()
        generation = int(weights[bias_index].flat[0])
        complete = (
            len(weights) == len(expected)
            and all(
                np.array_equal(ours, theirs)
                for index, (ours, theirs) in enumerate(zip(weights, expected, strict=True))
                if index != bias_index
            )
            and bool(np.all(weights[bias_index] == generation))
        )
        if not complete:
            say(f"failed incomplete model (generation {generation})")
            return
        say(f"loaded {generation}")
