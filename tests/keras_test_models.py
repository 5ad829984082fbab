"""Real Keras models for the tests, importable by path from catalog YAML
(``keras_test_models.Scale``), as a user's project module would be."""

from __future__ import annotations

import os

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


class ConcreteStateAdam(keras.optimizers.Adam):
    """An optimizer whose ``build`` makes a variable from a concrete value
    (as a user's might for a schedule's state), not from an initializer."""

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        import numpy as np

        self._scale_state = keras.Variable(np.array(0.5, "float32"), name="scale_state", trainable=False)
        self._track_variable(self._scale_state)


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


@keras.saving.register_keras_serializable(package="keras_test_models")
class PositionIn(keras.layers.Layer):
    """One-hot of each input's position in a vocabulary kept as an asset file,
    as Keras's lookup layers keep theirs, but in ``keras.ops`` only (those
    layers need TensorFlow installed, whatever the backend). The config holds
    only the vocabulary's size: its values come back from the asset alone."""

    def __init__(self, size, **kwargs):
        super().__init__(**kwargs)
        self.size = size
        self.vocabulary = [0] * size

    def adapt(self, values):
        self.vocabulary = sorted(set(int(v) for v in values))[: self.size]

    def call(self, inputs):
        vocabulary = keras.ops.convert_to_tensor(self.vocabulary, dtype=inputs.dtype)
        return keras.ops.cast(keras.ops.equal(inputs, vocabulary), "float32")

    def save_assets(self, dir_path):
        with open(os.path.join(dir_path, "vocabulary.txt"), "w") as file:
            file.write("\n".join(str(v) for v in self.vocabulary))

    def load_assets(self, dir_path):
        with open(os.path.join(dir_path, "vocabulary.txt")) as file:
            self.vocabulary = [int(line) for line in file.read().split()]

    def get_config(self):
        return {**super().get_config(), "size": self.size}


def build_with_preprocessing():
    """Layers with non-weight state: an adapted Normalization (variables made
    from concrete values) and a layer whose vocabulary is an asset."""
    import numpy as np

    normalization = keras.layers.Normalization()
    normalization.adapt(np.arange(40, dtype="float32").reshape(10, 4))
    numbers = keras.Input((4,), name="numbers")
    words = keras.Input((1,), dtype="int32", name="words")
    position = PositionIn(3, name="colour")
    position.adapt([3, 5, 7, 7])  # saved as an asset, not in the config
    joined = keras.layers.Concatenate()([normalization(numbers), position(words)])
    return keras.Model([numbers, words], keras.layers.Dense(1)(joined), name="preprocessing")


def build_with_integer_lookup():
    """Keras's own IntegerLookup, whose adapted vocabulary is an asset.
    Needs TensorFlow installed, whatever the backend."""
    import numpy as np

    words = keras.Input((1,), dtype="int64", name="words")
    lookup = keras.layers.IntegerLookup(output_mode="one_hot", name="colour")
    lookup.adapt(np.array([3, 5, 7, 7]))  # an adapted vocabulary is saved as an asset
    return keras.Model(words, keras.layers.Dense(1)(lookup(words)), name="lookup")


class FailsToSave(keras.layers.Layer):
    """A layer with a weight whose saving fails: Keras saves the layers before
    it first, so a save of a model holding it breaks half-way. ``error`` is
    the exception class raised (not part of the config)."""

    def __init__(self, error=RuntimeError, **kwargs):
        super().__init__(**kwargs)
        self.error = error

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")

    def call(self, inputs):
        return inputs * self.scale

    def save_own_variables(self, store):
        raise self.error("no space left on device (a save that breaks half-way)")


def build_failing_to_save(error=RuntimeError, hidden=64):
    """Two dense layers that save, then one that fails."""
    inputs = keras.Input((4,))
    x = keras.layers.Dense(hidden, activation="relu")(inputs)
    x = keras.layers.Dense(hidden)(x)
    outputs = keras.layers.Dense(1)(FailsToSave(error)(x))
    return keras.Model(inputs, outputs, name="fails_to_save")
