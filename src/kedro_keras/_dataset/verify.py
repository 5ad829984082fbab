"""``kedro keras verify`` and ``diff``: a stored model checked against its
checksums, read once front to back, and two stored models compared array
by array, without building either.

A ``.keras`` archive: every member's zip CRC-32. A ``.h5``/``.weights.h5``
we wrote: the CRC-32 of our trailer; one written elsewhere has none, and
its array headers are checked instead. A SavedModel export: every file's
SHA-256 from its manifest.

The files are as hostile as the ones a load reads, so the same guards come
first (the archive checks, through ``_preview.refuse_hostile_archive``,
``_h5.checked_dataset``, the header walk's refusal of links, the loader's
manifest reader), and every file is opened only once it is
known to be a regular one: a FIFO or a device named by a manifest would
otherwise make a check wait, or read, forever. Every failure is a
``DatasetError`` whose message says why.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import zipfile
from contextlib import contextmanager
from pathlib import PurePosixPath
from typing import IO, Any, Callable, Iterator, TypeVar

from kedro.io.core import DatasetError, VersionNotFoundError

from kedro_keras._dataset import export_file
from kedro_keras._dataset.export_folder import read_manifest
from kedro_keras._dataset.preview import refuse_hostile_archive
from kedro_keras._formats.archive import CONFIG_MEMBER, WEIGHTS_MEMBER, ZIP_SIGNATURE
from kedro_keras._formats.layer_names import names_by_group
from kedro_keras._formats.zip_members import member_reader, read_small_member
from kedro_keras._io.digests import copy_hashing
from kedro_keras._io.files import Location
from kedro_keras._io.h5 import CHUNK, CorruptFileError, Window, bounded, h5_window
from kedro_keras._io.h5_guards import array_headers, check_all_datasets, checked_dataset
from kedro_keras._io.paths import inside_folder, open_regular_file, require_regular_file
from kedro_keras._log import as_data, printable

# kedro-keras's SavedModel manifests list a few dozen files, sharded weights
# a shard per quarter GB.
MAX_ENTRIES = 100_000
# Characters of an error message kept: a reason, not a file's contents.
_MAX_MESSAGE = 1000
# Items of an array compared at a time (per side, as float64: 32 MB each).
_SLICE_ITEMS = 4 * 2**20


class VerifyError(DatasetError):
    """A stored model could not be checked or compared; the message says why."""


class DamagedFileError(VerifyError, CorruptFileError):
    """A stored model does not match its checksums."""


_T = TypeVar("_T")


def _as_dataset_errors(function: Callable[..., _T]) -> Callable[..., _T]:
    """Whatever goes wrong becomes a ``DatasetError`` with a one-line message
    (the CLI prints it: a newline in it could forge an output line)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> _T:
        try:
            return function(*args, **kwargs)
        except DatasetError:
            raise
        except CorruptFileError as exc:
            raise DamagedFileError(_one_line(exc)) from as_data(exc)
        except Exception as exc:  # noqa: BLE001 - re-raised as a DatasetError; h5py, zipfile and fsspec each raise their own
            raise VerifyError(_one_line(exc)) from as_data(exc)

    return wrapper


def _one_line(exc: BaseException) -> str:
    """The message on one line, control characters escaped: a file's names
    quoted in it (zip members, HDF5 paths) may hold newlines and escapes."""
    # A KeyError's str() is the repr of its key: quoted, escapes doubled.
    text = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc).strip()
    return printable(text or type(exc).__name__, _MAX_MESSAGE)


@_as_dataset_errors
def verify_stored_file(location: Location, path: PurePosixPath) -> str:
    """What was checked of the file at ``path``, or a ``DatasetError``
    saying what is damaged."""
    if location.kind(path) is None:  # nothing to check: not damage
        raise VersionNotFoundError(f"nothing is saved at '{location.url(path)}' yet")
    with open_regular_file(location, path) as file:
        return f"{location.url(path)}: {verify_file(file, str(path))}"


@_as_dataset_errors
def verify_sharded(location: Location, index_path: PurePosixPath, read_index: Callable[[], Any]) -> str:
    """Every shard a sharded index names, against its CRC-32."""
    require_regular_file(location, index_path)  # read whole by the index reader
    index = read_index()
    if len(index.shards) > MAX_ENTRIES:
        raise ValueError(f"the index names {len(index.shards)} shards, more than {MAX_ENTRIES}")
    for shard in index.shards:  # plain file names: the index reader refuses any other
        with open_regular_file(location, index_path.parent / shard, within=index_path.parent) as file:
            _verify_h5(file, f"shard {shard}")
    return f"{len(index.shards)} shards, each against its CRC-32"


