"""Files an upload reads: ``GatherBuffer`` holds a file to upload mostly by
reference to the caller's buffers, ``SpooledUpload`` one written to local
disk first; either is sent whole or in ``part``s read concurrently. How
they go up is ``s3``'s (one PUT or a multipart upload) and ``files``'.
"""

from __future__ import annotations

import io
import os
import threading
from typing import Any, Callable, Iterator

from kedro_keras._io.progress import NO_PROGRESS, Transfer, _NoProgress
from kedro_keras._io.transfer import STREAM_PIECE, SizedFile

# Writes at least this large are kept by reference when the buffer is read-only.
_BY_REFERENCE = 2**20


class Uploadable(SizedFile):
    """A file an upload reads, in one request or in parts read concurrently,
    and tells ``progress`` how much of it has been sent."""

    def __init__(self) -> None:
        super().__init__()
        self._position = 0
        self.progress: Transfer | _NoProgress = NO_PROGRESS
        self._parts_sent: dict[int, int] = {}  # a part's start: how much of it has been sent
        # Parts are read on several threads: a sum told late would set the bar back.
        self._sent_lock = threading.Lock()

    def read_at(self, position: int, buffer: Any) -> int:
        raise NotImplementedError

    def readinto(self, buffer: Any) -> int:
        count = self.read_at(self._position, buffer)
        self._position += count
        return count

    def part(self, start: int, size: int) -> _Part:
        """Bytes ``start`` to ``start + size`` as a file of their own, with its
        own position (an upload's parts may be read concurrently)."""
        return _Part(self, start, size)

    def sending(self) -> SendPass:
        """This file, as read by the pass that sends it.

        Before it sends a body, botocore reads it whole to compute its
        checksum and (over HTTP) its signature: counting those reads ran a
        save's bar to 100 % three times, at memory speed. Only the pass
        handed to the connection counts.
        """
        return SendPass(self, lambda done: self.progress.at(done))

    def _part_sent(self, start: int, count: int) -> None:
        with self._sent_lock:
            self._parts_sent[start] = count
            self.progress.at(sum(self._parts_sent.values()))


class GatherBuffer(Uploadable):
    """A seekable in-memory file that keeps large read-only writes by reference.

    Writing a model's archive copies its small parts (zip headers, config)
    and only references the weights' read-only buffer, so sending the file
    needs no second copy of the model in memory.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pieces: list[bytes | bytearray | memoryview] = []
        self._starts: list[int] = []
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self._position < self.size:
            self._overwrite(view)  # zipfile rewrites a member's local header
            return view.nbytes
        if self._position > self.size:
            self.write_zeros(self._position - self.size)
        if isinstance(data, bytes) or (view.readonly and view.nbytes >= _BY_REFERENCE):
            self._append(view)
        elif self._pieces and isinstance(self._pieces[-1], bytearray):
            self._pieces[-1] += view
            self.size += view.nbytes
        else:
            self._append(bytearray(view))
        self._position = self.size
        return view.nbytes

    def write_zeros(self, count: int) -> None:
        self._position = self.size
        self.write(bytearray(count))

    def _append(self, piece: Any) -> None:
        self._pieces.append(piece)
        self._starts.append(self.size)
        self.size += len(piece) if not isinstance(piece, memoryview) else piece.nbytes
        self._position = self.size

    def _overwrite(self, view: memoryview) -> None:
        end = self._position + view.nbytes
        if end > self.size:
            raise io.UnsupportedOperation("a rewrite may not extend the file")
        for index, start in enumerate(self._starts):
            piece = self._pieces[index]
            piece_end = start + (piece.nbytes if isinstance(piece, memoryview) else len(piece))
            if piece_end <= self._position or start >= end:
                continue
            if not isinstance(piece, bytearray):
                piece = self._pieces[index] = bytearray(piece)  # rare: small pieces only
            lo, hi = max(start, self._position), min(piece_end, end)
            piece[lo - start : hi - start] = view[lo - self._position : hi - self._position]
        self._position = end

    def pieces(self) -> Iterator[memoryview]:
        """The file's bytes, in order, without copying them."""
        for piece in self._pieces:
            yield memoryview(piece)

    def read_at(self, position: int, buffer: Any) -> int:
        """Fill ``buffer`` from ``position`` on, leaving the file's position alone."""
        target = memoryview(buffer).cast("B")
        done = 0
        for index in range(self._piece_at(position), len(self._pieces)):
            if done == target.nbytes:
                break
            piece = memoryview(self._pieces[index])
            offset = position - self._starts[index]
            count = min(target.nbytes - done, piece.nbytes - offset)
            target[done : done + count] = piece[offset : offset + count]
            done += count
            position += count
        return done

    def _piece_at(self, position: int) -> int:
        import bisect

        return max(0, bisect.bisect_right(self._starts, position) - 1)


class SpooledUpload(Uploadable):
    """A file written to local disk first, uploaded from there.

    For models whose image would take more memory than a save may: HDF5
    writes the model into the local file in place, one array at a time, and
    the upload reads it back a part at a time. Offers what an upload needs
    of a ``GatherBuffer``: ``read_at``, ``part``, ``pieces``, ``progress``.
    """

    def __init__(self, file: Any) -> None:
        super().__init__()
        file.flush()
        self._file = file
        self.size = os.fstat(file.fileno()).st_size
        self._lock = threading.Lock()  # parts may be read concurrently

    def read_at(self, position: int, buffer: Any) -> int:
        """Fill ``buffer`` from ``position`` on, leaving the file's position alone."""
        target = memoryview(buffer).cast("B")[: max(0, self.size - position)]
        done = 0
        with self._lock:
            self._file.seek(position)
            while done < target.nbytes:
                count = self._file.readinto(target[done:])
                if not count:
                    break
                done += count
        return done

    def pieces(self) -> Iterator[memoryview]:
        """The file's bytes in order, one piece in memory at a time."""
        for start in range(0, self.size, STREAM_PIECE):
            piece = bytearray(min(STREAM_PIECE, self.size - start))
            yield memoryview(piece)[: self.read_at(start, piece)]


class _Part(SizedFile):
    """A stretch of an ``Uploadable``, read without copying the rest."""

    def __init__(self, whole: Uploadable, start: int, size: int) -> None:
        super().__init__()
        self._whole, self._start, self.size = whole, start, size
        self._position = 0

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")[: max(0, self.size - self._position)]
        count = self._whole.read_at(self._start + self._position, target)
        self._position += count
        return count

    def sending(self) -> SendPass:
        """This part, as read by the pass that sends it (``Uploadable.sending``)."""
        return SendPass(self, lambda done: self._whole._part_sent(self._start, done))


class SendPass(SizedFile):
    """The body of one request as its connection reads it: reads and
    seeks go to the body, and each read says how far the send has got.

    A retried request gets a new one, so its bar goes back and counts the
    resend.
    """

    def __init__(self, body: SizedFile, sent: Callable[[int], None]) -> None:
        super().__init__()
        self._body, self._sent, self.size = body, sent, body.size

    @property
    def _position(self) -> int:  # type: ignore[override]  # the body's, never its own
        return self._body.tell()

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        return self._body.seek(position, whence)

    def readinto(self, buffer: Any) -> int:
        count = self._body.readinto(buffer)
        self._sent(self._body.tell())
        return count
