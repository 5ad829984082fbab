"""Real architectures for test_real_architectures.py, importable by path
(``real_architectures.build_compiled``) as a user's builder module would be.

Each entry of ``MODELS`` builds a small but real model: keras.applications
networks with ``weights=None``, recurrent and attention blocks, lookup and
adapted preprocessing layers, mixed-precision and bfloat16 policies, nested
and shared layers, custom layers that save their own state, and (when
keras-hub is installed) KerasHub backbones. Every layer that owns variables
has an explicit name, so that a builder called twice gives the same variable
paths.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

PACKAGE = "real_architectures"
HAS_TENSORFLOW = importlib.util.find_spec("tensorflow") is not None
HAS_KERAS_HUB = importlib.util.find_spec("keras_hub") is not None

# --------------------------------------------------------------------------
# Custom layers
# --------------------------------------------------------------------------

# 512 x 640 float32 = 1.25 MiB: at least 1 MiB, the size from which arrays
# are read lazily (kedro_keras._formats._ADOPT_MIN) under TensorFlow.
TABLE_ROWS, TABLE_COLS = 512, 640


@keras.saving.register_keras_serializable(package=PACKAGE)
class OwnVariables(keras.layers.Layer):
    """Saves its weights itself and loads them back through one NumPy
    manipulation, as layers in the wild do: ``how`` is one of ``slice``
    (``store["1"][:]``), ``reshape`` (the table is saved flat), ``astype``
    (saved as float64) and ``multiply`` (``store["1"] * 1.0``)."""

    def __init__(self, how: str, units: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.how = how
        self.units = units

    def build(self, input_shape):
        self.project = self.add_weight(
            shape=(input_shape[-1], TABLE_ROWS), initializer="glorot_uniform", name="project"
        )
        self.table = self.add_weight(
            shape=(TABLE_ROWS, TABLE_COLS), initializer="glorot_uniform", name="table"
        )
        self.out = self.add_weight(shape=(TABLE_COLS, self.units), initializer="glorot_uniform", name="out")

    def call(self, inputs):
        hidden = keras.ops.tanh(keras.ops.matmul(inputs, self.project))
        return keras.ops.matmul(keras.ops.tanh(keras.ops.matmul(hidden, self.table)), self.out)

    def save_own_variables(self, store):
        table = keras.ops.convert_to_numpy(self.table)
        store["0"] = keras.ops.convert_to_numpy(self.project)
        store["1"] = {
            "slice": table,
            "reshape": table.reshape(-1),
            "astype": table.astype("float64"),
            "multiply": table,
        }[self.how]
        store["2"] = keras.ops.convert_to_numpy(self.out)

    def load_own_variables(self, store):
        saved = store["1"]
        if self.how == "slice":
            table = saved[:]
        elif self.how == "reshape":
            table = saved.reshape(TABLE_ROWS, TABLE_COLS)
        elif self.how == "astype":
            table = saved.astype("float32")
        else:
            table = saved * 1.0
        # What Keras's own loaders give a layer: a NumPy array.
        assert isinstance(table, np.ndarray), f"load_own_variables got {type(saved).__name__}"
        self.project.assign(store["0"])
        self.table.assign(table)
        self.out.assign(store["2"])

    def get_config(self):
        return {**super().get_config(), "how": self.how, "units": self.units}


@keras.saving.register_keras_serializable(package=PACKAGE)
class DerivedArrays(keras.layers.Layer):
    """A dense layer that also saves arrays derived from its weights (column
    norms, and the kernel's transpose at over 1 MiB): the file holds four
    arrays for its two weights. Load checks them against each other."""

    def __init__(self, units: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(
            shape=(input_shape[-1], self.units), initializer="glorot_uniform", name="kernel"
        )
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

    def call(self, inputs):
        return keras.ops.matmul(inputs, self.kernel) + self.bias

    def save_own_variables(self, store):
        kernel = keras.ops.convert_to_numpy(self.kernel)
        store["0"] = kernel
        store["1"] = keras.ops.convert_to_numpy(self.bias)
        store["2"] = np.linalg.norm(kernel, axis=0)
        store["3"] = np.ascontiguousarray(kernel.T)

    def load_own_variables(self, store):
        kernel = store["0"][...]
        norms = np.linalg.norm(kernel, axis=0)
        np.testing.assert_array_equal(norms, store["2"][:])
        np.testing.assert_array_equal(kernel, store["3"][:].T)
        self.kernel.assign(kernel)
        self.bias.assign(store["1"])

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package=PACKAGE)
class PackedArrays(keras.layers.Layer):
    """A dense layer that saves its kernel and bias packed in one flat array
    (one array in the file for two weights), split and reshaped on load."""

    def __init__(self, units: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(
            shape=(input_shape[-1], self.units), initializer="glorot_uniform", name="kernel"
        )
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

    def call(self, inputs):
        return keras.ops.matmul(inputs, self.kernel) + self.bias

    def save_own_variables(self, store):
        store["packed"] = np.concatenate(
            [keras.ops.convert_to_numpy(self.kernel).reshape(-1), keras.ops.convert_to_numpy(self.bias)]
        )

    def load_own_variables(self, store):
        packed = store["packed"]
        size = int(np.prod(self.kernel.shape))
        self.kernel.assign(packed[:size].reshape(tuple(self.kernel.shape)))
        self.bias.assign(packed[size:])

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package=PACKAGE)
class StateOutsideVariables(keras.layers.Layer):
    """Keeps an adapted table as a plain NumPy array, not a variable (as
    Keras's tf-idf lookups keep their idf weights), saved in the weights
    file: zero weights, one array in the file."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scales: np.ndarray | None = None

    def adapt(self, values):
        self.scales = (1.0 / (np.std(np.asarray(values), axis=0) + 1.0)).astype("float32")

    def build(self, input_shape):
        if self.scales is None:
            self.scales = np.ones((input_shape[-1],), "float32")

    def call(self, inputs):
        return inputs * keras.ops.convert_to_tensor(self.scales)

    def save_own_variables(self, store):
        store["scales"] = self.scales

    def load_own_variables(self, store):
        self.scales = np.array(store["scales"])


@keras.saving.register_keras_serializable(package=PACKAGE)
class AddPositions(keras.layers.Layer):
    """A learned position embedding added to a sequence."""

    def build(self, input_shape):
        self.positions = self.add_weight(
            shape=tuple(input_shape[1:]), initializer="random_normal", name="positions"
        )

    def call(self, inputs):
        return inputs + self.positions


@keras.saving.register_keras_serializable(package=PACKAGE)
class ResidualBlock(keras.layers.Layer):
    """A layer made of sublayers: Dense, LayerNormalization and a skip."""

    def __init__(self, units: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = units
        self.dense = keras.layers.Dense(units, activation="gelu", name="dense")
        self.norm = keras.layers.LayerNormalization(name="norm")

    def build(self, input_shape):
        self.dense.build(input_shape)
        self.norm.build(input_shape)

    def call(self, inputs):
        return self.norm(inputs + self.dense(inputs))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Tower(keras.Model):
    """A subclassed model used as a layer of a functional model."""

    def __init__(self, units: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = units
        self.first = keras.layers.Dense(units, activation="relu", name="first")
        self.norm = keras.layers.BatchNormalization(name="bn")
        self.second = keras.layers.Dense(units, name="second")

    def call(self, inputs, training=None):
        return self.second(self.norm(self.first(inputs), training=training))

    def get_config(self):
        return {"name": self.name, "units": self.units}


# --------------------------------------------------------------------------
# Builders (uncompiled)
# --------------------------------------------------------------------------


def mobilenet_v3_small():
    """Squeeze-excite, hard-swish, depthwise convolutions, BatchNorm, Rescaling."""
    return keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), weights=None, classes=4)


def mobilenet_v2():
    """Depthwise convolutions, BatchNorm, ReLU6, inverted residuals."""
    return keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=4)


def efficientnet_b0():
    """Squeeze-excite, swish, a Normalization layer, stochastic depth; its
    top convolution's kernel is 1.6 MB (lazily read under TensorFlow)."""
    return keras.applications.EfficientNetB0(input_shape=(32, 32, 3), weights=None, classes=4)


def separable_resnet():
    """A small ResNet-like network with separable and depthwise convolutions."""
    layers = keras.layers
    inputs = keras.Input((16, 16, 3), name="image")
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    for block in range(2):
        skip = x
        y = layers.SeparableConv2D(16, 3, padding="same", use_bias=False, name=f"b{block}_sep")(x)
        y = layers.BatchNormalization(name=f"b{block}_bn1")(y)
        y = layers.Activation("relu", name=f"b{block}_relu")(y)
        y = layers.DepthwiseConv2D(3, padding="same", name=f"b{block}_dw")(y)
        y = layers.BatchNormalization(name=f"b{block}_bn2")(y)
        x = layers.Add(name=f"b{block}_add")([skip, y])
    x = layers.Conv2D(24, 1, strides=2, name="down_conv")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(4, name="logits")(x)
    return keras.Model(inputs, outputs, name="separable_resnet")


def recurrent():
    """Embedding with a mask, Bidirectional LSTM, GRU, SimpleRNN, LSTM."""
    layers = keras.layers
    tokens = keras.Input((10,), dtype="int32", name="tokens")
    x = layers.Embedding(40, 8, mask_zero=True, name="embedding")(tokens)
    x = layers.Bidirectional(layers.LSTM(8, return_sequences=True, name="lstm"), name="bidirectional")(x)
    x = layers.GRU(8, return_sequences=True, name="gru")(x)
    x = layers.SimpleRNN(6, return_sequences=True, name="simple_rnn")(x)
    x = layers.LSTM(6, name="last_lstm")(x)
    outputs = layers.Dense(3, name="logits")(x)
    return keras.Model(tokens, outputs, name="recurrent")


def attention():
    """A transformer encoder block: MultiHeadAttention, GroupQueryAttention,
    dot-product Attention, LayerNormalization, a learned position embedding."""
    layers = keras.layers
    tokens = keras.Input((12,), dtype="int32", name="tokens")
    x = layers.Embedding(50, 16, name="embedding")(tokens)
    x = AddPositions(name="positions")(x)
    mha = layers.MultiHeadAttention(num_heads=2, key_dim=8, name="mha")(x, x)
    x = layers.LayerNormalization(name="ln_mha")(layers.Add(name="add_mha")([x, mha]))
    gqa = layers.GroupQueryAttention(head_dim=8, num_query_heads=4, num_key_value_heads=2, name="gqa")(x, x)
    x = layers.LayerNormalization(name="ln_gqa")(layers.Add(name="add_gqa")([x, gqa]))
    ff = layers.Dense(16, name="ff_out")(layers.Dense(32, activation="gelu", name="ff_in")(x))
    x = layers.LayerNormalization(name="ln_ff")(layers.Add(name="add_ff")([x, ff]))
    x = layers.Attention(use_scale=True, name="dot_attention")([x, x])
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    outputs = layers.Dense(3, name="logits")(x)
    return keras.Model(tokens, outputs, name="attention")


COLOURS = ["red", "green", "blue", "cyan", "magenta"]
CORPUS = ["the cat sat", "the dog sat on the mat", "a cat and a dog", "mat mat cat", "the end"]


def string_lookup():
    """StringLookup with a vocabulary in its config, IntegerLookup with an
    adapted vocabulary (an asset), an Embedding. Needs TensorFlow."""
    layers = keras.layers
    words = keras.Input((3,), dtype="string", name="words")
    codes = keras.Input((2,), dtype="int64", name="codes")
    ids = layers.StringLookup(vocabulary=COLOURS, name="colour_lookup")(words)
    x = layers.Flatten(name="flatten")(layers.Embedding(len(COLOURS) + 1, 4, name="embedding")(ids))
    integer_lookup = layers.IntegerLookup(output_mode="multi_hot", name="code_lookup")
    integer_lookup.adapt(np.array([[3, 5], [7, 7], [11, 3]], dtype="int64"))
    joined = layers.Concatenate(name="join")([x, integer_lookup(codes)])
    outputs = layers.Dense(2, name="logits")(joined)
    return keras.Model({"words": words, "codes": codes}, outputs, name="string_lookup")


def tf_idf():
    """TextVectorization and StringLookup in tf-idf mode: their idf weights
    are saved by the layers themselves, outside any Keras variable. Needs
    TensorFlow."""
    layers = keras.layers
    text = keras.Input((), dtype="string", name="text")
    tags = keras.Input((3,), dtype="string", name="tags")
    vectorize = layers.TextVectorization(max_tokens=16, output_mode="tf_idf", name="vectorize")
    vectorize.adapt(np.array(CORPUS))
    tag_lookup = layers.StringLookup(output_mode="tf_idf", name="tag_lookup")
    tag_lookup.adapt(np.array([["red", "red", "blue"], ["green", "blue", "blue"], ["cyan", "red", "red"]]))
    joined = layers.Concatenate(name="join")([vectorize(text), tag_lookup(tags)])
    outputs = layers.Dense(2, name="logits")(layers.Dense(8, activation="relu", name="hidden")(joined))
    return keras.Model({"text": text, "tags": tags}, outputs, name="tf_idf")


def adapted_preprocessing():
    """An adapted Normalization (mean and variance from data), a
    Discretization with bin boundaries from data and a custom layer whose
    adapted state is a NumPy array outside any variable."""
    layers = keras.layers
    rng = np.random.default_rng(3)
    sample = rng.normal(loc=2.0, scale=3.0, size=(64, 6)).astype("float32")
    numbers = keras.Input((6,), name="numbers")
    normalization = layers.Normalization(name="normalization")
    normalization.adapt(sample)
    # Bin boundaries from the data's quartiles (Discretization.adapt itself
    # needs TensorFlow installed, whatever the backend).
    discretization = layers.Discretization(
        bin_boundaries=[float(q) for q in np.quantile(sample[:, :2], [0.25, 0.5, 0.75])],
        name="discretization",
    )
    scale = StateOutsideVariables(name="scale")
    scale.adapt(sample)
    binned = layers.CategoryEncoding(num_tokens=4, output_mode="multi_hot", name="bins")(
        discretization(layers.Identity(name="first_two")(numbers[:, :2]))
    )
    joined = layers.Concatenate(name="join")([normalization(numbers), scale(numbers), binned])
    outputs = layers.Dense(1, name="out")(layers.Dense(8, activation="relu", name="hidden")(joined))
    return keras.Model(numbers, outputs, name="adapted_preprocessing")


@contextlib.contextmanager
def _global_policy(name: str):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def mixed_float16():
    """Built under the mixed_float16 policy: float16 compute, float32
    variables; compiled with a LossScaleOptimizer (see build_compiled)."""
    layers = keras.layers
    with _global_policy("mixed_float16"):
        inputs = keras.Input((8, 8, 3), name="image")
        x = layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
        x = layers.BatchNormalization(name="bn")(x)
        x = layers.Activation("relu", name="relu")(x)
        x = layers.GlobalAveragePooling2D(name="pool")(x)
        x = layers.Dense(16, activation="relu", name="hidden")(x)
        x = layers.Dense(3, name="logits")(x)
        outputs = layers.Activation("linear", dtype="float32", name="float32_out")(x)
        return keras.Model(inputs, outputs, name="mixed_float16")


def bfloat16():
    """Layers whose variables are bfloat16 (policy "bfloat16", Adam's slots
    too) beside mixed_bfloat16 and float32 layers."""
    layers = keras.layers
    inputs = keras.Input((8,), name="numbers")
    x = layers.Dense(16, activation="relu", dtype="bfloat16", name="bf16_dense")(inputs)
    x = layers.LayerNormalization(dtype="bfloat16", name="bf16_norm")(x)
    x = layers.Dense(16, activation="relu", dtype="mixed_bfloat16", name="mixed_dense")(x)
    outputs = layers.Dense(1, dtype="float32", name="out")(x)
    return keras.Model(inputs, outputs, name="bfloat16")


def nested_shared():
    """A functional model inside a functional model, applied twice (shared
    weights), a shared Dense, a Sequential head, a layer made of sublayers
    and a subclassed model used as a layer."""
    layers = keras.layers
    encoder_in = keras.Input((6,), name="encoder_in")
    h = layers.Dense(8, activation="relu", name="encoder_dense")(encoder_in)
    encoder = keras.Model(encoder_in, layers.BatchNormalization(name="encoder_bn")(h), name="encoder")
    head = keras.Sequential(
        [keras.Input((16,)), layers.Dense(8, name="head_dense"), layers.LayerNormalization(name="head_norm")],
        name="head",
    )
    a = keras.Input((6,), name="a")
    b = keras.Input((6,), name="b")
    shared = layers.Dense(6, name="shared_projection")
    joined = layers.Concatenate(name="join")([encoder(shared(a)), encoder(shared(b))])
    x = head(ResidualBlock(16, name="residual")(joined))
    x = Tower(8, name="tower")(x)
    outputs = layers.Dense(1, name="out")(x)
    return keras.Model({"a": a, "b": b}, outputs, name="nested_shared")


def _own_variables(how: str):
    def build():
        inputs = keras.Input((8,), name="numbers")
        x = OwnVariables(how, name=f"own_{how}")(inputs)
        outputs = keras.layers.Dense(4, name="out")(x)
        return keras.Model(inputs, outputs, name=f"own_variables_{how}")

    return build


def derived_arrays():
    """A layer that saves more arrays than it has weights (4 for 2, one of
    1.25 MiB) and one that saves fewer (1 for 2)."""
    inputs = keras.Input((640,), name="numbers")
    x = DerivedArrays(512, name="derived")(inputs)
    x = keras.layers.Activation("tanh", name="tanh")(x)
    x = PackedArrays(4, name="packed")(x)
    outputs = keras.layers.Dense(1, name="out")(x)
    return keras.Model(inputs, outputs, name="derived_arrays")


def _hub_head(inputs, features, name):
    outputs = keras.layers.Dense(2, name="logits")(features)
    return keras.Model(inputs, outputs, name=name)


def hub_bert_backbone():
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=60,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=12,
        name="bert_backbone",
    )
    inputs = {
        name: keras.Input((12,), dtype="int32", name=name)
        for name in ("token_ids", "segment_ids", "padding_mask")
    }
    return _hub_head(inputs, backbone(inputs)["pooled_output"], "hub_bert")