@_as_dataset_errors
def diff_stored(location: Location, first: PurePosixPath, second: PurePosixPath) -> list[dict[str, str]]:
    """``diff_files`` of two stored files, each opened once it is known to be a regular file."""
    with open_regular_file(location, first) as one, open_regular_file(location, second) as other:
        return diff_files(one, other)


@_as_dataset_errors
def verify_file(file: IO[bytes], name: str) -> str:
    head = file.read(len(ZIP_SIGNATURE))
    file.seek(0)
    if head == ZIP_SIGNATURE:
        with zipfile.ZipFile(file) as archive:
            # Refused before testzip reads them: one 256 MiB member listed
            # 4,000 times would otherwise be read 4,000 times.
            refuse_hostile_archive(archive)
            bad = archive.testzip()  # reads every member, checking its CRC-32
            if bad is not None:
                raise CorruptFileError(f"member '{bad}' of '{name}' does not match its CRC-32")
            if WEIGHTS_MEMBER in archive.namelist():
                with member_reader(archive, file, WEIGHTS_MEMBER) as weights:
                    check_all_datasets(weights)
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
    # After the checksum, so that damage is reported as damage; a file we
    # wrote has no link and no external storage, but a file can be forged.
    check_all_datasets(window)
    return f"{window._size:,} bytes against their CRC-32"


def _read_through(window: Window) -> None:
    window.seek(0)
    buffer = bytearray(CHUNK)
    while window.readinto(buffer):
        pass


# -- exports -------------------------------------------------------------------


@_as_dataset_errors
def verify_export_file(location: Location, path: PurePosixPath) -> str:
    """An ONNX or LiteRT export against the SHA-256 its manifest records."""
    if location.kind(path) is None:  # nothing to check: not damage
        raise VersionNotFoundError(f"nothing is saved at '{location.url(path)}' yet")
    require_regular_file(location, path)
    checked = export_file.verify_file(location, path, export_file.read_file_manifest(location, path))
    return f"{location.url(path)}: {checked}"


# -- SavedModel manifests ------------------------------------------------------


@_as_dataset_errors
def verify_export_folder(location: Location, folder: PurePosixPath) -> str:
    """Every file of a SavedModel folder against the SHA-256 its manifest records."""
    # The loader's own reader: size-capped, a regular file only, its fields and names checked.
    manifest = read_manifest(location, folder)
    if manifest is None:
        raise FileNotFoundError(f"no manifest.json in '{location.url(folder)}' (not written by kedro-keras)")
    export, files = manifest["export"], manifest["files"]
    if len(files) > MAX_ENTRIES:
        raise ValueError(f"the manifest lists {len(files)} files, more than {MAX_ENTRIES}")
    root = folder / export
    for name, expected in files.items():
        relative = inside_folder(name)  # the loader's check, again: the manifest could have changed
        size, sha256 = expected["size"], expected["sha256"]
        with open_regular_file(location, root / relative, within=root) as file:
            digest, read = copy_hashing(file, limit=size)
        if read != size:
            has = f"more than {size}" if read > size else f"only {read}"
            raise CorruptFileError(
                f"'{export}/{name}' has {has} bytes, its manifest says {size}: it is damaged"
            )
        if digest != sha256:
            raise CorruptFileError(f"'{export}/{name}' does not match its SHA-256: it is damaged")
    return f"{len(files)} files against their SHA-256"


# -- diff ------------------------------------------------------------------------


