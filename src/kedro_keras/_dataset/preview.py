"""What a stored model is, read from its config, metadata and HDF5 headers
without Keras and without reading a weight: the rows of a Kedro-Viz preview.

A preview is Kedro-Viz's ``TablePreview`` (it picks the renderer by the
return annotation's name): a two-column table, property and value, so that
models, weights, histories and checkpoints read alike.

Local paths in it are shown relative to the Kedro project's root, as the
catalog wrote them: Kedro hands the datasets absolute paths (it prefixes
the project's folder to every relative ``filepath``), and ``kedro viz build
--include-previews`` would otherwise publish this machine's folders.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from collections import Counter
from pathlib import Path
from typing import IO, Any, NewType

from kedro.utils import find_kedro_project

from kedro_keras._formats.archive import (
    CONFIG_MEMBER,
    METADATA_MEMBER,
    WEIGHTS_MEMBER,
    _refuse_hostile_members,
)
from kedro_keras._formats.layer_names import group_names
from kedro_keras._formats.quantization import describe as describe_quantization
from kedro_keras._formats.quantization import quantization_modes
from kedro_keras._formats.zip_members import member_reader
from kedro_keras._io.h5 import OPTIMIZER_GROUP
from kedro_keras._io.h5_guards import array_headers
from kedro_keras._io.progress import size_text
from kedro_keras._log import printable

TablePreview = NewType("TablePreview", dict)

Row = tuple[str, str]
DEFAULT_LAYERS_SHOWN = 20

# A preview parses the config whole. Keras stores it uncompressed, but a
# deflated one of 34 KB held 35 MB of JSON: 1.5 million layers, 1.8 GB and a
# minute to preview (the file tests/test_hostile_readers.py builds, before
# these bounds). So a preview reads at most this much JSON, with at most
# this many objects, lists and values (a commas-and-brackets count, taken
# before parsing; about 150 MB parsed at worst): ResNet152's config holds
# 31,000, so a model of ten thousand layers still previews.
MAX_PREVIEW_JSON = 32 * 2**20
MAX_PREVIEW_JSON_ITEMS = 1_000_000
# What one cell may hold: Kedro-Viz and a terminal show a line, not a file.
_MAX_CELL = 1000


def table(rows: list[Row]) -> TablePreview:
    """Rows in the ``split`` layout Kedro-Viz renders (pandas' ``to_dict("split")``).
    The path goes last: Kedro-Viz's panel shows it already, and its preview
    box shows the first rows only.

    Every row passes here, and most of what they say was read from a file
    (a model's and its layers' names, a manifest's fields): control
    characters are shown escaped, so a name cannot forge rows or send
    escape sequences to a terminal."""
    rows = [row for row in rows if row[0] != "path"] + [row for row in rows if row[0] == "path"]
    root = project_root()
    data = [[printable(relative_to_project(str(cell), root), _MAX_CELL) for cell in row] for row in rows]
    return TablePreview({"index": list(range(len(data))), "columns": ["property", "value"], "data": data})


def project_root() -> str | None:
    """The root of the Kedro project this process works in, found as Kedro
    finds it (from the working directory up, the first folder whose
    pyproject.toml has a ``[tool.kedro]`` table): the folder Kedro prefixed
    to the catalog's relative paths. None outside a project."""
    try:
        root = find_kedro_project(Path.cwd())
    except OSError:  # a working directory that was removed
        return None
    return Path(root).as_posix() if root else None


# Where the root starts a path, not the tail of a longer one or a URL's
# (s3://bucket/home/me/proj ends with the root /home/me/proj).
_STARTS_A_PATH = r"(?<![\w.~/:@%+-])"
# After it: a folder's name (shown without the root), or the end of the path
# (the root itself, shown as "."); not /home/me/proj2 or /home/me/proj-old.
_AFTER_THE_ROOT = r"(?:(/+)(?=[^/\s'\"])|(?![\w.~@%+/-]))"


def relative_to_project(text: str, root: str | None) -> str:
    """``text`` with every local path under ``root`` shown relative to it
    (``/home/me/proj/data/m.keras`` as ``data/m.keras``, the root itself as
    ``.``); remote URLs and paths elsewhere stay as they are."""
    if not root or root == "/" or root not in text:
        return text
    pattern = re.compile(_STARTS_A_PATH + re.escape(root) + _AFTER_THE_ROOT)
    return pattern.sub(lambda match: "" if match.group(1) else ".", text)


def bounded_json(data: bytes, name: str) -> Any:
    """``data`` parsed, if it is within a preview's budget (else ``ValueError``)."""
    if len(data) > MAX_PREVIEW_JSON:
        raise ValueError(f"'{name}' holds over {size_text(MAX_PREVIEW_JSON)} of JSON: too large to preview")
    items = data.count(b",") + data.count(b"{") + data.count(b"[")
    if items > MAX_PREVIEW_JSON_ITEMS:
        raise ValueError(f"'{name}' holds over {MAX_PREVIEW_JSON_ITEMS:,} JSON values: too many to preview")
    return json.loads(data)


def _archive_json(archive: zipfile.ZipFile, name: str) -> Any:
    size = archive.getinfo(name).file_size
    if size > MAX_PREVIEW_JSON:
        raise ValueError(f"'{name}' declares {size:,} bytes: too large to preview")
    with archive.open(name) as member:
        return bounded_json(member.read(MAX_PREVIEW_JSON + 1), name)


# A Keras archive holds a config, metadata, the weights and a few assets.
MAX_ARCHIVE_MEMBERS = 100_000


def refuse_hostile_archive(archive: zipfile.ZipFile) -> None:
    """The load's checks of an archive's members (names inside it, no
    repeats, no overlaps, no bombs), within a budget of members, before a
    reader touches one: one 256 MiB member listed 4,000 times would
    otherwise be read 4,000 times."""
    members = archive.infolist()
    if len(members) > MAX_ARCHIVE_MEMBERS:
        raise ValueError(
            f"refusing the archive: it lists {len(members)} members, more than {MAX_ARCHIVE_MEMBERS}"
        )
    # Repeats found in one pass first: the load's own check counts them in quadratic time.
    repeated = sorted(name for name, count in Counter(info.filename for info in members).items() if count > 1)
    if repeated:
        shown = ", ".join(repr(name) for name in repeated[:3])
        raise ValueError(f"refusing the archive: it lists {shown} more than once")
    _refuse_hostile_members(archive)


def keras_archive_rows(file: IO[bytes], layers_shown: int = DEFAULT_LAYERS_SHOWN) -> list[Row]:
    """A ``.keras`` archive: its config and metadata members and the headers
    of its weights member (a few small reads, also remotely), within the
    budgets a load checks first and a preview's own for the JSON."""
    with zipfile.ZipFile(file) as archive:
        refuse_hostile_archive(archive)
        config = _archive_json(archive, CONFIG_MEMBER)
        metadata = _archive_json(archive, METADATA_MEMBER)
        with member_reader(archive, file, WEIGHTS_MEMBER) as weights:
            headers = array_headers(weights)
    return model_rows(config, headers, layers_shown) + saved_with_rows(metadata)


def weights_rows(
    file: IO[bytes], config: dict[str, Any] | None, layers_shown: int = DEFAULT_LAYERS_SHOWN
) -> list[Row]:
    """A ``.weights.h5`` file (and the architecture saved beside it, if any)."""
    return model_rows(config or {}, array_headers(file), layers_shown)


def model_rows(
    config: dict[str, Any], headers: dict[str, dict[str, tuple[tuple[int, ...], int]]], layers_shown: int
) -> list[Row]:
    weights = {path: arrays for path, arrays in headers.items() if not _is_optimizer(path)}
    optimizer = {path: arrays for path, arrays in headers.items() if _is_optimizer(path)}
    params, nbytes = _count(weights)
    rows: list[Row] = []
    inner = config.get("config") or {}
    if config:
        rows.append(("model", f"{inner.get('name', '?')} ({config.get('class_name', '?')})"))
    rows.append(("parameters", f"{params:,} ({size_text(nbytes)})"))
    layer_configs = [
        layer.get("config") or {} for layer in inner.get("layers") or [] if isinstance(layer, dict)
    ]
    # A Functional model records no policy of its own: its layers' is the one that counts.
    policy = _policy_name(
        inner.get("dtype") or next((c["dtype"] for c in layer_configs[1:] if c.get("dtype")), None)
    )
    if policy:
        rows.append(("dtype policy", policy))
    modes = quantization_modes(config)
    if modes:
        rows.append(("quantization", describe_quantization(modes)))
    optimizer_config = (config.get("compile_config") or {}).get("optimizer")
    optimizer_name = (
        optimizer_config.get("class_name") if isinstance(optimizer_config, dict) else optimizer_config
    )
    if optimizer:
        count, size = _count(optimizer)
        rows.append(
            (
                "optimizer state",
                f"{optimizer_name or 'stored'}: {sum(len(a) for a in optimizer.values())} arrays ({size_text(size)})",
            )
        )
    else:
        rows.append(("optimizer state", "none stored"))
    layers = inner.get("layers") if isinstance(inner.get("layers"), list) else []
    by_layer = _params_by_layer(weights)
    counts = [by_layer.get(path, 0) for path in _stored_names(layers)]
    for layer, count in list(zip(layers, counts, strict=True))[:layers_shown]:
        name = (layer.get("config") or {}).get("name") or layer.get("name", "?")
        rows.append((f"layer {name}", f"{layer.get('class_name', '?')}, {count:,} parameters"))
    if len(layers) > layers_shown:
        rest = sum(counts[layers_shown:])
        rows.append(("more layers", f"{len(layers) - layers_shown} more, {rest:,} parameters"))
    return rows


def _stored_names(layers: list[dict[str, Any]]) -> list[str]:
    """The names Keras stores each layer's arrays under, in the layers' order
    (not the layer's own name, which is not reproducible)."""
    return group_names([str(layer.get("class_name", "")) for layer in layers])


def saved_with_rows(metadata: dict[str, Any]) -> list[Row]:
    ours = metadata.get("kedro_keras") or {}
    parts = [f"Keras {ours.get('keras_version') or metadata.get('keras_version', '?')}"]
    if ours.get("backend"):
        parts.append(f"{ours['backend']} backend")
    if ours.get("kedro_keras_version"):
        parts.append(f"kedro-keras {ours['kedro_keras_version']}")
    rows = [("saved with", ", ".join(parts))]
    if ours.get("saved_at"):  # ours: UTC, with its offset
        rows.append(("saved at", str(ours["saved_at"])))
    elif metadata.get("date_saved"):  # Keras's: the saving machine's local time, no zone
        rows.append(("saved at", f"{metadata['date_saved']} (local time where it was saved)"))
    return rows


def saved_with_text(saved_with: dict[str, Any]) -> str:
    """ " (saved with Keras 3.15.1 on the jax backend)" for load log lines, or ""."""
    if not saved_with:
        return ""
    text = f" (saved with Keras {saved_with.get('keras_version', 'of an unrecorded version')}"
    return text + (f" on the {saved_with['backend']} backend)" if "backend" in saved_with else ")")


def size_row(nbytes: int | None) -> list[Row]:
    return [] if nbytes is None else [("file size", size_text(nbytes))]


def _is_optimizer(path: str) -> bool:
    return path == OPTIMIZER_GROUP or path.startswith(f"{OPTIMIZER_GROUP}/")


def _count(groups: dict[str, dict[str, tuple[tuple[int, ...], int]]]) -> tuple[int, int]:
    params = nbytes = 0
    for arrays in groups.values():
        for shape, itemsize in arrays.values():
            count = math.prod(shape)
            params += count
            nbytes += count * itemsize
    return params, nbytes


def _params_by_layer(weights: dict[str, dict[str, tuple[tuple[int, ...], int]]]) -> dict[str, int]:
    # Keras writes a layer's arrays under layers/<stored name>/..., nested layers below it.
    counts: dict[str, int] = {}
    for path, arrays in weights.items():
        parts = path.split("/")
        if len(parts) >= 2 and parts[0] == "layers":
            counts[parts[1]] = counts.get(parts[1], 0) + sum(math.prod(shape) for shape, _ in arrays.values())
    return counts


def _policy_name(dtype: Any) -> str | None:
    if isinstance(dtype, dict):
        inner = dtype.get("config") or {}
        # A quantized layer's policy: the float policy it was quantized from
        # (the quantization row says how).
        return str(inner.get("name") or inner.get("source_name") or dtype.get("class_name"))
    return str(dtype) if dtype else None


def file_size(file: IO[bytes]) -> int | None:
    """The size of an open seekable file, its position kept."""
    try:
        position = file.tell()
        size = file.seek(0, 2)
        file.seek(position)
        return size
    except (OSError, ValueError, AttributeError):
        return None


def safely(rows: list[Row], read: Any) -> list[Row]:
    """``rows`` plus what ``read()`` gives; a preview says what it could not
    read instead of failing (Kedro-Viz would show nothing)."""
    try:
        return rows + read()
    except Exception as exc:  # noqa: BLE001 - a preview never fails
        text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        return [*rows, ("could not read", text)]