def hub_gemma_backbone():
    import keras_hub

    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=64,
        num_layers=2,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=16,
        intermediate_dim=32,
        head_dim=8,
        name="gemma_backbone",
    )
    inputs = {name: keras.Input((12,), dtype="int32", name=name) for name in ("token_ids", "padding_mask")}
    pooled = keras.layers.GlobalAveragePooling1D(name="pool")(backbone(inputs))
    return _hub_head(inputs, pooled, "hub_gemma")


def hub_resnet_backbone():
    import keras_hub

    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
        image_shape=(32, 32, 3),
        name="resnet_backbone",
    )
    inputs = keras.Input((32, 32, 3), name="image")
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(backbone(inputs))
    return _hub_head(inputs, pooled, "hub_resnet")


def hub_bert_classifier():
    """KerasHub's BertTextClassifier: a Task whose compile() is its own, so
    Keras skips compile_from_config on load."""
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=60,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=12,
        name="bert_backbone",
    )
    return keras_hub.models.BertTextClassifier(
        backbone=backbone, num_classes=3, preprocessor=None, name="bert_classifier"
    )


# --------------------------------------------------------------------------
# Data and the catalogue of models
# --------------------------------------------------------------------------


def _images(size):
    def make(rng):
        return rng.uniform(0, 255, size=(4, size, size, 3)).astype("float32")

    return make


