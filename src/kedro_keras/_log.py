"""The package's loggers: what they print is data, shown as data.

Model names, layer names, record fields and paths in our log lines come from
files that strangers may have written. A newline in one would forge a log
line; an escape sequence would reach the user's terminal (OSC 52 writes the
clipboard); and Kedro's default handler (``kedro.logging.RichHandler``)
interprets rich markup such as ``[link=...]`` in messages. So every record of
ours is formatted once, its control characters escaped, and marked as plain
text for rich, whichever module logs it and whatever it logs.
"""

from __future__ import annotations

import logging
import re

from kedro.io.core import DatasetError


def printable(text: str, limit: int | None = 200) -> str:
    """Text read from a file, safe to put in a log line or message: control
    characters (a newline that would forge a log line, terminal escapes)
    shown escaped, and at most ``limit`` characters (None: all of it)."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return shown + ("..." if limit is not None and len(text) > limit else "")


# Two full stops ending a sentence (not an ellipsis, not a path's "..").
_DOUBLED_STOP = re.compile(r"(?<![./])\.\.(?=\s|$)")


class SafeDatasetError(DatasetError):
    """A ``DatasetError`` whose message, which may quote a file (a layer's or
    a model's name, a shard's, a record's field, Keras's own error about
    them), is kept with its control characters escaped: Kedro prints it, and
    a newline or an escape sequence from a file must not reach a log or a
    terminal raw. Every error the datasets raise is one."""

    def __init__(self, message: str) -> None:
        # Messages end a quoted cause with a full stop ("...: {exc}."), and
        # many causes end with one of their own: one is enough.
        super().__init__(_DOUBLED_STOP.sub(".", printable(str(message), limit=None)))


class ShownAsDataError(Exception):
    """An exception whose message quoted a file (a layer's name, a config),
    told again with its control characters escaped. Chained under our own
    ``DatasetError`` in its place, so that a traceback Kedro prints cannot
    carry a file's newlines or escape sequences to the terminal either."""


def as_data(exc: BaseException) -> BaseException:
    """``exc`` itself if its message is printable as it is; else a
    ``ShownAsDataError`` naming its type and escaped message, with its
    traceback (what it chained is left out: it is the same text again)."""
    text = str(exc)
    if printable(text, limit=None) == text:
        return exc
    shown = ShownAsDataError(f"{type(exc).__name__}: {printable(text, limit=None)}")
    return shown.with_traceback(exc.__traceback__)


class ShownAsData(logging.Filter):
    """Formats a record's message with its arguments, escapes what is not
    printable, and turns rich markup off for it (``record.markup``, which
    rich's handler reads before its own setting)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: shown as it is, escaped, unformatted
            message = f"{record.msg} {record.args!r}"
        record.msg, record.args = printable(message, limit=None), ()
        record.markup = False
        return True


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with the ``ShownAsData`` filter on it."""
    logger = logging.getLogger(name)
    if not any(isinstance(existing, ShownAsData) for existing in logger.filters):
        logger.addFilter(ShownAsData())
    return logger
