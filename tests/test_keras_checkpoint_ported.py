"""Keras's own tests of its checkpoint callbacks, ported to KerasCheckpointDataset (#29).

The scenarios of ``keras/src/callbacks/model_checkpoint_test.py`` (``ModelCheckpointTest``)
and ``keras/src/callbacks/backup_and_restore_test.py`` (``BackupAndRestoreCallbackTest``),
each run through ``KerasCheckpointDataset`` on a local folder and on fsspec's ``memory://``.
Where both can run in one ``fit``, Keras's own ``ModelCheckpoint`` writes beside ours as the
reference: our checkpoints must be at the positions Keras's files are, with the same weights.
Where ours differs on purpose (docs/checkpoints.md, "Differences from Keras's ModelCheckpoint
and BackupAndRestore"), the test asserts our behaviour and says so in a ``Difference from
Keras`` comment. Backend-neutral: TensorFlow, JAX and PyTorch.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

import fsspec
import keras
import numpy as np
import pytest
from kedro.io import DatasetError

from kedro_keras import KerasCheckpointDataset

FEATURES, CLASSES, HIDDEN = 3, 3, 5
TRAIN, VALIDATION = 30, 30
SEED = 42


# -- where the checkpoints go --------------------------------------------------


@dataclass
class Where:
    """A checkpoint folder that does not exist yet (Keras's tests check that the
    callback creates it), with the file operations a test needs on it."""

    filepath: str

    def _fs_path(self, name: str = "") -> tuple[fsspec.AbstractFileSystem, str]:
        fs, path = fsspec.core.url_to_fs(self.filepath)
        return fs, f"{path}/{name}" if name else path

    def entry(self, **options) -> dict:
        return {"filepath": self.filepath, **options}

    def dataset(self, **options) -> KerasCheckpointDataset:
        return KerasCheckpointDataset(**self.entry(**options))

    def names(self) -> list[str]:
        """The names directly in the folder (none if it does not exist)."""
        fs, path = self._fs_path()
        fs.invalidate_cache(path)
        if not fs.exists(path):
            return []
        return sorted(Path(entry).name for entry in fs.ls(path, detail=False))

    def exists(self) -> bool:
        fs, path = self._fs_path()
        return fs.exists(path)

    def write(self, name: str, content: bytes) -> None:
        fs, path = self._fs_path(name)
        fs.pipe_file(path, content)


@pytest.fixture(params=["local", "memory"])
def where(request, tmp_path):
    """Each scenario on a local folder and on ``memory://``; the memory
    filesystem's files of the test are removed after it, so no test sees
    another's."""
    if request.param == "local":
        yield Where(str(tmp_path / "subdir" / "checkpoints"))
        return
    root = f"/ported-{uuid.uuid4().hex}"
    memory = fsspec.filesystem("memory")
    assert not memory.exists(root)
    yield Where(f"memory://{root}/subdir/checkpoints")
    if memory.exists(root):  # nothing there if the test wrote nothing
        memory.rm(root, recursive=True)
    assert not [key for key in memory.store if key.startswith(root)]


# -- models and data -------------------------------------------------------------


def classification_data(seed=SEED):
    """Three separable classes in three features, one-hot labels, as Keras's
    ``test_utils.get_test_data`` makes them: (x, y) for training and validation."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=2.0, size=(CLASSES, FEATURES))

    def draw(count):
        labels = rng.integers(0, CLASSES, size=count)
        x = (centers[labels] + rng.normal(size=(count, FEATURES))).astype("float32")
        return x, keras.utils.to_categorical(labels, CLASSES).astype("float32")

    return draw(TRAIN), draw(VALIDATION)


def classifier(metrics=None, *, built=True, learning_rate=0.01):
    """Keras's test model: Dense(5, relu), Dense(3, softmax), SGD, from a fixed
    seed. ``built=False`` leaves the input shape to ``fit``, as Keras's
    ``test_model_checkpoint_options`` does."""
    keras.utils.set_random_seed(SEED)
    layers = [
        keras.layers.Dense(HIDDEN, activation="relu"),
        keras.layers.Dense(CLASSES, activation="softmax"),
    ]
    model = keras.Sequential(([keras.Input((FEATURES,))] if built else []) + layers)
    model.compile(
        loss="categorical_crossentropy",
        optimizer=keras.optimizers.SGD(learning_rate=learning_rate),
        metrics=metrics if metrics is not None else [keras.metrics.CategoricalAccuracy(name="acc")],
    )
    return model


@keras.saving.register_keras_serializable(package="kedro_keras_ported")
class Counter(keras.layers.Layer):
    """Keras's ``CanaryLayer``: counts the batches it has seen in a weight, so
    that a restored model says how far its training had gone."""

    def build(self, input_shape):
        self.counter = self.add_weight(shape=(), initializer="zeros", dtype="float32", trainable=False)

    def call(self, inputs):
        self.counter.assign_add(1.0)
        return inputs


def counting_model():
    """Keras's ``BackupAndRestoreCallbackTest.make_model``."""
    keras.utils.set_random_seed(SEED)
    model = keras.Sequential([keras.Input((3,)), Counter(), keras.layers.Dense(1)])
    model.compile(loss="mse", optimizer="sgd", metrics=["mse"])
    return model


