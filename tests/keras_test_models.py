"""Real Keras models for the tests, importable by path from catalog YAML
(``keras_test_models.Scale``), as a user's project module would be."""

from __future__ import annotations

import keras


class Scale(keras.layers.Layer):
    """A custom layer with a trainable weight, not registered with Keras."""

    def __init__(self, initial=1.0, **kwargs):
        super().__init__(**kwargs)
        self.initial = initial

    def build(self, input_shape):
        self.factor = self.add_weight(
            shape=(input_shape[-1],),
            initializer=keras.initializers.Constant(self.initial),
            name="factor",
        )

    def call(self, inputs):
        return inputs * self.factor

    def get_config(self):
        return {**super().get_config(), "initial": self.initial}


class TwoLayerNet(keras.Model):
    """A subclassed model with a required constructor argument and get_config."""

    def __init__(self, hidden, **kwargs):
        super().__init__(**kwargs)
        self.hidden = hidden
        self.dense = keras.layers.Dense(hidden, activation="relu")
        self.out = keras.layers.Dense(1)

    def call(self, inputs):
        return self.out(self.dense(inputs))

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def build_functional(hidden=8):
    inputs = keras.Input((4,))
    x = keras.layers.Dense(hidden, activation="relu")(inputs)
    outputs = keras.layers.Dense(1)(x)
    return keras.Model(inputs, outputs, name="functional")


def build_sequential(hidden=8):
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.1),
            keras.layers.Dense(1),
        ],
        name="sequential",
    )


def build_with_custom_layer(hidden=8):
    inputs = keras.Input((4,))
    x = Scale(2.0)(inputs)
    outputs = keras.layers.Dense(1)(keras.layers.Dense(hidden)(x))
    return keras.Model(inputs, outputs, name="with_scale")


def build_with_lambda():
    inputs = keras.Input((4,))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    return keras.Model(inputs, keras.layers.Dense(1)(x), name="with_lambda")


def build_subclassed(hidden=8):
    """A subclassed model, built by calling it on data so every sublayer has weights."""
    model = TwoLayerNet(hidden)
    model(keras.ops.zeros((1, 4)))
    return model


def build_subclassed_unbuilt(hidden=8):
    """The silent pitfall: build() with a shape leaves the sublayers unbuilt."""
    model = TwoLayerNet(hidden)
    model.build((None, 4))
    return model


def not_a_model():
    return "not a model"


def build_with_preprocessing():
    """Layers with non-weight state: an adapted Normalization (variables made
    from concrete values) and a IntegerLookup whose vocabulary is an asset."""
    import numpy as np

    normalization = keras.layers.Normalization()
    normalization.adapt(np.arange(40, dtype="float32").reshape(10, 4))
    numbers = keras.Input((4,), name="numbers")
    words = keras.Input((1,), dtype="int64", name="words")
    lookup = keras.layers.IntegerLookup(output_mode="one_hot", name="colour")
    lookup.adapt(np.array([3, 5, 7, 7]))  # an adapted vocabulary is saved as an asset
    joined = keras.layers.Concatenate()([normalization(numbers), lookup(words)])
    return keras.Model([numbers, words], keras.layers.Dense(1)(joined), name="preprocessing")
