"""One of N processes of a node trained across processes (JAX, CPU devices).

Run as ``python process_worker.py SCENARIO PROCESS_ID NUM_PROCESSES PORT FOLDER [BUCKET ENDPOINT]``:
the datasets write to FOLDER, or to the ``s3://`` BUCKET at ENDPOINT.
Each process has two CPU devices; the model axis of a ``ModelParallel``
layout spans the processes, so no process holds a whole kernel. Every
process trains the same model, calls the datasets as a Kedro node does, and
writes what it gathered (the whole trained arrays, fetched with JAX's own
``process_allgather``, not ours) to ``FOLDER/expected-<id>.npz``.
"""

from __future__ import annotations

import json
import logging
import os
import sys

SCENARIO, PROCESS_ID, NUM_PROCESSES, PORT, FOLDER = sys.argv[1:6]
BUCKET, S3_ENDPOINT = sys.argv[6:8] if len(sys.argv) > 6 else (None, None)
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from kedro.io import DatasetError  # noqa: E402
from kedro.io.core import Version  # noqa: E402

from kedro_keras import (  # noqa: E402
    KerasCheckpointDataset,
    KerasExportDataset,
    KerasModelDataset,
    KerasTimestampedModelDataset,
    KerasWeightsDataset,
)

keras.distribution.initialize(
    job_addresses=f"127.0.0.1:{PORT}", num_processes=int(NUM_PROCESSES), process_id=int(PROCESS_ID)
)
devices = jax.devices()
mesh = keras.distribution.DeviceMesh((len(devices) // 2, 2), ["model", "batch"], devices)
layouts = keras.distribution.LayoutMap(mesh)
layouts[".*kernel"] = (None, "model")
keras.distribution.set_distribution(
    keras.distribution.ModelParallel(layout_map=layouts, batch_dim_name="batch", auto_shard_dataset=False)
)


def where(name: str) -> dict:
    if BUCKET is None:
        return {"filepath": os.path.join(FOLDER, name)}
    return {
        "filepath": f"{BUCKET}/{name}",
        "credentials": {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": S3_ENDPOINT},
        },
    }


def model() -> keras.Model:
    keras.utils.set_random_seed(7)
    built = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(512, activation="relu"), keras.layers.Dense(4)], name="sharded"
    )
    built.compile(optimizer="adam", loss="mse")
    return built


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((64, 8), dtype=np.float32), rng.random((64, 4), dtype=np.float32)


def whole(variables) -> list[np.ndarray]:
    return [np.asarray(multihost_utils.process_allgather(v.value, tiled=True)) for v in variables]


def report(**said) -> None:
    print("REPORT " + json.dumps(said), flush=True)


# Which thread wrote each checkpoint (process 0's background writer, or the training's).
written_by: list[str] = []


