"""Score the models the catalog loads back."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def accuracy(model: Any, images: np.ndarray, labels: np.ndarray) -> float:
    """Share of test digits the model gets right.

    Uses ``predict`` rather than ``evaluate`` so that it works on the
    weights-only copy too, which comes back uncompiled, and on the exports:
    a Keras model over the SavedModel, an onnxruntime session for ONNX.
    """
    predicted = np.argmax(np.asarray(model.predict(images.astype("float32"), verbose=0)), axis=-1)
    return float(np.mean(predicted == labels))


def report(
    labels: np.ndarray,
    classifier_model: float,
    classifier_weights: float,
    classifier_history: float,
    classifier_saved_model: float,
    classifier_onnx: float,
) -> dict[str, Any]:
    scores = {
        "classifier_model": classifier_model,
        "classifier_weights": classifier_weights,
        "classifier_history": classifier_history,
        "classifier_saved_model": classifier_saved_model,
        "classifier_onnx": classifier_onnx,
    }
    for name, score in scores.items():
        logger.info("Test accuracy of %s (reloaded from the catalog): %.4f", name, score)
    return {"test_images": int(len(labels)), "accuracy": scores}
