"""KerasCheckpointDataset against checkpoint folders someone else wrote into
(#27): records that are damaged, oversized, of the wrong types, declaring
huge arrays, or named to forge log lines. Every one is refused as a
DatasetError naming the file and the cause; ``restore()`` goes back to the
checkpoint before it, and training never stops because of one.

Only ``keras.*`` APIs: this file also runs under JAX, PyTorch and the oldest
supported Keras.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading

import keras
import numpy as np
import pytest
from kedro.io import DatasetError

from kedro_keras import KerasCheckpointDataset

NEWEST, OLDER = "e00002-s0000000", "e00001-s0000000"


def build():
    """Tiny, with a Dropout: its SeedGenerator state is what the record's
    random_states hold."""
    keras.utils.set_random_seed(11)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(4), keras.layers.Dropout(0.2, seed=5), keras.layers.Dense(1)]
    )
    model.compile(optimizer="adam", loss="mse")
    return model


def samples():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 4)).astype("float32")
    return x, x.sum(axis=1, keepdims=True)


def fit(model, checkpoints, epochs):
    x, y = samples()
    return model.fit(x, y, epochs=epochs, batch_size=10, verbose=0, callbacks=[checkpoints.callback()])


def record_path(folder, version):
    return folder / f"ckpt-{version}.json"


@pytest.fixture(scope="module")
def genuine(tmp_path_factory):
    """Two genuine checkpoints written by fit, and the older one's weights."""
    folder = tmp_path_factory.mktemp("genuine") / "c"
    fit(build(), KerasCheckpointDataset(filepath=str(folder), keep_last=None).load(), epochs=2)
    # As a run killed after its second epoch: no mark that the training finished.
    (folder / "ckpt-finished.json").unlink()
    older = KerasCheckpointDataset(filepath=str(folder), load_version=OLDER).load()
    weights = [np.asarray(w) for w in older.restore().weights]
    return folder, weights


@pytest.fixture
def folder(genuine, tmp_path):
    copy = tmp_path / "c"
    shutil.copytree(genuine[0], copy)
    return copy


def genuine_record(folder, version=NEWEST):
    return json.loads(record_path(folder, version).read_text())


def changed(**fields):
    """A hostile record: the genuine one with ``fields`` replaced."""

    def write(path):
        path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))

    return write


def text(content):
    def write(path):
        path.write_bytes(content)

    return write


def sparse_64_mib(path):
    with open(path, "wb") as file:
        file.write(b'{"epoch": 2, "step": 0, "pad": "')
        file.truncate(64 * 2**20)  # no 64 MB on disk, but 64 MB to read


def link_to_dev_zero(path):
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero here")
    path.unlink()
    path.symlink_to("/dev/zero")


def link_to_sparse_64_mib(path):
    target = path.with_name("elsewhere.bin")
    sparse_64_mib(target)
    path.unlink()
    path.symlink_to(target)


def a_folder(path):
    path.unlink()
    path.mkdir()


