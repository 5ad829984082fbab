""".keras archives on open file objects: the format Keras saves by default.

A zip of ``metadata.json``, ``config.json``, ``model.weights.h5`` (stored
uncompressed) and ``assets/``. Writing puts the weights straight into the
archive; reading lets HDF5 read each array from its place in the file
(local or remote) through a CRC-checked window, so the only full copy of
the weights in memory is the model's own. Writing and reading one zip member
without a copy of it is ``zip_members``'s.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
import zipfile
from collections import Counter
from typing import IO, TYPE_CHECKING, Any

from kedro_keras._formats.dtypes import dtype_bytes
from kedro_keras._formats.imports import unknown_class_hint
from kedro_keras._formats.quantization import cannot_rebuild
from kedro_keras._formats.safe_configs import (
    DEFAULT_MAX_CONFIG_DEPTH,
    DEFAULT_MAX_LAYERS,
    check_config_bounds,
    printable,
    refuse_unsafe_config,
)
from kedro_keras._formats.weights import kedro_keras_metadata, weights_image, write_weights_in_place
from kedro_keras._formats.zip_members import (
    MAX_JSON_MEMBER,
    member_reader,
    read_small_member,
    write_stored_member,
)
from kedro_keras._io.h5 import (
    CHUNK,
    CorruptFileError,
    bounded,
    region_crc32,
    verify,
    without_optimizer_group,
    writes_in_place,
)
from kedro_keras._io.h5_guards import check_all_datasets
from kedro_keras._io.paths import leaves_its_folder
from kedro_keras._keras import saving as _keras_saving
from kedro_keras._keras.build import build_model_and_fill, build_optimizer, portable_compile_config
from kedro_keras._keras.saving import local_copy
from kedro_keras._keras.stores import h5_read_store

if TYPE_CHECKING:
    import keras

CONFIG_MEMBER = "config.json"
METADATA_MEMBER = "metadata.json"
WEIGHTS_MEMBER = "model.weights.h5"
# How a .keras archive (a zip) starts, whatever the file is called.
ZIP_SIGNATURE = b"PK\x03\x04"
MAX_CONFIG_BYTES = MAX_JSON_MEMBER  # a model configuration, in whatever file it is stored


def write_keras_archive(model: keras.Model, file: IO[bytes], *, include_optimizer: bool = True) -> None:
    """Write ``model`` as a ``.keras`` archive into an open binary file.

    Byte-compatible with ``model.save``: the same members, weights stored
    uncompressed. ``metadata.json`` gains a ``kedro_keras`` entry that Keras
    ignores.
    """
    if not _keras_saving.available():
        _write_keras_archive_public(model, file, include_optimizer=include_optimizer)
        return

    config_json, metadata_json = _keras_saving.serialize_model(model)
    metadata = json.loads(metadata_json)
    metadata["kedro_keras"] = kedro_keras_metadata(include_optimizer)

    with zipfile.ZipFile(file, "w") as archive:
        archive.writestr(METADATA_MEMBER, json.dumps(metadata))
        archive.writestr(CONFIG_MEMBER, config_json)
        assets_store = _keras_saving.assets_writer(archive)
        weights = None
        try:
            in_place = writes_in_place(file) and _ZIPFILE_MEMBER_SIZES_SETTABLE
            if in_place and state_bytes(model, include_optimizer) > SMALL_STATE_BYTES:
                _write_weights_member_in_place(archive, model, assets_store, include_optimizer)
            else:
                weights = weights_image(model, assets_store, include_optimizer=include_optimizer)
        finally:
            assets_store.close()  # adds the assets/ members
        if weights is not None:
            write_stored_member(archive, WEIGHTS_MEMBER, weights.getbuffer().toreadonly())


def _write_weights_member_in_place(
    archive: zipfile.ZipFile, model: keras.Model, assets_store: Any, include_optimizer: bool
) -> None:
    """The weights member, written by HDF5 straight into the archive's file
    after the member's header: one array in memory at a time, not the whole
    image. zipfile then records the size and CRC-32 (read back from the
    page cache) and rewrites the header, as it does for any member it
    streamed into a seekable file."""
    info = zipfile.ZipInfo(WEIGHTS_MEMBER, date_time=time.localtime(time.time())[:6])
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = state_bytes(model, include_optimizer)  # an estimate: picks ZIP64 when near 4 GiB
    with archive.open(info, "w", force_zip64=info.file_size > _ZIP64_MARGIN) as member:
        start = archive.fp.tell()
        size = write_weights_in_place(model, assets_store, archive.fp, include_optimizer=include_optimizer)
        archive.fp.seek(start + size)
        archive.fp.truncate()
        member._file_size = member._compress_size = size
        member._crc = region_crc32(archive.fp, start, size)
        archive.fp.seek(start + size)


# What _write_weights_member_in_place sets on zipfile's member writer (its
# private names, Python 3.8 to 3.14): without them, the image is built in
# memory and streamed in, as for remote files.
_ZIPFILE_MEMBER_SIZES_SETTABLE = {"_file_size", "_compress_size", "_crc"} <= set(
    getattr(getattr(zipfile, "_ZipWriteFile", None), "__init__", lambda: None).__code__.co_names
)

# A state this small is built in memory and written in one go, as Keras does:
# HDF5 writing in place through the file, seek by seek, cost a small model's
# checkpoint ~3 ms more (measured once: 100 epochs of a 3 K-parameter model,
# benchmarks/checkpoint_overhead.py), and the image is nothing next to the model.
SMALL_STATE_BYTES = 16 * 2**20

# HDF5's own bytes on top of the arrays are small; from here on the weights
# member gets ZIP64 headers whatever its final size.
_ZIP64_MARGIN = 2**31


def state_bytes(model: keras.Model, include_optimizer: bool = True) -> int:
    """The bytes of what a save writes: the weights, and the optimizer's
    variables unless left out."""
    optimizer = getattr(model, "optimizer", None) if include_optimizer else None
    variables = list(model.weights) + list(getattr(optimizer, "variables", None) or [])
    return sum(int(math.prod(v.shape)) * dtype_bytes(v.dtype) for v in variables)


def _write_keras_archive_public(model: keras.Model, file: IO[bytes], *, include_optimizer: bool) -> None:
    """Fallback: ``model.save`` to a temp file, then copy it member by member.

    The copy is where we add our metadata and, for ``include_optimizer=False``,
    drop the optimizer's group from the weights.
    """
    with local_copy(".keras") as local_path:
        model.save(local_path)
        with zipfile.ZipFile(local_path) as source, zipfile.ZipFile(file, "w") as target:
            for info in source.infolist():
                data = source.read(info)
                if info.filename == METADATA_MEMBER:
                    metadata = json.loads(data)
                    metadata["kedro_keras"] = kedro_keras_metadata(include_optimizer)
                    data = json.dumps(metadata).encode()
                elif info.filename == WEIGHTS_MEMBER and not include_optimizer:
                    data = without_optimizer_group(data)
                target.writestr(info, data)


def read_archive_metadata(file: IO[bytes]) -> dict[str, Any]:
    """``metadata.json`` of a ``.keras`` archive, without reading the weights."""
    with zipfile.ZipFile(file) as archive:
        return json.loads(archive.read(METADATA_MEMBER))


def read_saved_with(file: IO[bytes]) -> dict[str, str]:
    """The Keras version and backend a model file says it was written with.

    ``.keras``: our ``kedro_keras`` metadata, else Keras's own
    ``keras_version`` (Keras records no backend); legacy HDF5: the file's
    ``keras_version``/``backend`` attributes. For log messages only, so it
    never raises: a file that says nothing gives ``{}``.
    """
    try:
        if zipfile.is_zipfile(file):
            metadata = read_archive_metadata(file)
            ours = metadata.get("kedro_keras") or {}
            found = {
                "keras_version": ours.get("keras_version", metadata.get("keras_version")),
                "backend": ours.get("backend"),
            }
        else:
            import h5py

            with h5py.File(bounded(file), "r") as h5_file:
                found = {key: h5_file.attrs.get(key) for key in ("keras_version", "backend")}
    except Exception:  # noqa: BLE001 - a log detail must not fail a load
        return {}
    return {
        key: printable(value.decode(errors="replace") if isinstance(value, bytes) else str(value))
        for key, value in found.items()
        if value
    }


def read_keras_archive(
    file: IO[bytes],
    *,
    custom_objects: dict[str, Any] | None = None,
    compile: bool = True,  # Keras's own name for it
    safe_mode: bool = True,
    max_layers: int = DEFAULT_MAX_LAYERS,
    max_config_depth: int = DEFAULT_MAX_CONFIG_DEPTH,
) -> keras.Model:
    """Build the model stored in an open ``.keras`` archive.

    The weights member is stored uncompressed, so HDF5 reads each array
    straight from its place in ``file`` (local or remote) through a window,
    and the only full copy of the weights in memory is the model's own.
    """
    with zipfile.ZipFile(file) as archive:
        _refuse_hostile_members(archive)
        names = set(archive.namelist())
        missing = {CONFIG_MEMBER, WEIGHTS_MEMBER} - names
        if missing:
            raise ValueError(f"not a Keras model archive: it has no {', '.join(sorted(missing))}")
        metadata = json.loads(read_small_member(archive, METADATA_MEMBER)) if METADATA_MEMBER in names else {}
        slim = metadata.get("kedro_keras", {}).get("include_optimizer") is False
        config_json = read_small_member(archive, CONFIG_MEMBER)
        config = json.loads(config_json)
        check_config_bounds(config, max_layers, max_config_depth)  # before Keras builds anything
        # Anything but a literal false is safe; checked before Keras deserialises anything.
        if safe_mode is not False:
            refuse_unsafe_config(config, custom_objects)

        try:
            return _build_and_fill(archive, file, config_json, slim, custom_objects, compile, safe_mode)
        except (CorruptFileError, zipfile.BadZipFile, OSError, MemoryError):
            raise  # damage, a missing file, a store's failure: said as such
        except Exception as exc:
            hint = unknown_class_hint(exc)
            if hint and "DTypePolicy" not in hint:  # the project's own class, not Keras's quantization
                raise
            ours = metadata.get("kedro_keras") or {}
            written_by = ours.get("keras_version") or metadata.get("keras_version")
            quantized = cannot_rebuild(config, written_by, exc)
            if quantized is None:
                raise
            raise quantized from exc


def _build_and_fill(
    archive: zipfile.ZipFile,
    file: IO[bytes],
    config_json: bytes,
    slim: bool,
    custom_objects: dict[str, Any] | None,
    compile: bool,
    safe_mode: bool,
) -> keras.Model:
    with warnings.catch_warnings():
        if slim:
            # Saved without optimizer state on purpose: Keras's warning that
            # it skips the optimizer would only alarm the user.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        if not _keras_saving.available():
            return _read_keras_archive_public(file, custom_objects, compile, safe_mode)
        with (
            member_reader(archive, file, WEIGHTS_MEMBER) as weights,
            _keras_saving.assets_reader(archive) as assets_store,
        ):
            visited: set[int] = set()
            try:
                weights_store = h5_read_store(weights)
                try:
                    model = build_model_and_fill(
                        config_json,
                        lambda model: _fill(model, weights_store, assets_store, visited),
                        custom_objects=custom_objects,
                        compile=compile,
                        safe_mode=safe_mode,
                    )
                finally:
                    weights_store.close()
            except Exception as exc:
                # Unreadable weights are most often damaged ones: say so if
                # the checksum agrees.
                verify(weights, cause=exc)
                raise
            verify(weights)
            return model


# What the members we inflate (everything but the stored weights: config,
# metadata, assets such as vocabularies) may declare in all.
_MAX_INFLATED_TOTAL = 1024 * 2**20


def _fill(model: keras.Model, weights_store: Any, assets_store: Any, visited: set[int]) -> None:
    # A model whose constructor compiles it (KerasHub's tasks) has an unbuilt
    # optimizer already: built first, its state loads with the layers'.
    build_optimizer(model)
    _keras_saving.load_state(model, weights_store, assets_store, visited)


def _refuse_hostile_members(archive: zipfile.ZipFile) -> None:
    """Refuse names that point outside the archive, repeated names, entries
    that share their bytes (a few bytes of directory listing one large
    member many times) and decompression bombs, before either load path
    touches a member."""
    members = archive.infolist()
    names = [info.filename for info in members]
    if len(set(names)) != len(names):
        repeated = sorted(name for name, count in Counter(names).items() if count > 1)
        raise ValueError(f"refusing the archive: it lists {', '.join(map(repr, repeated))} more than once")
    by_offset = sorted(members, key=lambda info: info.header_offset)
    for info, following in zip(by_offset, by_offset[1:], strict=False):
        # A member's local header (30 bytes and its name) and data come before the next member's.
        if (
            info.header_offset + 30 + len(info.filename.encode()) + info.compress_size
            > following.header_offset
        ):
            raise ValueError(
                f"refusing the archive: members '{info.filename}' and '{following.filename}' overlap "
                "(one stored member listed under several names is a decompression bomb)"
            )
    inflated = sum(info.file_size for info in members if info.compress_type != zipfile.ZIP_STORED)
    if inflated > _MAX_INFLATED_TOTAL:
        raise ValueError(
            f"refusing the archive: its compressed members declare {inflated} bytes in all, more than "
            f"the {_MAX_INFLATED_TOTAL} a Keras model's config and assets could need"
        )
    for info in members:
        name = info.filename
        if leaves_its_folder(name):
            raise ValueError(f"refusing archive member '{name}': it points outside the archive")
        if (
            info.compress_type != zipfile.ZIP_STORED
            and info.file_size > MAX_JSON_MEMBER
            and info.file_size > 100 * max(info.compress_size, 1)
        ):
            raise ValueError(
                f"refusing archive member '{name}': {info.compress_size} bytes claim to hold "
                f"{info.file_size} (a decompression bomb)"
            )


def _read_keras_archive_public(
    file: IO[bytes], custom_objects: Any, compile: bool, safe_mode: bool
) -> keras.Model:
    import keras

    with zipfile.ZipFile(file) as archive:
        with member_reader(archive, file, WEIGHTS_MEMBER) as weights:
            check_all_datasets(weights)  # before Keras reads (and allocates) anything
        config = json.loads(read_small_member(archive, CONFIG_MEMBER))
        compile_config = config.get("compile_config")
        portable = portable_compile_config(compile_config) if compile else compile_config
        file.seek(0)
        with local_copy(".keras") as local_path:
            if portable is compile_config:
                with open(local_path, "wb") as local_file:
                    shutil.copyfileobj(file, local_file)
            else:  # the same archive with a config every backend can compile
                config["compile_config"] = portable
                with zipfile.ZipFile(local_path, "w") as target:
                    for info in archive.infolist():
                        copy = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                        copy.compress_type, copy.file_size = info.compress_type, info.file_size
                        if info.filename == CONFIG_MEMBER:
                            target.writestr(copy, json.dumps(config))
                            continue
                        with archive.open(info) as source, target.open(copy, "w") as destination:
                            shutil.copyfileobj(source, destination, CHUNK)
            return keras.saving.load_model(
                local_path, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
            )
