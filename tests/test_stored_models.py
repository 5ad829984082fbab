"""The one protocol `kedro keras` and verification use (``StoredModels``),
on every dataset that keeps versions: the versions, newest first; the path a
version's load reads; verify and compare by version; removing a version. And
what each command says where it does not apply (issue #28: no switch on
type names in the CLI)."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from kedro.io.core import DatasetError, Version, VersionNotFoundError

from kedro_keras import (
    KerasCheckpointDataset,
    KerasExportDataset,
    KerasModelDataset,
    KerasTimestampedModelDataset,
    KerasWeightsDataset,
    cli,
)

OLDER, NEWER = "2026-01-01T00.00.00.000Z", "2026-01-02T00.00.00.000Z"


def fitted(seed):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="dense")], name="m")
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((4, 3)), np.ones((4, 2)), verbose=0)
    return model


def kedro_versioned(make):
    """Two saves of a ``versioned: true`` entry, at fixed versions."""

    def save_two(tmp_path):
        for seed, version in ((1, OLDER), (2, NEWER)):
            make(tmp_path, Version(None, version)).save(fitted(seed))
        return make(tmp_path, Version(None, None))

    return save_two


def history(tmp_path):
    dataset = KerasTimestampedModelDataset(filepath=str(tmp_path / "history"))
    for seed in (1, 2):
        dataset.save(fitted(seed))
    return KerasTimestampedModelDataset(filepath=str(tmp_path / "history"))


def checkpoints(tmp_path):
    dataset = KerasCheckpointDataset(filepath=str(tmp_path / "checkpoints"), keep_last=None)
    model = fitted(1)
    model.fit(np.ones((4, 3)), np.ones((4, 2)), epochs=2, verbose=0, callbacks=[dataset.load().callback()])
    return dataset


ENTRIES = {
    "model": kedro_versioned(
        lambda tmp_path, version: KerasModelDataset(filepath=str(tmp_path / "m.keras"), version=version)
    ),
    "weights": kedro_versioned(
        lambda tmp_path, version: KerasWeightsDataset(
            filepath=str(tmp_path / "m.weights.h5"), version=version
        )
    ),
    "sharded weights": kedro_versioned(
        lambda tmp_path, version: KerasWeightsDataset(
            filepath=str(tmp_path / "m.weights.json"), version=version, save_args={"max_shard_size": 1e-8}
        )
    ),
    "history": history,
    "checkpoints": checkpoints,
}
if keras.backend.backend() == "tensorflow":  # SavedModel exports are TensorFlow's
    ENTRIES["saved model export"] = kedro_versioned(
        lambda tmp_path, version: KerasExportDataset(
            filepath=str(tmp_path / "m_saved_model"), version=version, load_args={"safe_mode": False}
        )
    )
# diff compares the arrays of weights files: what it says elsewhere is tested below.
COMPARABLE = {"model", "weights", "history", "checkpoints"}


@pytest.mark.parametrize("kind", list(ENTRIES))
def test_every_dataset_that_keeps_versions_answers_the_protocol(tmp_path, kind):
    dataset = ENTRIES[kind](tmp_path)
    versions = dataset.stored_versions()
    assert dataset.keeps_versions and len(versions) == 2
    newest, oldest = versions
    assert newest.name > oldest.name  # every kind's names sort in time order
    if kind not in ("history", "checkpoints"):
        assert (newest.name, oldest.name) == (NEWER, OLDER)

    assert dataset.stored_path() == newest.path  # what a load reads now
    assert dataset.stored_path(oldest.name) == oldest.path
    for version in (newest, oldest):
        assert "CRC-32" in dataset.verify(version.name) or "SHA-256" in dataset.verify(version.name)
    if kind in COMPARABLE:
        rows = {row["group"]: row["change"] for row in dataset.compare(oldest.name, newest.name)}
        assert rows["layers/dense"].startswith("max |difference| "), rows  # different seeds
        same = {row["group"]: row["change"] for row in dataset.compare(newest.name, newest.name)}
        assert set(same.values()) == {"same"}, same
    else:
        with pytest.raises(DatasetError, match="diff compares"):
            dataset.compare(oldest.name, newest.name)

    assert dataset.saved_at(newest) == pytest.approx(os.path.getmtime(newest.path), abs=1)

    dataset.remove_version(oldest)
    assert [version.name for version in dataset.stored_versions()] == [newest.name]
    with pytest.raises(VersionNotFoundError, match=f"no (version|checkpoint) '{oldest.name}'"):
        dataset.stored_path(oldest.name)
    with pytest.raises(VersionNotFoundError):  # a name that would leave the folder is no version
        dataset.stored_path("../../etc/passwd")


def test_an_entry_that_keeps_one_file_says_so(tmp_path):
    dataset = KerasModelDataset(filepath=str(tmp_path / "m.keras"))
    dataset.save(fitted(1))
    assert not dataset.keeps_versions
    assert dataset.stored_path() == tmp_path / "m.keras"
    assert "CRC-32" in dataset.verify()
    for ask in (dataset.stored_versions, lambda: dataset.stored_path("x")):
        with pytest.raises(VersionNotFoundError, match="keeps one file, not versions: add versioned: true"):
            ask()


def test_the_preview_of_every_versioned_entry_lists_its_versions(tmp_path):
    dataset = ENTRIES["weights"](tmp_path)
    rows = dict(dataset.preview()["data"])
    assert rows["versions"] == "2, newest first"
    assert {f"version {NEWER}", f"version {OLDER}"} <= set(rows)


@pytest.fixture
def entry(monkeypatch):
    """The CLI pointed at one dataset, as if the catalog held it."""

    def point_at(dataset):
        monkeypatch.setattr(cli, "_entry", lambda name, env, version: dataset)
        return lambda *args: CliRunner().invoke(cli.commands, ["keras", *args])

    return point_at


def test_verify_tells_a_missing_version_from_damage(tmp_path, entry):
    run = entry(ENTRIES["model"](tmp_path))
    missing = run("verify", "m", "--version", "2030-01-01T00.00.00.000Z")
    assert missing.exit_code == 1 and "DAMAGED" not in missing.output
    assert "has no version '2030-01-01T00.00.00.000Z'" in missing.output

    intact = run("verify", "m", "--version", OLDER)
    assert intact.exit_code == 0 and intact.output.startswith("m: intact (")

    nothing = entry(KerasModelDataset(filepath=str(tmp_path / "never.keras")))("verify", "never")
    assert nothing.exit_code == 1 and "DAMAGED" not in nothing.output
    assert "nothing is saved at" in nothing.output


def test_inspect_of_a_version_that_is_not_there_is_an_error(tmp_path, entry):
    """It said 'stored: nothing saved yet' and exited 0 (#30)."""
    run = entry(ENTRIES["model"](tmp_path))
    missing = run("inspect", "m", "--version", "2030-01-01T00.00.00.000Z")
    assert missing.exit_code == 1, missing.output
    (line,) = missing.output.splitlines()
    assert line.startswith("Error: cannot inspect m 2030-01-01T00.00.00.000Z: ")
    assert f"has no version '2030-01-01T00.00.00.000Z'. Newest versions there: {NEWER}, {OLDER}." in line
    there = run("inspect", "m", "--version", OLDER)
    assert there.exit_code == 0 and "nothing saved yet" not in there.output


def test_a_dry_run_counts_what_would_remain(tmp_path, entry):
    """It printed 'would remove' lines, then '2 version(s) kept of 2' (#30)."""
    run = entry(ENTRIES["model"](tmp_path))
    result = run("prune", "m", "--keep-last", "1", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"would remove m version {OLDER}",
        "m: 1 version(s) of 2 would remain (dry run: nothing removed)",
    ]
    assert len(run("prune", "m", "--keep-last", "1", "--dry-run").output.splitlines()) == 2  # nothing went


def test_prune_removes_the_oldest_versions_of_any_kind_through_the_protocol(tmp_path, entry):
    run = entry(ENTRIES["sharded weights"](tmp_path))
    result = run("prune", "w", "--keep-last", "1")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [f"removed w version {OLDER}", "w: 1 version(s) kept of 2"]
    assert sorted(p.name for p in (tmp_path / "m.weights.json").iterdir()) == [NEWER]


def test_diff_says_when_it_does_not_apply(tmp_path, entry):
    run = entry(KerasWeightsDataset(filepath=str(tmp_path / "m.weights.json"), version=Version(None, None)))
    result = run("diff", "w", OLDER, NEWER)
    assert result.exit_code == 1
    assert "sharded weights and Orbax folders are not compared yet" in result.output

    run = entry(KerasModelDataset(filepath=str(tmp_path / "one.keras")))
    result = run("diff", "m", OLDER, NEWER)
    assert result.exit_code == 1 and "keeps one file, not versions" in result.output


def test_a_mistyped_history_version_is_no_such_version_not_damage(tmp_path, entry):
    run = entry(ENTRIES["history"](tmp_path))
    result = run("verify", "h", "--version", "2026-11-21")
    assert result.exit_code == 1 and "DAMAGED" not in result.output and "has no version" in result.output


def test_an_incomplete_version_does_not_count_and_is_never_what_prune_keeps(tmp_path, entry):
    """A SavedModel still uploading (no manifest yet) is not the newest
    version: prune --keep-last 1 keeps the last complete one."""
    if "saved model export" not in ENTRIES:  # SavedModels are TensorFlow's; the same listing serves all
        dataset = ENTRIES["model"](tmp_path)
        (tmp_path / "m.keras" / "2099-01-01T00.00.00.000Z").mkdir()  # a version folder, nothing saved yet
    else:
        dataset = ENTRIES["saved model export"](tmp_path)
        (tmp_path / "m_saved_model" / "2099-01-01T00.00.00.000Z" / "m_saved_model" / "export-0").mkdir(
            parents=True
        )
    assert [version.name for version in dataset.stored_versions()] == [NEWER, OLDER]
    result = entry(dataset)("prune", "x", "--keep-last", "1")
    assert result.exit_code == 0, result.output
    assert [version.name for version in dataset.stored_versions()] == [NEWER]


def test_prune_keeps_the_checkpoint_best_by_monitor_as_the_datasets_own_pruning_does(tmp_path, entry):
    dataset = KerasCheckpointDataset(filepath=str(tmp_path / "c"), keep_last=None, monitor="loss", mode="min")
    model = fitted(1)
    callback = dataset.load().callback()
    callback.set_model(model)
    for epoch, loss in enumerate([0.9, 0.1, 0.5, 0.7]):  # the best is the second
        callback.on_epoch_end(epoch, {"loss": loss})
    result = entry(dataset)("prune", "c", "--keep-last", "1")
    assert result.exit_code == 0, result.output
    assert "kept c version e00002-s0000000: the best by loss" in result.output
    assert dataset.versions() == ["e00004-s0000000", "e00002-s0000000"]
    assert result.output.splitlines()[-1] == "c: 2 version(s) kept of 4"