def batches_counted(model) -> int:
    return int(keras.ops.convert_to_numpy(model.layers[0].counter))


def regression_data(seed=SEED):
    rng = np.random.default_rng(seed)
    return rng.random((10, 3)).astype("float32"), rng.random((10, 1)).astype("float32")


class Interrupted(Exception):
    """The process stops mid-training (Keras's ``InterruptingCallback``)."""


class Interrupt(keras.callbacks.Callback):
    """Raises after the ``after_batches``-th batch or the ``after_epochs``-th epoch
    of its fit; listed after the checkpoint callback, which has written by then."""

    def __init__(self, *, after_batches=None, after_epochs=None):
        super().__init__()
        self.after_batches, self.after_epochs = after_batches, after_epochs
        self.batches = self.epochs = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        if self.batches == self.after_batches:
            raise Interrupted

    def on_epoch_end(self, epoch, logs=None):
        self.epochs += 1
        if self.epochs == self.after_epochs:
            raise Interrupted


def fit(model, x, y, callbacks=(), **options):
    return model.fit(x, y, shuffle=False, verbose=0, callbacks=list(callbacks), **options)


def weights_of(model) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(variable) for variable in model.weights]


def assert_same_weights(actual, expected) -> None:
    assert len(actual) == len(expected) > 0
    for index, (one, other) in enumerate(zip(actual, expected, strict=True)):
        np.testing.assert_array_equal(one, other, err_msg=f"weight {index}")


def checkpoint(where, version, *, build=None, **options):
    """The model of our checkpoint ``version``, pinned as ``--load-versions``
    would (``build``: the model a weights-only checkpoint fills)."""
    pinned = where.dataset(load_version=version, save_weights_only=build is not None, **options).load()
    model = pinned.restore(None if build is None else build())
    assert pinned.restored == version
    return model


def keras_file(path, *, build=None):
    """The model in a file Keras's ``ModelCheckpoint`` wrote."""
    if build is None:
        return keras.saving.load_model(path)
    model = build()
    model.load_weights(path)
    return model


def version(epochs_done, batches=0):
    return f"e{epochs_done:05d}-s{batches:07d}"


def improvements(values, larger_is_better, threshold=None):
    """The 1-based epochs at which ``values`` improve, as Keras's
    ``MonitorCallback._is_improvement`` judges them (strictly, from ``threshold``)."""
    best, found = threshold, []
    for epoch, value in enumerate(values, start=1):
        if best is None or (value > best if larger_is_better else value < best):
            best = value
            found.append(epoch)
    return found


# -- ModelCheckpointTest.test_model_checkpoint_options ---------------------------


