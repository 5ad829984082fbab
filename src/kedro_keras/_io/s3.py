"""The only code that uses s3fs's internals: one streaming GET from a byte
onwards (``stream_opener``), and one PutObject (``single_put``) or one
multipart upload (``multipart_put``) of a gathered file. Each is checked
for and skipped (the caller falls back to
fsspec's ordinary reads and uploads) if s3fs changes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlsplit

from kedro_keras._io.transfer import TransferOptions, part_size
from kedro_keras._log import get_logger

if TYPE_CHECKING:
    from kedro_keras._io.upload import Uploadable

logger = get_logger(__name__)


class StalledError(ConnectionError):
    """No byte moved to or from the object store for longer than allowed.

    Not a ``TimeoutError``: fsspec's ``sync`` replaces those with an empty
    ``FSTimeoutError``, losing what stalled and where."""


# s3fs retries some errors itself (read timeouts among them) on top of
# botocore's own attempts: bounded, so config_kwargs' retries mean what they say.
_S3FS_RETRIES = 2


def bound_retries(fs: Any) -> None:
    """Let s3fs retry at most ``_S3FS_RETRIES`` times (its default is 5)."""
    if isinstance(getattr(fs, "retries", None), int):
        fs.retries = min(fs.retries, _S3FS_RETRIES)


def endpoint_of(fs: Any) -> str:
    """The S3 endpoint a filesystem talks to, for messages."""
    return _endpoint_url(fs) or "AWS S3"


def _endpoint_url(fs: Any) -> str | None:
    endpoint = (getattr(fs, "client_kwargs", None) or {}).get("endpoint_url") or getattr(
        fs, "endpoint_url", None
    )
    # botocore's own settings, when the entry names no endpoint.
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return str(endpoint) if endpoint else None


def on_this_host(fs: Any) -> bool:
    """Whether the S3 endpoint is a server on this machine (loopback).

    Such a store has no network link for several connections to share out:
    one stream or one PUT carries what its disk and CPU can. moto reads the
    whole object for every ranged GET, so ranges cost it several times the
    stream. Decided from the address, not from timing a first transfer: on a
    busy CPU a timed probe took moto for a slow link and sent a 386 MB load
    down the ranged path, 8.2 s instead of 3.6 s.
    """
    endpoint = _endpoint_url(fs)
    if not endpoint:
        return False
    host = (urlsplit(endpoint if "//" in endpoint else f"//{endpoint}").hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _get_object_args(file: Any) -> dict[str, Any] | None:
    """What every GET of ``file`` sends, or None if it is not an s3fs file."""
    if not (
        callable(getattr(file.fs, "_call_s3", None)) and hasattr(file, "bucket") and hasattr(file, "key")
    ):
        return None
    extra = dict(getattr(file, "read_kw", None) or {})
    if getattr(file, "version_id", None):
        extra["VersionId"] = file.version_id
    etag = (getattr(file, "details", None) or {}).get("ETag")
    if etag and not extra.get("VersionId"):
        # Every byte must come from the object we started reading.
        extra["IfMatch"] = etag
    return {"Bucket": file.bucket, "Key": file.key, **extra}


def stream_opener(file: Any, stall_seconds: float) -> Callable[[int], Any] | None:
    """How to open one streaming GET from a byte onwards, if the filesystem has
    one. A stream that delivers no byte for ``stall_seconds`` raises ``StalledError``."""
    fs = file.fs
    args = _get_object_args(file)
    if args is None:
        return None
    from fsspec.asyn import sync

    def open_at(position: int) -> _S3Stream:
        response = sync(fs.loop, fs._call_s3, "get_object", Range=f"bytes={position}-", **args)
        return _S3Stream(fs.loop, response["Body"], stall_seconds, endpoint_of(fs))

    return open_at


# A part of a parallel read that fails is asked for again (from where it
# stopped) this many times in all.
_RANGE_ATTEMPTS = 3


def ranged_filler(
    file: Any, stall_seconds: float, moved: Callable[[int, int], None]
) -> Callable[[int, memoryview, int, int], None] | None:
    """How to fill a buffer from many ranged GETs at once, if the filesystem
    is s3fs: ``fill(position, target, part_size, concurrency)``.

    One connection to an object store carries 85-90 MB/s at most (AWS's
    guidelines for S3) whatever the host's link; a large array read as
    concurrent ranges takes the link's bandwidth instead. Each part is written straight into its stretch of
    ``target``: no extra copy, so no extra memory, however many are in flight.
    ``moved(position, count)`` is told of every piece that arrives (from the
    event loop's thread).
    """
    args = _get_object_args(file)
    if args is None:
        return None
    from fsspec.asyn import sync

    async def fill_part(view: memoryview, first: int, gate: asyncio.Semaphore) -> None:
        async with gate:
            await _get_range_into(file, args, view, first, stall_seconds, moved)

    async def fill_all(position: int, target: memoryview, part_size: int, concurrency: int) -> None:
        gate = asyncio.Semaphore(concurrency)
        tasks = [
            asyncio.ensure_future(fill_part(target[start : start + part_size], position + start, gate))
            for start in range(0, target.nbytes, part_size)
        ]
        try:
            await asyncio.gather(*tasks)
        finally:  # the first failure stops the rest: none may write into target afterwards
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def fill(position: int, target: memoryview, part_size: int, concurrency: int) -> None:
        sync(file.fs.loop, fill_all, position, target, part_size, concurrency)

    return fill


async def _get_range_into(
    file: Any,
    args: dict[str, Any],
    view: memoryview,
    first: int,
    stall_seconds: float,
    moved: Callable[[int, int], None],
) -> None:
    """Bytes ``first`` on of ``file`` into ``view``, by one ranged GET, asked
    again from where it stopped if the connection drops."""
    fs = file.fs
    done, attempt = 0, 0
    while done < view.nbytes:
        attempt += 1
        last = first + view.nbytes - 1
        response = await fs._call_s3("get_object", Range=f"bytes={first + done}-{last}", **args)
        stream = _S3Stream(fs.loop, response["Body"], stall_seconds, endpoint_of(fs), moved, first + done)
        try:
            count = await stream._fill(view[done:])
            if count < view.nbytes - done:
                raise EOFError(f"{file.path} ended early at byte {first + done + count} of {file.size}")
            done += count
        except (StalledError, EOFError):
            raise  # the bound is the bound: no retry on top of it
        except Exception:  # a dropped connection: ask again from the byte it stopped at
            done += stream.filled
            if attempt >= _RANGE_ATTEMPTS:
                raise
        finally:
            response["Body"].close()


class _S3Stream:
    """The body of one GET, read synchronously from s3fs's event loop."""

    def __init__(
        self,
        loop: Any,
        body: Any,
        stall_seconds: float,
        endpoint: str,
        moved: Callable[[int, int], None] | None = None,
        position: int = 0,
    ) -> None:
        self._loop, self._body = loop, body
        self._stall_seconds, self._endpoint = stall_seconds, endpoint
        self._moved, self._position = moved, position  # the object's byte the body starts at
        self.filled = 0  # bytes the last _fill put in its target, also when it failed

    def readinto(self, target: memoryview) -> int:
        from fsspec.asyn import sync

        return sync(self._loop, self._fill, target)

    async def _fill(self, target: memoryview) -> int:
        # The body hands out what the socket has (often 64 KiB): gather a
        # whole piece per trip to the event loop's thread.
        done = self.filled = 0
        while done < target.nbytes:
            try:
                # A server that keeps the connection open but sends nothing
                # would hold the read forever: no socket timeout covers it.
                chunk = await asyncio.wait_for(self._body.read(target.nbytes - done), self._stall_seconds)
            except asyncio.TimeoutError:
                raise StalledError(
                    f"the S3 endpoint {self._endpoint} sent no byte for {self._stall_seconds:g} s in the "
                    "middle of the model"
                ) from None
            if not chunk:
                break
            target[done : done + len(chunk)] = chunk
            done += len(chunk)
            self.filled = done
            if self._moved is not None:
                self._moved(self._position + done - len(chunk), len(chunk))
        return done

    def close(self) -> None:
        from fsspec.asyn import sync

        sync(self._loop, self._close)

    async def _close(self) -> None:
        # aiohttp's objects belong to the event loop's thread.
        self._body.close()


_PUT_ATTEMPTS = 3


async def _client_for(fs: Any, bucket: str) -> Any:
    await fs.set_session()
    client = await fs.get_s3(bucket)
    for operation in ("PutObject", "UploadPart"):
        # unique_id: registered once per client, however many saves use it.
        client.meta.events.register(
            f"before-send.s3.{operation}", _count_the_send, unique_id=f"kedro-keras-sent-{operation}"
        )
    return client


def _count_the_send(request: Any, **_: Any) -> None:
    """Hand the connection a body that counts what it sends (``Uploadable.sending``).

    botocore emits before-send after the checksum and signing passes over
    the body, before every attempt, so only the pass that sends it counts.
    """
    sending = getattr(request.body, "sending", None)
    if callable(sending):
        request.body = sending()


async def _put_object(
    fs: Any,
    bucket: str,
    key: str,
    gathered: Uploadable,
    conditions: dict[str, str],
    options: TransferOptions,
) -> None:
    client = await _client_for(fs, bucket)
    kwargs = fs._get_s3_method_kwargs(
        client.put_object, Bucket=bucket, Key=key, Body=gathered, ContentLength=gathered.size, **conditions
    )
    await _sent(lambda: client.put_object(**kwargs), gathered, options.stall_seconds, endpoint_of(fs))


async def _multipart_upload(
    fs: Any,
    bucket: str,
    key: str,
    gathered: Uploadable,
    conditions: dict[str, str],
    options: TransferOptions,
) -> None:
    """Up to ``options.concurrency`` parts at once, each under the stall
    watchdog and retried on its own; the object appears only at the final
    CompleteMultipartUpload, and a failure aborts the upload so no orphaned
    parts stay billed."""
    client = await _client_for(fs, bucket)
    endpoint = endpoint_of(fs)
    started = await client.create_multipart_upload(
        **fs._get_s3_method_kwargs(client.create_multipart_upload, Bucket=bucket, Key=key)
    )
    upload = {"Bucket": bucket, "Key": key, "UploadId": started["UploadId"]}
    gate = asyncio.Semaphore(options.concurrency)

    async def send(number: int, body: Any) -> dict[str, Any]:
        async with gate:
            kwargs = fs._get_s3_method_kwargs(
                client.upload_part, PartNumber=number, Body=body, ContentLength=body.size, **upload
            )
            answer = await _sent(lambda: client.upload_part(**kwargs), body, options.stall_seconds, endpoint)
            return {"PartNumber": number, "ETag": answer["ETag"]}

    size = part_size(gathered.size, options.concurrency, options.part_size)
    tasks = [
        asyncio.ensure_future(send(number, gathered.part(start, min(size, gathered.size - start))))
        for number, start in enumerate(range(0, gathered.size, size), start=1)
    ]
    try:
        parts = await asyncio.gather(*tasks)
        await client.complete_multipart_upload(MultipartUpload={"Parts": parts}, **upload, **conditions)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await asyncio.wait_for(client.abort_multipart_upload(**upload), options.stall_seconds)
        except Exception:  # noqa: BLE001 - the first failure is the one to report
            pass
        raise


async def _sent(request: Callable[[], Any], body: Any, stall_seconds: float, endpoint: str) -> Any:
    """Send ``request()`` (an upload of ``body``), with the body rewound
    before every attempt: s3fs's own retry loop would call again with the
    body already read to its end; botocore's retries (inside one call) do
    rewind it."""
    for attempt in range(1, _PUT_ATTEMPTS + 1):
        body.seek(0)
        try:
            return await _unless_stalled(request(), body, stall_seconds, endpoint)
        except StalledError:
            raise  # the bound is the bound: no retry on top of it
        except Exception as exc:  # sorted below
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            transient = not code or code in {
                "SlowDown",
                "InternalError",
                "ServiceUnavailable",
                "RequestTimeout",
            }
            if attempt == _PUT_ATTEMPTS or not transient or code == "PreconditionFailed":
                raise
            await asyncio.sleep(0.2 * attempt)


async def _unless_stalled(request: Any, body: Any, stall_seconds: float, endpoint: str) -> Any:
    """Await ``request`` (an upload of ``body``), cancelled once no byte
    of the body has been taken for ``stall_seconds`` while some is left.

    A server that accepts the connection but never reads (or never says
    "100 Continue") blocks the upload in a socket write, which botocore's
    read and connect timeouts do not cover: an upload would wait forever.
    Once the whole body is handed over, the wait for the answer is
    botocore's ``read_timeout`` (the socket's buffers may still be draining
    to a slow server: that silence is not a stall).
    """
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(request)
    sent, moved_at = body.tell(), loop.time()
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=min(1.0, stall_seconds))
            if done:
                return task.result()
            if body.tell() != sent:
                sent, moved_at = body.tell(), loop.time()
            elif sent < body.size and loop.time() - moved_at > stall_seconds:
                raise StalledError(
                    f"the S3 endpoint {endpoint} took no byte of the model for {stall_seconds:g} s "
                    f"({sent} of {body.size} bytes of this request sent)"
                )
    finally:
        if not task.done():
            task.cancel()