class _Threads(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Checkpoint e"):
            written_by.append(record.threadName)


logging.getLogger("kedro_keras").addHandler(_Threads())
logging.getLogger("kedro_keras").setLevel(logging.INFO)

trained = model()
x, y = data()
# Kedro gives each process's session its own save version: they differ here on purpose.
own_version = f"2026-12-06T00.00.0{PROCESS_ID}.000Z"

if SCENARIO == "train-and-save":
    checkpoints = KerasCheckpointDataset(**where("checkpoints"), keep_last=2).load()
    trained.fit(x, y, epochs=3, batch_size=16, shuffle=False, verbose=0, callbacks=[checkpoints.callback()])
    sharded = [not v.value.is_fully_addressable for v in trained.trainable_variables]
    KerasModelDataset(**where("model.keras"), version=Version(None, own_version)).save(trained)
    KerasWeightsDataset(**where("weights.weights.h5"), version=Version(None, own_version)).save(trained)
    sharded_weights = where("sharded.weights.json")
    KerasWeightsDataset(**sharded_weights, save_args={"max_shard_size": 0.0001}).save(trained)
    history = KerasTimestampedModelDataset(**where("history"), keep_last=1)
    history.save(trained)
    history.save(trained)  # keep_last: 1, pruned by process 0 alone
    KerasExportDataset(**where("served.onnx"), format="onnx").save(trained)
    # Orbax: every process writes the shards it holds, under process 0's version.
    KerasWeightsDataset(**where("state.orbax"), version=Version(None, own_version)).save(trained)
    # Saving left the variables as they were: still sharded.
    still_sharded = [not v.value.is_fully_addressable for v in trained.trainable_variables]
    np.savez(
        os.path.join(FOLDER, f"expected-{PROCESS_ID}.npz"),
        *whole(trained.weights + trained.optimizer.variables),
    )
    report(sharded=sharded, still_sharded=still_sharded)
elif SCENARIO in ("train-killed", "train-uninterrupted", "resume"):
    # A training of EPOCHS epochs, checkpointed every epoch: killed (both
    # processes gone at once, as when a job is preempted) after KILL_AFTER,
    # resumed by a second launch, or never interrupted.
    EPOCHS, KILL_AFTER = 4, 2
    checkpoints = KerasCheckpointDataset(
        **where("checkpoints"),
        format=os.environ.get("CHECKPOINT_FORMAT", "keras"),
        background=os.environ.get("CHECKPOINT_BACKGROUND") == "1",
    ).load()
    callbacks = [checkpoints.callback()]
    initial_epoch = 0
    if SCENARIO == "resume":
        trained = checkpoints.restore()
        initial_epoch = checkpoints.initial_epoch
    if SCENARIO == "train-killed":

        class Killed(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch + 1 == KILL_AFTER:
                    os._exit(0)  # no cleanup, no fit end: as a kill

        callbacks.append(Killed())
    trained.fit(
        x,
        y,
        epochs=EPOCHS,
        initial_epoch=initial_epoch,
        batch_size=16,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
    )
    sharded = [not v.value.is_fully_addressable for v in trained.trainable_variables]
    np.savez(
        os.path.join(FOLDER, f"{SCENARIO}-{PROCESS_ID}.npz"),
        *whole(trained.weights + trained.optimizer.variables),
    )
    report(sharded=sharded, initial_epoch=initial_epoch, written_by=written_by)
elif SCENARIO == "background-write-fails":
    # Process 0's background write of the epoch-3 checkpoint fails: every
    # process must raise it (at the next checkpoint), in process 0's words.
    from kedro_keras import KerasModelDataset as _Model

    reached = []
    if PROCESS_ID == "0":
        real_save = _Model._save_here

        def fails_at_epoch_three(self, model):
            if "e00003" in str(self._filepath):
                reached.append(True)
                raise OSError(5, "Input/output error (injected in process 0's writer)")
            return real_save(self, model)

        _Model._save_here = fails_at_epoch_three
    checkpoints = KerasCheckpointDataset(**where("checkpoints"), background=True).load()
    try:
        trained.fit(
            x, y, epochs=5, batch_size=16, shuffle=False, verbose=0, callbacks=[checkpoints.callback()]
        )
    except DatasetError as exc:
        error = str(exc)
    else:
        error = None
    report(error=error, reached=bool(reached), written_by=written_by)
elif SCENARIO == "load":
    # What "train-and-save" wrote, loaded by every process onto this run's layout.
    loaded = KerasModelDataset(**where("model.keras"), version=Version(None, None)).load()
    restored = KerasCheckpointDataset(**where("checkpoints")).load().restore(continue_finished=True)
    orbax = KerasWeightsDataset(**where("state.orbax"), version=Version(None, None)).load()
    for name, model in (("loaded", loaded), ("restored", restored), ("orbax", orbax)):
        arrays = whole(model.weights + model.optimizer.variables)
        np.savez(os.path.join(FOLDER, f"{name}-{NUM_PROCESSES}-{PROCESS_ID}.npz"), *arrays)
    report(
        sharded=[not v.value.is_fully_addressable for v in loaded.trainable_variables],
        orbax_sharded=[not v.value.is_fully_addressable for v in orbax.trainable_variables],
        devices=len(devices),
    )
elif SCENARIO == "process-zero-fails":
    # A file where process 0 must make a folder: its write fails, and the
    # other processes, which never touch the store, must say so too.
    try:
        KerasModelDataset(filepath=os.path.join(FOLDER, "blocked", "model.keras")).save(trained)
    except DatasetError as exc:
        report(error=str(exc))
    else:
        report(error=None)
elif SCENARIO == "orbax-process-one-fails":
    # A first save that succeeds, then one whose files process 1 cannot
    # write (a fault injected into process 1 alone): every process must
    # fail the save, and the first one must still load.
    from kedro_keras._dataset import orbax_commit

    entry = KerasWeightsDataset(**where("state.orbax"))
    trained.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    entry.save(trained)
    np.savez(
        os.path.join(FOLDER, f"first-{PROCESS_ID}.npz"), *whole(trained.weights + trained.optimizer.variables)
    )
    if PROCESS_ID == "1":
        writes_own_files = orbax_commit._own_files

        def failing(*args, **kwargs):
            writes_own_files(*args, **kwargs)
            raise OSError("No space left on device (injected in process 1)")

        orbax_commit._own_files = failing
    trained.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    try:
        entry.save(trained)
    except DatasetError as exc:
        error = str(exc)
    else:
        error = None
    report(error=error)
else:
    raise SystemExit(f"unknown scenario {SCENARIO}")