class TestModelCheckpointOptions:
    """Ports ``ModelCheckpointTest.test_model_checkpoint_options``, case by case."""

    @pytest.mark.parametrize(
        ("monitor", "mode"),
        [("val_loss", "auto"), ("val_loss", "min"), ("val_acc", "max")],
        ids=["case1-val_loss-auto", "case2-val_loss-min", "case3-val_acc-max"],
    )
    def test_every_epoch_is_written_whatever_the_monitor_and_mode(self, where, tmp_path, monitor, mode):
        """Ports ``ModelCheckpointTest.test_model_checkpoint_options`` cases 1-3 (monitor and mode without
        save_best_only: every epoch is written, into a folder created on the way)."""
        (x, y), validation = classification_data()
        # Built by fit, with Keras's test's metric: Accuracy compares the probabilities with the
        # labels exactly, so val_acc is 0 in every epoch, a tie.
        model = classifier([keras.metrics.Accuracy(name="acc")], built=False)
        ours = where.dataset(monitor=monitor, mode=mode, keep_last=None)
        reference = keras.callbacks.ModelCheckpoint(
            str(tmp_path / "keras" / "epoch{epoch:02d}.keras"), monitor=monitor, mode=mode
        )
        assert not where.exists()
        history = fit(
            model,
            x,
            y,
            [ours.load().callback(), reference],
            batch_size=5,
            epochs=2,
            validation_data=validation,
        )

        assert ours.versions() == [version(2), version(1)]
        assert set(where.names()) >= {f"ckpt-{version(e)}{s}" for e in (1, 2) for s in (".keras", ".json")}
        for epoch in (1, 2):
            assert_same_weights(
                weights_of(checkpoint(where, version(epoch))),
                weights_of(keras_file(tmp_path / "keras" / f"epoch{epoch:02d}.keras")),
            )
        assert_same_weights(weights_of(checkpoint(where, version(2))), weights_of(model))
        # The monitor ranks them as Keras judges an improvement: of equal values the earliest is
        # the best (a later equal one is no improvement), and pruning keeps it.
        values = history.history[monitor]
        best_epoch = improvements(values, larger_is_better=mode == "max")[-1]
        if monitor == "val_acc":
            assert values == [0.0, 0.0]  # the tie
        else:
            assert best_epoch == 2
        assert ours.protected_versions() == {version(best_epoch): f"the best by {monitor}"}

    @pytest.mark.parametrize(
        ("monitor", "mode"),
        [("val_acc", "max"), ("val_loss", "auto")],
        ids=["case4-val_acc-max", "case12-val_loss-auto"],
    )
    def test_save_best_only_writes_the_epochs_keras_writes(self, where, tmp_path, monitor, mode):
        """Ports ``ModelCheckpointTest.test_model_checkpoint_options`` cases 4 and 12 (save_best_only, no
        threshold): over several epochs, ours writes exactly the epochs Keras's ModelCheckpoint writes,
        the first one always."""
        (x, y), (x_val, y_val) = classification_data()
        # Every other validation label wrong: the metric improves in some epochs, not in others.
        y_val = y_val.copy()
        y_val[::2] = np.roll(y_val[::2], 1, axis=1)
        validation = (x_val, y_val)
        model = classifier(learning_rate=0.1)
        ours = where.dataset(monitor=monitor, mode=mode, save_best_only=True, keep_last=None)
        reference = keras.callbacks.ModelCheckpoint(
            str(tmp_path / "keras" / "epoch{epoch:02d}.keras"),
            monitor=monitor,
            mode=mode,
            save_best_only=True,
        )
        history = fit(
            model,
            x,
            y,
            [ours.load().callback(), reference],
            batch_size=5,
            epochs=6,
            validation_data=validation,
        )

        expected = improvements(history.history[monitor], larger_is_better=monitor == "val_acc")
        written_by_keras = sorted(int(p.name[5:7]) for p in (tmp_path / "keras").iterdir())
        assert written_by_keras == expected and expected[0] == 1 and len(expected) < 6
        assert ours.versions() == [version(epoch) for epoch in reversed(expected)]
        newest = expected[-1]
        assert_same_weights(
            weights_of(checkpoint(where, version(newest))),
            weights_of(keras_file(tmp_path / "keras" / f"epoch{newest:02d}.keras")),
        )

    def test_a_monitor_fit_does_not_log_is_an_error(self, where, tmp_path):
        """Ports ``ModelCheckpointTest.test_model_checkpoint_options`` case 5 (monitor 'unknown' with
        save_best_only)."""
        (x, y), validation = classification_data()
        ours = where.dataset(monitor="unknown", mode="min", save_best_only=True)
        reference = keras.callbacks.ModelCheckpoint(
            str(tmp_path / "keras.keras"), monitor="unknown", mode="min", save_best_only=True
        )
        # Difference from Keras: Keras warns and saves every epoch as if save_best_only were off;
        # ours stops the training at the end of the first epoch with an error that names the
        # metrics fit logs, and writes nothing (a typo in monitor would silently keep every epoch).
        with (
            pytest.warns(UserWarning, match="Can save best model only with unknown available"),
            pytest.raises(DatasetError, match=r"monitor 'unknown' is not among .* end of epoch 1") as raised,
        ):
            fit(
                classifier(),
                x,
                y,
                [reference, ours.load().callback()],
                batch_size=5,
                epochs=2,
                validation_data=validation,
            )
        assert "acc, loss, val_acc, val_loss" in str(raised.value)
        assert (tmp_path / "keras.keras").exists()  # Keras's, written before ours refused
        assert ours.versions() == [] and not [name for name in where.names() if name.startswith("ckpt-")]

    @pytest.mark.parametrize(
        ("monitor", "save_freq"), [("val_f1", "epoch"), ("f1", 2)], ids=["epoch", "batches"]
    )
    def test_a_monitor_that_is_not_one_number_is_an_error(self, where, tmp_path, monitor, save_freq):
        """Extends ``ModelCheckpointTest.test_model_checkpoint_options`` case 5 to the other monitor
        ModelCheckpoint cannot judge (its fallback for a monitor that is not a scalar, which Keras's test
        does not reach): an F1Score per class, at the end of an epoch and after a number of batches."""
        (x, y), validation = classification_data()
        model = classifier([keras.metrics.F1Score(average=None, name="f1")])
        options = {"monitor": monitor, "mode": "max", "save_best_only": True, "save_freq": save_freq}
        ours = where.dataset(**options)
        reference = keras.callbacks.ModelCheckpoint(str(tmp_path / "keras.keras"), **options)
        # Difference from Keras: Keras warns and saves as if save_best_only were off; ours stops
        # with an error that says what was logged, and writes nothing (before, it took the array
        # for NaN, never an improvement, and silently wrote no checkpoint at all).
        with (
            pytest.warns(UserWarning, match="Can save best model only when `monitor` is a scalar value"),
            pytest.raises(
                DatasetError,
                match=rf"monitor '{monitor}' is not a single number; fit logged an array of shape \(3,\)",
            ),
        ):
            fit(
                model,
                x,
                y,
                [reference, ours.load().callback()],
                batch_size=5,
                epochs=2,
                validation_data=validation,
            )
        assert (tmp_path / "keras.keras").exists()
        assert ours.versions() == []

    def test_an_unknown_mode_is_refused(self, where):
        """Ports ``ModelCheckpointTest.test_model_checkpoint_options`` case 6 (mode 'unknown')."""
        with pytest.warns(UserWarning, match="ModelCheckpoint mode 'unknown' is unknown"):
            reference = keras.callbacks.ModelCheckpoint("c.keras", monitor="val_acc", mode="unknown")
        assert reference.mode == "auto"
        # Difference from Keras: Keras warns and falls back to 'auto'; ours refuses the entry when
        # the catalog is built, before any training.
        with pytest.raises(DatasetError, match=r"mode must be 'auto', 'min' or 'max'; got 'unknown'"):
            where.dataset(monitor="val_acc", mode="unknown")
        assert not where.exists()

    @pytest.mark.parametrize("weights_only", [False, True], ids=["case8a-model", "case8b-weights"])
    def test_a_checkpoint_every_so_many_batches_across_epochs(self, where, tmp_path, weights_only):
        """Ports ``ModelCheckpointTest.test_model_checkpoint_options`` cases 8a and 8b (save_freq=15 with
        5 batches an epoch: the end of every third epoch's last batch; whole models, then weights
        only)."""
        (x, y), validation = classification_data()
        model = classifier()
        suffix = ".weights.h5" if weights_only else ".keras"
        options = {"monitor": "val_acc", "save_freq": 15, "save_weights_only": weights_only}
        ours = where.dataset(**options, keep_last=None)
        reference = keras.callbacks.ModelCheckpoint(
            str(tmp_path / "keras" / f"epoch{{epoch:02d}}{suffix}"), **options
        )
        fit(
            model,
            x,
            y,
            [ours.load().callback(), reference],
            batch_size=6,
            epochs=10,
            validation_data=validation,
        )

        written_by_keras = sorted(p.name for p in (tmp_path / "keras").iterdir())
        assert written_by_keras == [f"epoch{epoch:02d}{suffix}" for epoch in (3, 6, 9)]
        # Difference from Keras: named by the training position, not a format string: after
        # 15 batches, "2 epochs done, 5 batches into the third" (Keras's epoch03). Resuming
        # from it repeats that epoch, as BackupAndRestore's does.
        assert ours.versions() == [version(8, 5), version(5, 5), version(2, 5)]
        assert set(where.names()) >= {f"ckpt-{v}{suffix}" for v in ours.versions()}
        build = classifier if weights_only else None
        for epoch in (3, 6, 9):
            assert_same_weights(
                weights_of(checkpoint(where, version(epoch - 1, 5), build=build)),
                weights_of(keras_file(tmp_path / "keras" / f"epoch{epoch:02d}{suffix}", build=build)),
            )

    @pytest.mark.parametrize("save_freq", ["invalid_save_freq", "batch", 0.15, 0, -3, True])
    def test_save_freq_is_epoch_or_a_number_of_batches(self, where, save_freq):
        """Ports ``ModelCheckpointTest.test_model_checkpoint_options`` case 9 (and
        ``BackupAndRestoreCallbackTest.test_save_freq_unknown_error``: 'batch' and 0.15), plus whole
        numbers below 1."""
        if isinstance(save_freq, (str, float)):
            with pytest.raises(ValueError, match="Unrecognized save_freq"):
                keras.callbacks.ModelCheckpoint("c.keras", save_freq=save_freq)
        else:
            # Difference from Keras: Keras takes any int (and True) as a number of batches;
            # ours refuses what is not a whole number of at least 1, when the catalog is built.
            assert keras.callbacks.ModelCheckpoint("c.keras", save_freq=save_freq).save_freq is save_freq
        with pytest.raises(DatasetError, match=r"save_freq must be 'epoch' or a number of batches"):
            where.dataset(save_freq=save_freq)
        for good in ("epoch", 3):  # both accepted, with weights only too
            assert (
                where.dataset(save_freq=good, save_weights_only=True, monitor="val_acc")._policy.save_freq
                == good
            )

    @pytest.mark.parametrize("weights_only", [False, True], ids=["case10a-model", "case10b-weights"])
    def test_a_checkpoint_after_every_batch(self, where, tmp_path, weights_only):
        """Ports ``ModelCheckpointTest.test_model_checkpoint_options`` cases 10a and 10b (save_freq=1, 2
        batches an epoch, 5 epochs: a checkpoint after each of the 10 batches; whole models, then weights
        only)."""
        (x, y), validation = classification_data()
        model = classifier()
        suffix = ".weights.h5" if weights_only else ".keras"
        ours = where.dataset(save_freq=1, save_weights_only=weights_only, keep_last=None)
        reference = keras.callbacks.ModelCheckpoint(
            str(tmp_path / "keras" / f"epoch{{epoch:02d}}batch{{batch:02d}}{suffix}"),
            save_freq=1,
            save_weights_only=weights_only,
        )
        fit(
            model,
            x,
            y,
            [ours.load().callback(), reference],
            batch_size=15,
            epochs=5,
            validation_data=validation,
        )

        positions = [(epoch, batch) for epoch in range(1, 6) for batch in (1, 2)]
        assert sorted(p.name for p in (tmp_path / "keras").iterdir()) == [
            f"epoch{e:02d}batch{b:02d}{suffix}" for e, b in positions
        ]
        # Difference from Keras: Keras's epoch E, batch B is our version "E-1 epochs done, B batches in".
        assert ours.versions() == sorted((version(e - 1, b) for e, b in positions), reverse=True)
        build = classifier if weights_only else None
        for epoch, batch in positions[1::3]:  # four of the ten, both batches of an epoch among them
            assert_same_weights(
                weights_of(checkpoint(where, version(epoch - 1, batch), build=build)),
                weights_of(
                    keras_file(tmp_path / "keras" / f"epoch{epoch:02d}batch{batch:02d}{suffix}", build=build)
                ),
            )
        assert_same_weights(weights_of(checkpoint(where, version(4, 2), build=build)), weights_of(model))

    @pytest.mark.parametrize(
        ("monitor", "mode", "threshold", "metric", "written"),
        [
            ("val_acc", "max", -0.01, "acc", True),
            ("val_loss", "min", 0, "acc", False),
            ("val_loss", "auto", 0, "acc", False),
            ("val_auc", "auto", 1, "auc", False),
        ],
        ids=["case11-acc-max-below", "case13-loss-min-0", "case14-loss-auto-0", "case15-auc-auto-1"],
    )
    def test_initial_value_threshold(self, where, tmp_path, monitor, mode, threshold, metric, written):
        """Ports ``ModelCheckpointTest.test_model_checkpoint_options`` cases 11, 13, 14 and 15
        (save_best_only from a threshold: an accuracy always beats -0.01, a loss never beats 0, an AUC
        never beats 1)."""
        (x, y), validation = classification_data()
        metrics = [
            keras.metrics.CategoricalAccuracy(name="acc")
            if metric == "acc"
            else keras.metrics.AUC(name="auc")
        ]
        model = classifier(metrics)
        options = {
            "monitor": monitor,
            "mode": mode,
            "save_best_only": True,
            "initial_value_threshold": threshold,
        }
        ours = where.dataset(**options)
        reference = keras.callbacks.ModelCheckpoint(str(tmp_path / "keras.keras"), **options)
        history = fit(
            model,
            x,
            y,
            [ours.load().callback(), reference],
            batch_size=5,
            epochs=2,
            validation_data=validation,
        )

        expected = improvements(
            history.history[monitor], larger_is_better=mode == "max" or metric == "auc", threshold=threshold
        )
        assert (tmp_path / "keras.keras").exists() is written and bool(expected) is written
        assert ours.versions() == [version(epoch) for epoch in reversed(expected)]
        if written:
            assert_same_weights(
                weights_of(checkpoint(where, version(expected[-1]))),
                weights_of(keras_file(tmp_path / "keras.keras")),
            )
        else:  # nothing written, so nothing marked finished either
            assert not [name for name in where.names() if name.startswith("ckpt-")]
            assert where.dataset(**options).load().restore() is None

    def test_a_nan_first_value_is_no_improvement(self, where, tmp_path):
        """Extends ``ModelCheckpointTest.test_model_checkpoint_options`` case 12 (save_best_only on
        val_loss, auto) to a validation loss that is NaN from the first epoch on (a NaN in the validation
        labels)."""
        (x, y), (x_val, y_val) = classification_data()
        y_val = y_val.copy()
        y_val[0, 0] = np.nan
        ours = where.dataset(save_best_only=True)  # monitor: val_loss, as in Keras
        reference = keras.callbacks.ModelCheckpoint(str(tmp_path / "keras.keras"), save_best_only=True)
        history = fit(
            classifier(),
            x,
            y,
            [ours.load().callback(), reference],
            batch_size=5,
            epochs=2,
            validation_data=(x_val, y_val),
        )
        assert all(np.isnan(history.history["val_loss"])) and not any(np.isnan(history.history["loss"]))
        # Difference from Keras: Keras counts anything as an improvement over no best yet, so it
        # writes the first epoch's model although its val_loss is NaN; ours never counts NaN as an
        # improvement, so a diverged model is never the best (nor, with save_best_only, the newest).
        assert (tmp_path / "keras.keras").exists()
        assert ours.versions() == []