def _tokens(length, vocabulary):
    def make(rng):
        tokens = rng.integers(1, vocabulary, size=(4, length)).astype("int32")
        tokens[0, -3:] = 0  # some padding, masked
        return tokens

    return make


def _hub_text(length, vocabulary, segments=True):
    def make(rng):
        data = {
            "token_ids": rng.integers(1, vocabulary, size=(4, length)).astype("int32"),
            "padding_mask": np.ones((4, length), "int32"),
        }
        data["padding_mask"][0, -4:] = 0
        if segments:
            data["segment_ids"] = np.zeros((4, length), "int32")
        return data

    return make


def _classes(n):
    return lambda rng: rng.integers(0, n, size=(4,)).astype("int32")


def _numbers(*shape):
    return lambda rng: rng.normal(size=(4, *shape)).astype("float32")


SPARSE = "sparse_categorical_crossentropy"


@dataclasses.dataclass(frozen=True)
class Spec:
    build: Callable[[], keras.Model]
    inputs: Callable[[np.random.Generator], Any]
    targets: Callable[[np.random.Generator], Any]
    loss: str | None = SPARSE  # None: the model compiles itself (a KerasHub Task)
    needs_tensorflow: bool = False
    keras_hub: bool = False


MODELS: dict[str, Spec] = {
    "mobilenet_v3_small": Spec(mobilenet_v3_small, _images(32), _classes(4)),
    "mobilenet_v2": Spec(mobilenet_v2, _images(32), _classes(4)),
    "efficientnet_b0": Spec(efficientnet_b0, _images(32), _classes(4)),
    "separable_resnet": Spec(separable_resnet, _numbers(16, 16, 3), _classes(4)),
    "recurrent": Spec(recurrent, _tokens(10, 40), _classes(3)),
    "attention": Spec(attention, _tokens(12, 50), _classes(3)),
    "string_lookup": Spec(
        string_lookup,
        lambda rng: {
            "words": np.array(
                [["red", "blue", "mauve"], ["cyan", "red", "red"], ["green", "x", "blue"], ["red"] * 3]
            ),
            "codes": np.array([[3, 5], [7, 9], [11, 3], [5, 5]], dtype="int64"),
        },
        _classes(2),
        needs_tensorflow=True,
    ),
    "tf_idf": Spec(
        tf_idf,
        lambda rng: {
            "text": np.array(["the cat sat", "a dog", "mat on mat", "unknown words here"]),
            "tags": np.array(
                [["red", "blue", "red"], ["green", "x", "blue"], ["cyan", "cyan", "red"], ["blue"] * 3]
            ),
        },
        _classes(2),
        needs_tensorflow=True,
    ),
    "adapted_preprocessing": Spec(adapted_preprocessing, _numbers(6), _numbers(1), loss="mse"),
    "mixed_float16": Spec(mixed_float16, _numbers(8, 8, 3), _classes(3)),
    "bfloat16": Spec(bfloat16, _numbers(8), _numbers(1), loss="mse"),
    "nested_shared": Spec(
        nested_shared, lambda rng: {"a": _numbers(6)(rng), "b": _numbers(6)(rng)}, _numbers(1), loss="mse"
    ),
    **{
        f"own_variables_{how}": Spec(_own_variables(how), _numbers(8), _classes(4))
        for how in ("slice", "reshape", "astype", "multiply")
    },
    "derived_arrays": Spec(derived_arrays, _numbers(640), _numbers(1), loss="mse"),
}
if HAS_KERAS_HUB:
    MODELS.update(
        {
            "hub_bert_backbone": Spec(hub_bert_backbone, _hub_text(12, 60), _classes(2), keras_hub=True),
            "hub_gemma_backbone": Spec(
                hub_gemma_backbone, _hub_text(12, 64, segments=False), _classes(2), keras_hub=True
            ),
            "hub_resnet_backbone": Spec(hub_resnet_backbone, _images(32), _classes(2), keras_hub=True),
            "hub_bert_classifier": Spec(
                hub_bert_classifier, _hub_text(12, 60), _classes(3), loss=None, keras_hub=True
            ),
        }
    )


