"""A one-file export (ONNX, LiteRT, PyTorch .pt2) as ``KerasExportDataset`` keeps it: the
artifact, published in one step, and beside it ``<name>.manifest.json`` with
its size and SHA-256 (and what exported it), so that ``verify`` and every
load find a file cut short or with a flipped byte. Neither format records a
checksum of its own.

A save removes the old manifest first, then publishes the artifact, then
its manifest: a run killed in between leaves an artifact without a manifest
(unverifiable, not reported damaged), never a manifest that describes
another artifact.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from kedro_keras._dataset import preview as _preview
from kedro_keras._formats.litert import litert_signature
from kedro_keras._formats.onnx import onnx_signature
from kedro_keras._formats.openvino import openvino_signature
from kedro_keras._formats.pt2 import pt2_signature
from kedro_keras._io.digests import copy_hashing
from kedro_keras._io.files import Location
from kedro_keras._io.h5 import CorruptFileError
from kedro_keras._io.paths import NotARegularFileError, require_regular_file
from kedro_keras._log import printable
from kedro_keras._version import __version__

if TYPE_CHECKING:
    import keras

MANIFEST_SUFFIX = ".manifest.json"
# A manifest holds a digest and a few names: anything larger is not ours.
_MAX_MANIFEST_BYTES = 64 * 2**10
_TEXT_FIELDS = ("format", "model", "keras_version", "backend", "saved_at")
# Inputs and outputs a preview lists; a model with more is summarised.
_SIGNATURE_SHOWN = 32
# Input keys a manifest may map (one per dict input): the manifest's size cap bounds them anyway.
_MAX_INPUT_KEYS = 10_000
# How each format's file states its inputs and outputs (the folder formats give their one file).
_SIGNATURE_READERS = {
    "onnx": onnx_signature,
    "litert": litert_signature,
    "openvino": openvino_signature,
    "torch": pt2_signature,
}


def manifest_path(path: PurePosixPath) -> PurePosixPath:
    return path.with_name(path.name + MANIFEST_SUFFIX)


def publish_file(
    location: Location, local: str, path: PurePosixPath, *, exclusive: bool, about: dict[str, str]
) -> None:
    """Publish the exported file at ``local`` as ``path``, then its manifest."""
    try:
        location.remove(manifest_path(path))
    except FileNotFoundError:
        pass
    with location.atomic_write(path, exclusive=exclusive) as target, open(local, "rb") as source:
        sha256, size = copy_hashing(source, target)
    manifest = {
        **about,
        "size": size,
        "sha256": sha256,
        "kedro_keras_version": __version__,
        "saved_at": datetime.now(tz=timezone.utc).isoformat(timespec="seconds"),
    }
    with location.atomic_write(manifest_path(path)) as file:
        file.write(json.dumps(manifest, indent=2).encode())


def about_export(model: keras.Model, format: str, backend: str, local: str | None = None) -> dict[str, Any]:
    """What the manifest says of an export: the format, the model, what
    exported it, and the inputs and outputs a server feeds and gets back
    (read from the file at ``local`` under its own names, else the model's)."""
    import keras

    about: dict[str, Any] = {
        "format": format,
        "model": model.name,
        "keras_version": keras.__version__,
        "backend": backend,
    }
    return {**about, **signature_of(model, format, local)}


def signature_of(model: keras.Model, format: str, local: str | None) -> dict[str, list[str]]:
    """``{"inputs": [...], "outputs": [...]}`` as ``name: dtype[dims]``; empty
    if the file cannot say (only a preview row is at stake)."""
    try:
        read = _SIGNATURE_READERS.get(format)
        if local is not None and read is not None:
            with open(local, "rb") as file:
                signature = read(file.read())
            names = signature.pop("input_names")
            if format == "litert":
                signature, names = _in_model_order(model, signature, names)
            return {**signature, **_input_keys(model, names, format)}
        return {
            "inputs": [_keras_tensor(tensor) for tensor in model.inputs],
            "outputs": [_keras_tensor(tensor) for tensor in model.outputs],
        }
    except Exception:  # noqa: BLE001 - the export stands without its signature
        return {}


def _in_model_order(
    model: keras.Model, signature: dict[str, Any], names: list[str]
) -> tuple[dict[str, Any], list[str]]:
    """A LiteRT file's inputs in the order the model takes them, recorded as
    ``input_order`` (LiteRT sorts a signature's names as text, and the
    order of its subgraph's inputs follows neither): the order of
    ``model.inputs`` where the file names its inputs after them, else the
    names sorted with their numbers as numbers (TensorFlow names a nested
    input ``args_0``, ``args_0_1``, ..., ``args_0_10``)."""
    own = [tensor.name for tensor in getattr(model, "inputs", None) or []]
    if sorted(own) == sorted(names) and len(set(own)) == len(own):
        order = own
    else:
        order = sorted(
            names, key=lambda name: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
        )
    if order == names:
        return signature, names
    described = dict(zip(names, signature.get("inputs", []), strict=False))
    inputs = [described[name] for name in order if name in described]
    return {**signature, "inputs": inputs, "input_order": order}, order


def _input_keys(model: keras.Model, names: list[str], format: str | None = None) -> dict[str, dict[str, str]]:
    """``{"input_keys": {model's key: file's input name}}`` for a model whose
    inputs are a dict keyed otherwise than the file names them: the file's
    inputs come in the order of ``model.inputs``, the dict flattened (keys
    sorted as text), but in a ``.pt2`` in the dict's own order (torch.export
    flattens the dict Keras traces with as it is: ``feature_10`` last). A
    subclassed model has no ``model.input``: the dict its first call was
    given (its build config) is flattened as every exporter flattens it,
    keys sorted (``keras.tree``)."""
    try:
        structure = model.input
    except AttributeError:  # a subclassed model: no symbolic inputs
        return _called_with_keys(model, names)
    if not isinstance(structure, dict) or len(names) != len(model.inputs):
        return {}
    if format == "torch":
        keys = {str(key): name for key, name in zip(structure, names, strict=True)}
    else:
        positions = {id(tensor): index for index, tensor in enumerate(model.inputs)}
        keys = {
            str(key): names[positions[id(tensor)]]
            for key, tensor in structure.items()
            if id(tensor) in positions
        }
    return {"input_keys": keys} if any(key != name for key, name in keys.items()) else {}


def _called_with_keys(model: keras.Model, names: list[str]) -> dict[str, dict[str, str]]:
    """``_input_keys`` of a subclassed model first called with one dict of
    tensors: each key to the one name that is the key or ends in ``_<key>``
    (TensorFlow names them ``args_0_<key>``), else by position, keys sorted
    as every exporter flattens a dict (other exporters name them ``input_<i>``)."""
    config = model.get_build_config()
    shapes = config.get("input_shape") if isinstance(config, dict) else None
    if (
        not isinstance(shapes, dict)
        or len(shapes) != len(names)
        or not all(isinstance(k, str) for k in shapes)
    ):
        return {}
    matches = {key: [name for name in names if name == key or name.endswith(f"_{key}")] for key in shapes}
    if all(len(found) == 1 for found in matches.values()) and len({f[0] for f in matches.values()}) == len(
        names
    ):
        keys = {key: found[0] for key, found in matches.items()}
    else:
        keys = dict(zip(sorted(shapes), names, strict=True))
    return {"input_keys": keys} if any(key != name for key, name in keys.items()) else {}


def _keras_tensor(tensor: Any) -> str:
    dims = [None if size is None else int(size) for size in tensor.shape]
    return f"{tensor.name}: {tensor.dtype}{dims}"


def signature_rows(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """The preview's rows for the inputs and outputs a manifest records."""
    return [(key, "; ".join(manifest[key])) for key in ("inputs", "outputs") if manifest.get(key)]


def checked_signature(manifest: dict[str, Any]) -> dict[str, list[str]]:
    """The manifest's inputs and outputs, as data: lists of short escaped
    strings, at most a few dozen shown (a planted manifest could list more)."""
    found = {}
    for key in ("inputs", "outputs"):
        values = manifest.get(key)
        if isinstance(values, list) and all(isinstance(value, str) for value in values):
            shown = [printable(value, 120) for value in values[:_SIGNATURE_SHOWN]]
            if len(values) > _SIGNATURE_SHOWN:
                shown.append(f"... {len(values) - _SIGNATURE_SHOWN} more")
            found[key] = shown
    return found


def read_file_manifest(location: Location, path: PurePosixPath) -> dict[str, Any] | None:
    """The manifest beside the export at ``path``, checked to be one this
    package writes; None if there is none. ``ValueError`` for one that is
    not ours (a file planted there)."""
    where = manifest_path(path)
    try:
        require_regular_file(location, where)
        with location.open_read(where) as file:
            raw = file.read(_MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        return None
    except NotARegularFileError as exc:
        raise ValueError(f"its manifest: {exc}") from exc
    if len(raw) > _MAX_MANIFEST_BYTES:
        raise ValueError(f"its manifest is over {_MAX_MANIFEST_BYTES} bytes: not one kedro-keras writes")
    try:
        manifest = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"its manifest is not JSON ({printable(str(exc), 120)})") from exc
    size, sha256 = (
        (manifest.get("size"), manifest.get("sha256")) if isinstance(manifest, dict) else (None, None)
    )
    if (
        isinstance(size, bool)
        or not isinstance(size, int)
        or size < 0
        or not isinstance(sha256, str)
        or len(sha256) != 64
        or any(c not in "0123456789abcdef" for c in sha256)
    ):
        raise ValueError("its manifest has no size and SHA-256 of the kind kedro-keras writes")
    keys = manifest.get("input_keys")
    if not (
        isinstance(keys, dict)
        and len(keys) <= _MAX_INPUT_KEYS
        and all(isinstance(key, str) and isinstance(name, str) for key, name in keys.items())
    ):
        keys = {}
    order = manifest.get("input_order")
    if not (
        isinstance(order, list)
        and len(order) <= _MAX_INPUT_KEYS
        and all(isinstance(name, str) for name in order)
    ):
        order = []
    return {
        **{key: printable(str(manifest.get(key, "?")), 80) for key in _TEXT_FIELDS},
        **checked_signature(manifest),
        "input_keys": keys,
        "input_order": order,
        "size": size,
        "sha256": sha256,
    }


def check_content(content: bytes, manifest: dict[str, Any] | None) -> None:
    """``CorruptFileError`` if ``content`` is not what ``manifest`` recorded."""
    if manifest is None:
        return
    if len(content) != manifest["size"]:
        raise CorruptFileError(f"it holds {len(content)} bytes, its manifest says {manifest['size']}")
    if hashlib.sha256(content).hexdigest() != manifest["sha256"]:
        raise CorruptFileError("it does not match the SHA-256 its manifest records")


def verify_file(location: Location, path: PurePosixPath, manifest: dict[str, Any] | None) -> str:
    """What was checked of the export at ``path``, read front to back once."""
    if manifest is None:
        return (
            "no manifest beside it, so no checksum to check (an export from before kedro-keras wrote one, "
            "or a save interrupted before its manifest)"
        )
    with location.open_read(path) as file:
        sha256, size = copy_hashing(file, limit=manifest["size"])
    if size != manifest["size"]:
        has = f"more than {manifest['size']}" if size > manifest["size"] else f"only {size}"
        raise CorruptFileError(f"it has {has} bytes, its manifest says {manifest['size']}: it is damaged")
    if sha256 != manifest["sha256"]:
        raise CorruptFileError("it does not match the SHA-256 its manifest records: it is damaged")
    return f"{size:,} bytes against their SHA-256"


def preview_rows(location: Location, path: PurePosixPath) -> list[tuple[str, str]]:
    """What a preview says of the export at ``path``: its size, and what its
    manifest records (what exported it, when, its inputs and outputs)."""
    if location.kind(path) is None:
        return [("stored", "nothing saved yet")]
    rows = _preview.size_row(location.fs.info(str(path)).get("size"))
    manifest = read_file_manifest(location, path)
    if manifest is None:
        return [
            *rows,
            ("checksum", "no manifest beside it (an older export, or a save interrupted before it)"),
        ]
    return [
        *rows,
        ("model", manifest["model"]),
        ("exported with", f"Keras {manifest['keras_version']}, {manifest['backend']} backend"),
        ("exported at", manifest["saved_at"]),
        *signature_rows(manifest),
        ("checksum", "SHA-256 recorded (kedro keras verify checks it)"),
    ]
