"""KerasCheckpointDataset: checkpoints written during fit, restored to
continue a training exactly where it stopped."""

from __future__ import annotations

import json
import logging
import pickle

import keras
import numpy as np
import pytest
from kedro.io import DataCatalog, DatasetError

from kedro_keras import KerasCheckpointDataset

EPOCHS = 5


def build_with_dropout(hidden=8):
    """Dropout (random state) and BatchNormalization (running statistics).
    The Dropout has a seed: under PyTorch an unseeded one draws from torch's
    global generator, which no checkpoint holds (see the dataset's docs)."""
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.1, seed=3),
            keras.layers.Dense(1),
        ],
        name="with_dropout",
    )


def compiled(builder=build_with_dropout, **kwargs):
    """A model compiled with Adam (optimizer state), from a fixed seed."""
    keras.utils.set_random_seed(7)
    model = builder(**kwargs)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", metrics=["mae"])
    return model


class Killed(Exception):
    """The process "dies" after fit's last epoch, before fit ends normally."""


class KillAtTheEnd(keras.callbacks.Callback):
    # Before the checkpoint callback in fit's list: its on_train_end, which
    # marks the training finished, never runs, as in a process killed then.
    def on_train_end(self, logs=None):
        raise Killed


def train(model, data, checkpoints=None, *, epochs=EPOCHS, initial_epoch=0, killed=False, **fit_args):
    """fit, with the entry's callback; ``killed``: the run dies once its
    ``epochs`` are done, before fit ends (the checkpoints stay resumable)."""
    x, y = data
    callbacks = [checkpoints.callback()] if checkpoints is not None else []
    if killed:
        callbacks.insert(0, KillAtTheEnd())
    try:
        return model.fit(
            x,
            y,
            epochs=epochs,
            initial_epoch=initial_epoch,
            batch_size=16,
            shuffle=False,
            verbose=0,
            callbacks=callbacks,
            **fit_args,
        )
    except Killed:
        assert killed
        return None


def state_of(model):
    """Every array that decides how training goes on: the weights (with
    BatchNormalization's moving statistics and Dropout's seed state) and the
    optimizer's variables (iterations, Adam's moments), in Keras's order
    (names differ between models built in one process)."""
    return [np.asarray(v) for v in model.variables] + [np.asarray(v) for v in model.optimizer.variables]


def assert_same_state(a, b):
    left, right = state_of(a), state_of(b)
    assert len(left) == len(right) and len(left) > 20
    for index, (one, other) in enumerate(zip(left, right, strict=True)):
        np.testing.assert_array_equal(one, other, err_msg=f"array {index}")


@pytest.fixture(params=["local", "memory", "s3"])
def folder(request, tmp_path):
    """Where the checkpoints go, with the credentials to get there: the same
    code on local disk, fsspec's memory filesystem and the loopback S3 server."""
    if request.param == "local":
        return {"filepath": str(tmp_path / "checkpoints")}
    if request.param == "memory":
        import uuid

        return {"filepath": f"memory://checkpoints-{uuid.uuid4().hex}"}
    bucket = request.getfixturevalue("s3_bucket")
    return {
        "filepath": f"{bucket}/checkpoints",
        "credentials": request.getfixturevalue("s3_credentials"),
        "fs_args": {"skip_instance_cache": True},
    }


