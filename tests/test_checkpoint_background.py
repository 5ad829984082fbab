"""``KerasCheckpointDataset(background=True)``: each checkpoint after the
first is written in a thread while training goes on; training waits only
while the state is copied."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from kedro.io import DatasetError

from kedro_keras import KerasCheckpointDataset, KerasModelDataset
from test_keras_checkpoint_dataset import EPOCHS, assert_same_state, compiled, train

WRITER_THREAD = "kedro-keras checkpoint"


def writes_in_flight() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith(WRITER_THREAD)]


def let_the_killed_runs_write_finish() -> None:
    """``train(killed=True)`` ends fit by an exception in this process, not
    by a kill: its last write goes on in its thread, as it would not after a
    real kill (that case is test_kill_9_during_a_background_write)."""
    for thread in writes_in_flight():
        thread.join()


@pytest.fixture(params=["local", "s3"])
def entry(request, tmp_path):
    if request.param == "local":
        return {"filepath": str(tmp_path / "checkpoints"), "background": True}
    return {
        "filepath": f"{request.getfixturevalue('s3_bucket')}/checkpoints",
        "credentials": request.getfixturevalue("s3_credentials"),
        "fs_args": {"skip_instance_cache": True},
        "background": True,
    }


class TestBackgroundCheckpoints:
    def test_a_resumed_training_ends_where_an_uninterrupted_one_does(self, entry, data, caplog):
        uninterrupted = compiled()
        train(uninterrupted, data)

        with caplog.at_level(logging.INFO, logger="kedro_keras"):
            train(compiled(), data, KerasCheckpointDataset(**entry).load(), epochs=3, killed=True)
            let_the_killed_runs_write_finish()
        written = [r for r in caplog.records if r.getMessage().startswith("Checkpoint e0000")]
        # The first in the training's thread (it becomes the copy's model), the others beside it.
        assert [r.threadName.startswith(WRITER_THREAD) for r in written] == [False, True, True]

        again = KerasCheckpointDataset(**entry).load()
        model = again.restore()
        assert again.restored == "e00003-s0000000"
        history = train(model, data, again, initial_epoch=again.initial_epoch)

        assert history.epoch == [3, 4]
        assert_same_state(model, uninterrupted)  # bit for bit
        # The last checkpoint is complete when fit returns: no write left in flight.
        assert writes_in_flight() == []
        assert again.versions()[0] == f"e{EPOCHS:05d}-s0000000"
        assert_same_state(
            KerasCheckpointDataset(**entry).load().restore(continue_finished=True), uninterrupted
        )

    def test_a_failed_background_write_is_raised_at_the_next_checkpoint(self, tmp_path, data, monkeypatch):
        failed = []
        real_save = KerasModelDataset._save_here

        def disk_full_in_the_writer(self, model):
            if threading.current_thread().name.startswith(WRITER_THREAD):
                failed.append(threading.current_thread().name)
                raise OSError(28, "No space left on device")
            return real_save(self, model)

        monkeypatch.setattr(KerasModelDataset, "_save_here", disk_full_in_the_writer)
        dataset = KerasCheckpointDataset(filepath=str(tmp_path / "c"), background=True)
        with pytest.raises(DatasetError) as raised:
            train(compiled(), data, dataset.load())
        assert failed == [f"{WRITER_THREAD} e00002-s0000000"]  # the fault was reached, once
        message = str(raised.value)
        assert "Could not write checkpoint e00002-s0000000" in message and "in the background" in message
        assert "No space left on device" in message and str(tmp_path / "c") in message
        assert dataset.versions() == ["e00001-s0000000"]  # the one before is unchanged

    def test_a_failed_last_write_is_raised_when_fit_returns(self, tmp_path, data, monkeypatch):
        real_save = KerasModelDataset._save_here
        reached = []

        def fails_on_the_last(self, model):
            if threading.current_thread().name.endswith(f"e{EPOCHS:05d}-s0000000"):
                reached.append(True)
                raise OSError(5, "Input/output error")
            return real_save(self, model)

        monkeypatch.setattr(KerasModelDataset, "_save_here", fails_on_the_last)
        dataset = KerasCheckpointDataset(filepath=str(tmp_path / "c"), background=True)
        with pytest.raises(DatasetError, match=f"checkpoint e{EPOCHS:05d}-s0000000 .* Input/output error"):
            train(compiled(), data, dataset.load())
        assert reached == [True]
        assert dataset.versions()[0] == f"e{EPOCHS - 1:05d}-s0000000"
        assert not (tmp_path / "c" / "ckpt-finished.json").exists()  # not finished: it resumes

    def test_weights_only_checkpoints_stay_in_the_foreground_and_say_so(self, tmp_path, data, caplog):
        dataset = KerasCheckpointDataset(
            filepath=str(tmp_path / "c"), background=True, save_weights_only=True
        )
        with caplog.at_level(logging.INFO, logger="kedro_keras"):
            train(compiled(), data, dataset.load(), epochs=2)
        assert "written in the foreground: background writes are for full-model checkpoints" in caplog.text
        written = [r for r in caplog.records if r.getMessage().startswith("Checkpoint e0000")]
        assert len(written) == 2 and not any(r.threadName.startswith(WRITER_THREAD) for r in written)

    def test_background_must_be_true_or_false(self, tmp_path):
        with pytest.raises(DatasetError, match="background must be true or false; got 'yes'"):
            KerasCheckpointDataset(filepath=str(tmp_path / "c"), background="yes")


KILLED_DURING_A_WRITE = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import keras, numpy as np
    from kedro_keras import KerasCheckpointDataset

    folder = Path(sys.argv[1])
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((512,)), keras.layers.Dense(2048), keras.layers.Dense(512)])
    model.compile(optimizer="adam", loss="mse")
    checkpoints = KerasCheckpointDataset(filepath=str(folder), background=True).load()

    class KillDuringTheThirdWrite(keras.callbacks.Callback):
        # After the checkpoint callback: its write of epoch 3 has started.
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == 3:
                while not list(folder.glob(".ckpt-e00003-s0000000.keras.*.tmp")):
                    time.sleep(0.001)
                print("KILLED MID-WRITE", flush=True)
                os.kill(os.getpid(), 9)

    x = np.random.default_rng(0).random((64, 512), dtype=np.float32)
    model.fit(x, x, epochs=5, batch_size=32, verbose=0,
              callbacks=[checkpoints.callback(), KillDuringTheThirdWrite()])
    """
)


def test_kill_9_during_a_background_write_leaves_the_previous_checkpoint_restorable(tmp_path):
    folder = tmp_path / "c"
    result = subprocess.run(
        [sys.executable, "-c", KILLED_DURING_A_WRITE, str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
    )
    assert result.returncode == -9, result.stdout[-2000:] + result.stderr[-3000:]
    assert "KILLED MID-WRITE" in result.stdout  # the kill came while epoch 3 was being written
    assert list(folder.glob(".ckpt-e00003-s0000000.keras.*.tmp"))  # ... and left it unpublished
    checkpoints = KerasCheckpointDataset(filepath=str(folder)).load()
    assert checkpoints.versions() == ["e00002-s0000000", "e00001-s0000000"]
    model = checkpoints.restore()
    assert checkpoints.restored == "e00002-s0000000" and int(model.optimizer.iterations) == 2 * 2
    assert Path(folder / "ckpt-e00002-s0000000.keras").stat().st_size > 4 * 2**20
