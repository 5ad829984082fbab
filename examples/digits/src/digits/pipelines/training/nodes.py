"""Build and train a small convolutional classifier."""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np

from digits.layers import Rescale
from kedro_keras import Checkpoints

logger = logging.getLogger(__name__)


def build_model(
    filters: int = 16,
    dense_units: int = 64,
    n_classes: int = 10,
    pixel_scale: float = 1 / 16,
) -> keras.Model:
    """The classifier's architecture.

    ``classifier_weights`` in conf/base/catalog.yml names this function
    (``architecture: digits.pipelines.training.nodes.build_model``) so that its
    ``.weights.h5`` file can be loaded into a freshly built model. Its
    ``architecture_args`` and the ``model`` parameters both come from
    conf/base/globals.yml, so training and loading build the same model.
    """
    inputs = keras.Input(shape=(8, 8, 1), name="pixels")
    x = Rescale(pixel_scale, name="rescale")(inputs)
    x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name="conv_1")(x)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Conv2D(2 * filters, 3, padding="same", activation="relu", name="conv_2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(dense_units, activation="relu", name="hidden")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="digit")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def train_model(
    images: np.ndarray,
    labels: np.ndarray,
    model_params: dict[str, Any],
    training: dict[str, Any],
    checkpoints: Checkpoints,
) -> tuple[keras.Model, keras.Model, keras.Model]:
    """Fit the classifier and hand the same trained model to three catalog
    entries, one per kedro-keras dataset.

    ``checkpoints`` (the ``classifier_checkpoints`` entry) writes a checkpoint
    after every epoch. If an earlier run was killed, training resumes from
    its last checkpoint and runs only the epochs left; shuffle=False keeps the
    result the same as that of a run never interrupted.
    """
    keras.utils.set_random_seed(training["seed"])
    model = checkpoints.restore()
    if model is None:
        model = build_model(**model_params)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=training["learning_rate"]),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
    history = model.fit(
        images,
        labels,
        epochs=training["epochs"],
        initial_epoch=checkpoints.initial_epoch,
        batch_size=training["batch_size"],
        validation_split=0.1,
        shuffle=False,  # the split already shuffled the images
        callbacks=[checkpoints.callback()],
        verbose=0,
    )
    if history.epoch:
        logger.info(
            "Trained %s for epochs %d to %d: training accuracy %.3f, validation accuracy %.3f",
            model.name,
            history.epoch[0] + 1,
            history.epoch[-1] + 1,
            history.history["accuracy"][-1],
            history.history["val_accuracy"][-1],
        )
    return model, model, model


def ship(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """The model as kept (``classifier_model``, read back from the catalog)
    handed to the two export entries: a TensorFlow SavedModel folder and an
    ONNX file, for serving stacks that do not run Keras."""
    return model, model
