"""The only code that uses s3fs's internals: one streaming GET from a byte
onwards (``stream_opener``) and one PutObject of a gathered file
(``single_put``). Each is checked for and skipped (the caller falls back to
fsspec's ordinary reads and uploads) if s3fs changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from kedro_keras._remote import GatherBuffer


def stream_opener(file: Any) -> Callable[[int], Any] | None:
    """How to open one streaming GET from a byte onwards, if the filesystem has one."""
    fs = file.fs
    if not (callable(getattr(fs, "_call_s3", None)) and hasattr(file, "bucket") and hasattr(file, "key")):
        return None
    from fsspec.asyn import sync

    extra = dict(getattr(file, "read_kw", None) or {})
    if getattr(file, "version_id", None):
        extra["VersionId"] = file.version_id
    etag = (getattr(file, "details", None) or {}).get("ETag")
    if etag and not extra.get("VersionId"):
        # Every byte must come from the object we started reading.
        extra["IfMatch"] = etag

    def open_at(position: int) -> _S3Stream:
        response = sync(
            fs.loop,
            fs._call_s3,
            "get_object",
            Bucket=file.bucket,
            Key=file.key,
            Range=f"bytes={position}-",
            **extra,
        )
        return _S3Stream(fs.loop, response["Body"])

    return open_at


class _S3Stream:
    """The body of one GET, read synchronously from s3fs's event loop."""

    def __init__(self, loop: Any, body: Any) -> None:
        self._loop, self._body = loop, body

    def readinto(self, target: memoryview) -> int:
        from fsspec.asyn import sync

        return sync(self._loop, self._fill, target)

    async def _fill(self, target: memoryview) -> int:
        # The body hands out what the socket has (often 64 KiB): gather a
        # whole piece per trip to the event loop's thread.
        done = 0
        while done < target.nbytes:
            chunk = await self._body.read(target.nbytes - done)
            if not chunk:
                break
            target[done : done + len(chunk)] = chunk
            done += len(chunk)
        return done

    def close(self) -> None:
        from fsspec.asyn import sync

        sync(self._loop, self._close)

    async def _close(self) -> None:
        # aiohttp's objects belong to the event loop's thread.
        self._body.close()


_PUT_ATTEMPTS = 3


async def _put_object(
    fs: Any, bucket: str, key: str, gathered: GatherBuffer, conditions: dict[str, str]
) -> None:
    """PutObject with the body rewound before every attempt.

    s3fs's own retry loop would call again with the body already read to its
    end; botocore's retries (inside one call) do rewind it.
    """
    import asyncio

    await fs.set_session()
    client = await fs.get_s3(bucket)
    kwargs = fs._get_s3_method_kwargs(
        client.put_object, Bucket=bucket, Key=key, Body=gathered, ContentLength=gathered.size, **conditions
    )
    for attempt in range(1, _PUT_ATTEMPTS + 1):
        gathered.seek(0)
        try:
            await client.put_object(**kwargs)
            return
        except Exception as exc:  # noqa: BLE001 - sorted below
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


def single_put(fs: Any) -> Callable[[str, GatherBuffer, bool], None] | None:
    """One PutObject of a gathered file, if the filesystem is s3fs."""
    needed = ("_call_s3", "split_path", "set_session", "get_s3", "_get_s3_method_kwargs")
    if not all(callable(getattr(fs, name, None)) for name in needed):
        return None
    from fsspec.asyn import sync

    def put(path: str, gathered: GatherBuffer, exclusive: bool) -> None:
        bucket, key, _ = fs.split_path(path)
        conditions = {"IfNoneMatch": "*"} if exclusive else {}  # atomic where the store supports it
        try:
            sync(fs.loop, _put_object, fs, bucket, key, gathered, conditions)
        except Exception as exc:
            if exclusive and ("PreconditionFailed" in str(exc) or "pre-condition" in str(exc)):
                raise FileExistsError(path) from exc
            raise
        fs.invalidate_cache(path)

    return put
