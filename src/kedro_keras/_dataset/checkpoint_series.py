"""Which training a checkpoint folder holds: one still running (or killed),
which the next run resumes, or one that finished, which it does not.

A ``fit`` that ends normally (its epochs done, or stopped early by a
callback) marks its series finished with a small file written last,
``ckpt-finished.json``, naming the newest checkpoint. The next training
starts a new series: the finished one's files move into a
``finished-<UTC time>`` folder beside them, kept for audit (nothing is
removed), and the folder's top level is free for the new checkpoints. A
killed run writes no marker, so its series resumes.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import Any

from kedro_keras._dataset.checkpoint_record import PREFIX, is_version
from kedro_keras._io.files import Location
from kedro_keras._log import get_logger, printable

logger = get_logger("kedro_keras.keras_checkpoint_dataset")

FINISHED = f"{PREFIX}finished.json"
ARCHIVE_PREFIX = "finished-"
# Where an interrupted series goes when a training starts without restoring it.
SET_ASIDE_PREFIX = "interrupted-"
# The marker holds a version and a time: anything larger is not ours.
_MAX_MARKER_BYTES = 4096


def read_finished(location: Location, folder: PurePosixPath) -> dict[str, Any] | None:
    """The finished marker of the folder's series, or None if the series is
    not finished. A marker that is not one this package writes counts as
    finished too (with a warning): resuming from it could continue a
    training nobody asked to continue."""
    path = folder / FINISHED
    try:
        if location.is_local and location.kind(path) not in ("file", None):
            raise ValueError("it is not a file")
        with location.open_read(path) as file:
            raw = file.read(_MAX_MARKER_BYTES + 1)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("'%s' cannot be read (%s): the training there counts as finished", path, exc)
        return {"after": None}
    try:
        marker = json.loads(raw) if len(raw) <= _MAX_MARKER_BYTES else None
    except (ValueError, RecursionError):
        marker = None
    if not isinstance(marker, dict) or not is_version(marker.get("after")):
        logger.warning(
            "'%s' is not a marker this package writes: the training there counts as finished",
            location.url(path),
        )
        return {"after": None}
    return marker


def settle_finished(location: Location, folder: PurePosixPath, *, continue_finished: bool) -> None:
    """If the folder's training finished, make way for a new one (or, with
    ``continue_finished``, let it go on)."""
    marker = read_finished(location, folder)
    if marker is None:
        return
    if continue_finished:
        unmark_finished(location, folder)
        logger.info("Continuing the training in %s: %s", location.url(folder), describe(marker))
        return
    archive = archive_series(location, folder, ARCHIVE_PREFIX)
    # A warning, as "Resuming from checkpoint" is: what the run trains depends on it.
    logger.warning(
        "The training in %s is finished (%s): this one starts anew; its checkpoints are kept in %s "
        "(restore(continue_finished=True) continues a finished training instead)",
        location.url(folder),
        describe(marker),
        location.url(archive),
    )


def mark_finished(location: Location, folder: PurePosixPath, newest: str | None) -> None:
    """Mark the series finished, after its newest checkpoint ``newest``."""
    if newest is None:  # no checkpoint was written (save_best_only, no improvement): nothing to mark
        return
    marker = {"after": newest, "finished_at": _now()}
    with location.atomic_write(folder / FINISHED) as file:
        file.write(json.dumps(marker).encode())
    location.invalidate_cache(folder)


def unmark_finished(location: Location, folder: PurePosixPath) -> None:
    """Make a finished series one that goes on (a training continued on purpose)."""
    try:
        location.remove(folder / FINISHED)
    except FileNotFoundError:
        return
    location.invalidate_cache(folder)


def set_aside_unrestored(location: Location, folder: PurePosixPath) -> None:
    """A training starting without ``restore()`` beside an interrupted
    series: its first checkpoints (epoch 1, 2, ...) would be older by name
    than the series' newest, and pruning would remove each as soon as it was
    written. The series moves into an ``interrupted-<UTC time>`` folder
    beside it, kept, with a warning saying how to resume it instead."""
    names = location.names_in(folder)
    versions = sorted({_version_of_file(n) for n in names if n.startswith(PREFIX) and n != FINISHED} - {""})
    versions = [v for v in versions if is_version(v)]
    if not versions:
        return
    archive = archive_series(location, folder, SET_ASIDE_PREFIX)
    logger.warning(
        "%s holds an interrupted training (newest checkpoint %s) that this fit did not restore: it starts "
        "anew, and those checkpoints are kept in %s (call checkpoints.restore() before fit to resume one)",
        location.url(folder),
        versions[-1],
        location.url(archive),
    )


def archive_series(location: Location, folder: PurePosixPath, prefix: str) -> PurePosixPath:
    """Move the series' files into a ``<prefix><UTC time>`` folder beside
    them, the finished marker last: a run killed while moving moves the rest
    next time. Returns the folder they went to."""
    names = location.names_in(folder)
    stamp = datetime.now(tz=timezone.utc).strftime("%Y-%m-%dT%H.%M.%S.%fZ")
    archive = folder / f"{prefix}{stamp}"
    suffix = 1
    while location.exists(archive):  # never into another archive: a move would replace its files
        archive = folder / f"{prefix}{stamp}-{suffix}"
        suffix += 1
    ours = sorted(
        name
        for name in names
        if name.startswith(PREFIX) and name != FINISHED and is_version(_version_of_file(name))
    )
    location.fs.makedirs(str(archive), exist_ok=True)
    for name in [*ours, FINISHED]:
        try:
            location.fs.mv(str(folder / name), str(archive / name), recursive=True)  # .orbax: a folder
        except FileNotFoundError:
            continue
    location.invalidate_cache(folder)
    return archive


def describe(marker: dict[str, Any]) -> str:
    after, when = marker.get("after"), marker.get("finished_at")
    if after is None:
        return "an unreadable marker says it finished"
    return f"it finished after checkpoint {after}" + (f" at {printable(str(when), 40)}" if when else "")


def _version_of_file(name: str) -> str:
    stem = name[len(PREFIX) :]
    return stem.split(".", 1)[0]


def _now() -> str:
    return datetime.now(tz=timezone.utc).isoformat(timespec="seconds")
