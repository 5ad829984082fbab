"""``KerasCheckpointDataset`` with ``format: orbax`` in one JAX process (the
two-process kill and resume is in test_processes.py): each checkpoint an
``.orbax`` folder, pruned, archived, verified and resumed bit for bit."""

from __future__ import annotations

import json
import logging

import keras
import numpy as np
import pytest
from kedro.io import DatasetError

from kedro_keras import KerasCheckpointDataset

EPOCHS, KILLED_AFTER = 4, 2


class Interrupted(Exception):
    pass


class StopAfter(keras.callbacks.Callback):
    """Ends fit with an exception after ``epochs`` epochs, as a kill would
    (no normal end, so the training is not finished)."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs:
            raise Interrupted


def fresh_model() -> keras.Model:
    keras.utils.set_random_seed(11)
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(24, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(2),
        ]
    )
    model.compile(optimizer="adam", loss="mse")
    return model


def data():
    rng = np.random.default_rng(4)
    return rng.random((48, 5), dtype=np.float32), rng.random((48, 2), dtype=np.float32)


def train(checkpoints: KerasCheckpointDataset, *, stop_after: int | None = None, resume: bool = False):
    handle = checkpoints.load()
    model = (handle.restore() if resume else None) or fresh_model()
    callbacks = [handle.callback()] + ([StopAfter(stop_after)] if stop_after else [])
    x, y = data()
    try:
        model.fit(
            x,
            y,
            epochs=EPOCHS,
            initial_epoch=handle.initial_epoch,
            batch_size=8,
            shuffle=False,
            verbose=0,
            callbacks=callbacks,
        )
    except Interrupted:
        return None
    return model


def state_of(model: keras.Model) -> list[np.ndarray]:
    return [np.asarray(v.value) for v in model.weights + model.optimizer.variables]


def entry(where: str, tmp_path, request, name: str = "ckpt") -> dict:
    if where == "local":
        return {"filepath": str(tmp_path / name)}
    bucket = request.getfixturevalue("s3_bucket")
    return {"filepath": f"{bucket}/{name}", "credentials": request.getfixturevalue("s3_credentials")}


@pytest.mark.parametrize("where", ["local", "s3"])
def test_an_interrupted_orbax_series_resumes_bit_for_bit(tmp_path, where, request, caplog):
    with caplog.at_level(logging.INFO, logger="kedro_keras"):
        uninterrupted = train(
            KerasCheckpointDataset(**entry(where, tmp_path, request, "whole"), format="orbax")
        )
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    # One line a checkpoint (the folder's own save line is DEBUG).
    assert len([m for m in said if m.startswith("Checkpoint e")]) == EPOCHS
    assert not [m for m in said if m.startswith("Saved weights")]

    checkpoints = KerasCheckpointDataset(**entry(where, tmp_path, request), format="orbax", keep_last=2)
    assert train(checkpoints, stop_after=KILLED_AFTER) is None
    assert checkpoints.versions() == ["e00002-s0000000", "e00001-s0000000"]
    resumed = train(checkpoints, resume=True)
    assert checkpoints.load().initial_epoch == 0  # a fresh handle; the resumed one started at 2
    for position, (got, want) in enumerate(zip(state_of(resumed), state_of(uninterrupted), strict=True)):
        np.testing.assert_array_equal(got, want, err_msg=f"array {position}")

    # Pruned to the last two, each an .orbax folder with its record.
    fs, folder = checkpoints._location.fs, checkpoints._folder
    fs.invalidate_cache(str(folder))
    names = sorted(path.rsplit("/", 1)[-1] for path in fs.ls(str(folder), detail=False))
    ours = [name for name in names if name.startswith("ckpt-e")]
    assert ours == [
        "ckpt-e00003-s0000000.json",
        "ckpt-e00003-s0000000.orbax",
        "ckpt-e00004-s0000000.json",
        "ckpt-e00004-s0000000.orbax",
    ]
    assert checkpoints.verify().endswith("bytes) against their SHA-256")
    preview = json.dumps(checkpoints.preview())
    assert "Orbax folder, written by 1 process(es)" in preview


def test_a_finished_orbax_series_is_archived_whole_and_the_next_training_starts_anew(tmp_path):
    checkpoints = KerasCheckpointDataset(filepath=str(tmp_path / "ckpt"), format="orbax", keep_last=1)
    trained = train(checkpoints)
    assert checkpoints.load().restore() is None  # finished: the next one starts anew
    archives = [p for p in (tmp_path / "ckpt").iterdir() if p.name.startswith("finished-")]
    assert len(archives) == 1
    archived = archives[0] / "ckpt-e00004-s0000000.orbax"
    assert (archived / "index.json").is_file()
    pinned = KerasCheckpointDataset(filepath=str(archives[0]), format="orbax").load()
    restored = pinned.restore(continue_finished=True)
    for got, want in zip(state_of(restored), state_of(trained), strict=True):
        np.testing.assert_array_equal(got, want)


def test_orbax_checkpoints_take_no_weights_only_or_unknown_format(tmp_path):
    with pytest.raises(DatasetError, match="remove save_weights_only"):
        KerasCheckpointDataset(filepath=str(tmp_path / "c"), format="orbax", save_weights_only=True)
    with pytest.raises(DatasetError, match="must be 'keras' or 'orbax'; got 'zarr'"):
        KerasCheckpointDataset(filepath=str(tmp_path / "c"), format="zarr")