# -- ModelCheckpointTest.test_model_checkpoint_loading ---------------------------


def functional_classifier():
    """Keras's functional model of ``test_model_checkpoint_loading`` (batch size 5 in its Input)."""
    keras.utils.set_random_seed(SEED)
    inputs = keras.Input(shape=(FEATURES,), batch_size=5)
    hidden = keras.layers.Dense(HIDDEN, activation="relu")(inputs)
    outputs = keras.layers.Dense(CLASSES, activation="softmax")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(
        loss="categorical_crossentropy",
        optimizer="sgd",
        metrics=[keras.metrics.CategoricalAccuracy(name="acc")],
    )
    return model


class TestModelCheckpointLoading:
    @pytest.mark.parametrize("weights_only", [False, True], ids=["model", "weights"])
    def test_the_checkpoint_loads_with_the_trained_weights(self, where, tmp_path, weights_only):
        """Ports ``ModelCheckpointTest.test_model_checkpoint_loading`` (save_best_only on val_loss, one
        epoch; the checkpoint loaded as a model, then into a new model)."""
        (x, y), validation = classification_data()
        model = functional_classifier()
        path = tmp_path / ("checkpoint.weights.h5" if weights_only else "checkpoint.model.keras")
        ours = where.dataset(monitor="val_loss", save_best_only=True, save_weights_only=weights_only)
        reference = keras.callbacks.ModelCheckpoint(
            str(path), monitor="val_loss", save_best_only=True, save_weights_only=weights_only
        )
        fit(
            model,
            x,
            y,
            [ours.load().callback(), reference],
            batch_size=5,
            epochs=1,
            validation_data=validation,
        )
        trained = weights_of(model)

        build = functional_classifier if weights_only else None
        best = ours.load().best(None if build is None else build())
        assert_same_weights(weights_of(best), trained)
        assert_same_weights(weights_of(keras_file(path, build=build)), trained)
        np.testing.assert_array_equal(
            best.predict(validation[0], batch_size=5, verbose=0),
            model.predict(validation[0], batch_size=5, verbose=0),
        )
        assert best.optimizer is not None and int(keras.ops.convert_to_numpy(best.optimizer.iterations)) == 6

        # Difference from Keras: this fit ended normally, so the training is finished: restore()
        # starts a new one (Keras's file stays where it is for load_model, like ours for best()).
        again = ours.load()
        assert again.restore(None if build is None else build()) is None and again.initial_epoch == 0
        assert again.versions() == [] and path.exists()