@_as_dataset_errors
def diff_files(first: IO[bytes], second: IO[bytes]) -> list[dict[str, str]]:
    """Per variable group (a layer's, the optimizer's), what differs between
    two stored models: groups added or removed, shapes changed, and for
    arrays of one shape the largest absolute difference. Every array to be
    compared is checked as a load checks it (no link, no external storage,
    no declared size far beyond the stored one) before any is read, and
    arrays are read a slice at a time, so memory stays bounded whatever
    the arrays' sizes."""
    import h5py

    with (
        _weights_image(first) as (a, names_a),
        _weights_image(second) as (b, names_b),
    ):
        names = {**names_a, **names_b}  # a layer removed is named as it was, one kept or added as it is
        # The header walk refuses soft and external links before following any.
        groups_a, groups_b = array_headers(a), array_headers(b)
        with h5py.File(bounded(a), "r") as h5_a, h5py.File(bounded(b), "r") as h5_b:
            rows: list[dict[str, str]] = []
            compared: list[tuple[int, list[tuple[Any, Any]]]] = []
            for group in sorted(set(groups_a) | set(groups_b)):
                if not groups_a.get(group) and not groups_b.get(group):
                    continue  # nothing stored on either side: the model's own group, input layers
                layer = names.get(group, "")
                if group not in groups_b:
                    rows.append({"layer": layer, "group": group, "change": "removed"})
                    continue
                if group not in groups_a:
                    rows.append({"layer": layer, "group": group, "change": "added"})
                    continue
                shapes_a = {key: shape for key, (shape, _) in groups_a[group].items()}
                shapes_b = {key: shape for key, (shape, _) in groups_b[group].items()}
                if shapes_a != shapes_b:
                    rows.append(
                        {
                            "layer": layer,
                            "group": group,
                            "change": f"shapes {_shapes(shapes_a)} -> {_shapes(shapes_b)}",
                        }
                    )
                    continue
                vars_a, vars_b = h5_a[f"{group}/vars"], h5_b[f"{group}/vars"]
                pairs = [(checked_dataset(vars_a, key), checked_dataset(vars_b, key)) for key in shapes_a]
                if group == "optimizer" and pairs and _is_step_count(*pairs[0]):
                    # Keras's optimizer stores its step counter first: a count, not a weight.
                    steps, pairs = [int(dataset[()]) for dataset in pairs[0]], pairs[1:]
                    change = f"{steps[0]} -> {steps[1]}" if steps[0] != steps[1] else "same"
                    rows.append({"layer": "", "group": "optimizer step count", "change": change})
                rows.append({"layer": layer, "group": group, "change": ""})
                compared.append((len(rows) - 1, pairs))
            for row, pairs in compared:
                largest = max((_largest_difference(left, right) for left, right in pairs), default=0.0)
                rows[row]["change"] = "same" if largest == 0 else f"max |difference| {largest:.6g}"
    return rows


def _is_step_count(left: Any, right: Any) -> bool:
    return all(side.shape == () and side.dtype.kind in "iu" for side in (left, right))


def _largest_difference(left: Any, right: Any) -> float:
    import numpy as np

    largest = 0.0
    for where in _slices(left.shape, _SLICE_ITEMS):
        one = np.asarray(left[where], dtype="float64")
        other = np.asarray(right[where], dtype="float64")
        if one.size:
            largest = max(largest, float(np.max(np.abs(one - other))))
    return largest


def _slices(shape: tuple[int, ...], items: int) -> Iterator[tuple[Any, ...]]:
    """Selections covering an array of ``shape``, each of at most ``items`` items."""
    if not shape:
        yield ()
        return
    axis = 0  # the first axis whose sub-arrays fit
    while axis < len(shape) - 1 and math.prod(shape[axis + 1 :]) > items:
        axis += 1
    step = max(1, items // max(1, math.prod(shape[axis + 1 :])))
    for prefix in itertools.product(*(range(n) for n in shape[:axis])):
        for start in range(0, shape[axis], step):
            yield (*prefix, slice(start, start + step))


def _shapes(shapes: dict[str, tuple[int, ...]]) -> str:
    return ", ".join(str(tuple(shapes[key])) for key in sorted(shapes, key=lambda k: (len(k), k)))


@contextmanager
def _weights_image(file: IO[bytes]) -> Iterator[tuple[IO[bytes], dict[str, str]]]:
    """The HDF5 image of a ``.keras`` archive's weights, or of a
    ``.weights.h5``, and the user's layer names by group, where the file
    has a config to read them from (an archive does; a weights file not)."""
    head = file.read(len(ZIP_SIGNATURE))
    file.seek(0)
    if head != ZIP_SIGNATURE:
        yield h5_window(file), {}
        return
    with zipfile.ZipFile(file) as archive:
        refuse_hostile_archive(archive)
        with member_reader(archive, file, WEIGHTS_MEMBER) as member:
            yield member, _layer_names(archive)


def _layer_names(archive: zipfile.ZipFile) -> dict[str, str]:
    # Names only help to read a diff: a config that cannot be read gives none, not a failure.
    try:
        return names_by_group(json.loads(read_small_member(archive, CONFIG_MEMBER)))
    except Exception:  # noqa: BLE001 - a missing, oversized, malformed or too deeply nested config
        return {}
