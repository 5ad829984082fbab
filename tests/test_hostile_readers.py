"""Hostile files against the readers other than loads (issue #27): ``verify``,
``diff``, previews and the CLI's output refuse what loads refuse, in bounded
time and memory, and show what files say as data.

Every hostile file starts as a real tiny model saved by kedro-keras, then
altered with h5py or rebuilt as a zip. Readers that used to hang (a FIFO
opened, /dev/zero read) run in a thread with a time limit; if one hangs, the
FIFO is opened for writing to let it go and the test fails.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import struct
import sys
import threading
import time
import zipfile
import zlib

import h5py
import keras
import numpy as np
import pytest
from click.testing import CliRunner
from kedro.io.core import DatasetError

from kedro_keras import KerasExportDataset, KerasModelDataset, KerasWeightsDataset, cli
from kedro_keras._dataset import preview as _preview
from kedro_keras._dataset import verify as _verify
from kedro_keras._dataset.verify import diff_files, verify_file
from kedro_keras._formats.archive import WEIGHTS_MEMBER
from kedro_keras._io.h5 import CorruptFileError
from kedro_keras._io.paths import open_regular_file
from reliability_helpers.archives import DEFLATED, Member, build_zip, member_span, members_of

needs_fifos = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
# What a forged name tries: a new row, the clipboard (OSC 52), rich markup.
FORGED = "evil\nlayer forged\tDense\x1b]52;c;aGk=\x07[red]red[/red][link=https://x.example]x[/link]"


def tiny_model(seed=0, width=3):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((2,))
    return keras.Model(inputs, keras.layers.Dense(width)(inputs), name="tiny")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The bytes of a tiny model saved as .keras and as .weights.h5, twice each."""
    folder = tmp_path_factory.mktemp("saved")
    found = {}
    for seed in (0, 1):
        model = tiny_model(seed)
        KerasModelDataset(filepath=str(folder / f"{seed}.keras")).save(model)
        KerasWeightsDataset(filepath=str(folder / f"{seed}.weights.h5")).save(model)
        found[".keras", seed] = (folder / f"{seed}.keras").read_bytes()
        found[".weights.h5", seed] = (folder / f"{seed}.weights.h5").read_bytes()
    return found


def finishes(call, *fifos, seconds=30):
    """``call()``'s result (or its exception), failing the test if it runs on."""
    outcome = {}

    def run():
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for fifo in fifos:  # a reader blocked opening it gets an empty file
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        thread.join(10)
        pytest.fail(f"still running after {seconds} s: it waits on a FIFO or reads without end")
    outcome["seconds"] = time.monotonic() - started
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def first_kernel(h5):
    """The path of the first layer's first array: 'layers/dense/vars'."""
    found = []
    h5.visit(lambda name: found.append(name) if name.endswith("/vars") and "0" in h5[name] else None)
    return found[0]


def weights_pair(tmp_path, saved, change_second):
    paths = [tmp_path / "a.weights.h5", tmp_path / "b.weights.h5"]
    paths[0].write_bytes(saved[".weights.h5", 0])
    paths[1].write_bytes(saved[".weights.h5", 1])
    with h5py.File(paths[1], "r+") as h5:
        change_second(h5, h5[first_kernel(h5)])
    return paths


def external_link_to(target):
    """A change for ``weights_pair``: the first array becomes a link to ``target``."""

    def change(h5, vars_group):
        del vars_group["0"]
        vars_group["0"] = h5py.ExternalLink(str(target), "/data")

    return change


def diff_paths(paths):
    with open(paths[0], "rb") as a, open(paths[1], "rb") as b:
        return diff_files(a, b)


# -- diff ------------------------------------------------------------------------


@needs_fifos
def test_diff_refuses_an_external_link_and_never_opens_what_it_names(tmp_path, saved):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    paths = weights_pair(tmp_path, saved, external_link_to(fifo))
    with pytest.raises(DatasetError, match="refusing .*0': it is a ExternalLink"):
        finishes(lambda: diff_paths(paths), fifo)


@needs_fifos
def test_diff_refuses_external_storage_before_reading_it(tmp_path, saved):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def outside(h5, vars_group):
        shape, dtype = vars_group["0"].shape, vars_group["0"].dtype
        del vars_group["0"]
        nbytes = int(np.prod(shape)) * dtype.itemsize
        vars_group.create_dataset("0", shape=shape, dtype=dtype, external=[(str(fifo), 0, nbytes)])

    paths = weights_pair(tmp_path, saved, outside)
    paths[0].write_bytes(paths[1].read_bytes())  # same shapes on both sides: the arrays are compared
    with pytest.raises(DatasetError, match="its data lives outside this file"):
        finishes(lambda: diff_paths(paths), fifo)


