"""The index of an ``.orbax`` folder: what commits a state Orbax wrote.

An ``.orbax`` folder holds ``index.json`` and one ``state-<hex>`` folder
(Orbax's checkpoints of the weights and of the optimizer). The index is
written last, in one atomic write, once every process's files are in place:
it names the state folder, every file in it with its size and SHA-256 (and
the process that wrote it), each variable's path, shape and dtype, and the
model's architecture. A reader follows the index only, so it never sees a
state still being written, and a save that dies leaves the previous index,
and the state it names, as they were.

An index may come from anyone: every field is checked for the type and
bounds this package writes before it is used, and file names must stay
inside the state folder.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kedro_keras._formats.archive import MAX_CONFIG_BYTES
from kedro_keras._io.digests import file_entry_problem
from kedro_keras._io.paths import inside_folder
from kedro_keras._log import printable

ORBAX_SUFFIX = ".orbax"
INDEX = "index.json"
FORMAT = "kedro-keras orbax 1"
STATE = re.compile(r"^state-[0-9a-f]{32}$")
_DTYPE = re.compile(r"^[a-z0-9_]{1,32}$")
# The architecture, plus a few hundred bytes per variable and per file.
MAX_INDEX_BYTES = MAX_CONFIG_BYTES + 64 * 2**20
_MAX_RANK = 32
_MAX_PATH = 1000


class OrbaxIndexError(ValueError):
    """The index is not one this package wrote (the message says why)."""


def index_json(
    state: str,
    groups: dict[str, list[dict[str, Any]]],
    files: dict[str, dict[str, Any]],
    architecture: str,
    processes: int,
    model: str,
) -> str:
    return json.dumps(
        {
            "format": FORMAT,
            "state": state,
            "processes": processes,
            "model": model,
            "groups": groups,
            "files": files,
            "architecture": architecture,
        }
    )


def parse_index(text: bytes) -> dict[str, Any]:
    """The index in ``text``, checked field by field; OrbaxIndexError if it is
    not one this package writes."""
    if len(text) > MAX_INDEX_BYTES:
        raise OrbaxIndexError(f"it holds more than {MAX_INDEX_BYTES} bytes")
    try:
        index = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise OrbaxIndexError(
            "its JSON nests too deep" if isinstance(exc, RecursionError) else str(exc)
        ) from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise OrbaxIndexError(f"its 'format' is not '{FORMAT}'")
    state = index.get("state")
    if not isinstance(state, str) or not STATE.match(state):
        raise OrbaxIndexError(f"'state' is {printable(repr(state), 80)}, not a state-<32 hex digits> folder")
    processes = index.get("processes")
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise OrbaxIndexError("'processes' is not a number of processes")
    for key in ("model", "architecture"):
        if not isinstance(index.get(key), str):
            raise OrbaxIndexError(f"'{key}' is not text")
    if len(index["architecture"]) > MAX_CONFIG_BYTES:
        raise OrbaxIndexError(f"its architecture holds more than {MAX_CONFIG_BYTES} bytes")
    _check_files(index.get("files"))
    _check_groups(index.get("groups"))
    return index


def _check_files(files: Any) -> None:
    if not isinstance(files, dict):
        raise OrbaxIndexError("'files' is not an object")
    for name, entry in files.items():
        shown = printable(str(name), 120)
        try:
            inside_folder(name)
        except ValueError:
            raise OrbaxIndexError(f"it names '{shown}', a path outside its state folder") from None
        problem = file_entry_problem(entry, shown)
        if problem:
            raise OrbaxIndexError(problem)


def _check_groups(groups: Any) -> None:
    if not isinstance(groups, dict) or "weights" not in groups or set(groups) - {"weights", "optimizer"}:
        raise OrbaxIndexError("'groups' is not an object of 'weights' (and 'optimizer')")
    for group, variables in groups.items():
        if not isinstance(variables, list):
            raise OrbaxIndexError(f"'groups.{group}' is not a list")
        for variable in variables:
            if not isinstance(variable, dict):
                raise OrbaxIndexError(f"an entry of 'groups.{group}' is not an object")
            path, shape, dtype = variable.get("path"), variable.get("shape"), variable.get("dtype")
            if not isinstance(path, str) or len(path) > _MAX_PATH:
                raise OrbaxIndexError(f"a variable's path in 'groups.{group}' is not a name")
            if (
                not isinstance(shape, list)
                or len(shape) > _MAX_RANK
                or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
            ):
                raise OrbaxIndexError(f"the shape of '{printable(path, 120)}' is not a list of sizes")
            if not isinstance(dtype, str) or not _DTYPE.match(dtype):
                raise OrbaxIndexError(f"the dtype of '{printable(path, 120)}' is not a dtype name")
