"""Every small request to an object store ends within the entry's bound.

The streams of a load or a save are watched byte by byte (``s3``), but the
requests around them (the HEAD that opens a file, the listing behind
``exists`` and a versioned entry's versions, a removal) went through
fsspec's blocking wrappers, which wait as long as the client does: botocore's
read timeout times its attempts times s3fs's own retries. Against an endpoint
that accepts and never answers, ``exists()`` took minutes with the defaults.

An async filesystem (s3fs, gcsfs, adlfs) runs each call as a coroutine on its
own event loop, and its blocking methods are per-instance wrappers around
them. ``bound_waits`` replaces the wrappers of the small calls with ones that
give the coroutine ``seconds`` (fsspec cancels it then), and say which
endpoint did not answer what. Reads and writes of whole files (``cat_file``,
``put_file``, ``open``) are not bounded this way: they may rightly take long,
and the stall watch bounds them instead.
"""

from __future__ import annotations

from typing import Any, Callable

from kedro_keras._log import printable

# The requests whose answer is small: each takes a round trip, not a transfer.
BOUNDED_CALLS = (
    "info",
    "exists",
    "ls",
    "find",
    "glob",
    "isdir",
    "isfile",
    "modified",
    "size",
    "rm",
    "rm_file",
    "makedirs",
    "mkdir",
)


class EndpointSilentError(ConnectionError):
    """An object store took longer than allowed to answer a small request.

    Not a ``TimeoutError``, which fsspec's ``sync`` turns into an empty
    ``FSTimeoutError``: the message says which endpoint and what."""


def bound_waits(fs: Any, seconds: float, endpoint: str) -> None:
    """Give each small call of the async filesystem ``fs`` at most ``seconds``."""
    from fsspec.asyn import AsyncFileSystem

    if not isinstance(fs, AsyncFileSystem) or getattr(fs, "asynchronous", False):
        return  # a synchronous filesystem blocks as its own client does; an asynchronous one is awaited by its caller
    for name in BOUNDED_CALLS:
        coroutine = getattr(fs, f"_{name}", None)
        if callable(coroutine):
            setattr(fs, name, _bounded(fs, name, coroutine, seconds, endpoint))


def _bounded(
    fs: Any, name: str, coroutine: Callable[..., Any], seconds: float, endpoint: str
) -> Callable[..., Any]:
    from fsspec.asyn import sync
    from fsspec.exceptions import FSTimeoutError

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return sync(fs.loop, coroutine, *args, timeout=seconds, **kwargs)
        except FSTimeoutError:
            what = printable(str(args[0]), 200) if args else ""
            raise EndpointSilentError(
                f"the endpoint {endpoint} did not answer {name}({what!r}) within {seconds:g} s "
                "(fs_args.stall_timeout)"
            ) from None

    call.__name__ = name
    call.bounded_seconds = seconds  # type: ignore[attr-defined]
    return call