# -- BackupAndRestoreCallbackTest ------------------------------------------------


class TestBackupAndRestore:
    """Ports ``BackupAndRestoreCallbackTest``: an interrupted training resumes."""

    @pytest.mark.parametrize("weights_only", [False, True], ids=["model", "weights"])
    def test_resume_after_an_interruption_within_an_epoch(self, where, tmp_path, weights_only):
        """Ports ``BackupAndRestoreCallbackTest.test_best_case_step`` (save_freq=1, interrupted after the
        second of three batches; resumed, the epoch restarts: 2 + 5 x 3 batches seen)."""
        x, y = regression_data()

        # Keras's own run, the reference for the weights the resumed training ends with.
        backup = keras.callbacks.BackupAndRestore(str(tmp_path / "keras-backup"), save_freq=1)
        reference = counting_model()
        with pytest.raises(Interrupted):
            fit(reference, x, y, [backup, Interrupt(after_batches=2)], batch_size=4, epochs=2)
        fit(reference, x, y, [backup], batch_size=4, epochs=5)
        assert batches_counted(reference) == 17

        entry = where.entry(save_freq=1, save_weights_only=weights_only)
        model = counting_model()
        with pytest.raises(Interrupted):
            fit(
                model,
                x,
                y,
                [KerasCheckpointDataset(**entry).load().callback(), Interrupt(after_batches=2)],
                batch_size=4,
                epochs=2,
            )
        assert where.exists() and batches_counted(model) == 2
        assert KerasCheckpointDataset(**entry).versions() == [version(0, 2), version(0, 1)]

        checkpoints = KerasCheckpointDataset(**entry).load()
        # Difference from Keras: the node restores explicitly and passes initial_epoch (Keras's
        # callback reloads the model given to fit in on_train_begin).
        restored = checkpoints.restore(counting_model() if weights_only else None)
        assert checkpoints.restored == version(0, 2) and checkpoints.initial_epoch == 0
        assert batches_counted(restored) == 2
        history = fit(
            restored,
            x,
            y,
            [checkpoints.callback()],
            batch_size=4,
            epochs=5,
            initial_epoch=checkpoints.initial_epoch,
        )
        assert history.epoch == [0, 1, 2, 3, 4] and batches_counted(restored) == 17
        assert_same_weights(weights_of(restored), weights_of(reference))
        assert checkpoints.versions() == [version(4, 3), version(4, 2), version(4, 1)]  # keep_last 3

    @pytest.mark.parametrize("weights_only", [False, True], ids=["model", "weights"])
    def test_resume_after_an_interruption_at_the_end_of_an_epoch(self, where, weights_only):
        """Ports ``BackupAndRestoreCallbackTest.test_best_case_epoch`` (interrupted after epoch 2 of 6;
        resumed to 5 epochs, only epochs 3-5 run: 5 x 3 batches seen in all)."""
        x, y = regression_data()
        uninterrupted = counting_model()
        fit(uninterrupted, x, y, batch_size=4, epochs=5)

        entry = where.entry(save_weights_only=weights_only)
        model = counting_model()
        assert batches_counted(model) == 0
        with pytest.raises(Interrupted):
            fit(
                model,
                x,
                y,
                [KerasCheckpointDataset(**entry).load().callback(), Interrupt(after_epochs=2)],
                batch_size=4,
                epochs=6,
            )
        assert batches_counted(model) == 6
        assert KerasCheckpointDataset(**entry).versions() == [version(2), version(1)]

        checkpoints = KerasCheckpointDataset(**entry).load()
        restored = checkpoints.restore(counting_model() if weights_only else None)
        assert checkpoints.initial_epoch == 2 and batches_counted(restored) == 6
        history = fit(
            restored,
            x,
            y,
            [checkpoints.callback()],
            batch_size=4,
            epochs=5,
            initial_epoch=checkpoints.initial_epoch,
        )
        assert history.epoch == [2, 3, 4] and batches_counted(restored) == 15
        assert_same_weights(weights_of(restored), weights_of(uninterrupted))  # bit for bit
        assert checkpoints.versions() == [version(5), version(4), version(3)]

    def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(self, where, caplog):
        """Ports ``BackupAndRestoreCallbackTest.test_backup_corrupted`` (interrupted after epoch 2, the
        newest checkpoint's model file overwritten with "0": the one before is restored, and the resumed
        training still ends where an uninterrupted one does)."""
        x, y = regression_data()
        uninterrupted = counting_model()
        fit(uninterrupted, x, y, batch_size=4, epochs=5)

        # Difference from Keras: no double_checkpoint option: every checkpoint keep_last keeps
        # (3 by default) is a fallback, each with its own record.
        model = counting_model()
        with pytest.raises(Interrupted):
            fit(
                model,
                x,
                y,
                [where.dataset().load().callback(), Interrupt(after_epochs=2)],
                batch_size=4,
                epochs=6,
            )
        names = where.names()
        assert {f"ckpt-{v}{s}" for v in (version(1), version(2)) for s in (".keras", ".json")} <= set(names)
        where.write(f"ckpt-{version(2)}.keras", b"0")

        checkpoints = where.dataset().load()
        with caplog.at_level(logging.WARNING, logger="kedro_keras"):
            restored = checkpoints.restore()
        assert checkpoints.restored == version(1) and checkpoints.initial_epoch == 1
        assert any(f"Skipping checkpoint {version(2)}" in r.getMessage() for r in caplog.records)
        assert batches_counted(restored) == 3
        history = fit(
            restored,
            x,
            y,
            [checkpoints.callback()],
            batch_size=4,
            epochs=5,
            initial_epoch=checkpoints.initial_epoch,
        )
        assert history.epoch == [1, 2, 3, 4] and batches_counted(restored) == 15
        assert_same_weights(weights_of(restored), weights_of(uninterrupted))
        # The damaged file was replaced by the resumed training's own checkpoint of epoch 2... and pruned.
        assert checkpoints.versions() == [version(5), version(4), version(3)]

    def test_a_training_that_ends_normally(self, where, tmp_path):
        """Ports ``BackupAndRestoreCallbackTest.test_model_deleted_case_epoch`` (a fit that ends normally
        removes Keras's backup; with remove_when_done, ours too)."""
        x, y = regression_data()
        backup_dir = tmp_path / "keras-backup"
        fit(
            counting_model(),
            x,
            y,
            [keras.callbacks.BackupAndRestore(str(backup_dir))],
            batch_size=4,
            epochs=2,
        )
        assert not backup_dir.exists()

        removing = where.dataset(remove_when_done=True)
        fit(counting_model(), x, y, [removing.load().callback()], batch_size=4, epochs=2)
        assert removing.versions() == []
        assert not [name for name in where.names() if name.startswith("ckpt-")]
        # Difference from Keras: Keras removes its whole backup_dir; ours removes its own files
        # only (the folder may hold others'), and a local folder stays, empty.
        assert where.names() == [] and where.exists() is where.filepath.startswith("/")

    def test_a_finished_training_is_kept_and_not_resumed(self, where, tmp_path):
        """Ports ``BackupAndRestoreCallbackTest.test_model_deleted_case_epoch`` with the checkpoints kept
        (Keras's ``delete_checkpoint=False``, our default)."""
        x, y = regression_data()
        # Keras's: the next fit restores the finished training's last epoch and trains nothing.
        backup = keras.callbacks.BackupAndRestore(str(tmp_path / "keras-backup"), delete_checkpoint=False)
        fit(counting_model(), x, y, [backup], batch_size=4, epochs=2)
        assert fit(counting_model(), x, y, [backup], batch_size=4, epochs=2).epoch == []

        first = counting_model()
        fit(first, x, y, [where.dataset().load().callback()], batch_size=4, epochs=2)
        assert "ckpt-finished.json" in where.names() and where.dataset().versions() == [
            version(2),
            version(1),
        ]
        # Difference from Keras: a finished training is not resumed; the next run trains anew and
        # keeps the finished series in a finished-<time> folder beside the new one.
        checkpoints = where.dataset().load()
        assert checkpoints.restore() is None and checkpoints.initial_epoch == 0
        second = counting_model()
        history = fit(second, x, y, [checkpoints.callback()], batch_size=4, epochs=2)
        assert history.epoch == [0, 1] and batches_counted(second) == 6
        assert_same_weights(weights_of(second), weights_of(first))
        (archive,) = [name for name in where.names() if name.startswith("finished-")]
        archived = Where(f"{where.filepath}/{archive}")
        assert archived.dataset().versions() == [version(2), version(1)]
        assert "ckpt-finished.json" in archived.names()

    @pytest.mark.parametrize("filepath", ["", None])
    def test_a_folder_must_be_named(self, filepath):
        """Ports ``BackupAndRestoreCallbackTest.test_backup_dir_empty_error`` and
        ``BackupAndRestoreCallbackTest.test_backup_dir_none_error``. (No folder at all: there is no local
        or memory:// variant to run.)"""
        with pytest.raises(ValueError, match="Empty `backup_dir` argument passed"):
            keras.callbacks.BackupAndRestore(backup_dir=filepath)
        with pytest.raises(DatasetError, match=r"filepath must name a file or folder"):
            KerasCheckpointDataset(filepath=filepath)
