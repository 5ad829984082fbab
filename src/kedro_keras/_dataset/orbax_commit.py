"""An ``.orbax`` weights folder (``KerasWeightsDataset``): every process
writes its own shards, process 0 commits them.

A save, in every process of the node (one, or N joined by
``keras.distribution``):

1. all agree on a fresh ``state-<hex>`` name (process 0's);
2. Orbax writes the weights and the optimizer's state there, each process
   only the shards it holds. On local disk (or a folder every host mounts)
   it writes in place; for an object store it writes to a staging folder on
   this host and each process uploads the files it wrote (its
   ``ocdbt.process_<i>`` folder; process 0 also Orbax's metadata), hashing
   them on the way;
3. each process tells process 0 its files' sizes and SHA-256s (a
   collective); process 0 writes ``index.json``, in one atomic write, only
   if every process succeeded, then removes the state the old index named;
4. every process returns once the index is written, or raises why not.

A reader follows the index only: it never sees a state still being
written, and a save that dies before the index leaves the previous one,
and the state it names, loadable. A load checks every file the index
names against its size and SHA-256 (and, on local disk, that the state
folder holds nothing else), then Orbax reads each variable onto the
layout in force in the loading process.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable, Iterator

from kedro.io.core import DatasetError

from kedro_keras._dataset import architecture as _architecture
from kedro_keras._dataset import preview as _preview
from kedro_keras._formats import weights as _weights
from kedro_keras._formats.orbax_index import INDEX, MAX_INDEX_BYTES, OrbaxIndexError, index_json, parse_index
from kedro_keras._io import progress as _progress
from kedro_keras._io.digests import copy_hashing
from kedro_keras._io.files import Location
from kedro_keras._io.paths import NotARegularFileError, open_regular_file
from kedro_keras._keras import build as _keras_build
from kedro_keras._keras import orbax as _orbax
from kedro_keras._keras import processes
from kedro_keras._log import SafeDatasetError, as_data, get_logger, printable

if TYPE_CHECKING:
    import keras

logger = get_logger(__name__)

# The part of a path Orbax names after the process that wrote it
# (``ocdbt.process_1/``, ``array_metadatas/process_1``); the rest is process 0's.
_PROCESS_PART = re.compile(r"(?:^|/)(?:ocdbt\.)?process_(\d+)(?:/|$)")
STAGING_FOLDER = "kedro-keras-orbax"


def save_orbax(
    location: Location,
    model: keras.Model,
    folder: PurePosixPath,
    *,
    include_optimizer: bool,
    staging: str | None,
    quiet: bool = False,
) -> None:
    """Write ``model``'s state under ``folder`` from every process, and
    commit it (see the module's docstring).

    Raises:
        DatasetError: in every process, if any process failed; the previous
            save at ``folder`` is unchanged.
    """
    url = location.url(folder)
    failed = f"Could not save the weights of model '{model.name}' to '{url}'"
    try:
        _orbax.require_orbax()
    except ValueError as exc:
        raise SafeDatasetError(f"{failed}: {exc}.") from as_data(exc)
    groups = {"weights": _orbax.group_variables(model, "weights")}
    # An optimizer not built yet (a model never trained) has no state to keep.
    built = getattr(getattr(model, "optimizer", None), "built", False)
    optimizer = _orbax.group_variables(model, "optimizer") if include_optimizer and built else []
    if optimizer:
        groups["optimizer"] = optimizer
    me, count = processes.process_index(), processes.process_count()
    state = processes.agreed(f"state-{uuid.uuid4().hex}")
    in_place = location.is_local
    root = (
        Path(str(folder / state))
        if in_place
        else Path(staging or tempfile.gettempdir()) / STAGING_FOLDER / state
    )
    start = time.monotonic()
    files: dict[str, dict[str, Any]] = {}
    error = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        for group, variables in groups.items():
            _orbax.write_group(variables, root / group)
        files = _own_files(location, root, None if in_place else folder / state, me)
    except Exception as exc:  # noqa: BLE001 - told to process 0, which fails the save everywhere
        error = f"process {me} of {count}: {exc}" if count > 1 else str(exc)
    reports = [
        json.loads(report) for report in processes.gathered(json.dumps({"error": error, "files": files}))
    ]
    failure = None
    if processes.is_writer():
        failure = _commit(location, model, folder, state, groups, reports, include_optimizer)
    said = processes.outcome(failure)
    if not in_place:
        shutil.rmtree(root, ignore_errors=True)  # the staging copy (shared: any process may get there first)
    if said is not None:
        if processes.is_writer():
            _remove_quietly(location, folder / state)
        raise SafeDatasetError(f"{failed}: {said}. Any weights previously saved there are unchanged.")
    location.invalidate_cache(folder)
    written = sum(entry["size"] for entry in files.values())
    total = sum(entry["size"] for report in reports for entry in report["files"].values())
    logger.log(
        logging.DEBUG if quiet else logging.INFO,  # a checkpoint's own line says it
        "Saved weights of model '%s' to %s (Orbax%s): %s",
        model.name,
        url,
        f", process {me} of {count} wrote {written:,} of {total:,} bytes" if count > 1 else "",
        _progress.transfer_text(written, time.monotonic() - start),
    )


def _owner(name: str) -> int:
    found = _PROCESS_PART.search(name)
    return int(found.group(1)) if found else 0


def _own_files(location: Location, root: Path, upload_to: PurePosixPath | None, me: int) -> dict[str, Any]:
    """The files under ``root`` this process wrote, each with its size and
    SHA-256; uploaded to ``upload_to`` on the way when given."""
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.relative_to(root).as_posix()
        if _owner(name) != me:
            continue
        with open(path, "rb") as reading:
            if upload_to is None:
                sha256, size = copy_hashing(reading)
            else:
                with location.atomic_write(upload_to / name) as writing:
                    sha256, size = copy_hashing(reading, writing)
        files[name] = {"size": size, "sha256": sha256, "process": me}
    return files


def _commit(
    location: Location,
    model: keras.Model,
    folder: PurePosixPath,
    state: str,
    groups: dict[str, list[Any]],
    reports: list[dict[str, Any]],
    include_optimizer: bool,
) -> str | None:
    """Process 0: write the index if every process succeeded, then remove
    the state it replaced; why not, otherwise."""
    errors = [report["error"] for report in reports if report["error"]]
    if errors:
        return "; ".join(errors)
    previous = _previous_state(location, folder)
    try:
        files = {name: entry for report in reports for name, entry in report["files"].items()}
        text = index_json(
            state,
            {group: _orbax.describe(variables) for group, variables in groups.items()},
            files,
            _weights.architecture_json(model, include_optimizer),
            len(reports),
            model.name,
        )
        with location.atomic_write(folder / INDEX) as writing:
            writing.write(text.encode())
    except Exception as exc:  # noqa: BLE001 - told to every process
        return str(exc)
    if previous is not None and previous != state:
        _remove_quietly(location, folder / previous)
    return None


def _previous_state(location: Location, folder: PurePosixPath) -> str | None:
    try:
        return read_orbax_index(location, folder)["state"]
    except DatasetError:
        return None


def _remove_quietly(location: Location, path: PurePosixPath) -> None:
    try:
        location.fs.rm(str(path), recursive=True)
    except FileNotFoundError:
        pass
    except Exception as exc:  # noqa: BLE001 - the commit stands; leftovers are only space
        logger.warning("Could not remove %s: %s", location.url(path), exc)


# -- loading ---------------------------------------------------------------------


def has_index(location: Location, folder: PurePosixPath) -> bool:
    """Whether a committed save is at ``folder`` (its index is there)."""
    return location.exists(folder / INDEX)


def stored_bytes(location: Location, folder: PurePosixPath) -> int | None:
    """What the index at ``folder`` commits, in bytes (None if unreadable)."""
    try:
        return sum(entry["size"] for entry in read_orbax_index(location, folder)["files"].values())
    except DatasetError:
        return None


def read_orbax_index(location: Location, folder: PurePosixPath) -> dict[str, Any]:
    """The folder's index, checked; a DatasetError naming the folder if
    there is none or it is not one this package writes."""
    url = location.url(folder)
    try:
        with open_regular_file(location, folder / INDEX, within=folder) as file:
            text = file.read(MAX_INDEX_BYTES + 1)
    except FileNotFoundError as exc:
        what = "nothing is there" if location.kind(folder) is None else f"it holds no {INDEX}"
        raise SafeDatasetError(
            f"No Keras weights at '{url}': {what} (a save that did not finish leaves no index)."
        ) from as_data(exc)
    except (OSError, ValueError) as exc:
        raise SafeDatasetError(f"Cannot read the index of '{url}': {exc}") from as_data(exc)
    try:
        return parse_index(text)
    except OrbaxIndexError as exc:
        raise SafeDatasetError(
            f"'{url}/{INDEX}' is not an index kedro-keras wrote: {exc}. Save the weights again."
        ) from as_data(exc)


def check_state(location: Location, folder: PurePosixPath, index: dict[str, Any]) -> int:
    """Check every file of the committed state against the index, where
    it is (``kedro keras verify``, and a local load); the bytes checked."""
    url = location.url(folder)
    if location.is_local:
        _refuse_unlisted(Path(str(folder / index["state"])), index["files"], url)
    for name, expected in index["files"].items():
        _checked_copy(location, folder, index["state"], name, expected, None, url)
    return sum(entry["size"] for entry in index["files"].values())


@contextmanager
def fetched_state(location: Location, folder: PurePosixPath, index: dict[str, Any]) -> Iterator[Path]:
    """The committed state as a local folder, every file checked against
    the index: in place on local disk, else copied to a temporary folder."""
    url = location.url(folder)
    state = index["state"]
    if location.is_local:
        check_state(location, folder, index)
        yield Path(str(folder / state))
        return
    with tempfile.TemporaryDirectory(prefix="kedro-keras-orbax-") as local:
        for name, expected in index["files"].items():
            target = Path(local) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as writing:
                _checked_copy(location, folder, state, name, expected, writing, url)
        yield Path(local)


def _refuse_unlisted(root: Path, files: dict[str, Any], url: str) -> None:
    """Orbax reads what its own metadata names: on local disk, the state
    folder must hold the files the index lists and nothing else (no link
    to a file elsewhere)."""
    for path in root.rglob("*"):
        name = path.relative_to(root).as_posix()
        if path.is_symlink() or (not path.is_dir() and name not in files):
            raise SafeDatasetError(
                f"The weights at '{url}' hold '{printable(name, 120)}' in their state folder, which the index "
                "does not list: refused. Save the weights again."
            )


def _checked_copy(
    location: Location,
    folder: PurePosixPath,
    state: str,
    name: str,
    expected: dict[str, Any],
    writing: Any,
    url: str,
) -> None:
    root = folder / state
    shown = f"{state}/{printable(name, 120)}"
    try:
        with open_regular_file(location, root / name, within=root) as reading:
            sha256, size = copy_hashing(reading, writing, limit=expected["size"])
    except FileNotFoundError as exc:
        raise SafeDatasetError(
            f"The weights at '{url}' are incomplete: '{shown}', listed in their index, is missing."
        ) from as_data(exc)
    except NotARegularFileError as exc:
        raise SafeDatasetError(f"The weights at '{url}': '{shown}' {exc.what}: refused.") from as_data(exc)
    if size != expected["size"] or sha256 != expected["sha256"]:
        raise SafeDatasetError(
            f"The weights at '{url}' are damaged: '{shown}' does not match the size and SHA-256 its index "
            "records. Save the weights again."
        )


def load_orbax(
    location: Location,
    folder: PurePosixPath,
    builder: Callable[[], keras.Model] | None,
    load_args: dict[str, Any],
) -> keras.Model:
    """The model ``builder`` builds (None: the architecture in the index),
    filled from the committed state at ``folder``."""
    url = location.url(folder)
    index = read_orbax_index(location, folder)
    start = time.monotonic()
    with fetched_state(location, folder, index) as root:
        fill = fill_from_orbax(index, lambda: root, url)
        if builder is not None:
            model = _keras_build.build_and_fill(builder, fill, skip_initialisation=False)
        else:
            model = _architecture.rebuild_from_saved_architecture(
                location, folder, fill, load_args, index["architecture"]
            )
    logger.info(
        "Loaded weights from %s (Orbax, written by %s) into model '%s': %s",
        url,
        "1 process" if index["processes"] == 1 else f"{index['processes']} processes",
        model.name,
        _progress.transfer_text(
            sum(entry["size"] for entry in index["files"].values()), time.monotonic() - start
        ),
    )
    return model


def fill_from_orbax(
    index: dict[str, Any], root: Callable[[], Path], url: str
) -> Callable[[keras.Model], None]:
    """A fill (for ``_keras.build``) that reads each group of the state at
    ``root()`` into the model once its variables exist: the weights on the
    first pass, the optimizer's once it is built."""
    done: set[str] = set()

    def fill(model: keras.Model) -> None:
        for group, recorded in index["groups"].items():
            if group in done:
                continue
            if group == "optimizer":
                if getattr(model, "optimizer", None) is None:
                    continue  # not compiled (yet): a second pass comes after compiling, or none
                # Its variables exist once built (with Keras's internals off, nothing else builds it).
                _keras_build.build_optimizer(model)
            variables = _orbax.group_variables(model, group)
            mismatch = _orbax.mismatch(variables, recorded)
            if mismatch:
                raise SafeDatasetError(
                    f"The weights at '{url}' do not fit the model '{model.name}': {mismatch}"
                )
            try:
                _orbax.read_group(variables, root() / group)
            except Exception as exc:  # noqa: BLE001 - re-raised as a DatasetError, the text escaped
                raise SafeDatasetError(
                    f"Cannot load the weights at '{url}' into model '{model.name}': {exc}"
                ) from as_data(exc)
            done.add(group)

    return fill


def preview_rows(location: Location, folder: PurePosixPath) -> list[tuple[str, str]]:
    """What a preview says of an ``.orbax`` folder, from its index alone."""
    if not has_index(location, folder):
        return [("stored", "nothing saved yet")]
    index = read_orbax_index(location, folder)
    groups = index["groups"]
    try:
        # Within a preview's budget, as every other preview's config: a preview reads files from anyone.
        saved_with = (
            _preview.bounded_json(index["architecture"].encode(), "the architecture").get("kedro_keras") or {}
        )
    except (ValueError, AttributeError, RecursionError):
        saved_with = {}
    return [
        ("format", f"Orbax folder, written by {index['processes']} process(es)"),
        ("files", str(len(index["files"]))),
        ("size", f"{sum(entry['size'] for entry in index['files'].values()):,} bytes"),
        (
            "variables",
            f"{len(groups['weights'])} weights, {len(groups.get('optimizer', []))} of the optimizer",
        ),
        *[
            (key, printable(str(saved_with[key]), 80))
            for key in ("keras_version", "backend", "saved_at")
            if key in saved_with
        ],
    ]
