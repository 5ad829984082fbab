"""Integrity and safe loading: damaged, foreign and hostile files.

What tests/test_keras_model_dataset.py and test_keras_weights_dataset.py
already cover (a truncated .keras/.h5/.weights.h5, flipped weight bytes in a
.keras locally and on S3, a foreign file, a zip that is not a model, Lambda
refused in each format, bad import paths) is not repeated here. Added:

- more damage: empty files, a flipped byte in ``config.json`` or the central
  directory, weights spliced from another model, a duplicated region, files of
  one format under another's name, a truncated ``architecture.json``, and
  truncated objects on S3; each is a ``DatasetError`` naming the file;
- a flipped byte in an array of a ``.h5``/``.weights.h5`` we wrote (caught by
  the CRC-32 trailer after the HDF5 image);
- proof that refused code never runs: a Lambda that would create a file, an
  import path that would create a file if it were evaluated, and a config
  naming a module that would create a file if it were imported;
- hostile archives: zip bombs (weights, config, metadata, assets) and member
  names that point outside (``../../x``, ``/abs/x``, ``assets/../../x``),
  loaded in a child process that reports its peak memory and bytes written.
"""

from __future__ import annotations

import json
import os
import re
import struct
import sys
import uuid
import warnings
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from kedro.io import DatasetError

import keras_test_models
from conftest import fit
from kedro_keras import KerasModelDataset, KerasTimestampedModelDataset, KerasWeightsDataset
from reliability_helpers import archives, file_layer_only_once
from reliability_helpers.archives import Member, build_zip, member_span, members_of
from reliability_helpers.workers import LoadWorker

FILE_NAMES = {"keras": "model.keras", "h5": "model.h5", "weights": "model.weights.h5"}


def make_files(model: keras.Model, folder: Path) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        KerasModelDataset(filepath=str(folder / "model.keras")).save(model)
        KerasModelDataset(filepath=str(folder / "model.h5")).save(model)
    KerasWeightsDataset(filepath=str(folder / "model.weights.h5")).save(model)
    return {
        "keras": (folder / "model.keras").read_bytes(),
        "h5": (folder / "model.h5").read_bytes(),
        "weights": (folder / "model.weights.h5").read_bytes(),
        "architecture": (folder / "model.architecture.json").read_bytes(),
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory, data):
    """Files of two models with the same architecture and different weights."""
    keras.utils.set_random_seed(11)
    first = fit(keras_test_models.build_functional(), data)
    second = fit(keras_test_models.build_functional(), data, epochs=3)
    folder = tmp_path_factory.mktemp("integrity")
    return {"a": make_files(first, folder / "a"), "b": make_files(second, folder / "b"), "model": first}


def place(folder: Path, kind: str, data: bytes, architecture: bytes | None = None) -> Path:
    path = folder / FILE_NAMES[kind]
    path.write_bytes(data)
    if kind == "weights" and architecture is not None:
        (folder / "model.architecture.json").write_bytes(architecture)
    return path


