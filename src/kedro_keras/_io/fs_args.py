"""The options an entry's ``fs_args`` gives kedro-keras itself (bounded
waits, transfer concurrency, part size, progress), each checked when the
catalog is built, and the check that a key meant for one of them, or for the
filesystem, is not misspelt."""

from __future__ import annotations

import functools
from typing import Any

import fsspec

from kedro_keras._log import SafeDatasetError


def positive_int(value: Any, name: str, filepath: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SafeDatasetError(
            f"fs_args.{name} of '{filepath}' must be a whole number of at least 1, not {value!r}"
        )
    return value


def checked_part_size(value: Any, filepath: str) -> int | None:
    if value is None:
        return None
    size = positive_int(value, "part_size", filepath)
    if size < 5 * 2**20:
        raise SafeDatasetError(
            f"fs_args.part_size of '{filepath}' must be at least 5 MiB (5242880 bytes), S3's smallest "
            f"part, not {size}"
        )
    return size


# fs_args that Location takes for itself; the rest go to the fsspec filesystem.
OWN_FS_ARGS = ("open_args_load", "open_args_save", "stall_timeout", "concurrency", "part_size", "progress")
# Taken by every fsspec filesystem (its instance cache, listings cache, async loop).
_FSSPEC_FS_ARGS = {
    "skip_instance_cache",
    "use_listings_cache",
    "listings_expiry_time",
    "max_paths",
    "asynchronous",
    "loop",
    "batch_size",
}


def refuse_misspelt_fs_args(fs_args: dict[str, Any], protocol: str, filepath: str) -> None:
    """A key of ``fs_args`` close to an option's name but not one of them:
    fsspec filesystems take ``**kwargs`` and ignore what they do not know, so
    ``stall_timout: 5`` would leave the 60 s default in place without a word.
    Keys far from every known name still pass: a filesystem may take them."""
    import difflib

    known = _known_fs_args(protocol)
    for key in fs_args:
        if key in known or not isinstance(key, str):
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.8)
        if close:
            raise SafeDatasetError(
                f"fs_args.{key} of '{filepath}' is not an option: did you mean '{close[0]}'? (kedro-keras "
                f"takes {', '.join(OWN_FS_ARGS)}; the rest go to fsspec's {protocol} filesystem)"
            )


def seconds(value: Any, name: str, filepath: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise SafeDatasetError(
            f"fs_args.{name} of '{filepath}' must be a number of seconds above 0, not {value!r}"
        )
    return float(value)


@functools.cache
def _known_fs_args(protocol: str) -> frozenset[str]:
    """Our keys, fsspec's common ones and every parameter the filesystem's
    constructors name (read once per protocol: a checkpoint builds a dataset each epoch)."""
    import inspect

    known = set(OWN_FS_ARGS) | _FSSPEC_FS_ARGS
    for cls in fsspec.get_filesystem_class(protocol).__mro__:
        init = cls.__dict__.get("__init__")
        if init is not None:
            kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            known |= {p.name for p in inspect.signature(init).parameters.values() if p.kind in kinds}
    known.discard("self")
    return frozenset(known)
