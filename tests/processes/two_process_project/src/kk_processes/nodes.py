"""The node every process runs. kedro-keras's hook has joined the processes
(KERAS_DISTRIBUTION_* set by the launcher) before it runs; the node chooses
the layout: the model axis across the processes, so none holds a whole kernel."""

import logging
import time

import keras
import numpy as np


def use_model_parallel_layout() -> None:
    devices = keras.distribution.list_devices()
    mesh = keras.distribution.DeviceMesh((len(devices) // 2, 2), ["model", "batch"], devices)
    layouts = keras.distribution.LayoutMap(mesh)
    layouts[".*kernel"] = (None, "model")
    keras.distribution.set_distribution(
        keras.distribution.ModelParallel(layout_map=layouts, batch_dim_name="batch", auto_shard_dataset=False)
    )


def train(checkpoints, params):
    use_model_parallel_layout()
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 8), dtype=np.float32), rng.random((64, 4), dtype=np.float32)
    model = checkpoints.restore()
    if model is None:
        keras.utils.set_random_seed(7)
        model = keras.Sequential(
            [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(4)],
            name="sharded",
        )
        model.compile(optimizer="adam", loss="mse")
    pause = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: time.sleep(params["pause"]))
    history = model.fit(
        x,
        y,
        epochs=params["epochs"],
        initial_epoch=checkpoints.initial_epoch,
        batch_size=16,
        shuffle=False,
        verbose=0,
        callbacks=[checkpoints.callback(), pause],
    )
    logging.getLogger(__name__).info("Trained epochs %s", [epoch + 1 for epoch in history.epoch])
    return model
