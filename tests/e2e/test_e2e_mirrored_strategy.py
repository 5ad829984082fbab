"""TensorFlow's tf.distribute.MirroredStrategy: one process spread over its
devices (two logical CPUs here), the one kind of tf.distribute training
Keras 3 runs. Variables are mirrored, one copy per device; the datasets
write one file, once, and it loads back exactly in a plain process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
from e2e_support import subprocess_env
from kedro.io.core import Version

from kedro_keras import KerasCheckpointDataset, KerasModelDataset

TRAIN_MIRRORED = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from kedro.io.core import Version
    from kedro_keras import KerasCheckpointDataset, KerasModelDataset

    folder = sys.argv[1]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        keras.utils.set_random_seed(7)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(4)])
        model.compile(optimizer="adam", loss="mse")
    print("REPLICAS", strategy.num_replicas_in_sync, type(model.weights[0].value).__name__, flush=True)
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 8), dtype=np.float32), rng.random((64, 4), dtype=np.float32)
    checkpoints = KerasCheckpointDataset(filepath=f"{folder}/checkpoints").load()
    model.fit(x, y, epochs=3, batch_size=16, shuffle=False, verbose=0, callbacks=[checkpoints.callback()])
    KerasModelDataset(filepath=f"{folder}/model.keras", version=Version(None, None)).save(model)
    np.savez(f"{folder}/trained.npz", *[np.asarray(v) for v in model.weights + model.optimizer.variables])
    """
)


def test_a_mirrored_strategy_training_saves_once_and_loads_exactly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", TRAIN_MIRRORED, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=subprocess_env(),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "REPLICAS 2 " in result.stdout  # two devices, the variables mirrored on both
    with np.load(tmp_path / "trained.npz") as arrays:
        trained = [arrays[f"arr_{index}"] for index in range(len(arrays.files))]

    entry = KerasModelDataset(filepath=str(tmp_path / "model.keras"), version=Version(None, None))
    assert len(entry.stored_versions()) == 1
    loaded = entry.load()
    checkpoints = KerasCheckpointDataset(filepath=str(tmp_path / "checkpoints"))
    assert checkpoints.versions()[0] == "e00003-s0000000"
    restored = checkpoints.load().restore(continue_finished=True)
    for model in (loaded, restored):
        got = [np.asarray(v) for v in model.weights + model.optimizer.variables]
        assert len(got) == len(trained) > 10
        for index, (one, other) in enumerate(zip(got, trained, strict=True)):
            np.testing.assert_array_equal(one, other, err_msg=f"array {index}")
