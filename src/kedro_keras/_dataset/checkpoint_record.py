"""A checkpoint's record: the small JSON file written last beside each
checkpoint (its position, metrics and random states), and the names that
checkpoints go by. A checkpoint folder may be shared, so a record is read as
data from anyone: size-capped, checked field by field, and its random states
checked before any array is made."""

from __future__ import annotations

import json
import math
import re
from pathlib import PurePosixPath
from typing import Any

from kedro_keras._formats.dtypes import dtype_bytes
from kedro_keras._io.files import Location
from kedro_keras._log import SafeDatasetError, as_data, printable

# ckpt-e00003-s0000000: 3 epochs done, 0 batches into the next. Fixed width,
# so that names sort in training order. ASCII digits and fullmatch: ``\d``
# takes any script's digits and ``$`` a trailing newline, and a version is
# put into paths and log lines.
PREFIX = "ckpt-"
_VERSION = re.compile(r"e([0-9]{5})-s([0-9]{7})")
MAX_EPOCH, MAX_STEP = 10**5, 10**7  # what the fixed-width name can hold
# A record is a few KB: the position, the metrics and two numbers per random
# generator. The folder may be shared or an object store anyone in the team
# writes to, so a record is read only up to this size, never whole: a larger
# one (or a link to /dev/zero) is not one of ours and is refused unparsed.
MAX_RECORD_BYTES = 2**20
# The dtypes random_states() writes: SeedGenerator states are uint32 (JAX,
# NumPy), int32 (PyTorch, OpenVINO) or int64 (TensorFlow); the floats leave
# room for another kind of non-weight variable. Anything else (a 'U50000000'
# declares 200 MB per element) is refused before NumPy allocates it.
_STATE_DTYPES = {
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
    "float32": None,
    "float64": None,
}
# A SeedGenerator's state is 2 numbers; restoring then requires the exact
# shape of the model's own variable. These bounds hold before a model is at hand.
_MAX_STATE_ELEMENTS = 1024
_MAX_STATE_DIMS = 4
_MAX_STATES_BYTES = 2**20


def is_version(version: Any) -> bool:
    return isinstance(version, str) and _VERSION.fullmatch(version) is not None


def version_name(epochs_done: int, steps: int, url: str) -> str:
    """The name of the checkpoint at that training position."""
    if not (0 <= epochs_done < MAX_EPOCH and 0 <= steps < MAX_STEP):
        raise SafeDatasetError(
            f"Checkpoints in '{url}' are named for up to {MAX_EPOCH - 1} epochs and {MAX_STEP - 1} batches "
            f"into one; this one is at epoch {epochs_done}, batch {steps}. Train in fewer, longer epochs."
        )
    return f"e{epochs_done:05d}-s{steps:07d}"


def check_version(version: str) -> None:
    if not is_version(version):
        raise SafeDatasetError(
            f"'{printable(str(version), 80)}' is not a checkpoint version: versions look like "
            "'e00003-s0000000' (epochs done, batches into the next), as listed by versions()."
        )


def shown(value: Any) -> str:
    """A value from a record, for a message: short, escaped, and only its
    type when it is a container (its text could be a megabyte)."""
    if isinstance(value, str):
        return f"'{printable(value, 60)}'"
    if isinstance(value, (bool, int, float)) or value is None:
        return printable(repr(value), 60)
    return f"a JSON {'array' if isinstance(value, list) else 'object'}"


