"""Score the models the catalog loads back."""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np

logger = logging.getLogger(__name__)


def accuracy(model: keras.Model, images: np.ndarray, labels: np.ndarray) -> float:
    """Share of test digits the model gets right.

    Uses ``predict`` rather than ``evaluate`` so that it works on the
    weights-only copy too, which comes back uncompiled.
    """
    predicted = np.argmax(model.predict(images, verbose=0), axis=-1)
    return float(np.mean(predicted == labels))


def report(
    labels: np.ndarray,
    classifier_model: float,
    classifier_weights: float,
    classifier_history: float,
) -> dict[str, Any]:
    scores = {
        "classifier_model": classifier_model,
        "classifier_weights": classifier_weights,
        "classifier_history": classifier_history,
    }
    for name, score in scores.items():
        logger.info("Test accuracy of %s (reloaded from the catalog): %.4f", name, score)
    return {"test_images": int(len(labels)), "accuracy": scores}