def test_diff_refuses_arrays_declaring_far_more_than_the_file_stores(tmp_path, saved):
    def declare_2_gb(h5, vars_group):
        del vars_group["0"]
        vars_group.create_dataset("0", shape=(2**28,), dtype="float64", chunks=(2**16,))  # nothing written

    paths = weights_pair(tmp_path, saved, declare_2_gb)
    paths[0].write_bytes(paths[1].read_bytes())
    assert paths[1].stat().st_size < 100_000
    with pytest.raises(DatasetError, match=r"declares 2147483648 bytes .* stores 0"):
        finishes(lambda: diff_paths(paths), seconds=20)


def test_diff_compares_large_arrays_a_slice_at_a_time(tmp_path, saved, monkeypatch):
    paths = [tmp_path / "a.keras", tmp_path / "b.keras"]
    paths[0].write_bytes(saved[".keras", 0])
    paths[1].write_bytes(saved[".keras", 1])
    whole = diff_paths(paths)
    monkeypatch.setattr(_verify, "_SLICE_ITEMS", 2)
    assert diff_paths(paths) == whole and whole[0]["change"].startswith("max |difference| ")

    covered = np.zeros((3, 5, 7), dtype=int)
    for where in _verify._slices(covered.shape, 4):
        assert covered[where].size <= 4
        covered[where] += 1
    assert (covered == 1).all()
    assert list(_verify._slices((), 4)) == [()]


# -- verify: manifests and shards --------------------------------------------------

EXPORT = "export-" + "0" * 32


def export_folder(tmp_path, files, export=EXPORT):
    """A SavedModel folder as kedro-keras commits one: the files under the
    export's folder, and a manifest naming them with their sizes and SHA-256s."""
    folder = tmp_path / "served"
    (folder / export).mkdir(parents=True, exist_ok=True)
    listed = {}
    for name, data in files.items():
        if data is not None:
            (folder / export / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / export / name).write_bytes(data)
            listed[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        else:
            listed[name] = {"size": 0, "sha256": hashlib.sha256(b"").hexdigest()}
    (folder / "manifest.json").write_text(json.dumps({"export": export, "files": listed}))
    return folder


def verify_folder(folder, *fifos):
    return finishes(
        lambda: KerasExportDataset(filepath=str(folder), format="tf_saved_model").verify(), *fifos
    )


def test_an_intact_export_passes(tmp_path):
    folder = export_folder(tmp_path, {"saved_model.pb": b"graph", "variables/variables.index": b"ix"})
    assert verify_folder(folder) == "2 files against their SHA-256"


@pytest.mark.parametrize(
    "name",
    ["/etc/hostname", "../outside", "variables/../../outside", "variables\\..\\..\\outside", "C:/x", "a//b"],
)
def test_manifest_names_outside_the_export_are_refused_not_hashed(tmp_path, name):
    """Else verify answers 'intact' for any readable file whose size and
    digest a guesser put in the manifest: an oracle for its contents."""
    secret = tmp_path / "outside"
    secret.write_bytes(b"guessed")
    folder = export_folder(tmp_path, {"saved_model.pb": b"graph"})
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name] = {"size": 7, "sha256": hashlib.sha256(b"guessed").hexdigest()}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="(refusing|names) .*(outside|plain relative path)"):
        verify_folder(folder)


def test_an_export_folder_not_ours_is_refused(tmp_path):
    folder = export_folder(tmp_path, {"saved_model.pb": b"graph"})
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "export": ".."}))
    with pytest.raises(DatasetError, match="not a manifest (this package|kedro-keras) wrote"):
        verify_folder(folder)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_a_link_to_a_device_or_outside_is_refused_not_read_forever(tmp_path):
    outside = tmp_path / "outside"
    outside.write_bytes(b"guessed")
    folder = export_folder(tmp_path, {"saved_model.pb": b"graph"})
    for name, target in (("variables/zeros", "/dev/zero"), ("secret", str(outside))):
        (folder / EXPORT / name).parent.mkdir(exist_ok=True)
        os.symlink(target, folder / EXPORT / name)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["variables/zeros"] = {"size": 2**40, "sha256": "0" * 64}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="variables/zeros': it is a symbolic link"):
        verify_folder(folder)

    # A linked folder on the way: the file itself is no link, but it is outside.
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "weights").write_bytes(b"guessed")
    os.symlink(tmp_path / "elsewhere", folder / EXPORT / "assets")
    del manifest["files"]["variables/zeros"]
    manifest["files"]["assets/weights"] = {"size": 7, "sha256": hashlib.sha256(b"guessed").hexdigest()}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="assets/weights': it leads outside its folder"):
        verify_folder(folder)