# (how the newest record is altered, what the error says of it)
HOSTILE = {
    "dtype-U50000000": (
        changed(random_states=[{"dtype": "U50000000", "value": ["a"] * 18}]),
        r"random_states\[0\] declares dtype 'U50000000'; refused before allocating it",
    ),
    "dtype-object": (changed(random_states=[{"dtype": "O", "value": [1, 2]}]), "declares dtype 'O'"),
    "64-mib": (sparse_64_mib, "is larger than 1 MiB"),
    "dev-zero": (link_to_dev_zero, "is a device, pipe or socket, not a file"),
    "64-mib-behind-a-link": (link_to_sparse_64_mib, "is larger than 1 MiB"),
    "a-folder": (a_folder, "is a folder, not a file"),
    "deeply-nested": (text(b'{"epoch": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"), "nested too deeply"),
    "not-json": (text(b"\xff\xfe{ not json"), "is not valid JSON"),
    "not-an-object": (text(b"[2, 0]"), "holds a JSON array, not a JSON object"),
    "step-a-string": (changed(step="0"), "'step' is '0', not a whole number"),
    "step-negative": (changed(step=-1), "'step' is -1, not a whole number"),
    "step-a-bool": (changed(step=False), "'step' is False, not a whole number"),
    "epoch-a-list": (changed(epoch=[2]), "'epoch' is a JSON array, not a whole number"),
    "epoch-missing": (changed(epoch=None), "'epoch' is None"),
    "epoch-not-the-names": (changed(epoch=7), "'epoch' is 7 but the file name says 2"),
    "epoch-huge-int": (text(b'{"epoch": ' + b"9" * 5000 + b', "step": 0}'), "is not valid JSON"),
    "value-a-string": (changed(value="low"), "'value' is 'low', not a number"),
    "best-an-object": (changed(best={"x": 1}), "'best' is a JSON object, not a number"),
    "logs-a-list": (changed(logs=[1]), "'logs' is a JSON array"),
    "metric-a-string": (changed(logs={"loss": "nan"}), "metric 'loss' in 'logs' is 'nan', not a number"),
    "states-not-a-list": (changed(random_states="abc"), "'random_states' is 'abc', not a list"),
    "state-not-an-object": (changed(random_states=[3]), r"random_states\[0\] is 3, not an object"),
    "state-overflows-int32": (
        changed(random_states=[{"dtype": "int32", "value": [2**40, 0]}]),
        "holds 1099511627776, which is not a int32",
    ),
    "state-too-many-elements": (
        changed(random_states=[{"dtype": "int64", "value": [0] * 5000}]),
        "more than 1024 elements",
    ),
    "state-ragged": (
        changed(random_states=[{"dtype": "int64", "value": [[1, 2], [3]]}]),
        "not a rectangular array",
    ),
    "states-declare-too-much": (
        # 150 x 8 KB declared in 0.75 MB of JSON
        changed(random_states=[{"dtype": "float64", "value": [[0.0] * 1024]}] * 150),
        "declare more than 1 MiB",
    ),
}


class TestHostileRecords:
    @pytest.mark.parametrize("name", list(HOSTILE))
    def test_restore_skips_a_hostile_record_for_the_checkpoint_before(self, folder, genuine, name, caplog):
        alter, cause = HOSTILE[name]
        alter(record_path(folder, NEWEST))

        checkpoints = KerasCheckpointDataset(filepath=str(folder)).load()
        with caplog.at_level(logging.WARNING, logger="kedro_keras"):
            model = checkpoints.restore()

        assert checkpoints.restored == OLDER and checkpoints.initial_epoch == 1
        for restored, expected in zip(model.weights, genuine[1], strict=True):
            np.testing.assert_array_equal(np.asarray(restored), expected)
        skipped = [
            r.getMessage() for r in caplog.records if f"Skipping checkpoint {NEWEST}" in r.getMessage()
        ]
        assert len(skipped) == 1 and f"ckpt-{NEWEST}.json" in skipped[0]
        assert re.search(cause, skipped[0]), skipped[0]

    @pytest.mark.parametrize("name", list(HOSTILE))
    def test_a_pinned_hostile_record_is_an_error_naming_the_file_and_the_cause(self, folder, name):
        alter, cause = HOSTILE[name]
        alter(record_path(folder, NEWEST))

        pinned = KerasCheckpointDataset(filepath=str(folder), load_version=NEWEST).load()
        with pytest.raises(DatasetError, match=cause) as raised:
            pinned.restore()
        message = str(raised.value)
        assert str(record_path(folder, NEWEST)) in message and "Remove it" in message
        assert pinned.restored is None

    def test_escape_sequences_in_a_record_reach_messages_escaped(self, folder):
        changed(step="\x1b[2J\nINFO forged row")(record_path(folder, NEWEST))
        pinned = KerasCheckpointDataset(filepath=str(folder), load_version=NEWEST).load()
        with pytest.raises(DatasetError) as raised:
            pinned.restore()
        message = str(raised.value)
        assert "\x1b" not in message and "\n" not in message
        assert "'step' is '\\x1b[2J\\nINFO forged row'" in message

    def test_a_pipe_named_like_a_record_does_not_block_restore(self, folder):
        if not hasattr(os, "mkfifo"):
            pytest.skip("no named pipes here")
        record = record_path(folder, NEWEST)
        record.unlink()
        os.mkfifo(record)
        checkpoints = KerasCheckpointDataset(filepath=str(folder)).load()
        done = threading.Thread(target=checkpoints.restore, daemon=True)
        done.start()
        done.join(timeout=30)
        if done.is_alive():  # blocked on open: a writer's open and close let it go, with EOF
            os.close(os.open(record, os.O_WRONLY | os.O_NONBLOCK))
            done.join(timeout=30)
            pytest.fail("restore() blocked opening a named pipe")
        assert checkpoints.restored == OLDER

    def test_random_states_that_do_not_fit_the_model_are_not_restored(self, folder, caplog):
        # Well-formed, but not the shape of the model's SeedGenerator (2,): not
        # allocated, not assigned, and the checkpoint itself is fine.
        changed(random_states=[{"dtype": "int64", "value": [1, 2, 3]}])(record_path(folder, NEWEST))
        checkpoints = KerasCheckpointDataset(filepath=str(folder)).load()
        with caplog.at_level(logging.WARNING, logger="kedro_keras"):
            checkpoints.restore()
        assert checkpoints.restored == NEWEST and checkpoints.initial_epoch == 2
        assert "random generators (Dropout's, ...) differ" in caplog.text

    def test_the_preview_shows_record_text_escaped(self, folder):
        record = genuine_record(folder)
        record["saved_at"] = "\x1b]0;owned\x07today"
        record["logs"] = {"\x1b[31mloss\nforged": 0.5}
        record_path(folder, NEWEST).write_text(json.dumps(record))

        preview = KerasCheckpointDataset(filepath=str(folder)).preview()
        shown = json.dumps(preview)
        rows = dict(preview["data"])
        assert "\\x1b]0;owned\\x07today" in rows["newest"]
        assert rows["newest metrics"] == "\\x1b[31mloss\\nforged 0.5"
        assert "\\u001b" not in shown and "could not read" not in rows

    def test_genuine_records_are_small_and_their_random_states_allowlisted(self, folder):
        # The bounds above leave genuine records far inside them, on every backend.
        for version in (NEWEST, OLDER):
            record = genuine_record(folder, version)
            assert record["random_states"] and record["random_states"][0]["dtype"] in (
                "int32",
                "uint32",
                "int64",
            )
            assert os.path.getsize(record_path(folder, version)) < 4096


class TestWriting:
    def test_a_position_the_name_cannot_hold_is_refused_before_anything_is_written(self, tmp_path):
        dataset = KerasCheckpointDataset(filepath=str(tmp_path / "c"))
        callback = dataset.load().callback()
        callback.set_model(build())
        with pytest.raises(DatasetError, match="named for up to 99999 epochs .* at epoch 100000"):
            callback.on_epoch_end(99_999, {"loss": 1.0})
        assert dataset.versions() == [] and not (tmp_path / "c").exists()


class TestPruningDuringFit:
    def test_fit_goes_on_past_a_planted_record_it_cannot_rank_and_warns_once_escaped(self, tmp_path, caplog):
        folder = tmp_path / "c"
        dataset = KerasCheckpointDataset(filepath=str(folder), keep_last=1, monitor="loss")
        fit(build(), dataset.load(), epochs=1)
        (folder / "ckpt-finished.json").unlink()  # as a run killed after its epoch: it goes on
        # Planted as the newest checkpoint, so that every pruning step meets it.
        planted = "e00009-s0000000"
        shutil.copyfile(folder / f"ckpt-{OLDER}.keras", folder / f"ckpt-{planted}.keras")
        shutil.copyfile(record_path(folder, OLDER), record_path(folder, planted))
        changed(epoch=9, value="\x1b[31mlow\nWARNING forged")(record_path(folder, planted))

        with caplog.at_level(logging.WARNING, logger="kedro_keras"):
            history = fit(build(), dataset.load(), epochs=3)

        assert history.epoch == [0, 1, 2]
        warnings = [
            r.getMessage() for r in caplog.records if f"Checkpoint {planted} is not ranked" in r.getMessage()
        ]
        assert len(warnings) == 1, warnings
        assert "'value' is '\\x1b[31mlow\\nWARNING forged', not a number" in warnings[0]
        assert "\x1b" not in caplog.text and "\nWARNING forged" not in caplog.text
        # Kept as the newest; the genuine best (lowest loss) is kept beside it.
        assert dataset.versions()[0] == planted and len(dataset.versions()) == 2
        (folder / "ckpt-finished.json").unlink()  # killed at the end: the next run resumes
        checkpoints = dataset.load()
        checkpoints.restore()
        assert checkpoints.restored == dataset.versions()[1] and checkpoints.initial_epoch >= 1

    def test_best_passes_over_an_unrankable_record(self, folder):
        changed(value="high")(record_path(folder, NEWEST))
        changed(value=0.25)(record_path(folder, OLDER))
        dataset = KerasCheckpointDataset(filepath=str(folder), monitor="loss")
        assert dataset._best_version(dataset.versions()) == OLDER
        assert isinstance(dataset.load().best(), keras.Model)


class TestVersionNames:
    @pytest.mark.parametrize(
        "planted",
        [
            "e00003-s0000000\n",
            "e00003-s0000000\nINFO forged",
            "e00003\x1b[2J-s0000000",
            "e\u0663\u0660\u0660\u0660\u0663-s0000000",
        ],
        ids=["trailing-newline", "forged-row", "escape", "arabic-digits"],
    )
    def test_a_planted_name_that_is_not_ours_is_ignored(self, folder, planted, caplog):
        shutil.copyfile(folder / f"ckpt-{NEWEST}.keras", folder / f"ckpt-{planted}.keras")
        shutil.copyfile(record_path(folder, NEWEST), folder / f"ckpt-{planted}.json")
        dataset = KerasCheckpointDataset(filepath=str(folder), keep_last=1)

        assert dataset.versions() == [NEWEST, OLDER]
        checkpoints = dataset.load()
        with caplog.at_level(logging.INFO, logger="kedro_keras"):
            checkpoints.restore()
            dataset._prune()  # removes OLDER, never the planted files
        assert checkpoints.restored == NEWEST
        assert "\x1b" not in caplog.text and "forged" not in caplog.text
        assert (folder / f"ckpt-{planted}.json").exists() and not record_path(folder, OLDER).exists()

    @pytest.mark.parametrize(
        "version", ["e00003-s0000000\n", "../e00003-s0000000", "e00003-s0000000/x", "\x1b[2J"]
    )
    def test_a_pinned_version_that_is_not_one_is_refused_escaped(self, tmp_path, version):
        with pytest.raises(DatasetError, match="is not a checkpoint version") as raised:
            KerasCheckpointDataset(filepath=str(tmp_path / "c"), load_version=version)
        assert "\x1b" not in str(raised.value) and "\n" not in str(raised.value)

    def test_no_path_is_built_from_a_name_that_is_not_a_version(self, tmp_path):
        dataset = KerasCheckpointDataset(filepath=str(tmp_path / "c"))
        with pytest.raises(DatasetError, match="is not a checkpoint version"):
            dataset._record("../../etc/passwd")


class TestSafeMode:
    @pytest.mark.parametrize("safe_mode", [None, "false", 0, ""])
    def test_a_safe_mode_that_is_not_a_bool_is_refused_when_the_catalog_is_built(self, tmp_path, safe_mode):
        with pytest.raises(DatasetError, match="load_args.safe_mode"):
            KerasCheckpointDataset(filepath=str(tmp_path / "c"), load_args={"safe_mode": safe_mode})
