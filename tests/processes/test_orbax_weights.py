"""``KerasWeightsDataset`` with an ``.orbax`` folder, in one JAX process
(the multi-process saves and loads are in test_processes.py): the commit,
what a reader sees of a save that died, and folders from strangers."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np
import pytest
from kedro.io import DatasetError
from kedro.io.core import Version

from kedro_keras import KerasWeightsDataset
from kedro_keras._dataset import orbax_commit
from kedro_keras._io.progress import size_text


def build(units: int = 32) -> keras.Model:
    return keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(units, activation="relu"), keras.layers.Dense(3)],
        name="orbaxed",
    )


@pytest.fixture
def trained() -> keras.Model:
    keras.utils.set_random_seed(3)
    model = build()
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(0)
    model.fit(
        rng.random((32, 6), dtype=np.float32), rng.random((32, 3), dtype=np.float32), epochs=2, verbose=0
    )
    return model


def state_of(model: keras.Model) -> list[np.ndarray]:
    return [np.asarray(v.value) for v in model.weights + model.optimizer.variables]


def assert_same_state(got: keras.Model, want: keras.Model) -> None:
    mine, theirs = state_of(got), state_of(want)
    assert len(mine) == len(theirs) > 4
    for position, (one, other) in enumerate(zip(mine, theirs, strict=True)):
        np.testing.assert_array_equal(one, other, err_msg=f"array {position}")


def entry_args(where: str, tmp_path: Path, request) -> dict:
    if where == "local":
        return {"filepath": str(tmp_path / "model.orbax")}
    bucket = request.getfixturevalue("s3_bucket")
    return {"filepath": f"{bucket}/model.orbax", "credentials": request.getfixturevalue("s3_credentials")}


def index_of(entry: KerasWeightsDataset) -> dict:
    folder = entry.stored_path()
    return json.loads(entry._location.fs.cat_file(str(folder / "index.json")))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_an_orbax_folder_round_trips_bit_for_bit_and_a_second_save_replaces_the_first(
    tmp_path, where, request, trained
):
    entry = KerasWeightsDataset(**entry_args(where, tmp_path, request))
    entry.save(trained)
    first_state = index_of(entry)["state"]
    assert_same_state(entry.load(), trained)  # rebuilt from the architecture in the index, compiled

    rng = np.random.default_rng(1)
    trained.fit(
        rng.random((32, 6), dtype=np.float32), rng.random((32, 3), dtype=np.float32), epochs=1, verbose=0
    )
    entry.save(trained)
    index = index_of(entry)
    assert index["state"] != first_state and index["processes"] == 1
    fs, folder = entry._location.fs, entry.stored_path()
    states = sorted(path.rsplit("/", 1)[-1] for path in fs.ls(str(folder), detail=False))
    assert states == sorted(["index.json", index["state"]])  # the first state was removed
    loaded = entry.load()
    assert_same_state(loaded, trained)
    x = rng.random((4, 6), dtype=np.float32)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), trained.predict(x, verbose=0))
    if where == "s3":  # Orbax wrote on this host first; that copy is gone
        assert not (Path(tempfile.gettempdir()) / "kedro-keras-orbax" / index["state"]).exists()


def test_a_builder_gets_the_weights_and_a_model_that_does_not_fit_is_refused(tmp_path, trained):
    KerasWeightsDataset(filepath=str(tmp_path / "m.orbax")).save(trained)
    built = KerasWeightsDataset(filepath=str(tmp_path / "m.orbax"), architecture=build).load()
    for got, want in zip(built.weights, trained.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(got.value), np.asarray(want.value))

    wider = KerasWeightsDataset(
        filepath=str(tmp_path / "m.orbax"), architecture=build, architecture_args={"units": 64}
    )
    with pytest.raises(
        DatasetError, match=r"do not fit the model 'orbaxed': '.*kernel' is \(6, 64\) float32"
    ):
        wider.load()


def test_a_save_that_fails_before_its_index_leaves_the_last_one_loadable(tmp_path, trained, monkeypatch):
    entry = KerasWeightsDataset(filepath=str(tmp_path / "m.orbax"))
    entry.save(trained)
    before = state_of(entry.load())
    reached = []

    def index_write_fails(*args, **kwargs):
        reached.append(True)
        raise OSError("No space left on device (injected)")

    monkeypatch.setattr(orbax_commit, "index_json", index_write_fails)
    rng = np.random.default_rng(2)
    trained.fit(
        rng.random((32, 6), dtype=np.float32), rng.random((32, 3), dtype=np.float32), epochs=1, verbose=0
    )
    with pytest.raises(DatasetError, match="No space left on device.*previously saved there are unchanged"):
        entry.save(trained)
    assert reached
    monkeypatch.undo()
    for got, want in zip(state_of(entry.load()), before, strict=True):
        np.testing.assert_array_equal(got, want)
    assert len([p for p in (tmp_path / "m.orbax").iterdir() if p.name.startswith("state-")]) == 1


def test_a_version_whose_save_died_before_its_index_is_not_loaded(tmp_path, trained):
    entry = KerasWeightsDataset(
        filepath=str(tmp_path / "m.orbax"), version=Version(None, "2026-12-07T00.00.00.000Z")
    )
    entry.save(trained)
    # A later version whose save was killed: Orbax's files, no index.
    died = (
        tmp_path
        / "m.orbax"
        / "2026-12-07T00.00.01.000Z"
        / "m.orbax"
        / "state-0123456789abcdef0123456789abcdef"
    )
    died.mkdir(parents=True)
    (died / "leftover").write_bytes(b"half a shard")
    latest = KerasWeightsDataset(filepath=str(tmp_path / "m.orbax"), version=Version(None, None))
    assert latest.exists()
    # The preview's size of a version is what its index commits, not the folder entry's.
    committed = sum(e["size"] for e in index_of(entry)["files"].values())
    assert ["version 2026-12-07T00.00.00.000Z", size_text(committed)] in latest.preview()["data"]
    assert_same_state(latest.load(), trained)  # the newest complete version
    with pytest.raises(DatasetError, match="holds no index.json"):
        KerasWeightsDataset(
            filepath=str(tmp_path / "m.orbax"), version=Version("2026-12-07T00.00.01.000Z", None)
        ).load()


def test_verify_and_the_preview_read_the_index(tmp_path, trained):
    entry = KerasWeightsDataset(filepath=str(tmp_path / "m.orbax"))
    assert "nothing saved yet" in json.dumps(entry.preview())
    entry.save(trained)
    index = index_of(entry)
    said = entry.verify()
    assert said.startswith(f"{len(index['files'])} files (")
    assert f"{sum(e['size'] for e in index['files'].values()):,} bytes" in said
    preview = json.dumps(entry.preview())
    assert "Orbax folder, written by 1 process(es)" in preview
    assert f"{len(trained.weights)} weights, {len(trained.optimizer.variables)} of the optimizer" in preview


def damaged(tmp_path: Path, trained: keras.Model) -> tuple[KerasWeightsDataset, Path, dict]:
    entry = KerasWeightsDataset(filepath=str(tmp_path / "m.orbax"))
    entry.save(trained)
    folder = tmp_path / "m.orbax"
    return entry, folder, json.loads((folder / "index.json").read_text())


def test_a_changed_file_is_found_by_load_and_by_verify(tmp_path, trained):
    entry, folder, index = damaged(tmp_path, trained)
    name = max(index["files"], key=lambda n: index["files"][n]["size"])  # an array file
    path = folder / index["state"] / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    for attempt in (entry.load, entry.verify):
        with pytest.raises(DatasetError, match=f"are damaged: '{index['state']}/{name}' does not match"):
            attempt()


def test_a_missing_file_and_a_file_the_index_does_not_list_are_refused(tmp_path, trained):
    entry, folder, index = damaged(tmp_path, trained)
    (folder / index["state"] / "weights" / "extra").write_bytes(b"not in the index")
    with pytest.raises(
        DatasetError, match="hold 'weights/extra' in their state folder, which the index does not"
    ):
        entry.load()
    (folder / index["state"] / "weights" / "extra").unlink()
    name = sorted(index["files"])[0]
    (folder / index["state"] / name).unlink()
    with pytest.raises(DatasetError, match=f"incomplete: '{index['state']}/{name}', listed in their index"):
        entry.load()


def test_a_link_in_the_state_folder_is_refused(tmp_path, trained):
    entry, folder, index = damaged(tmp_path, trained)
    name = sorted(index["files"])[0]
    target = folder / index["state"] / name
    outside = tmp_path / "outside"
    shutil.copyfile(target, outside)
    target.unlink()
    target.symlink_to(outside)
    with pytest.raises(DatasetError, match="which the index does not list: refused"):
        entry.load()


@pytest.mark.parametrize(
    ("change", "cause"),
    [
        (lambda index: index.update(format="something else"), "its 'format' is not"),
        (lambda index: index.update(state="../elsewhere"), "'state' is '../elsewhere', not a state-"),
        (
            lambda index: index["files"].update({"../../etc/passwd": {"size": 1, "sha256": "0" * 64}}),
            "a path outside",
        ),
        (lambda index: index["groups"]["weights"][0].update(shape=[10**12, "x"]), "is not a list of sizes"),
        (lambda index: index.update(processes=True), "'processes' is not a number"),
    ],
    ids=["format", "state", "file-outside", "shape", "processes"],
)
def test_an_index_that_is_not_ours_is_refused_with_its_cause(tmp_path, trained, change, cause):
    entry, folder, index = damaged(tmp_path, trained)
    change(index)
    (folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(DatasetError, match="is not an index kedro-keras wrote") as raised:
        entry.load()
    assert cause in str(raised.value)


def test_an_architecture_with_code_is_refused_in_safe_mode(tmp_path, trained):
    entry, folder, index = damaged(tmp_path, trained)
    architecture = json.loads(index["architecture"])
    architecture["config"]["layers"].append(
        {
            "class_name": "Lambda",
            "config": {"name": "evil", "function": {"class_name": "__lambda__", "config": {}}},
        }
    )
    index["architecture"] = json.dumps(architecture)
    (folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(DatasetError, match="Refusing the architecture at .*Lambda"):
        entry.load()


def test_save_args_are_checked_when_the_catalog_is_built(tmp_path):
    with pytest.raises(DatasetError, match="max_shard_size"):
        KerasWeightsDataset(filepath=str(tmp_path / "m.orbax"), save_args={"max_shard_size": 1})
