"""Nodes. Keras is imported inside them, so `kedro run` starts quickly and
ParallelRunner forks before TensorFlow is loaded."""

import numpy as np


def make_data(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5], [3.0]], dtype="float32")).astype("float32")
    return x, y


def fingerprint(model, x):
    """What identifies a model: its class, layers, weights and outputs."""
    weights = model.get_weights()
    return {
        "class": type(model).__name__,
        "layers": sorted(type(layer).__name__ for layer in model.layers),
        "n_weights": len(weights),
        "weight_sum": float(sum(np.abs(w).astype("float64").sum() for w in weights)),
        "prediction": [float(v) for v in np.asarray(model.predict(x[:3], verbose=0)).ravel()],
    }


def _fit(model, x, y, epochs):
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, epochs=epochs, batch_size=16, verbose=0)
    return model


def train_dense(x, y, train):
    import keras
    from kk_e2e.models import build_dense

    keras.utils.set_random_seed(train["seed"])
    model = _fit(build_dense(units=train["units"]), x, y, train["epochs"])
    return fingerprint(model, x), model, model, model


def train_dense_once(x, y, train):
    fp, model, _, _ = train_dense(x, y, train)
    return fp, model


def train_tiny(x, y, train):
    import keras
    from kk_e2e.models import build_tiny

    keras.utils.set_random_seed(train["seed"] + 1000)
    model = _fit(build_tiny(units=train["units"]), x, y, train["epochs"])
    return fingerprint(model, x), model, model, model


def collect(**fingerprints):
    return fingerprints


def train_with_checkpoints(x, y, params, checkpoints):
    """A training node that resumes from the newest checkpoint, as the
    README shows. ``pause`` slows each epoch so a test can kill the run in
    the middle; shuffle=False and a seeded Dropout make a resumed run
    follow the uninterrupted one exactly."""
    import logging
    import time

    import keras

    keras.utils.set_random_seed(params["seed"])
    model = checkpoints.restore()
    if model is None:
        model = keras.Sequential(
            [
                keras.Input((4,)),
                keras.layers.Dense(params["units"], activation="relu"),
                keras.layers.BatchNormalization(),
                keras.layers.Dropout(0.2, seed=5),
                keras.layers.Dense(1),
            ],
            name="checkpointed",
        )
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
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