@needs_fifos
def test_fifos_are_refused_before_they_are_opened(tmp_path):
    folder = export_folder(tmp_path, {"saved_model.pb": b"graph", "fingerprint.pb": None})
    fifo = folder / EXPORT / "fingerprint.pb"
    os.mkfifo(fifo)
    with pytest.raises(DatasetError, match="fingerprint.pb': it is a FIFO, not a regular file"):
        verify_folder(folder, fifo)

    (folder / "manifest.json").rename(folder / "real.json")
    os.mkfifo(folder / "manifest.json")
    with pytest.raises(DatasetError, match="manifest.json.*(FIFO|not a regular file)"):
        verify_folder(folder, folder / "manifest.json")

    # The same opener serves diff's two versions and every other file verify reads.
    with pytest.raises(ValueError, match="it is a FIFO"):
        location = KerasExportDataset(filepath=str(folder), format="tf_saved_model")._location
        finishes(lambda: open_regular_file(location, fifo).__enter__(), fifo)


def test_a_file_longer_than_its_manifest_says_is_read_only_that_far(tmp_path, monkeypatch):
    folder = export_folder(tmp_path, {"saved_model.pb": b"graph"})
    (folder / EXPORT / "saved_model.pb").write_bytes(b"x" * 2**20)
    reads = []
    real_open = _verify.open_regular_file

    def counting(*args, **kwargs):
        context = real_open(*args, **kwargs)
        file = context.__enter__()
        original = file.read
        file.read = lambda size=-1: reads.append(size) or original(size)
        return _Entered(context, file)

    monkeypatch.setattr(_verify, "open_regular_file", counting)
    with pytest.raises(CorruptFileError, match="saved_model.pb' has more than 5 bytes, its manifest says 5"):
        verify_folder(folder)
    assert reads == [6]  # the declared size and one byte, of a 1 MiB file


class _Entered:
    def __init__(self, context, file):
        self.context, self.file = context, file

    def __enter__(self):
        return self.file

    def __exit__(self, *exc):
        return self.context.__exit__(*exc)


@needs_fifos
def test_a_shard_that_is_a_fifo_is_refused(tmp_path):
    dataset = KerasWeightsDataset(
        filepath=str(tmp_path / "m.weights.json"), save_args={"max_shard_size": 1e-9}
    )
    dataset.save(tiny_model())
    shard = tmp_path / dataset._read_index(dataset._get_load_path()).shards[0]
    shard.unlink()
    os.mkfifo(shard)
    with pytest.raises(DatasetError, match="it is a FIFO"):
        finishes(lambda: dataset.verify(), shard)


def test_remote_files_are_opened_once_the_store_says_they_are_files(s3_bucket, s3_credentials):
    dataset = KerasModelDataset(filepath=f"{s3_bucket}/m.keras", credentials=s3_credentials)
    dataset.save(tiny_model())
    assert dataset.verify().endswith("archive members against their CRC-32")
    location, path = dataset._location, dataset._get_load_path()
    with open_regular_file(location, path) as one, open_regular_file(location, path) as other:
        assert {row["change"] for row in diff_files(one, other)} == {"same"}
    with pytest.raises(ValueError, match="it is a directory, not a file"):
        open_regular_file(location, path.parent).__enter__()


# -- verify: archives ----------------------------------------------------------------


def with_central_copies(archive: bytes, name: str, names: list[str]) -> bytes:
    """``archive`` whose central directory lists member ``name`` again under
    each of ``names``, all pointing at its one stored copy."""
    end = archive.rindex(b"PK\x05\x06")
    size, start = struct.unpack("<II", archive[end + 12 : end + 20])
    central, records, at = archive[start : start + size], [], 0
    while at < len(central):
        name_length, extra_length, comment_length = struct.unpack("<HHH", central[at + 28 : at + 34])
        record = central[at : at + 46 + name_length + extra_length + comment_length]
        records.append(record)
        at += len(record)
    (original,) = [r for r in records if r[46 : 46 + struct.unpack("<H", r[28:30])[0]] == name.encode()]
    for copy in names:
        encoded = copy.encode()
        records.append(original[:28] + struct.pack("<H", len(encoded)) + original[30:46] + encoded)
    central = b"".join(records)
    count = len(records)
    return (
        archive[:start]
        + central
        + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count, count, len(central), start, 0)
    )