def _whole(record: dict[str, Any], key: str, below: int) -> int:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < below:
        raise ValueError(f"'{key}' is {shown(value)}, not a whole number from 0 to {below - 1}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def checked_record(record: Any, version: str) -> dict[str, Any]:
    """``record`` if it has the shape ``_write_checkpoint`` gives one, else
    ValueError saying what is wrong (every value shown escaped). Keys it does
    not know are left alone: a newer kedro-keras may add some."""
    if not isinstance(record, dict):
        raise ValueError(f"it holds {shown(record)}, not a JSON object")
    named = _VERSION.fullmatch(version)
    if named is None:  # unreachable through _path, which checks every version; kept for direct callers
        raise ValueError(f"'{printable(str(version), 80)}' is not a checkpoint version")
    for key, below, in_name in (("epoch", MAX_EPOCH, named[1]), ("step", MAX_STEP, named[2])):
        if _whole(record, key, below) != int(in_name):
            raise ValueError(f"'{key}' is {record[key]} but the file name says {int(in_name)}")
    for key in ("file", "saved_at", "monitor", "keras_version", "backend"):
        if record.get(key) is not None and not isinstance(record[key], str):
            raise ValueError(f"'{key}' is {shown(record[key])}, not a string")
    for key in ("value", "best"):
        if record.get(key) is not None and not _is_number(record[key]):
            raise ValueError(f"'{key}' is {shown(record[key])}, not a number")
    logs = record.get("logs")
    if logs is not None:
        if not isinstance(logs, dict):
            raise ValueError(f"'logs' is {shown(logs)}, not an object of metrics")
        for name, value in logs.items():
            if value is not None and not _is_number(value):
                raise ValueError(f"metric '{printable(name, 60)}' in 'logs' is {shown(value)}, not a number")
    states = record.get("random_states")
    if states is not None:
        if not isinstance(states, list):
            raise ValueError(f"'random_states' is {shown(states)}, not a list")
        declared = 0
        for index, state in enumerate(states):
            shape = random_state_shape(state, f"random_states[{index}]")
            declared += math.prod(shape) * dtype_bytes(state["dtype"])
            if declared > _MAX_STATES_BYTES:
                raise ValueError(
                    f"'random_states' declare more than {_MAX_STATES_BYTES // 2**20} MiB of arrays; "
                    "a model's random generators hold a few numbers each"
                )
    return record


def random_state_shape(state: Any, where: str = "random state") -> tuple[int, ...]:
    """The shape of a recorded random state, found without allocating it;
    ValueError if its dtype is not one ``random_states()`` writes, or its
    value is not a small rectangular array of numbers that dtype holds."""
    if not isinstance(state, dict) or set(state) != {"dtype", "value"}:
        raise ValueError(f"{where} is {shown(state)}, not an object of 'dtype' and 'value'")
    dtype = state["dtype"]
    if not isinstance(dtype, str) or dtype not in _STATE_DTYPES:
        raise ValueError(
            f"{where} declares dtype {shown(dtype)}; refused before allocating it: random states are "
            f"one of {', '.join(_STATE_DTYPES)}"
        )
    shape: list[int] = []
    level = [state["value"]]
    while level and isinstance(level[0], list):  # one level of nesting at a time, no recursion
        if len(shape) == _MAX_STATE_DIMS:
            raise ValueError(f"{where} has more than {_MAX_STATE_DIMS} dimensions")
        width = len(level[0])
        if any(not isinstance(row, list) or len(row) != width for row in level):
            raise ValueError(f"{where} is not a rectangular array")
        shape.append(width)
        if math.prod(shape) > _MAX_STATE_ELEMENTS:
            raise ValueError(f"{where} has more than {_MAX_STATE_ELEMENTS} elements")
        level = [item for row in level for item in row]
    bounds = _STATE_DTYPES[dtype]
    for item in level:
        fits = (
            _is_number(item)
            if bounds is None
            else isinstance(item, int) and not isinstance(item, bool) and bounds[0] <= item <= bounds[1]
        )
        if not fits:
            raise ValueError(f"{where} holds {shown(item)}, which is not a {dtype}")
    return tuple(shape)


def read_record(location: Location, path: PurePosixPath, version: str) -> dict[str, Any]:
    """The record at ``path``, checked; a ``DatasetError`` (which ``restore()``
    skips for the checkpoint before) for anything that is not one of ours."""
    url = location.url(path)
    # A pipe named like a record would block restore() (and fit's pruning)
    # forever on open, and a device never ends. Object stores hold only files.
    kind = location.kind(path) if location.is_local else "file"
    if kind not in ("file", None):  # None: removed since the listing, which open_read reports
        raise SafeDatasetError(
            f"The checkpoint record '{url}' is a "
            f"{'folder' if kind == 'directory' else 'device, pipe or socket'}, not a file: it was not "
            "written by this dataset. Remove it and its model file."
        )
    try:
        with location.open_read(path) as file:
            raw = file.read(MAX_RECORD_BYTES + 1)
    except OSError as exc:
        raise SafeDatasetError(
            f"Cannot read the checkpoint record '{url}': {printable(str(exc), 300)}"
        ) from as_data(exc)
    if len(raw) > MAX_RECORD_BYTES:
        raise SafeDatasetError(
            f"The checkpoint record '{url}' is larger than {MAX_RECORD_BYTES // 2**20} MiB; ours are "
            "a few KB, so it was not written by this dataset and is not read. Remove it (and its "
            "model file) if you did not put it there on purpose."
        )
    try:
        record = json.loads(raw)
    except RecursionError as exc:
        raise SafeDatasetError(
            f"The checkpoint record '{url}' is nested too deeply to be a checkpoint record; "
            "it was not written by this dataset. Remove it and its model file."
        ) from as_data(exc)
    except ValueError as exc:  # not JSON, not UTF-8, an integer of thousands of digits
        raise SafeDatasetError(
            f"The checkpoint record '{url}' is not valid JSON ({printable(str(exc), 200)}): it was "
            "cut short or damaged. Remove it and its model file."
        ) from as_data(exc)
    try:
        return checked_record(record, version)
    except ValueError as exc:
        raise SafeDatasetError(
            f"The checkpoint record '{url}' is not one this dataset writes: {exc}. "
            "Remove it and its model file."
        ) from as_data(exc)


def encoded_record(record: dict[str, Any], version: str) -> bytes:
    """``record`` as the bytes written, once ``read_record`` would accept
    them; ``ValueError`` otherwise."""
    encoded = json.dumps(record, indent=2).encode()
    checked_record(json.loads(encoded), version)
    if len(encoded) > MAX_RECORD_BYTES:
        raise ValueError(f"it is {len(encoded)} bytes, over the {MAX_RECORD_BYTES} bytes read back")
    return encoded


def preview_rows(versions: list[str], newest: dict[str, Any]) -> list[tuple[str, str]]:
    """What the preview says of the checkpoints (newest first) and the
    newest one's checked record: its position, when, its metrics."""
    rows = [
        ("checkpoints", f"{len(versions)}: {', '.join(versions[:5])}{' ...' if len(versions) > 5 else ''}"),
        (
            "newest",
            f"{versions[0]}: {newest['epoch']} epoch(s) done, saved {printable(newest.get('saved_at') or '?', 40)}",
        ),
    ]
    metrics = ", ".join(
        f"{printable(name, 60)} {value:.4g}"
        for name, value in (newest.get("logs") or {}).items()
        if value is not None
    )
    if metrics:
        rows.append(("newest metrics", metrics))
    return rows