class TestKerasCheckpointDataset:
    @pytest.mark.parametrize("weights_only", [False, True], ids=["whole-model", "weights-only"])
    def test_a_resumed_training_ends_where_an_uninterrupted_one_does(self, folder, data, weights_only):
        uninterrupted = compiled()
        train(uninterrupted, data)

        entry = {**folder, "save_weights_only": weights_only}
        first = KerasCheckpointDataset(**entry).load()
        assert first.restore(compiled() if weights_only else None) is None and first.initial_epoch == 0
        train(compiled(), data, first, epochs=2, killed=True)  # killed after epoch 2

        again = KerasCheckpointDataset(**entry).load()
        model = again.restore(compiled() if weights_only else None)
        assert again.initial_epoch == 2 and again.restored == "e00002-s0000000"
        assert int(model.optimizer.iterations) == 2 * 4  # 64 samples in batches of 16
        history = train(model, data, again, initial_epoch=again.initial_epoch)

        assert history.epoch == [2, 3, 4]  # only the remaining epochs ran
        assert_same_state(model, uninterrupted)  # bit for bit
        assert again.versions()[0] == f"e{EPOCHS:05d}-s0000000"

    def test_keep_last_prunes_but_the_best_by_monitor_stays(self, tmp_path, data):
        dataset = KerasCheckpointDataset(filepath=str(tmp_path / "c"), keep_last=2, monitor="val_loss")
        callback = dataset.load().callback()
        model = compiled()
        train(model, data, epochs=1)
        callback.set_model(model)
        for epoch, val_loss in enumerate([0.9, 0.2, 0.5, 0.7, 0.6]):
            callback.on_epoch_begin(epoch)
            callback.on_epoch_end(epoch, {"loss": 1.0, "val_loss": val_loss})

        assert dataset.versions() == ["e00005-s0000000", "e00004-s0000000", "e00002-s0000000"]
        best = dataset.load().best()
        assert best is not None and isinstance(best, keras.Model)
        assert sorted(p.name for p in (tmp_path / "c").iterdir()) == sorted(
            f"ckpt-{v}{suffix}" for v in dataset.versions() for suffix in (".json", ".keras")
        )

    def test_a_checkpoint_half_removed_by_a_kill_is_removed_at_the_next_pruning(self, tmp_path, data):
        folder = tmp_path / "c"
        dataset = KerasCheckpointDataset(filepath=str(folder), keep_last=2)
        train(compiled(), data, dataset.load(), epochs=3, killed=True)
        assert dataset.versions() == ["e00003-s0000000", "e00002-s0000000"]
        # Killed while pruning epoch 1: its record was gone, its model not yet.
        orphan = folder / "ckpt-e00001-s0000000.keras"
        orphan.write_bytes((folder / "ckpt-e00002-s0000000.keras").read_bytes())
        # and a write killed after its model, newer than every record: left for the run that redoes it.
        unfinished = folder / "ckpt-e00009-s0000000.keras"
        unfinished.write_bytes(orphan.read_bytes())

        again = dataset.load()
        model = again.restore()
        train(model, data, again, initial_epoch=again.initial_epoch, epochs=4, killed=True)

        assert dataset.versions() == ["e00004-s0000000", "e00003-s0000000"]
        assert not orphan.exists() and unfinished.exists()
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            [f"ckpt-{v}{suffix}" for v in dataset.versions() for suffix in (".json", ".keras")]
            + [unfinished.name]
        )

    def test_save_best_only_writes_only_when_the_metric_improves(self, tmp_path, data):
        dataset = KerasCheckpointDataset(
            filepath=str(tmp_path / "c"), save_best_only=True, monitor="val_mae", keep_last=None
        )
        callback = dataset.load().callback()
        model = compiled()
        train(model, data, epochs=1)
        callback.set_model(model)
        for epoch, value in enumerate([0.5, 0.6, 0.4, 0.4, 0.1]):
            callback.on_epoch_begin(epoch)
            callback.on_epoch_end(epoch, {"loss": 1.0, "val_mae": value})
        assert dataset.versions() == ["e00005-s0000000", "e00003-s0000000", "e00001-s0000000"]

    def test_mode_max_and_auto_prefer_larger_accuracy(self, tmp_path, data):
        dataset = KerasCheckpointDataset(
            filepath=str(tmp_path / "c"), save_best_only=True, monitor="val_accuracy"
        )
        callback = dataset.load().callback()
        model = compiled()
        model.compile(optimizer="adam", loss="mse", metrics=["accuracy"])  # Accuracy's direction: up
        train(model, data, epochs=1)
        callback.set_model(model)
        for epoch, value in enumerate([0.5, 0.4, 0.8]):
            callback.on_epoch_end(epoch, {"val_accuracy": value})
        assert dataset.versions() == ["e00003-s0000000", "e00001-s0000000"]

    def test_the_best_value_carries_over_a_resume(self, tmp_path, data):
        entry = {"filepath": str(tmp_path / "c"), "save_best_only": True, "monitor": "val_loss"}
        model = compiled()
        train(model, data, epochs=1)
        callback = KerasCheckpointDataset(**entry).load().callback()
        callback.set_model(model)
        callback.on_epoch_end(0, {"val_loss": 0.3})

        resumed = KerasCheckpointDataset(**entry).load()
        resumed.restore()
        assert resumed.best_value == pytest.approx(0.3)
        callback = resumed.callback()
        callback.set_model(model)
        callback.on_epoch_end(1, {"val_loss": 0.4})  # worse than before the resume: not written
        assert KerasCheckpointDataset(**entry).versions() == ["e00001-s0000000"]

    def test_save_freq_in_batches_names_the_position_within_the_epoch(self, tmp_path, data):
        dataset = KerasCheckpointDataset(filepath=str(tmp_path / "c"), save_freq=3, keep_last=None)
        checkpoints = dataset.load()
        train(compiled(), data, checkpoints, epochs=2, killed=True)  # 4 batches an epoch: after batches 3, 6
        assert dataset.versions() == ["e00001-s0000002", "e00000-s0000003"]
        again = dataset.load()
        model = again.restore()
        assert again.initial_epoch == 1 and int(model.optimizer.iterations) == 6

    def test_a_checkpoint_whose_write_was_killed_is_never_restored(self, tmp_path, data):
        folder = tmp_path / "c"
        dataset = KerasCheckpointDataset(filepath=str(folder))
        train(compiled(), data, dataset.load(), epochs=2, killed=True)
        # Killed after the model file was published but before its record:
        (folder / "ckpt-e00003-s0000000.keras").write_bytes(
            (folder / "ckpt-e00002-s0000000.keras").read_bytes()
        )
        # and one killed while writing the model itself (our temporary file):
        (folder / ".ckpt-e00004-s0000000.keras.0123.tmp").write_bytes(b"PK\x03\x04 half")

        assert dataset.versions() == ["e00002-s0000000", "e00001-s0000000"]
        checkpoints = dataset.load()
        checkpoints.restore()
        assert checkpoints.restored == "e00002-s0000000"

    def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before_with_a_warning(
        self, tmp_path, data, caplog
    ):
        folder = tmp_path / "c"
        dataset = KerasCheckpointDataset(filepath=str(folder))
        train(compiled(), data, dataset.load(), epochs=2, killed=True)
        newest = folder / "ckpt-e00002-s0000000.keras"
        damaged = bytearray(newest.read_bytes())
        middle = len(damaged) // 2
        damaged[middle : middle + 64] = bytes(byte ^ 0xFF for byte in damaged[middle : middle + 64])
        newest.write_bytes(bytes(damaged))

        checkpoints = dataset.load()
        with caplog.at_level(logging.WARNING, logger="kedro_keras"):
            model = checkpoints.restore()
        assert checkpoints.restored == "e00001-s0000000" and checkpoints.initial_epoch == 1
        assert int(model.optimizer.iterations) == 4
        skipped = [r.getMessage() for r in caplog.records if "Skipping checkpoint e00002" in r.getMessage()]
        assert skipped and "ckpt-e00002-s0000000.keras" in skipped[0]

    def test_every_checkpoint_unreadable_is_an_error_not_a_fresh_start(self, tmp_path, data):
        folder = tmp_path / "c"
        dataset = KerasCheckpointDataset(filepath=str(folder))
        train(compiled(), data, dataset.load(), epochs=1, killed=True)
        (folder / "ckpt-e00001-s0000000.keras").write_bytes(b"not a model")
        with pytest.raises(DatasetError, match=r"None of the 1 checkpoint\(s\) .* could be read"):
            dataset.load().restore()

    def test_remove_when_done_clears_the_checkpoints_after_a_normal_end(self, tmp_path, data):
        dataset = KerasCheckpointDataset(filepath=str(tmp_path / "c"), remove_when_done=True)
        checkpoints = dataset.load()
        seen = []

        class Watch(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                seen.append(len(dataset.versions()))

        x, y = data
        model = compiled()
        model.fit(x, y, epochs=2, verbose=0, callbacks=[checkpoints.callback(), Watch()])
        assert seen == [1, 2] and dataset.versions() == []


class TestKerasCheckpointSemantics:
    """Where Keras's ModelCheckpoint is right, ours does the same (#29)."""

    def test_the_direction_is_the_models_metric_and_an_unknown_one_asks_for_a_mode(self, tmp_path, data):
        model = compiled()  # metrics: mae (down)
        train(model, data, epochs=1)
        for monitor, values, kept in (
            ("val_mae", [0.5, 0.7, 0.2], ["e00003-s0000000", "e00001-s0000000"]),
            ("val_loss", [0.5, 0.7, 0.2], ["e00003-s0000000", "e00001-s0000000"]),
        ):
            dataset = KerasCheckpointDataset(
                filepath=str(tmp_path / monitor), save_best_only=True, monitor=monitor
            )
            callback = dataset.load().callback()
            callback.set_model(model)
            for epoch, value in enumerate(values):
                callback.on_epoch_end(epoch, {monitor: value})
            assert dataset.versions() == kept, monitor

        # "val_precision_at_k" names no metric of the model: Keras's ModelCheckpoint raises too.
        dataset = KerasCheckpointDataset(filepath=str(tmp_path / "p"), monitor="val_precision_at_k")
        callback = dataset.load().callback()
        callback.set_model(model)
        with pytest.raises(DatasetError, match="Set mode: max or mode: min"):
            callback.on_epoch_end(0, {"val_precision_at_k": 0.3})
        dataset = KerasCheckpointDataset(
            filepath=str(tmp_path / "m"), monitor="val_precision_at_k", mode="max"
        )
        callback = dataset.load().callback()
        callback.set_model(model)
        for epoch, value in enumerate([0.3, 0.9, 0.5]):
            callback.on_epoch_end(epoch, {"val_precision_at_k": value})
        assert dataset.load().best() is not None
        assert dataset._best_version(dataset.versions()) == "e00002-s0000000"

    def test_initial_value_threshold_must_be_beaten(self, tmp_path, data):
        dataset = KerasCheckpointDataset(
            filepath=str(tmp_path / "c"), save_best_only=True, monitor="val_loss", initial_value_threshold=0.3
        )
        model = compiled()
        train(model, data, epochs=1)
        callback = dataset.load().callback()
        callback.set_model(model)
        for epoch, value in enumerate([0.5, 0.31, 0.2, 0.25]):
            callback.on_epoch_end(epoch, {"val_loss": value})
        assert dataset.versions() == ["e00003-s0000000"]
        with pytest.raises(DatasetError, match="initial_value_threshold must be a number"):
            KerasCheckpointDataset(
                filepath=str(tmp_path / "d"), monitor="val_loss", initial_value_threshold="low"
            )
        with pytest.raises(DatasetError, match="set monitor"):
            KerasCheckpointDataset(filepath=str(tmp_path / "d"), initial_value_threshold=0.3)

    def test_every_n_epochs(self, tmp_path, data):
        dataset = KerasCheckpointDataset(filepath=str(tmp_path / "c"), every_n_epochs=2, keep_last=None)
        train(compiled(), data, dataset.load(), epochs=5)
        assert dataset.versions() == ["e00004-s0000000", "e00002-s0000000"]
        with pytest.raises(DatasetError, match="every_n_epochs .* is for save_freq: epoch"):
            KerasCheckpointDataset(filepath=str(tmp_path / "d"), every_n_epochs=2, save_freq=3)
        with pytest.raises(DatasetError, match="every_n_epochs must be a whole number"):
            KerasCheckpointDataset(filepath=str(tmp_path / "d"), every_n_epochs=0)

    def test_batches_are_counted_as_batches_under_steps_per_execution(self, tmp_path, data):
        # As Keras calls a callback with steps_per_execution 3: once per 3 batches, with the last's index.
        dataset = KerasCheckpointDataset(filepath=str(tmp_path / "calls"), save_freq=4, keep_last=None)
        model = compiled()
        train(model, data, epochs=1)
        callback = dataset.load().callback()
        callback.set_model(model)
        for epoch in range(2):
            callback.on_epoch_begin(epoch)
            for batch in (2, 5, 8):  # 9 batches an epoch
                callback.on_train_batch_end(batch, {"loss": 1.0})
            callback.on_epoch_end(epoch, {"loss": 1.0})
        # Every 4 batches, counted 3 a call: at batch 6; then 3 left over + 3 of the next epoch; then 6 more.
        assert dataset.versions() == ["e00001-s0000009", "e00001-s0000003", "e00000-s0000006"]

        if keras.backend.backend() != "torch":  # PyTorch runs one step per execution only
            dataset = KerasCheckpointDataset(filepath=str(tmp_path / "fit"), save_freq=2, keep_last=None)
            model.compile(optimizer="adam", loss="mse", steps_per_execution=2)
            train(model, data, dataset.load(), epochs=1, killed=True)  # 4 batches: calls after 2 and 4
            assert dataset.versions() == ["e00000-s0000004", "e00000-s0000002"]

    def test_save_best_only_with_a_number_of_batches_judges_the_batch_logs(self, tmp_path, data, caplog):
        dataset = KerasCheckpointDataset(
            filepath=str(tmp_path / "c"), save_freq=1, save_best_only=True, monitor="loss", keep_last=None
        )
        model = compiled()
        train(model, data, epochs=1)
        callback = dataset.load().callback()
        callback.set_model(model)
        callback.on_epoch_begin(0)
        for batch, loss in enumerate([0.9, 0.95, 0.5, 0.6]):
            callback.on_train_batch_end(batch, {"loss": loss})
        assert dataset.versions() == ["e00000-s0000003", "e00000-s0000001"]

        # A val_ metric is not in a batch's logs: every checkpoint is written, with one warning (as Keras).
        dataset = KerasCheckpointDataset(filepath=str(tmp_path / "v"), save_freq=2, save_best_only=True)
        with caplog.at_level(logging.WARNING, logger="kedro_keras"):
            train(compiled(), data, dataset.load(), epochs=1, validation_split=0.25, killed=True)
        assert len(dataset.versions()) >= 1
        warned = [
            r.getMessage() for r in caplog.records if "save_best_only, but 'val_loss'" in r.getMessage()
        ]
        assert len(warned) == 1, warned

    def test_one_log_line_per_checkpoint(self, tmp_path, data, caplog):
        dataset = KerasCheckpointDataset(filepath=str(tmp_path / "c"), keep_last=1)
        with caplog.at_level(logging.INFO, logger="kedro_keras"):
            train(compiled(), data, dataset.load(), epochs=3, killed=True)
        lines = [r.getMessage() for r in caplog.records if r.name.startswith("kedro_keras")]
        assert len(lines) == 3, lines
        assert (
            lines[1].startswith("Checkpoint e00002-s0000000 written to ")
            and "(e00001-s0000000 pruned)" in lines[1]
        )

    def test_epoch_checkpoints_leave_every_batch_alone(self, tmp_path, data):
        """A callback with a batch hook at all is handed every batch's logs
        in step (Keras then cannot dispatch batches asynchronously where the
        backend allows it): checkpoints at epoch ends have none; those
        counted in batches have one, and still write."""
        base = keras.callbacks.Callback.on_train_batch_end
        by_epoch = KerasCheckpointDataset(filepath=str(tmp_path / "e")).load().callback()
        by_batches = KerasCheckpointDataset(filepath=str(tmp_path / "b"), save_freq=2).load()
        assert type(by_epoch).on_train_batch_end is base
        assert type(by_batches.callback()).on_train_batch_end is not base
        train(compiled(), data, by_batches, epochs=1, killed=True)
        assert by_batches.versions(), "no checkpoint counted in batches was written"


class TestFinishedTrainings:
    """A training whose fit ended normally is finished: the next run does not
    resume it by accident (issue #29), unless asked to."""

    def test_the_next_run_starts_anew_and_keeps_the_finished_checkpoints_aside(self, tmp_path, data, caplog):
        folder = tmp_path / "c"
        first = compiled()
        train(first, data, KerasCheckpointDataset(filepath=str(folder), keep_last=2).load())
        finished = sorted(p.name for p in folder.iterdir())
        assert "ckpt-finished.json" in finished
        shown = dict(KerasCheckpointDataset(filepath=str(folder)).preview()["data"])
        assert shown["training"].startswith(f"finished: after checkpoint e{EPOCHS:05d}-s0000000 at ")

        checkpoints = KerasCheckpointDataset(filepath=str(folder), keep_last=2).load()
        with caplog.at_level(logging.WARNING, logger="kedro_keras"):
            assert checkpoints.restore() is None
        assert checkpoints.initial_epoch == 0 and checkpoints.restored is None
        (message,) = [r.getMessage() for r in caplog.records if "starts anew" in r.getMessage()]
        assert f"it finished after checkpoint e{EPOCHS:05d}-s0000000" in message
        (kept,) = folder.glob("finished-*")
        assert sorted(p.name for p in kept.iterdir()) == finished  # nothing lost
        assert checkpoints.versions() == []

        second = compiled()  # the same seed: the same training again
        history = train(second, data, checkpoints)
        assert history.epoch == list(range(EPOCHS))
        assert_same_state(second, first)
        assert checkpoints.versions()[0] == f"e{EPOCHS:05d}-s0000000"

    def test_continue_finished_goes_on_from_the_newest_checkpoint(self, tmp_path, data):
        entry = {"filepath": str(tmp_path / "c"), "keep_last": None}
        train(compiled(), data, KerasCheckpointDataset(**entry).load())

        checkpoints = KerasCheckpointDataset(**entry).load()
        model = checkpoints.restore(continue_finished=True)
        assert checkpoints.restored == f"e{EPOCHS:05d}-s0000000" and checkpoints.initial_epoch == EPOCHS
        history = train(model, data, checkpoints, epochs=EPOCHS + 2, initial_epoch=checkpoints.initial_epoch)
        assert history.epoch == [EPOCHS, EPOCHS + 1]
        assert len(checkpoints.versions()) == EPOCHS + 2  # one series, continued
        assert not list((tmp_path / "c").glob("finished-*"))

    def test_a_callback_without_restore_makes_way_too(self, tmp_path, data):
        folder = tmp_path / "c"
        train(compiled(), data, KerasCheckpointDataset(filepath=str(folder)).load(), epochs=2)
        train(compiled(), data, KerasCheckpointDataset(filepath=str(folder)).load(), epochs=1)
        assert KerasCheckpointDataset(filepath=str(folder)).versions() == ["e00001-s0000000"]
        (kept,) = folder.glob("finished-*")
        assert {p.name for p in kept.iterdir()} >= {"ckpt-e00002-s0000000.keras", "ckpt-finished.json"}

    def test_a_fit_that_did_not_restore_an_interrupted_series_sets_it_aside(self, tmp_path, data, caplog):
        """Without restore(), a new fit's e00001, e00002 were older by name than
        the killed series' e00005 and pruned as soon as written: the new
        training kept no checkpoint at all. The killed series is set aside,
        kept, with a warning saying how to resume it instead."""
        folder = tmp_path / "c"
        entry = {"filepath": str(folder), "keep_last": 3}
        train(compiled(), data, KerasCheckpointDataset(**entry).load(), epochs=5, killed=True)
        killed = sorted(p.name for p in folder.iterdir())
        with caplog.at_level(logging.WARNING, logger="kedro_keras"):
            train(compiled(), data, KerasCheckpointDataset(**entry).load(), epochs=2, killed=True)
        assert KerasCheckpointDataset(**entry).versions() == ["e00002-s0000000", "e00001-s0000000"]
        (aside,) = folder.glob("interrupted-*")
        assert sorted(p.name for p in aside.iterdir()) == killed  # nothing lost
        (warning,) = [r.getMessage() for r in caplog.records if "did not restore" in r.getMessage()]
        assert "newest checkpoint e00005-s0000000" in warning and "checkpoints.restore()" in warning

    def test_a_fit_after_restore_goes_on_with_the_series(self, tmp_path, data):
        folder = tmp_path / "c"
        entry = {"filepath": str(folder), "keep_last": None}
        train(compiled(), data, KerasCheckpointDataset(**entry).load(), epochs=2, killed=True)
        checkpoints = KerasCheckpointDataset(**entry).load()
        model = checkpoints.restore()
        train(model, data, checkpoints, epochs=3, initial_epoch=checkpoints.initial_epoch, killed=True)
        assert len(checkpoints.versions()) == 3 and not list(folder.glob("interrupted-*"))

    def test_a_marker_that_is_not_ours_counts_as_finished_with_a_warning(self, tmp_path, data, caplog):
        folder = tmp_path / "c"
        train(compiled(), data, KerasCheckpointDataset(filepath=str(folder)).load(), epochs=1, killed=True)
        (folder / "ckpt-finished.json").write_text('{"after": "../../x\n"}')
        checkpoints = KerasCheckpointDataset(filepath=str(folder)).load()
        with caplog.at_level(logging.WARNING, logger="kedro_keras"):
            assert checkpoints.restore() is None
        assert any("not a marker this package writes" in r.getMessage() for r in caplog.records)
        assert "../../x" not in caplog.text  # what the file says is not echoed

    def test_a_killed_run_writes_no_mark_and_resumes(self, tmp_path, data):
        folder = tmp_path / "c"
        train(compiled(), data, KerasCheckpointDataset(filepath=str(folder)).load(), epochs=2, killed=True)
        assert not (folder / "ckpt-finished.json").exists()
        checkpoints = KerasCheckpointDataset(filepath=str(folder)).load()
        assert checkpoints.restore() is not None and checkpoints.initial_epoch == 2


class TestFinishedTrainingsEdges:
    """From the review of #29's change: where 'finished' must not apply."""

    def test_a_second_fit_in_the_same_node_goes_on_with_the_series(self, tmp_path, data):
        folder = tmp_path / "c"
        checkpoints = KerasCheckpointDataset(filepath=str(folder), keep_last=None).load()
        model = compiled()
        train(model, data, checkpoints, epochs=2)  # the head
        assert (folder / "ckpt-finished.json").exists()
        train(model, data, checkpoints, epochs=4, initial_epoch=2, killed=True)  # fine-tuning, killed
        assert not list(folder.glob("finished-*"))  # phase 1's checkpoints were not moved away
        assert checkpoints.versions()[0] == "e00004-s0000000" and len(checkpoints.versions()) == 4
        assert not (folder / "ckpt-finished.json").exists()  # so the next run resumes the fine-tuning
        again = KerasCheckpointDataset(filepath=str(folder)).load()
        assert again.restore() is not None and again.initial_epoch == 4

    def test_a_pinned_checkpoint_of_a_finished_training_is_restored_and_goes_on(self, tmp_path, data):
        folder = tmp_path / "c"
        train(compiled(), data, KerasCheckpointDataset(filepath=str(folder), keep_last=None).load())
        pinned = KerasCheckpointDataset(filepath=str(folder), load_version="e00003-s0000000").load()
        model = pinned.restore()
        assert pinned.restored == "e00003-s0000000" and pinned.initial_epoch == 3
        train(model, data, pinned, initial_epoch=3, killed=True)
        assert not list(folder.glob("finished-*"))  # the callback did not move the pinned series away
        assert KerasCheckpointDataset(filepath=str(folder)).versions()[0] == f"e{EPOCHS:05d}-s0000000"

    def test_a_nan_metric_is_no_improvement_with_save_best_only(self, tmp_path, data):
        dataset = KerasCheckpointDataset(
            filepath=str(tmp_path / "c"), save_best_only=True, monitor="val_loss"
        )
        model = compiled()
        train(model, data, epochs=1)
        callback = dataset.load().callback()
        callback.set_model(model)
        for epoch, value in enumerate([0.5, float("nan"), 0.4]):
            callback.on_epoch_end(epoch, {"val_loss": value})
        assert dataset.versions() == ["e00003-s0000000", "e00001-s0000000"]  # not the diverged epoch 2


class TestKerasCheckpointDatasetMistakes:
    def test_a_pinned_checkpoint_that_is_not_there_lists_what_is(self, tmp_path, data):
        empty = KerasCheckpointDataset(filepath=str(tmp_path / "none"), load_version="e00003-s0000000")
        with pytest.raises(DatasetError, match=r"Checkpoint 'e00003-s0000000' is not in .*none.*: none\."):
            empty.load().restore()
        dataset = KerasCheckpointDataset(filepath=str(tmp_path / "c"))
        train(compiled(), data, dataset.load(), epochs=2)
        pinned = KerasCheckpointDataset(filepath=str(tmp_path / "c"), load_version="e00009-s0000000")
        with pytest.raises(DatasetError, match="Checkpoints there: e00002-s0000000, e00001-s0000000"):
            pinned.load().restore()

    def test_a_malformed_version_is_refused_when_the_catalog_is_built(self, tmp_path):
        with pytest.raises(DatasetError, match="not a checkpoint version"):
            KerasCheckpointDataset(filepath=str(tmp_path / "c"), load_version="3")

    def test_weights_of_another_architecture_say_what_differs(self, tmp_path, data):
        entry = {"filepath": str(tmp_path / "c"), "save_weights_only": True}
        train(compiled(hidden=8), data, KerasCheckpointDataset(**entry).load(), epochs=1, killed=True)
        with pytest.raises(DatasetError) as raised:
            KerasCheckpointDataset(**entry).load().restore(compiled(hidden=5))
        message = str(raised.value)
        # Our check names the group; with Keras's internals off, Keras's own message names the variable.
        assert "does not fit the model 'with_dropout'" in message and "(4, 8)" in message, message
        assert "another architecture" in message and "None of the" not in message

    def test_an_unknown_monitor_is_reported_at_the_end_of_the_first_epoch(self, tmp_path, data):
        dataset = KerasCheckpointDataset(filepath=str(tmp_path / "c"), monitor="val_los")
        with pytest.raises(DatasetError) as raised:
            train(compiled(), data, dataset.load(), epochs=3, validation_split=0.25)
        message = str(raised.value)
        assert "monitor 'val_los'" in message and "end of epoch 1" in message
        assert "loss, mae, val_loss, val_mae" in message
        assert dataset.versions() == []

    def test_epochs_without_validation_are_not_an_error_but_go_unranked(self, tmp_path, data, caplog):
        """validation_freq=2 leaves val_loss out of every other epoch's logs:
        that stopped the training at the end of epoch 1 (#29). Keras warns;
        so do we, once, and rank only the epochs that have it."""
        dataset = KerasCheckpointDataset(filepath=str(tmp_path / "c"), monitor="val_loss", keep_last=None)
        with caplog.at_level(logging.WARNING, logger="kedro_keras"):
            history = train(
                compiled(),
                data,
                dataset.load(),
                epochs=4,
                validation_split=0.25,
                validation_freq=2,
                killed=True,
            )
        assert history is None  # killed at the end, after all four epochs
        assert dataset.versions() == [f"e{n:05d}-s0000000" for n in (4, 3, 2, 1)]
        folder = tmp_path / "c"
        values = {
            n: json.loads((folder / f"ckpt-e{n:05d}-s0000000.json").read_text())["value"]
            for n in (1, 2, 3, 4)
        }
        assert values[1] is None and values[3] is None
        assert isinstance(values[2], float) and isinstance(values[4], float)
        best = min((2, 4), key=values.get)
        assert dataset._best_version(dataset.versions()) == f"e{best:05d}-s0000000"
        (warning,) = [r.getMessage() for r in caplog.records if "no validation has run" in r.getMessage()]
        assert "monitor 'val_loss' is not in the logs of epoch 1" in warning

    def test_a_val_metric_with_no_validation_at_all_warns_once_and_writes(self, tmp_path, data, caplog):
        dataset = KerasCheckpointDataset(filepath=str(tmp_path / "c"), monitor="val_loss")
        with caplog.at_level(logging.WARNING, logger="kedro_keras"):
            train(compiled(), data, dataset.load(), epochs=3, killed=True)
        assert len(dataset.versions()) == 3
        warnings = [r.getMessage() for r in caplog.records if "no validation has run" in r.getMessage()]
        assert len(warnings) == 1 and "validation_data or validation_split" in warnings[0]

    def test_weights_only_checkpoints_need_the_model_to_restore_into(self, tmp_path, data):
        entry = {"filepath": str(tmp_path / "c"), "save_weights_only": True}
        train(compiled(), data, KerasCheckpointDataset(**entry).load(), epochs=1, killed=True)
        with pytest.raises(DatasetError, match=r"pass the model to restore them into"):
            KerasCheckpointDataset(**entry).load().restore()

    def test_the_entry_is_an_input_not_an_output(self, tmp_path, data):
        with pytest.raises(DatasetError, match="use the entry as a node input"):
            KerasCheckpointDataset(filepath=str(tmp_path / "c")).save(compiled())

    @pytest.mark.parametrize(
        ("options", "words"),
        [
            ({"filepath": "data/model.keras"}, "looks like a model file"),
            ({"keep_last": 0}, "keep_last must be"),
            ({"save_freq": "batch"}, "save_freq must be"),
            ({"mode": "lowest"}, "mode must be"),
            (
                {"load_args": {"compile": False, "custom_object": {}}},
                r"Unknown load_args \[.custom_object.\]",
            ),
            ({"load_args": {"custom_objects": {"Scale": "no_such_module.Scale"}}}, "no_such_module"),
        ],
    )
    def test_bad_options_fail_when_the_catalog_is_built(self, tmp_path, options, words):
        with pytest.raises(DatasetError, match=words):
            KerasCheckpointDataset(**{"filepath": str(tmp_path / "c"), **options})


class TestKerasCheckpointDatasetInKedro:
    def test_catalog_load_version_pins_a_checkpoint(self, tmp_path, data):
        config = {"ckpt": {"type": "kedro_keras.KerasCheckpointDataset", "filepath": str(tmp_path / "c")}}
        train(compiled(), data, DataCatalog.from_config(config).load("ckpt"), epochs=3)

        catalog = DataCatalog.from_config(config, load_versions={"ckpt": "e00002-s0000000"})
        checkpoints = catalog.load("ckpt")
        model = checkpoints.restore()
        assert checkpoints.initial_epoch == 2 and int(model.optimizer.iterations) == 8

    def test_the_dataset_and_its_handle_pickle(self, tmp_path, folder):
        dataset = KerasCheckpointDataset(**folder)
        again = pickle.loads(pickle.dumps(dataset))
        assert again._describe() == dataset._describe()
        handle = pickle.loads(pickle.dumps(dataset.load()))
        assert handle.versions() == []

    def test_import_does_not_import_keras_until_a_callback_is_made(self):
        import subprocess
        import sys

        code = (
            "import sys, kedro_keras; d = kedro_keras.KerasCheckpointDataset(filepath='x'); "
            "c = d.load(); print('keras' in sys.modules)"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip() == "False"