@pytest.mark.parametrize("copies", ["same name", "other names"])
def test_verify_refuses_members_that_share_their_bytes_before_reading_them(saved, copies):
    # 60,000 repeats: the load's own check of repeats takes a minute over them (quadratic).
    names = [WEIGHTS_MEMBER] * 60_000 if copies == "same name" else [f"w{i}.h5" for i in range(4000)]
    archive = with_central_copies(saved[".keras", 0], WEIGHTS_MEMBER, names)
    with pytest.raises(DatasetError, match="more than once" if copies == "same name" else "overlap"):
        finishes(lambda: verify_file(io.BytesIO(archive), "m.keras"), seconds=10)


def test_a_preview_refuses_repeated_members_in_bounded_time(tmp_path, saved):
    path = tmp_path / "repeated.keras"
    path.write_bytes(with_central_copies(saved[".keras", 0], WEIGHTS_MEMBER, [WEIGHTS_MEMBER] * 60_000))
    preview = finishes(lambda: KerasModelDataset(filepath=str(path)).preview(), seconds=10)
    assert "more than once" in dict(preview["data"])["could not read"]


def test_verify_refuses_more_members_than_its_budget(saved, monkeypatch):
    monkeypatch.setattr(_preview, "MAX_ARCHIVE_MEMBERS", 3)
    extra = [Member.plain("assets/a", b"a"), Member.plain("assets/b", b"b")]
    archive = build_zip([*members_of(saved[".keras", 0]), *extra])
    with pytest.raises(DatasetError, match="more than 3"):
        verify_file(io.BytesIO(archive), "m.keras")


