"""One message per kind of failure, for every dataset.

What went wrong reading or writing a stored model is said the same way
whichever dataset met it: a file that is missing (or whose bucket is), one
that is corrupt, one the store refuses to hand over (with the store's own
error code), one in another format. Exception texts can quote the file (a
layer's name, a config), so every message is shown escaped: a newline or a
terminal escape from a file must not reach a log or a terminal raw.
"""

from __future__ import annotations

import zipfile
from typing import Any

from kedro_keras._formats import imports as _imports
from kedro_keras._formats.quantization import QuantizedModelError
from kedro_keras._formats.safe_configs import UnsafeConfigError
from kedro_keras._io.h5 import CorruptFileError
from kedro_keras._log import printable

# Characters of a failure message kept: the cause, not a file's contents.
_MAX_MESSAGE = 4000


def corrupt(url: str, cause: object, remedy: str, *, part_of: str | None = None) -> str:
    """``url`` (a part of ``part_of``, such as a shard of an index) does not
    match its checksums; ``remedy``, such as "save the model again"."""
    whole = f" (a shard of '{part_of}')" if part_of else ""
    return f"'{url}'{whole} is corrupt: {cause}. Restore it from a good copy or {remedy}."


def missing(location: Any, path: Any) -> str:
    """Why nothing is at ``path``: the file, or on an object store its bucket."""
    bucket = location.missing_bucket(path)
    if bucket:
        return f"the bucket '{bucket}' does not exist (check its name and the endpoint)"
    return "the file does not exist"


def access_denied(url: str, exc: BaseException) -> str:
    code = service_error_code(exc)
    said = f"the store answered {code}" if code else str(exc)
    return f"Cannot read '{url}': access denied ({said}). Check the credentials and the file's permissions."


def file_not_found_in(exc: BaseException | None) -> FileNotFoundError | None:
    """The ``FileNotFoundError`` anywhere in ``exc``'s chain of causes."""
    while exc is not None:
        if isinstance(exc, FileNotFoundError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def store_did_not_answer(exc: BaseException | None) -> bool:
    """Whether the store stopped answering somewhere in ``exc``'s causes (a
    small request past its bound, a stream that stalled): then no further
    request is made only to word the message better, each would wait as long."""
    while exc is not None:
        if isinstance(exc, ConnectionError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def service_error_code(exc: BaseException | None) -> str | None:
    """The object store's own error code (AccessDenied, InvalidAccessKeyId,
    SignatureDoesNotMatch, ...) from anywhere in the cause chain."""
    while exc is not None:
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            code = (response.get("Error") or {}).get("Code")
            if code:
                return printable(str(code), limit=60)
        exc = exc.__cause__ or exc.__context__
    return None


def read_failure(
    url: str, exc: BaseException, *, what: str, file_format: str, remedy: str, into: str = ""
) -> str:
    """The message for a stored model that could not be read.

    Args:
        what: what was being loaded ("the Keras model", "the weights").
        file_format: the format the file should be in (".keras archive",
            "HDF5", ".weights.h5"), for a file that is not in it.
        remedy: what saves a good copy again ("save the model again").
        into: the model the weights were being loaded into, if one was.
    """
    text = _read_failure_text(url, exc, what, file_format, remedy)
    if text is None:
        target = f" into model '{into}'" if into else ""
        text = f"Cannot load {what} at '{url}'{target}: {type(exc).__name__}: {exc}"
    return printable(text, limit=_MAX_MESSAGE)


def _read_failure_text(url: str, exc: BaseException, what: str, file_format: str, remedy: str) -> str | None:
    if isinstance(exc, UnsafeConfigError):
        return f"Refusing {what} at '{url}': {exc}."
    if isinstance(exc, QuantizedModelError):
        return f"Cannot load {what} at '{url}': {exc}"
    if isinstance(exc, CorruptFileError) or (
        isinstance(exc, zipfile.BadZipFile) and "Bad CRC-32" in str(exc)
    ):
        # zipfile's own check, on the public-API path, finds the same damage as ours.
        return corrupt(url, exc, remedy)
    if isinstance(exc, zipfile.BadZipFile):
        return f"'{url}' is not a valid .keras archive ({exc}): the file is truncated, corrupt, or in another format."
    unknown = _imports.unknown_class_hint(exc)
    if unknown:
        return f"Cannot load {what} at '{url}': {unknown}"
    if isinstance(exc, PermissionError):
        return access_denied(url, exc)
    if isinstance(exc, OSError) and file_format != ".keras archive":
        # h5py's errors for a file that is not HDF5 (or is cut short) are OSErrors.
        return (
            f"'{url}' is not a valid {file_format} file ({exc}): the file is truncated, corrupt, or in "
            "another format."
        )
    return None