def build_compiled(name: str) -> keras.Model:
    """The model ``name``, compiled with Adam and its optimizer built, as a
    training job would leave it. The weights dataset's builder: ``architecture:
    real_architectures.build_compiled``, ``architecture_args: {name: ...}``."""
    spec = MODELS[name]
    model = spec.build()
    # TensorFlow: tracing a train step costs 10-50 s per model on 2 cores,
    # running it eagerly 1-3 s. JAX: op by op is the slow way (2 minutes
    # for MobileNetV3Small), one jitted step 20-30 s.
    run_eagerly = keras.backend.backend() != "jax"
    if spec.loss is None:
        model.compile(run_eagerly=run_eagerly)  # the Task's own defaults (Adam)
    else:
        optimizer = keras.optimizers.Adam(1e-3)
        if model.dtype_policy.name == "mixed_float16":
            # Named in the compile config: compile() wraps a plain Adam in a
            # LossScaleOptimizer only for a model whose policy is
            # mixed_float16, and a Functional model rebuilt from its config
            # has the default policy, so Keras itself would then rebuild a
            # bare Adam and skip the saved optimizer state (22 variables
            # saved, 18 built).
            # A small initial scale: at Keras's default (2**15) the first
            # step overflows in float16 and is skipped, leaving no state.
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=2.0**6)
        model.compile(optimizer=optimizer, loss=spec.loss, run_eagerly=run_eagerly)
    model.optimizer.build(model.trainable_variables)
    return model


def training_data(name: str, seed: int = 0) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    spec = MODELS[name]
    return spec.inputs(rng), spec.targets(rng)