def dataset_for(kind: str, path: Path | str, **kwargs):
    if kind == "weights":
        return KerasWeightsDataset(filepath=str(path), **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "h5":
            kwargs.setdefault("load_args", {"compile": False})
        return KerasModelDataset(filepath=str(path), **kwargs)


def flipped(data: bytes, position: int) -> bytes:
    out = bytearray(data)
    out[position] ^= 0xFF
    return bytes(out)


def h5_array_offset(data: bytes, tmp_path: Path) -> int:
    """File offset of the middle of the first kernel array an HDF5 file holds."""

    def want(name: str) -> bool:
        return name.endswith("kernel") or "/vars/0" in name

    path = tmp_path / "probe.h5"
    path.write_bytes(data)
    found = []

    def visit(name, item):
        if (
            isinstance(item, h5py.Dataset)
            and item.size > 8
            and want(name)
            and not name.startswith("optimizer")
        ):
            offset = item.id.get_offset()
            if offset is not None:
                found.append((name, offset, item.id.get_storage_size()))

    with h5py.File(path, "r") as h5_file:
        h5_file.visititems(visit)
    path.unlink()
    assert found, "no contiguous weight array found"
    _, offset, size = found[0]
    return offset + size // 2


# --------------------------------------------------------------------------
# Damaged and foreign files: a DatasetError that names the file
# --------------------------------------------------------------------------


def keras_config_flipped(files, tmp_path):
    offset, size = member_span(files["a"]["keras"], "config.json")
    return flipped(files["a"]["keras"], offset + size // 2)


def keras_weights_from_other_model(files, tmp_path):
    ours, theirs = files["a"]["keras"], files["b"]["keras"]
    offset, size = member_span(ours, "model.weights.h5")
    their_offset, their_size = member_span(theirs, "model.weights.h5")
    assert size == their_size, "the two models' weights differ in size"
    return ours[:offset] + theirs[their_offset : their_offset + size] + ours[offset + size :]


def keras_region_duplicated(files, tmp_path):
    offset, size = member_span(files["a"]["keras"], "model.weights.h5")
    data, middle = files["a"]["keras"], offset + size // 2
    return data[:middle] + data[middle - 64 : middle] + data[middle:]


def keras_central_crc_flipped(files, tmp_path):
    """Flip a byte of the CRC-32 the central directory records for the weights."""
    data = files["a"]["keras"]
    end = data.rfind(b"PK\x05\x06")
    (entries,) = struct.unpack("<H", data[end + 10 : end + 12])
    (directory,) = struct.unpack("<I", data[end + 16 : end + 20])
    entry = directory
    for _ in range(entries):
        assert data[entry : entry + 4] == b"PK\x01\x02"
        name_length, extra_length, comment_length = struct.unpack("<HHH", data[entry + 28 : entry + 34])
        if data[entry + 46 : entry + 46 + name_length] == b"model.weights.h5":
            return flipped(data, entry + 16)
        entry += 46 + name_length + extra_length + comment_length
    raise AssertionError("no central directory entry for model.weights.h5")


def h5_superblock_flipped(files, tmp_path):
    return flipped(files["a"]["h5"], 0)


def weights_superblock_flipped(files, tmp_path):
    return flipped(files["a"]["weights"], 0)


DAMAGE = {
    "keras: empty file (what a failed plain-Keras save leaves)": ("keras", lambda f, t: b""),
    "keras: a byte of config.json flipped": ("keras", keras_config_flipped),
    "keras: weights spliced from another model": ("keras", keras_weights_from_other_model),
    "keras: a region of the weights duplicated": ("keras", keras_region_duplicated),
    "keras: the central directory's CRC-32 flipped": ("keras", keras_central_crc_flipped),
    "h5: empty file": ("h5", lambda f, t: b""),
    "h5: HDF5 signature flipped": ("h5", h5_superblock_flipped),
    "h5: a weights-only file under a model name": ("h5", lambda f, t: f["a"]["weights"]),
    "weights: empty file": ("weights", lambda f, t: b""),
    "weights: HDF5 signature flipped": ("weights", weights_superblock_flipped),
    "weights: a .keras archive under a .weights.h5 name": ("weights", lambda f, t: f["a"]["keras"]),
    "weights: a whole-model .h5 under a .weights.h5 name": ("weights", lambda f, t: f["a"]["h5"]),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_or_foreign_file_is_a_dataset_error_naming_it(case, files, tmp_path, keras_api):
    kind, damage = DAMAGE[case]
    path = place(tmp_path, kind, damage(files, tmp_path), files["a"]["architecture"])
    with pytest.raises(DatasetError) as error:
        dataset_for(kind, path).load()
    assert str(path) in str(error.value)


@pytest.mark.parametrize("kind, holds", [("keras", "h5"), ("h5", "keras")])
def test_a_whole_model_under_the_other_model_name_loads_as_what_it_holds(
    kind, holds, files, tmp_path, keras_api
):
    """Content, not the name, decides how a model file is read (a .keras
    archive under a .h5 name is what TensorFlowModelDataset writes)."""
    path = place(tmp_path, kind, files["a"][holds])
    loaded = dataset_for(kind, path).load()
    for ours, theirs in zip(loaded.get_weights(), files["model"].get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_spliced_weights_are_reported_as_corrupt(files, tmp_path):
    path = place(tmp_path, "keras", keras_weights_from_other_model(files, tmp_path))
    with pytest.raises(
        DatasetError, match=r"model\.keras' is corrupt: the weights do not match their checksum"
    ):
        dataset_for("keras", path).load()


def test_truncated_architecture_json_is_a_dataset_error_naming_it(files, tmp_path):
    path = place(tmp_path, "weights", files["a"]["weights"], files["a"]["architecture"][:100])
    with pytest.raises(DatasetError) as error:
        dataset_for("weights", path).load()
    assert str(tmp_path / "model.architecture.json") in str(error.value)


@pytest.mark.parametrize("kind", ["keras", "h5", "weights"])
def test_truncated_object_on_s3_is_a_dataset_error_naming_its_url(kind, files, s3_bucket, s3_credentials):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_credentials)
    data = files["a"][kind]
    url = f"{s3_bucket}/damaged/{FILE_NAMES[kind]}"
    fs.pipe_file(url, data[: len(data) * 2 // 3])
    fs.pipe_file(f"{s3_bucket}/damaged/model.architecture.json", files["a"]["architecture"])
    with pytest.raises(DatasetError) as error:
        dataset_for(kind, url, credentials=s3_credentials).load()
    assert url in str(error.value)


def test_damaged_version_in_a_history_is_a_dataset_error_naming_it(files, tmp_path):
    """A damaged newest file in a history is reported, never skipped for an older one."""
    history = KerasTimestampedModelDataset(filepath=str(tmp_path / "h"))
    history.save(files["model"])
    newest = tmp_path / "h" / f"model_{history.versions()[0]}.keras"
    newest.write_bytes(keras_weights_from_other_model(files, tmp_path))
    with pytest.raises(DatasetError, match="is corrupt") as error:
        KerasTimestampedModelDataset(filepath=str(tmp_path / "h")).load()
    assert str(newest) in str(error.value)


@pytest.mark.parametrize("kind", ["h5", "weights"])
def test_flipped_weight_byte_in_hdf5_file_is_detected(kind, files, tmp_path):
    """The CRC-32 trailer after the HDF5 image catches a flipped byte in a
    kernel, which HDF5 itself would load without complaint."""
    data = files["a"][kind]
    path = place(tmp_path, kind, flipped(data, h5_array_offset(data, tmp_path)), files["a"]["architecture"])
    with pytest.raises(DatasetError, match=f"'{re.escape(str(path))}' is corrupt"):
        dataset_for(kind, path).load()


def assert_fails_cleanly_in_a_worker(tmp_path, kind, path):
    """Load in a child process with a time limit: a hang fails the test
    instead of freezing it; the load must be a DatasetError naming the file."""
    worker = LoadWorker(tmp_path / "worker", timeout=10)
    try:
        result = worker.load(kind, path)
    finally:
        worker.close()
    assert result["outcome"] == "dataset_error", result
    assert str(path) in result["message"]


def test_damaged_legacy_h5_does_not_hang(files, tmp_path):
    """Zeroed bytes inside the attributes of a legacy .h5 (found by the fuzz
    test) send libhdf5 1.14.6 into an endless loop in ``attrs["model_config"]``
    that holds the GIL (HDFGroup/hdf5#1707, h5py/h5py#2088); plain
    ``keras.saving.load_model`` hangs. The load must end with a DatasetError
    instead: the headers are first read in a child process with a time limit
    (KEDRO_KERAS_H5_PROBE_SECONDS, 5 s in the tests). The load itself runs in
    a worker process too, so that a regression fails instead of hanging."""
    data = bytearray(files["a"]["h5"])
    data[2327:4654] = bytes(4654 - 2327)
    path = place(tmp_path, "h5", bytes(data))
    assert_fails_cleanly_in_a_worker(tmp_path, "h5", path)


def test_damaged_weights_h5_does_not_hang(files, tmp_path):
    """72 bytes of the root group's header repeated (found by the fuzz test):
    h5py's ``visititems`` over the file never returns (plain Keras's
    ``load_weights`` fails at once with a RuntimeError). The load must end
    with a DatasetError. Loaded in a child process with a time limit."""
    data = files["a"]["weights"]
    path = place(tmp_path, "weights", data[:144] + data[72:], files["a"]["architecture"])
    assert_fails_cleanly_in_a_worker(tmp_path, "weights", path)


# --------------------------------------------------------------------------
# Refused code never runs
# --------------------------------------------------------------------------


def build_lambda_that_touches(marker: Path) -> keras.Model:
    # A lambda (not a def): Keras stores its bytecode, which runs on load. The
    # marker's path is a constant of that code (Keras cannot restore defaults).
    touch_and_double = eval(f"lambda tensor: (open({str(marker)!r}, 'a').close(), tensor * 2.0)[1]")  # noqa: S307

    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(1)(keras.layers.Lambda(touch_and_double)(inputs))
    return keras.Model(inputs, outputs, name="touching_lambda")


@pytest.mark.parametrize("kind", ["keras", "h5", "weights"])
def test_lambda_code_does_not_run_when_refused(kind, tmp_path, keras_api):
    marker = tmp_path / "lambda-ran"
    model = build_lambda_that_touches(marker)
    path = tmp_path / FILE_NAMES[kind]
    dataset_for(kind, path).save(model)
    marker.unlink()  # building the model ran it; loading must not

    with pytest.raises(DatasetError, match="safe_mode") as error:
        dataset_for(kind, path).load()
    assert not marker.exists(), "the Lambda's code ran although the model was refused"
    assert path.stem.split(".")[0] in str(error.value)

    # The probe works: trusting the file runs the code.
    load_args = {"safe_mode": False, "compile": False} if kind == "h5" else {"safe_mode": False}
    dataset_for(kind, path, load_args=load_args).load()
    assert marker.exists()


def evaluating_payloads(marker: Path) -> list[str]:
    return [
        f"__import__('pathlib').Path({str(marker)!r}).touch()",
        f"keras_test_models.Scale; open({str(marker)!r}, 'w')",
        f"exec(\"open({str(marker)!r}, 'w')\")",
        f"keras_test_models.Scale if open({str(marker)!r}, 'w') else None",
        f"os.system('touch {marker}')",
        "keras_test_models.Scale\nimport os",
        f"keras_test_models:Scale;open({str(marker)!r},'w')",
    ]


def test_import_paths_are_never_evaluated(tmp_path, files):
    marker = tmp_path / "evaluated"
    keras_path = place(tmp_path, "keras", files["a"]["keras"])
    weights_path = place(tmp_path, "weights", files["a"]["weights"], files["a"]["architecture"])
    history = KerasTimestampedModelDataset(filepath=str(tmp_path / "h"))
    history.save(files["model"])
    for payload in evaluating_payloads(marker):
        attempts = [
            lambda payload=payload: KerasModelDataset(
                filepath=str(keras_path), load_args={"custom_objects": {"Scale": payload}}
            ).load(),
            lambda payload=payload: KerasModelDataset(
                filepath=str(keras_path), load_args={"custom_objects": [payload]}
            ).load(),
            lambda payload=payload: KerasTimestampedModelDataset(
                filepath=str(tmp_path / "h"), load_args={"custom_objects": {"Scale": payload}}
            ).load(),
            lambda payload=payload: KerasWeightsDataset(
                filepath=str(weights_path), architecture=payload
            ).load(),
            lambda payload=payload: KerasWeightsDataset(
                filepath=str(weights_path), load_args={"custom_objects": {"Scale": payload}}
            ).load(),
        ]
        for attempt in attempts:
            with pytest.raises(DatasetError, match="not an import path"):
                attempt()
            assert not marker.exists(), f"{payload!r} was evaluated"


@pytest.fixture
def module_that_touches(tmp_path, monkeypatch):
    """A module on sys.path whose import creates a file."""
    name = f"touching_module_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "imported"
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / f"{name}.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "import keras\n"
        "class Evil(keras.layers.Layer):\n    pass\n"
        "def payload(*args, **kwargs):\n    return args[0]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "modules"))
    yield name, marker
    sys.modules.pop(name, None)


def point_config_at(config: dict, module: str, how: str) -> dict:
    """Make the first Dense layer of a model config name ``module``."""
    text = json.dumps(config)
    config = json.loads(text)
    layers = config["config"]["layers"]
    dense = next(layer for layer in layers if layer["class_name"] == "Dense")
    if how == "class":
        dense.update(module=module, class_name="Evil", registered_name=f"{module}>Evil")
    else:
        dense["config"]["activation"] = {
            "module": module,
            "class_name": "function",
            "config": "payload",
            "registered_name": f"{module}>payload",
        }
    return config


@pytest.mark.parametrize("how", ["class", "function"])
@pytest.mark.parametrize("kind", ["keras", "h5", "weights"])
def test_modules_named_in_a_file_are_not_imported(kind, how, files, tmp_path, module_that_touches, keras_api):
    module, marker = module_that_touches
    path = tmp_path / FILE_NAMES[kind]
    if kind == "keras":
        members = members_of(files["a"]["keras"])
        for member in members:
            if member.name == "config.json":
                config = point_config_at(json.loads(member.payload), module, how)
                members[members.index(member)] = Member.plain("config.json", json.dumps(config).encode())
        path.write_bytes(build_zip(members))
    elif kind == "h5":
        path.write_bytes(files["a"]["h5"])
        with h5py.File(path, "r+") as h5_file:
            config = json.loads(h5_file.attrs["model_config"])
            h5_file.attrs["model_config"] = json.dumps(point_config_at(config, module, how))
    else:
        config = json.loads(files["a"]["architecture"])
        place(
            tmp_path,
            "weights",
            files["a"]["weights"],
            json.dumps(point_config_at(config, module, how)).encode(),
        )

    with pytest.raises(DatasetError) as error:
        dataset_for(kind, path).load()
    assert not marker.exists(), f"loading the {kind} file imported {module}"
    assert module not in sys.modules
    assert str(tmp_path) in str(error.value)


# --------------------------------------------------------------------------
# Hostile archives: zip bombs and paths that point outside
# --------------------------------------------------------------------------

BOMB_SIZE = 1100 * 2**20  # 1.1 GB of zeros, ~1 MB deflated
# A load may use memory and disk for what the file really holds (here a few
# KB); a bomb must not be inflated.
MAX_EXTRA_MEMORY = 256 * 2**20
MAX_WRITTEN = 64 * 2**20


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    worker = LoadWorker(tmp_path_factory.mktemp("hostile-worker"), timeout=120)
    yield worker
    worker.close()


def with_member(files, name: str, member: Member | None = None, drop: str | None = None) -> bytes:
    members = [m for m in members_of(files["a"]["keras"]) if m.name not in (name, drop)]
    if member is not None:
        members.append(member)
    return build_zip(members)


def bomb_in(member: str):
    """The archive with ``member`` replaced (or added) as 1.1 GB of deflated zeros."""
    return lambda files: with_member(files, member, archives.bomb(member, BOMB_SIZE))


BOMBS = {
    "model.weights.h5 inflates to 1.1 GB": bomb_in("model.weights.h5"),
    "config.json inflates to 1.1 GB": bomb_in("config.json"),
    "metadata.json inflates to 1.1 GB": bomb_in("metadata.json"),
    "an asset inflates to 1.1 GB": bomb_in("assets/vocabulary.txt"),
}


@file_layer_only_once()
@pytest.mark.parametrize("api", ["private", "public"])
@pytest.mark.parametrize("case", list(BOMBS))
def test_zip_bomb_is_refused_without_inflating_it(case, api, files, tmp_path, worker):
    path = tmp_path / "model.keras"
    path.write_bytes(BOMBS[case](files))
    assert path.stat().st_size < 4 * 2**20
    leftovers = worker.temp_leftovers()
    result = worker.load("keras", path, public_api=api == "public")
    assert worker.temp_leftovers() == leftovers, "the load left temporary files behind"
    assert result["outcome"] == "dataset_error", result
    assert str(path) in result["message"]
    assert result["rss_delta"] < MAX_EXTRA_MEMORY, (
        f"loading took {result['rss_delta'] / 2**20:.0f} MB more memory"
    )
    assert result["written"] < MAX_WRITTEN, f"loading wrote {result['written'] / 2**20:.0f} MB"
    assert sorted(os.listdir(tmp_path)) == ["model.keras"]


def hostile_names(outside: Path) -> dict[str, str]:
    return {
        "../../x": "../../x",
        "absolute": str(outside / "abs" / "x"),
        "assets/../../x": "assets/../../x",
        "assets/../../../../x": "assets/../../../../x",
    }


@file_layer_only_once()
@pytest.mark.parametrize("api", ["private", "public"])
@pytest.mark.parametrize("name", ["../../x", "absolute", "assets/../../x", "assets/../../../../x"])
def test_member_names_pointing_outside_are_refused_and_nothing_is_written(name, api, files, tmp_path, worker):
    # Load from deep inside tmp_path so that every escape lands in it.
    folder = tmp_path / "a" / "b" / "c"
    folder.mkdir(parents=True)
    member_name = hostile_names(tmp_path)[name]
    path = folder / "model.keras"
    path.write_bytes(with_member(files, member_name, Member.plain(member_name, b"escaped\n")))
    with zipfile.ZipFile(path) as archive:
        assert member_name in archive.namelist()
    worker_root = worker.tmpdir.parent
    before = {str(p) for p in worker_root.rglob("*")}
    leftovers = worker.temp_leftovers()

    result = worker.load("keras", path, public_api=api == "public")

    created = [p for p in tmp_path.rglob("*") if p.name == "x"] + [
        p for p in worker_root.rglob("*") if str(p) not in before and p.name == "x"
    ]
    assert created == [], f"the archive wrote {created}"
    assert not (tmp_path / "abs" / "x").exists()
    assert worker.temp_leftovers() == leftovers, "the load left temporary files behind"
    assert result["outcome"] == "dataset_error", result
    assert str(path) in result["message"]
