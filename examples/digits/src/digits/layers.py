"""A custom layer, deliberately *not* registered with Keras.

Keras cannot load a model that uses it unless it is told where the class is:
conf/base/catalog.yml does that with ``load_args.custom_objects`` and an
import path (``Rescale: digits.layers.Rescale``).
"""

from __future__ import annotations

import keras


class Rescale(keras.layers.Layer):
    """Multiplies its input by a constant (digits pixels are 0..16)."""

    def __init__(self, scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)

    def call(self, inputs):
        return inputs * self.scale

    def get_config(self) -> dict:
        return {**super().get_config(), "scale": self.scale}