def single_put(fs: Any) -> Callable[[str, Uploadable, bool, TransferOptions], None] | None:
    """One PutObject of a gathered file, if the filesystem is s3fs."""
    return _upload_with(fs, _put_object)


def multipart_put(fs: Any) -> Callable[[str, Uploadable, bool, TransferOptions], None] | None:
    """A multipart upload of a gathered file, if the filesystem is s3fs."""
    return _upload_with(fs, _multipart_upload)


def _upload_with(fs: Any, upload: Any) -> Callable[[str, Uploadable, bool, TransferOptions], None] | None:
    needed = ("_call_s3", "split_path", "set_session", "get_s3", "_get_s3_method_kwargs")
    if not all(callable(getattr(fs, name, None)) for name in needed):
        return None
    from fsspec.asyn import sync

    def put(path: str, gathered: Uploadable, exclusive: bool, options: TransferOptions) -> None:
        bucket, key, _ = fs.split_path(path)
        conditions = {"IfNoneMatch": "*"} if exclusive else {}  # atomic where the store supports it
        try:
            sync(fs.loop, upload, fs, bucket, key, gathered, conditions, options)
        except Exception as exc:
            if exclusive and ("PreconditionFailed" in str(exc) or "pre-condition" in str(exc)):
                raise FileExistsError(path) from exc
            raise
        fs.invalidate_cache(path)

    return put
