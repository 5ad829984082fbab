"""_keras_stores: how arrays leave the backend on a save."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from conftest import assert_same_predictions, fit
from kedro_keras import KerasModelDataset
from kedro_keras._keras.stores import arrays as _keras_stores


@pytest.mark.private_api
def test_arrays_larger_than_a_slice_leave_the_backend_a_slice_at_a_time(tmp_path, monkeypatch, data):
    # A 10 GB model's save went over its memory budget by exactly one whole
    # copy of its largest kernel; large arrays are written a slice of rows
    # at a time instead, into a file Keras itself reads back unchanged.
    monkeypatch.setattr(_keras_stores, "_SLICE_BYTES", 4096)
    taken: list[tuple[int, ...]] = []
    whole = _keras_stores.to_numpy_once

    def recording(value):
        array = whole(value)
        taken.append(array.shape)
        return array

    monkeypatch.setattr(_keras_stores, "to_numpy_once", recording)
    model = fit(keras.Sequential([keras.Input((4,)), keras.layers.Dense(1200), keras.layers.Dense(1)]), data)
    KerasModelDataset(filepath=str(tmp_path / "m.keras")).save(model)

    # The first kernel (4 x 1200 float32) and its two Adam slots go a row
    # (4,800 bytes, over the 4 KiB slice on its own) at a time; the
    # 1200-long bias and second kernel in 1,024 rows and 176.
    assert taken.count((1, 1200)) == 3 * 4
    assert taken.count((1024,)) == taken.count((176,)) == 3
    assert taken.count((1024, 1)) == taken.count((176, 1)) == 3
    assert max(int(np.prod(shape)) * 4 for shape in taken) == 4800
    assert "save_own_variables" not in vars(model.optimizer)  # handed back after the save
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert_same_predictions(model, loaded, data[0])
    for saved, read in zip(model.optimizer.variables, loaded.optimizer.variables, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(read), keras.ops.convert_to_numpy(saved))
