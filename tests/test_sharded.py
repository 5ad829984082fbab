"""_sharded: Keras's sharded-weights layout, written and read on file objects
(the dataset's tests cover files on disk and S3)."""

from __future__ import annotations

import collections
import contextlib
import io
import json

import keras
import numpy as np
import pytest

import keras_test_models
from conftest import fit
from kedro_keras._formats import sharded as _sharded


class InMemoryShards:
    """Shards kept as bytes, opened through the callables the sharded
    functions take; counts how often each shard is opened for reading."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.opens: collections.Counter = collections.Counter()

    @contextlib.contextmanager
    def open_for_write(self, name):
        buffer = io.BytesIO()
        yield buffer
        self.files[name] = buffer.getvalue()

    @contextlib.contextmanager
    def open_for_read(self, name):
        self.opens[name] += 1
        yield io.BytesIO(self.files[name])


def test_sharded_layout_is_keras_own(tmp_path, data):
    """Our shards hold the same groups, split at the same places, as Keras's
    ``save_weights(max_shard_size=)`` writes: only the file names differ."""
    model = fit(keras_test_models.build_functional(hidden=64), data)
    model.save_weights(tmp_path / "m.weights.json", max_shard_size=1e-6)
    theirs = json.loads((tmp_path / "m.weights.json").read_text())

    shards = InMemoryShards()
    ours = _sharded.write_sharded_weights(
        model,
        shard_name=lambda i: f"ours_{i:05}.weights.h5",
        open_shard=shards.open_for_write,
        max_shard_size=1e-6,
    )
    renamed = json.loads(json.dumps(ours["weight_map"]).replace("ours_", "m_"))
    assert renamed == theirs["weight_map"] and len(shards.files) == 5
    assert ours["metadata"] == theirs["metadata"]


def test_sharded_reader_opens_each_shard_at_most_twice(data):
    """Keras's own sharded reader reopens every shard of a group for each
    array it looks up (43 opens for these 5 shards); ours lists a group's
    arrays once and then reads them in order."""
    model = fit(keras_test_models.build_functional(hidden=64), data)
    shards = InMemoryShards()
    index = _sharded.write_sharded_weights(
        model,
        shard_name=lambda i: f"m_{i:05}.weights.h5",
        open_shard=shards.open_for_write,
        max_shard_size=1e-6,
    )
    index = _sharded.read_sharded_index(io.BytesIO(json.dumps(index).encode()))

    clone = keras.models.clone_model(model)
    clone.compile(optimizer="adam", loss="mse")
    clone.optimizer.build(clone.trainable_variables)
    _sharded.read_sharded_weights_into(clone, index, shards.open_for_read)

    assert set(shards.opens) == set(shards.files) and max(shards.opens.values()) <= 2
    for ours, theirs in zip(
        clone.weights + clone.optimizer.variables, model.weights + model.optimizer.variables, strict=True
    ):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs))


@pytest.mark.parametrize(
    "name",
    [
        "../x.weights.h5",
        "/abs/x.weights.h5",
        "s3://b/x.weights.h5",
        "a\\x.weights.h5",
        "..",
        "x.h5",
        "x\x00.weights.h5",
    ],
)
def test_shard_names_must_be_plain_file_names(name):
    with pytest.raises(ValueError, match="a shard must be a plain file name"):
        _sharded.check_shard_name(name)
    _sharded.check_shard_name("my model_3f9a2c1b_00000.weights.h5")  # spaces and all
