"""A functional model and a subclassed one, both using the custom Scale layer."""

import keras
import numpy as np
from kk_e2e.layers import Scale

N_FEATURES = 4


def build_dense(units=8):
    inputs = keras.Input((N_FEATURES,), name="features")
    x = Scale(0.5, name="scale")(inputs)
    x = keras.layers.Dense(units, activation="relu", name="hidden")(x)
    outputs = keras.layers.Dense(1, name="out")(x)
    return keras.Model(inputs, outputs, name="dense_regressor")


class TinyRegressor(keras.Model):
    """Subclassed, not registered with Keras."""

    def __init__(self, units=8, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.scale = Scale(0.5)
        self.hidden = keras.layers.Dense(units, activation="relu")
        self.head = keras.layers.Dense(1)

    def call(self, inputs):
        return self.head(self.hidden(self.scale(inputs)))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def build_tiny(units=8):
    """A subclassed model only has weights once called on data."""
    model = TinyRegressor(units=units, name="tiny_regressor")
    model(np.zeros((1, N_FEATURES), dtype="float32"))
    return model
