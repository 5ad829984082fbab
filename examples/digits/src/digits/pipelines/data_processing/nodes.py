"""Load scikit-learn's 8x8 digits (shipped with scikit-learn, no download) and split them."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

logger = logging.getLogger(__name__)


def split_digits(split: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Images as ``(n, 8, 8, 1)`` float32 with pixel values 0..16, labels 0..9."""
    digits = load_digits()
    images = digits.images.astype("float32")[..., np.newaxis]
    labels = digits.target.astype("int64")
    train_images, test_images, train_labels, test_labels = train_test_split(
        images,
        labels,
        test_size=split["test_size"],
        random_state=split["random_state"],
        stratify=labels,
    )
    logger.info("Digits: %d training and %d test images", len(train_images), len(test_images))
    return train_images, test_images, train_labels, test_labels
