"""A TCP proxy on 127.0.0.1 that forwards to a server and can break connections.

    proxy = FaultyProxy(("127.0.0.1", moto_port)).start()
    proxy.endpoint                  # http://127.0.0.1:<port>, give it to s3fs
    proxy.cut_after(4096)           # the connection that carries the 4097th byte
                                    # from now (either direction) is reset
    proxy.cut_after(10**6, direction="down", how="close", times=3)
    proxy.refuse(2)                 # the next 2 new connections are reset at once
    proxy.lose_response(b"POST /bucket/key?uploadId=")
                                    # the server gets that request whole and answers;
                                    # the answer is lost (the connection is reset)
    proxy.cut_after(10**5, direction="down", how="stall", times=10)
                                    # stop passing bytes on that connection, and keep
                                    # it open: a server that stalls mid-body
    proxy.throttle(4 * 10**6)       # pass on at most 4 MB/s each way, steadily
    proxy.heal()                    # forward everything from now on
    proxy.wait_idle()               # every connection finished (server side too)

Real sockets and real resets (``SO_LINGER`` 0), no mocks: what the client sees
is what it would see from a flaky network. When a client goes away, the proxy
half-closes the server side and keeps reading until the server closes, so
``wait_idle`` returns only after the server has finished every request it
received.
"""

from __future__ import annotations

import socket
import struct
import threading
import time


def _reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    _close(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class _Fault:
    def __init__(self, after: int, direction: str, how: str, times: int) -> None:
        self.after, self.direction, self.how, self.times = after, direction, how, times
        self.counted = 0


class FaultyProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._fault: _Fault | None = None
        self._refuse = 0
        self._lose: list[bytes] = []
        self._open = 0
        self._closed = False
        self.connections = 0
        self.cuts = 0
        self.refused = 0
        self.bytes = {"up": 0, "down": 0}
        self._rate: float | None = None
        self._released = threading.Event()  # stalled connections wait for it

    # -- control -------------------------------------------------------------

    def start(self) -> FaultyProxy:
        threading.Thread(target=self._accept_loop, name="faulty-proxy", daemon=True).start()
        return self

    def cut_after(self, nbytes: int, *, direction: str = "any", how: str = "reset", times: int = 1) -> None:
        """Break the connection that carries byte ``nbytes + 1`` from now.

        ``direction``: count bytes going ``up`` (client to server), ``down``
        or ``any``. ``how``: ``reset`` (RST) or ``close`` (FIN). After a cut the
        count starts again, ``times`` cuts in all.
        """
        assert direction in ("up", "down", "any") and how in ("reset", "close", "stall")
        with self._lock:
            self._fault = _Fault(nbytes, direction, how, times)

    def refuse(self, count: int) -> None:
        """Reset the next ``count`` connections as soon as they are accepted."""
        with self._lock:
            self._refuse = count

    def lose_response(self, request_start: bytes, times: int = 1) -> None:
        """Reset the connection instead of passing on the answer to the next
        ``times`` requests that start with ``request_start`` (method and path)."""
        with self._lock:
            self._lose = [request_start] * times

    def throttle(self, bytes_per_second: float | None) -> None:
        """Pass bytes on at about this rate in each direction (None: at full speed)."""
        with self._lock:
            self._rate = bytes_per_second

    def heal(self) -> None:
        with self._lock:
            self._fault, self._refuse, self._lose, self._rate = None, 0, [], None

    @property
    def armed(self) -> bool:
        with self._lock:
            return self._fault is not None or self._refuse > 0 or bool(self._lose)

    def _claims_response(self, data: bytes) -> bool:
        """Whether a request in ``data`` is one whose answer must be lost."""
        with self._lock:
            for index, start in enumerate(self._lose):
                if start in data:
                    del self._lose[index]
                    self.cuts += 1
                    return True
        return False

    def wait_idle(self, timeout: float = 60) -> None:
        """Wait until no connection is open (the server finished every request)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._open:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self._open} proxied connection(s) still open after {timeout} s")
                self._idle.wait(left)

    def close(self) -> None:
        self._closed = True
        self._released.set()
        _close(self._listener)

    # -- forwarding ----------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                refuse = self._refuse > 0
                if refuse:
                    self._refuse -= 1
                    self.refused += 1
            if refuse:
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                _reset(client)
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = _Connection(self, client, server)
            with self._lock:
                self._open += 1
            connection.start()

    def _finished(self) -> None:
        with self._idle:
            self._open -= 1
            self._idle.notify_all()

    def _allowance(self, direction: str, size: int) -> tuple[int, str | None]:
        """How many of ``size`` bytes may pass, and how to cut after them (or None)."""
        with self._lock:
            self.bytes[direction] += size
            fault = self._fault
            if fault is None or fault.direction not in (direction, "any"):
                return size, None
            left = fault.after - fault.counted
            if size <= left:
                fault.counted += size
                return size, None
            fault.times -= 1
            fault.counted = 0
            if fault.times <= 0:
                self._fault = None
            self.cuts += 1
            return max(left, 0), fault.how


class _Connection:
    def __init__(self, proxy: FaultyProxy, client: socket.socket, server: socket.socket) -> None:
        self.proxy, self.client, self.server = proxy, client, server
        self._lock = threading.Lock()
        self._running = 2
        self._cut = False
        self._lose_answer = False

    def start(self) -> None:
        threading.Thread(target=self._pump, args=(self.client, self.server, "up"), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.server, self.client, "down"), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, direction: str) -> None:
        target_alive = True
        try:
            while True:
                try:
                    data = source.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    break
                if direction == "up" and self.proxy._claims_response(data):
                    self._lose_answer = True
                elif direction == "down" and self._lose_answer and not data.startswith(b"HTTP/1.1 100"):
                    self._break("reset")  # the server has done the work; its answer is lost
                    return
                allowed, how = self.proxy._allowance(direction, len(data))
                if how == "stall":
                    if target_alive and allowed:
                        try:
                            target.sendall(data[:allowed])
                        except OSError:
                            pass
                    self.proxy._released.wait()  # the connection stays open, silent
                    self._break("close")
                    return
                if self.proxy._rate:
                    time.sleep(len(data) / self.proxy._rate)
                if target_alive and allowed:
                    try:
                        target.sendall(data[:allowed])
                    except OSError:
                        if direction == "up":
                            break  # the server is gone
                        # The client is gone: keep draining the server so that
                        # it finishes the request it already has.
                        target_alive = False
                if how is not None:
                    self._break(how)
                    return
            # Pass the end of the stream on (the server then finishes and closes).
            try:
                target.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        finally:
            self._done()

    def _break(self, how: str) -> None:
        with self._lock:
            if self._cut:
                return
            self._cut = True
        if how == "reset":
            _reset(self.client)
        else:
            _close(self.client)
        # The server sees its client go away, as it would behind a broken network.
        _close(self.server)

    def _done(self) -> None:
        with self._lock:
            self._running -= 1
            last = self._running == 0
        if last:
            for sock in (self.client, self.server):
                try:
                    sock.close()
                except OSError:
                    pass
            self.proxy._finished()
