"""Run by tests/test_cross_backend.py under each backend's virtualenv, as a script:

    KERAS_BACKEND=jax .venv-jax/bin/python tests/cross_backend_worker.py save OUT
    KERAS_BACKEND=torch .venv-torch/bin/python tests/cross_backend_worker.py load SAVED OUT

``save`` trains small models and writes each through all three datasets (plus
legacy ``.h5``), with what the saving process itself sees: predictions, weights,
optimizer state and the predictions after one more epoch. ``load`` reads another
backend's files through the datasets and writes what it sees. Both write
``results.json`` (scalars, messages) and ``arrays.npz``; the test compares them,
so every assertion and its message lives in the test, not here.

Not a test module (pytest collects only ``test_*.py``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
from pathlib import Path

import keras
import numpy as np
from kedro.io import DatasetError

import keras_test_models
from kedro_keras import KerasModelDataset, KerasTimestampedModelDataset, KerasWeightsDataset

BACKENDS = ("tensorflow", "jax", "torch")
CUSTOM_OBJECTS = {
    "Scale": "keras_test_models.Scale",
    "TwoLayerNet": "keras_test_models.TwoLayerNet",
}


@keras.saving.register_keras_serializable(package="kedro_keras_tests")
class TensorFlowOnlyScale(keras.layers.Layer):
    """Backend-specific code: calls TensorFlow directly instead of keras.ops.

    Works under the TensorFlow backend; anywhere else TensorFlow is not even
    installed (the JAX and PyTorch virtualenvs have only their own backend).
    """

    def call(self, inputs):
        import tensorflow as tf

        return tf.math.multiply(inputs, 2.0)


def regression_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5], [3.0]], dtype="float32")).astype("float32")
    return x, y


def sequence_data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 6, 3)).astype("float32")
    y = x.sum(axis=(1, 2))[:, None].astype("float32") / 6
    return x, y


def build_mixed():
    """Functional: a custom layer (by import path), Dense, BatchNormalization."""
    inputs = keras.Input((4,))
    x = keras_test_models.Scale(2.0)(inputs)
    x = keras.layers.Dense(8, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    return keras.Model(inputs, keras.layers.Dense(1)(x), name="mixed")


def build_sequence():
    """Sequential: Conv1D and LSTM, whose kernels each backend computes its own way."""
    return keras.Sequential(
        [
            keras.Input((6, 3)),
            keras.layers.Conv1D(4, 3, activation="tanh"),
            keras.layers.LSTM(5),
            keras.layers.Dense(1),
        ],
        name="sequence",
    )


def build_subclassed():
    return keras_test_models.build_subclassed(hidden=6)


# name: (builder, data)
MODELS = {
    "mixed": (build_mixed, regression_data),
    "sequence": (build_sequence, sequence_data),
    "subclassed": (build_subclassed, regression_data),
}


def model_dataset(folder: Path, name: str, suffix: str = ".keras", **load_args) -> KerasModelDataset:
    return KerasModelDataset(
        filepath=str(folder / f"{name}{suffix}"), load_args={"custom_objects": CUSTOM_OBJECTS, **load_args}
    )


def weights_dataset(folder: Path, name: str) -> KerasWeightsDataset:
    return KerasWeightsDataset(
        filepath=str(folder / f"{name}.weights.h5"), load_args={"custom_objects": CUSTOM_OBJECTS}
    )


def history_dataset(folder: Path, name: str) -> KerasTimestampedModelDataset:
    return KerasTimestampedModelDataset(
        filepath=str(folder / f"{name}_history"), load_args={"custom_objects": CUSTOM_OBJECTS}
    )


def optimizer_state(model) -> dict[str, np.ndarray]:
    # By position: a variable's path can differ after a load (Keras drops a
    # Sequential's name from its layers' variable paths), the order cannot.
    return {str(i): keras.ops.convert_to_numpy(v) for i, v in enumerate(model.optimizer.variables)}


def predict(model, x) -> np.ndarray:
    # A direct call: predict() would compile a function for each of the many models here.
    return keras.ops.convert_to_numpy(model(x, training=False))


def mse(model, x, y) -> float:
    return float(np.mean((predict(model, x) - y) ** 2))


def one_more_epoch(model, x, y) -> None:
    model.fit(x, y, epochs=1, batch_size=len(x), shuffle=False, verbose=0)


def save(out: Path) -> None:
    results: dict = {"backend": keras.backend.backend(), "keras_version": keras.version(), "models": {}}
    arrays: dict[str, np.ndarray] = {}
    for name, (build, make_data) in MODELS.items():
        x, y = make_data()
        keras.utils.set_random_seed(0)
        model = build()
        model.compile(optimizer="adam", loss="mse")
        model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)

        model_dataset(out, name).save(model)
        weights_dataset(out, name).save(model)
        history_dataset(out, name).save(model)
        if name == "mixed":
            model_dataset(out, name, ".h5").save(model)

        arrays[f"{name}/predictions"] = predict(model, x)
        for i, weight in enumerate(model.get_weights()):
            arrays[f"{name}/weight/{i}"] = weight
        for i, value in optimizer_state(model).items():
            arrays[f"{name}/optimizer/{i}"] = value
        results["models"][name] = {
            "iterations": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
            "loss": mse(model, x, y),
        }
        # What training on would give, had the model never left this process.
        one_more_epoch(model, x, y)
        arrays[f"{name}/continued"] = predict(model, x)

    if keras.backend.backend() == "tensorflow":
        inputs = keras.Input((4,))
        tf_only = keras.Model(inputs, keras.layers.Dense(1)(TensorFlowOnlyScale()(inputs)), name="tf_only")
        KerasModelDataset(filepath=str(out / "tf_only.keras")).save(tf_only)

    write(out, results, arrays)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def load(saved: Path, out: Path) -> None:
    records = Records()
    logger = logging.getLogger("kedro_keras")
    logger.setLevel(logging.INFO)
    logger.addHandler(records)

    results: dict = {
        "backend": keras.backend.backend(),
        "keras_version": keras.version(),
        # Only the backend named by KERAS_BACKEND may be installed here.
        "importable_backends": [b for b in BACKENDS if importlib.util.find_spec(b) is not None],
        "models": {},
    }
    arrays: dict[str, np.ndarray] = {}
    for name, (_, make_data) in MODELS.items():
        x, y = make_data()
        found: dict = {}
        records.messages.clear()
        model = model_dataset(saved, name).load()
        found["load_log"] = [m for m in records.messages if m.startswith("Loaded Keras model")]
        arrays[f"{name}/model/predictions"] = predict(model, x)
        for i, weight in enumerate(model.get_weights()):
            arrays[f"{name}/model/weight/{i}"] = weight
        for i, value in optimizer_state(model).items():
            arrays[f"{name}/model/optimizer/{i}"] = value
        found["iterations_loaded"] = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        found["loss_loaded"] = mse(model, x, y)
        one_more_epoch(model, x, y)
        found["iterations_after_epoch"] = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        found["loss_after_epoch"] = mse(model, x, y)
        arrays[f"{name}/model/continued"] = predict(model, x)

        os.environ["KEDRO_KERAS_PUBLIC_API_ONLY"] = "1"  # Keras's own loader, through the fallback
        try:
            arrays[f"{name}/public/predictions"] = predict(model_dataset(saved, name).load(), x)
        finally:
            del os.environ["KEDRO_KERAS_PUBLIC_API_ONLY"]
        arrays[f"{name}/weights/predictions"] = predict(weights_dataset(saved, name).load(), x)
        arrays[f"{name}/history/predictions"] = predict(history_dataset(saved, name).load(), x)
        if name == "mixed":
            h5 = model_dataset(saved, name, ".h5", compile=False).load()
            arrays[f"{name}/h5/predictions"] = predict(h5, x)
        results["models"][name] = found

    tf_only = saved / "tf_only.keras"
    if tf_only.exists():
        try:
            predict(KerasModelDataset(filepath=str(tf_only)).load(), regression_data()[0])
        except DatasetError as exc:
            results["tf_only"] = {"error": "DatasetError", "message": str(exc)}
        except Exception as exc:  # noqa: BLE001 - the test reports what escaped
            results["tf_only"] = {"error": type(exc).__name__, "message": str(exc)}
        else:
            results["tf_only"] = {"error": None, "message": ""}

    write(out, results, arrays)


def write(out: Path, results: dict, arrays: dict[str, np.ndarray]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "arrays.npz", **arrays)
    (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    if sys.argv[1] == "save":
        save(Path(sys.argv[2]))
    elif sys.argv[1] == "load":
        load(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit(f"unknown mode {sys.argv[1]!r}: expected save or load")
