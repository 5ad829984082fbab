"""What a path may be before anything is read through it.

Paths come from files as often as from the catalog: a SavedModel manifest
names its files, a ``.keras`` archive its members, a sharded index its
shards. Each must stay inside its folder, and each file must be a regular
one before it is opened: opening a FIFO waits for a writer, and a device
(``/dev/zero``) never ends. The one spelling of both checks is here.
"""

from __future__ import annotations

import os
import re
import stat
from contextlib import contextmanager
from pathlib import PurePosixPath
from typing import IO, Any, Iterator

_DRIVE = re.compile(r"^[A-Za-z]:")


class NotARegularFileError(OSError, ValueError):
    """A path to be read is a FIFO, a device, a socket or a folder (an
    ``OSError`` to the openers around it, a ``ValueError`` to the checks)."""

    def __init__(self, url: str, what: str) -> None:
        super().__init__(f"refusing '{url}': it {what}")
        self.url, self.what = url, what  # what: "is a FIFO", "leads outside its folder", ...

    def __reduce__(self) -> tuple[Any, ...]:  # pickled whole, for ParallelRunner's workers
        return type(self), (self.url, self.what)


# -- names inside a folder -------------------------------------------------------


def leaves_its_folder(name: str) -> bool:
    """Whether ``name``, joined to a folder, could point outside it: absolute,
    a ``..`` part, a backslash (a separator on Windows), a drive, a NUL."""
    return (
        name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or ".." in name.split("/")
        or bool(_DRIVE.match(name))
    )


def inside_folder(name: Any) -> PurePosixPath:
    """``name`` as a relative path to a file inside its folder, or
    ``ValueError``: beyond ``leaves_its_folder``, no empty or ``.`` part,
    so that one file cannot be named in two ways."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"refusing {name!r}: not a file name")
    if leaves_its_folder(name) or any(part in ("", ".") for part in name.split("/")):
        raise ValueError(f"refusing '{name}': not a plain relative path inside its folder")
    return PurePosixPath(name)


# -- regular files ---------------------------------------------------------------


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a file"


def refuse_special_file(path: str) -> None:
    """Raise ``NotARegularFileError`` if the local ``path`` is a FIFO, a
    device or a socket (a symlink is followed to what it leads to).

    Asked with ``stat``, which opens nothing (even a non-blocking open of a
    FIFO would let a writer waiting on it through). A folder or a missing
    path is left to the opener, whose errors the datasets explain.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise NotARegularFileError(path, f"is {_kind(mode)}, not a regular file")


def require_regular_file(location: Any, path: PurePosixPath, within: PurePosixPath | None = None) -> None:
    """Refuse anything at ``path`` but a regular file, before it is opened;
    with ``within``, also a symbolic link and anything outside that folder.
    A missing path raises ``FileNotFoundError``."""
    if not location.is_local:
        kind = location.fs.info(str(path)).get("type")
        if kind != "file":
            raise NotARegularFileError(location.url(path), f"is a {kind}, not a file")
        return
    local = str(path)
    if within is not None:
        # Named by a file (a manifest, an index): what we write there is
        # regular files only, and a link, even inside, could be retargeted.
        if stat.S_ISLNK(os.lstat(local).st_mode):
            raise NotARegularFileError(location.url(path), "is a symbolic link")
        root, real = os.path.realpath(str(within)), os.path.realpath(local)
        if os.path.commonpath([root, real]) != root:
            raise NotARegularFileError(location.url(path), "leads outside its folder")
    mode = os.stat(local).st_mode
    if not stat.S_ISREG(mode):
        raise NotARegularFileError(location.url(path), f"is {_kind(mode)}, not a regular file")


@contextmanager
def open_regular_file(
    location: Any, path: PurePosixPath, within: PurePosixPath | None = None
) -> Iterator[IO[bytes]]:
    """``location.open_read(path)``, once ``path`` is known to be a regular
    file (inside ``within``, if given)."""
    require_regular_file(location, path, within)
    if not location.is_local:
        with location.open_read(path) as file:
            yield file
        return
    # Opened without blocking and checked again: the path could have become
    # a FIFO since it was looked at.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    if within is not None:  # the link check above must hold when it is opened, too
        flags |= getattr(os, "O_NOFOLLOW", 0)
    descriptor = os.open(str(path), flags)
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFileError(location.url(path), f"is {_kind(mode)}, not a regular file")
        file = os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise
    with file:
        yield file