def test_verify_still_finds_a_flipped_byte_in_the_weights(saved):
    archive = bytearray(saved[".keras", 0])
    start, size = member_span(bytes(archive), WEIGHTS_MEMBER)
    archive[start + size // 2] ^= 0xFF
    with pytest.raises(CorruptFileError, match="CRC-32") as raised:
        verify_file(io.BytesIO(bytes(archive)), "m.keras")
    assert isinstance(raised.value, DatasetError)


# -- previews ----------------------------------------------------------------------


def with_config(archive: bytes, config: bytes, deflated: bool = False) -> bytes:
    members = members_of(archive)
    for index, member in enumerate(members):
        if member.name == "config.json":
            if deflated:
                compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
                payload = compressor.compress(config) + compressor.flush()
                members[index] = Member("config.json", payload, DEFLATED, len(config), zlib.crc32(config))
            else:
                members[index] = Member.plain("config.json", config)
    return build_zip(members)


@pytest.mark.parametrize(
    ("layers", "refusal"),
    [
        ([{"class_name": "Dense"}] * 1_500_000, r"declares [\d,]+ bytes: too large to preview"),
        ([{}] * 600_000, "holds over 1,000,000 JSON values: too many to preview"),
    ],
)
def test_a_small_archive_inflating_to_a_huge_config_previews_in_bounded_time(
    tmp_path, saved, layers, refusal
):
    """34 KB that inflate to 35 MB of JSON: 1.5 million layers took 1.8 GB and a minute."""
    config = json.loads(zipfile.ZipFile(io.BytesIO(saved[".keras", 0])).read("config.json"))
    config["config"]["layers"] = layers
    path = tmp_path / "bomb.keras"
    path.write_bytes(with_config(saved[".keras", 0], json.dumps(config).encode(), deflated=True))
    assert path.stat().st_size < 120_000
    started = time.monotonic()
    rows = dict(KerasModelDataset(filepath=str(path)).preview()["data"])
    assert time.monotonic() - started < 5
    assert re.search(refusal, rows["could not read"]), rows  # a row saying why, not a failure


@needs_fifos
def test_a_preview_refuses_an_external_link_in_the_weights(tmp_path, saved):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    path = weights_pair(tmp_path, saved, external_link_to(fifo))[1]
    preview = finishes(lambda: KerasWeightsDataset(filepath=str(path)).preview(), fifo)
    assert "ExternalLink, not data in this file" in dict(preview["data"])["could not read"]


# -- what reaches Kedro-Viz and the terminal ------------------------------------------


@pytest.fixture
def forged_model(tmp_path, saved):
    """A saved model whose own and first layer's names say FORGED."""
    config = json.loads(zipfile.ZipFile(io.BytesIO(saved[".keras", 0])).read("config.json"))
    config["config"]["name"] = FORGED
    for layer in config["config"]["layers"]:
        layer["config"]["name"] = FORGED
    path = tmp_path / "forged.keras"
    path.write_bytes(with_config(saved[".keras", 0], json.dumps(config).encode()))
    return KerasModelDataset(filepath=str(path))


def assert_shown_as_data(text, as_json=False):
    if as_json:
        values = [value for row in json.loads(text) for value in row.values()]
        assert not any(c in value for value in values for c in "\n\t\x1b\x07")
        text = " ".join(values)
    assert "\x1b" not in text and "\x07" not in text and "\nlayer forged" not in text
    assert "\\x1b]52;c;aGk=\\x07" in text and "\\n" in text  # shown, escaped


def test_preview_rows_show_control_characters_escaped(forged_model):
    cells = [cell for row in forged_model.preview()["data"] for cell in row]
    assert not any(c in cell for cell in cells for c in "\n\t\x1b\x07")
    assert_shown_as_data(" ".join(cells))


@pytest.mark.parametrize("as_json", [False, True])
def test_cli_output_shows_file_text_as_data(forged_model, monkeypatch, as_json):
    monkeypatch.setattr(cli, "_entry", lambda name, env, version: forged_model)
    monkeypatch.setattr(cli, "_our_entries", lambda env: [(FORGED, forged_model)])
    runner = CliRunner()
    for command in (["keras", "inspect", "m"], ["keras", "list"]):
        result = runner.invoke(
            cli.commands, command + (["--json"] if as_json else []), catch_exceptions=False
        )
        assert result.exit_code == 0, result.output
        assert_shown_as_data(result.output, as_json)
        if not as_json:  # one line per row: nothing forged
            assert all(
                line.count("\t") == (1 if command[1] == "inspect" else 5)
                for line in result.output.splitlines()
            )


def test_the_terminal_table_interprets_no_markup(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setenv("COLUMNS", "400")
    cli._print([{"property": "model", "value": FORGED}], ["property", "value"], False, title=FORGED)
    shown = screen.getvalue()
    assert "[red]red[/red]" in shown and "[link=https://x.example]x[/link]" in shown
    assert "\x1b]8;" not in shown  # no hyperlink escape made from the markup
    assert "\x1b]52" not in shown and "\\x1b]52;c;aGk=\\x07" in shown


def test_verify_cli_reports_a_refusal_on_one_escaped_line(tmp_path, saved, monkeypatch):
    archive = with_central_copies(saved[".keras", 0], WEIGHTS_MEMBER, ["a\nb\x1b[2J.h5"])
    path = tmp_path / "m.keras"
    path.write_bytes(archive)
    monkeypatch.setattr(cli, "_entry", lambda name, env, version: KerasModelDataset(filepath=str(path)))
    result = CliRunner().invoke(cli.commands, ["keras", "verify", "m"])
    assert result.exit_code == 1
    (line,) = result.output.splitlines()
    assert line.startswith("m: DAMAGED: refusing the archive") and "a\\nb\\x1b[2J.h5" in line


def test_diff_cli_turns_a_refusal_into_a_one_line_error(tmp_path, saved, monkeypatch):
    paths = weights_pair(tmp_path, saved, lambda h5, group: group.__setitem__("x", h5py.SoftLink("/nowhere")))
    dataset = KerasWeightsDataset(filepath=str(paths[0]))
    monkeypatch.setattr(cli, "_entry", lambda name, env, version: dataset)
    monkeypatch.setattr(dataset, "stored_path", lambda version: paths[int(version)])
    result = CliRunner().invoke(cli.commands, ["keras", "diff", "w", "0", "1"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = result.output.splitlines()
    assert line.startswith("Error: cannot compare w 0 and 1: refusing ") and "SoftLink" in line


def test_diff_of_a_checkpoint_entry_with_a_name_that_is_no_version_is_a_one_line_error(tmp_path, monkeypatch):
    from kedro_keras import KerasCheckpointDataset

    dataset = KerasCheckpointDataset(filepath=str(tmp_path / "checkpoints"))
    monkeypatch.setattr(cli, "_entry", lambda name, env, version: dataset)
    result = CliRunner().invoke(cli.commands, ["keras", "diff", "c", "../../etc/passwd", "e00001"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = result.output.splitlines()
    assert line.startswith("Error: cannot compare c ../../etc/passwd and e00001: ")
    assert "has no checkpoint '../../etc/passwd'" in line
