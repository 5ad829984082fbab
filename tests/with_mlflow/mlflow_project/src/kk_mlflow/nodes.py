"""A model trained, passed on in memory, logged to MLflow and read back
within the same run."""

from __future__ import annotations

import keras
import numpy as np

X = np.random.default_rng(7).random((8, 6), dtype=np.float32)
# id() of the model the training node returned: a later node of the same
# run (SequentialRunner, one process) compares what it was handed.
_TRAINED: dict[str, int] = {}


@keras.saving.register_keras_serializable(package="kk_mlflow")
class Scale(keras.layers.Layer):
    def __init__(self, factor: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


def train(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((6,)), Scale(2.0), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)],
        name="classifier",
    )
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(seed)
    model.fit(
        rng.random((32, 6), dtype=np.float32), rng.random((32, 3), dtype=np.float32), epochs=2, verbose=0
    )
    _TRAINED["id"] = id(model)
    return model


def publish(model: keras.Model) -> tuple[keras.Model, keras.Model, dict]:
    import mlflow

    return (
        model,
        model,
        {
            "same_object": _TRAINED.get("id") == id(model),
            "run_id": mlflow.active_run().info.run_id,
            "predictions": model.predict(X, verbose=0).tolist(),
        },
    )


def reread(classifier: keras.Model, onnx, report: dict) -> dict:
    """What the catalog loads back from the run, in the same run."""
    return {
        **report,
        "reloaded": classifier.predict(X, verbose=0).tolist(),
        "onnx": np.asarray(onnx.predict(X)).tolist(),
    }
