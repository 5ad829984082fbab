"""``kedro keras verify`` and ``diff``: a stored model checked against its
checksums, read once front to back, and two stored models compared array
by array, without building either.

A ``.keras`` archive: every member's zip CRC-32. A ``.h5``/``.weights.h5``
we wrote: the CRC-32 of our trailer; one written elsewhere has none, and
its array headers are checked instead. A SavedModel export: every file's
SHA-256 from its manifest.
"""

from __future__ import annotations

import hashlib
import zipfile
from contextlib import contextmanager
from pathlib import PurePosixPath
from typing import IO, Any, Iterator

from kedro_keras._archive import WEIGHTS_MEMBER, ZIP_SIGNATURE, _member_reader
from kedro_keras._h5 import (
    CHUNK,
    CorruptFileError,
    Window,
    array_headers,
    bounded,
    check_all_datasets,
    h5_window,
)


def verify_dataset(dataset: Any) -> str:
    """What was checked, or an exception saying what is damaged."""
    kind = type(dataset).__name__
    location = dataset._location
    if kind == "KerasCheckpointDataset":
        versions = dataset.versions()
        if not versions:
            raise FileNotFoundError(f"no checkpoint in '{dataset._url()}'")
        path = dataset._model_path(versions[0])
    elif kind == "KerasExportDataset" and dataset._is_folder:
        return _verify_export_folder(dataset, dataset._get_load_path())
    elif kind == "KerasWeightsDataset" and dataset._sharded:
        index_path = dataset._get_load_path()
        index = dataset._read_index(index_path)
        for shard in index.shards:
            with location.open_read(index_path.parent / shard) as file:
                _verify_h5(file, f"shard {shard}")
        return f"{len(index.shards)} shards, each against its CRC-32"
    else:
        path = dataset._get_load_path()
    if location.kind(path) is None:
        raise FileNotFoundError(f"nothing at '{location.url(path)}'")
    with location.open_read(path) as file:
        return f"{location.url(path)}: {verify_file(file, str(path))}"


def verify_file(file: IO[bytes], name: str) -> str:
    head = file.read(len(ZIP_SIGNATURE))
    file.seek(0)
    if head == ZIP_SIGNATURE:
        with zipfile.ZipFile(file) as archive:
            bad = archive.testzip()  # reads every member, checking its CRC-32
            if bad is not None:
                raise CorruptFileError(f"member '{bad}' of '{name}' does not match its CRC-32")
            return f"{len(archive.infolist())} archive members against their CRC-32"
    if PurePosixPath(name).suffix in (".onnx", ".tflite"):
        return "no checksum is recorded in this format: nothing to check"
    return _verify_h5(file, name)


def _verify_h5(file: IO[bytes], name: str) -> str:
    window = h5_window(file)
    if window._expected_crc is None:
        check_all_datasets(window)
        return "no checksum recorded (not written by kedro-keras): the array headers were checked"
    _read_through(window)
    window.verify()
    return f"{window._size:,} bytes against their CRC-32"


def _read_through(window: Window) -> None:
    window.seek(0)
    buffer = bytearray(CHUNK)
    while window.readinto(buffer):
        pass


def _verify_export_folder(dataset: Any, folder: PurePosixPath) -> str:
    manifest = dataset._read_manifest(folder)
    if manifest is None:
        raise FileNotFoundError(
            f"no manifest.json in '{dataset._location.url(folder)}' (not written by kedro-keras)"
        )
    for name, expected in manifest["files"].items():
        digest, size = hashlib.sha256(), 0
        with dataset._location.open_read(folder / manifest["export"] / name) as file:
            while chunk := file.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
        if size != expected["size"] or digest.hexdigest() != expected["sha256"]:
            raise CorruptFileError(f"'{manifest['export']}/{name}' does not match its size and SHA-256")
    return f"{len(manifest['files'])} files against their SHA-256"


def diff_files(first: IO[bytes], second: IO[bytes]) -> list[dict[str, str]]:
    """Per variable group (a layer's, the optimizer's), what differs between
    two stored models: groups added or removed, shapes changed, and for
    arrays of one shape the largest absolute difference. Arrays are read one
    pair at a time, so memory stays at the largest array, not the model."""
    import h5py
    import numpy as np

    with (
        _weights_image(first) as a,
        _weights_image(second) as b,
        h5py.File(bounded(a), "r") as h5_a,
        h5py.File(bounded(b), "r") as h5_b,
    ):
        groups_a, groups_b = array_headers(a), array_headers(b)
        rows = []
        for group in sorted(set(groups_a) | set(groups_b)):
            if not groups_a.get(group) and not groups_b.get(group):
                continue  # nothing stored on either side: the model's own group, input layers
            if group not in groups_b:
                rows.append({"group": group, "change": "removed"})
                continue
            if group not in groups_a:
                rows.append({"group": group, "change": "added"})
                continue
            shapes_a = {key: shape for key, (shape, _) in groups_a[group].items()}
            shapes_b = {key: shape for key, (shape, _) in groups_b[group].items()}
            if shapes_a != shapes_b:
                rows.append({"group": group, "change": f"shapes {_shapes(shapes_a)} -> {_shapes(shapes_b)}"})
                continue
            largest = 0.0
            for key in shapes_a:
                left = np.asarray(h5_a[f"{group}/vars/{key}"][()], dtype="float64")
                right = np.asarray(h5_b[f"{group}/vars/{key}"][()], dtype="float64")
                if left.size:
                    largest = max(largest, float(np.max(np.abs(left - right))))
            rows.append(
                {"group": group, "change": "same" if largest == 0 else f"max |difference| {largest:.6g}"}
            )
    return rows


def _shapes(shapes: dict[str, tuple[int, ...]]) -> str:
    return ", ".join(str(tuple(shapes[key])) for key in sorted(shapes, key=lambda k: (len(k), k)))


@contextmanager
def _weights_image(file: IO[bytes]) -> Iterator[IO[bytes]]:
    """The HDF5 image of a ``.keras`` archive's weights, or of a ``.weights.h5``."""
    head = file.read(len(ZIP_SIGNATURE))
    file.seek(0)
    if head != ZIP_SIGNATURE:
        yield h5_window(file)
        return
    with zipfile.ZipFile(file) as archive, _member_reader(archive, file, WEIGHTS_MEMBER) as member:
        yield member
