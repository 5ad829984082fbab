"""Quantized models for test_quantized.py, importable by path
(``quantized_models.build``) as a user's builder module would be.

Two models: a functional one with each layer Keras quantizes (Embedding,
EinsumDense, Dense), and a small KerasHub causal language model (Gemma),
whose backbone records its layers' policies in a ``DTypePolicyMap`` and
which names its own quantization structure, so GPTQ and AWQ can calibrate
it. Everything is built from fixed seeds and small constructor arguments:
no download.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import keras
import numpy as np

SEQUENCE = 8
VOCABULARY = 32
# The modes model.quantize(mode) takes without calibration data, and those
# that calibrate (GPTQ and AWQ, 4-bit weights in groups of 8 here).
PLAIN_MODES = ("int8", "int4", "float8")
CALIBRATED_MODES = ("gptq", "awq")


def layers_stack() -> keras.Model:
    """Embedding, EinsumDense and Dense: the layers Keras quantizes
    (float8 leaves the Embedding as it is: Keras has no float8 Embedding)."""
    layers = keras.layers
    tokens = keras.Input((SEQUENCE,), dtype="int32", name="tokens")
    x = layers.Embedding(VOCABULARY, 16, name="embedding")(tokens)
    x = layers.EinsumDense("abc,cd->abd", output_shape=(None, 16), bias_axes="d", name="einsum")(x)
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    x = layers.Dense(16, activation="relu", name="hidden")(x)
    outputs = layers.Dense(3, name="logits")(x)
    return keras.Model(tokens, outputs, name="layers_stack")


def hub_gemma() -> keras.Model:
    import keras_hub

    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=VOCABULARY,
        num_layers=1,
        num_query_heads=2,
        num_key_value_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        head_dim=4,
        name="gemma_backbone",
    )
    return keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None, name="gemma_lm")


MODELS = {"layers_stack": layers_stack, "hub_gemma": hub_gemma}


def inputs(name: str) -> Any:
    rng = np.random.default_rng(1)
    tokens = rng.integers(1, VOCABULARY, size=(4, SEQUENCE)).astype("int32")
    if name == "hub_gemma":
        return {"token_ids": tokens, "padding_mask": np.ones_like(tokens)}
    return tokens


def targets(name: str) -> Any:
    rng = np.random.default_rng(2)
    if name == "hub_gemma":  # the next token at each position
        return rng.integers(1, VOCABULARY, size=(4, SEQUENCE)).astype("int32")
    return rng.integers(0, 3, size=(4,)).astype("int32")


def calibration(mode: str) -> Any:
    """GPTQ's or AWQ's configuration, calibrated on token sequences made
    here (a list of token arrays needs no tokenizer call; Keras still asks
    for one)."""
    rng = np.random.default_rng(3)
    samples = [rng.integers(1, VOCABULARY, size=(1, SEQUENCE)).astype("int32") for _ in range(2)]
    config = keras.quantizers.GPTQConfig if mode == "gptq" else keras.quantizers.AWQConfig
    # AWQ searches a grid of scales per layer (20 points by default): each
    # point is seconds of JAX compiling on these tiny shapes.
    grid = {"num_grid_points": 4} if mode == "awq" else {}
    return config(
        dataset=samples,
        tokenizer=lambda text: text,
        weight_bits=4,
        num_samples=len(samples),
        sequence_length=SEQUENCE,
        group_size=8,
        **grid,
    )


def compile_model(model: keras.Model, name: str, eager: bool = True) -> None:
    # Eager where a step runs once or twice: tracing one costs TensorFlow
    # seconds. JAX is the other way round (a jitted step of the functional
    # model: 1.5 s; op by op: 5.6 s). TensorFlow trains float8 layers only in
    # a traced step (eagerly, tf.custom_gradient fails: "too many values to
    # unpack").
    run_eagerly = eager and keras.backend.backend() != "jax"
    if name == "hub_gemma":
        model.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=run_eagerly)
    else:
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss="sparse_categorical_crossentropy",
            run_eagerly=run_eagerly,
        )


def build(name: str, mode: str | None = None, trained: bool = False, eager: bool = True) -> keras.Model:
    """The model ``name``, quantized with ``mode`` (None: not quantized).

    As a builder (``architecture: quantized_models.build``) it is called
    with the name and the mode only: the weights it gets are overwritten
    by the load. ``trained``: one training step before quantizing, so the
    quantized values are not the initialiser's. ``eager``: compiled to run
    eagerly (not under JAX).
    """
    keras.utils.set_random_seed(0)
    model = MODELS[name]()
    compile_model(model, name)
    if trained:
        model.train_on_batch(inputs(name), targets(name))
    if mode in CALIBRATED_MODES:
        # The feed-forward layers only (as LLMs are often quantized): each
        # kernel shape calibrated costs JAX seconds of compiling small ops,
        # and the attention's add three (GPTQ over every layer: 20 s).
        model.quantize(mode, config=calibration(mode), filters="ffw")
    elif mode is not None:
        model.quantize(mode)
    # A fresh optimizer over the quantized variables: the one that trained
    # the float model tracks the kernels quantize() replaced.
    compile_model(model, name, eager)
    model.optimizer.build(model.trainable_variables)
    return model


def rewrite_archive(path: Any, *, mode: str, keras_version: str) -> None:
    """The ``.keras`` archive at ``path`` with every int8 layer's policy in
    ``mode`` and ``keras_version`` as its writer's (as a newer Keras would
    write it), each member kept as it was stored."""
    with zipfile.ZipFile(path) as archive:
        members = [(info, archive.read(info)) for info in archive.infolist()]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as target:
        for info, data in members:
            if info.filename == "config.json":
                data = data.replace(b'"mode": "int8"', f'"mode": "{mode}"'.encode())
            elif info.filename == "metadata.json":
                metadata = json.loads(data)
                metadata["keras_version"] = keras_version
                metadata.get("kedro_keras", {}).pop("keras_version", None)
                data = json.dumps(metadata).encode()
            target.writestr(info, data)
    with open(path, "wb") as file:
        file.write(buffer.getvalue())
