"""Remote files read the way object stores like: ``RemoteReader`` serves a
model read (almost front to back) from one streaming GET, with concurrent
ranged GETs for large reads. The s3fs internals it uses are in ``s3``, the
transfer options and part sizes in ``transfer``; uploads are ``upload``'s.
"""

from __future__ import annotations

import bisect
import gc
import mmap
import threading
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Iterator

from kedro_keras._io import transfer as _transfer
from kedro_keras._io.progress import NO_PROGRESS, Transfer, _NoProgress
from kedro_keras._io.s3 import ranged_filler, stream_opener
from kedro_keras._io.transfer import STREAM_PIECE, SizedFile, TransferOptions

# A read this far past the stream is served by a ranged request instead of
# holding everything in between (the zip directory at the end of the file).
_HOLD_LIMIT = 1024 * 2**20


# Skipped or small stretches of the stream kept for HDF5's look-backs.
_SMALL = 2**20


# Skipped stretches are held in pieces of this size (see _skip_stream_to).
_HOLD_PIECE = 4 * 2**20


_SMALL_CACHE_BYTES = 16 * 2**20


# Reads past the stream and block cache are made in pieces this large.
_RANGE_PIECE = 64 * 2**20


_STREAM_ATTEMPTS = 3


# A read at least this large, on an entry with concurrency above 1, is
# fetched as concurrent ranged GETs of 8 to 64 MiB each.
_PARALLEL_FROM = 16 * 2**20


class _Coverage:
    """Which bytes of a file have been fetched, as merged stretches."""

    def __init__(self) -> None:
        self._stretches: list[list[int]] = []  # [start, end), sorted, apart
        self.total = 0

    def add(self, start: int, end: int) -> int:
        """Add ``[start, end)``; the bytes covered now."""
        if end <= start:
            return self.total
        index = bisect.bisect_left(self._stretches, [start, start])
        if index and self._stretches[index - 1][1] >= start:
            index -= 1
        merged_start, merged_end, last = start, end, index
        while last < len(self._stretches) and self._stretches[last][0] <= merged_end:
            merged_start = min(merged_start, self._stretches[last][0])
            merged_end = max(merged_end, self._stretches[last][1])
            self.total -= self._stretches[last][1] - self._stretches[last][0]
            last += 1
        self._stretches[index:last] = [[merged_start, merged_end]]
        self.total += merged_end - merged_start
        return self.total


class FileChangedError(OSError):
    """The object was replaced between two reads of one load."""


class RemoteReader(SizedFile):
    """A remote fsspec file read as one stream where the reads allow it.

    A model file is read almost front to back: the zip directory at the end
    first, then the config, then the weights, with HDF5 peeking a little
    ahead (at the header after an array) before it reads the array. On object
    stores each ranged request costs a round trip, so reads at or ahead of the
    stream are served by a single streaming GET: skipped stretches are kept
    (small ones in an LRU cache, a large one, the array HDF5 peeked past,
    until it is read), and bytes are copied straight into the caller's
    buffer. Anything else falls back to the file's ordinary ranged reads.
    Filesystems without a streaming read use ranged reads only.

    One connection carries a fraction of a host's link to a real object
    store, so with ``concurrency`` above 1 (the default for a store that is
    not on this host) a large read (an array) is instead fetched as
    concurrent ranged GETs straight into the caller's buffer, and the
    stream resumes after it.
    """

    def __init__(self, file: Any, options: TransferOptions) -> None:
        super().__init__()
        self._file = file
        self.size: int = file.size
        self._position = 0
        self._options = options
        self._open_stream = stream_opener(file, options.stall_seconds)
        self._fill_ranges = (
            ranged_filler(file, options.stall_seconds, self._fetched) if options.concurrency > 1 else None
        )
        self._stream: Any = None
        self._stream_position = 0  # the next byte the stream gives
        self._small: OrderedDict[int, bytes] = OrderedDict()
        self._small_bytes = 0
        self._held: dict[int, memoryview] = {}
        self.progress: Transfer | _NoProgress = NO_PROGRESS
        self._fetched_bytes = _Coverage()
        self._fetched_lock = threading.Lock()  # ranges arrive on the event loop's thread

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        view = view[: max(0, min(view.nbytes, self.size - self._position))]
        with _garbage_collection_paused():
            self._read_at(self._position, view)
        self._position += view.nbytes
        return view.nbytes

    def _fetched(self, position: int, count: int) -> None:
        """Bytes ``position`` to ``position + count`` came from the store.
        Progress counts the file's bytes fetched at least once: not the bytes
        handed over (HDF5 reads some several times, out of memory: that count
        reached 100 % a third of the way in), nor a block fetched twice."""
        with self._fetched_lock:
            self.progress.at(self._fetched_bytes.add(position, position + count))

    def close(self) -> None:
        self._close_stream()
        self._held.clear()
        self._small.clear()
        super().close()

    # Where each byte comes from ------------------------------------------

    def _read_at(self, start: int, view: memoryview) -> None:
        position, end = start, start + view.nbytes
        while position < end:
            target = view[position - start :]
            done = self._from_memory(position, target)
            if not done and self._parallel_may_serve(end - position):
                done = self._from_parallel_ranges(position, target[: self._next_held(position, end)])
            if not done and self._may_stream_to(position):
                self._skip_stream_to(position)
                done = self._from_stream(target)
            if not done:
                done = self._from_ranged_reads(position, target[: self._ranged_read_size(position, end)])
            position += done

    def _may_stream_to(self, position: int) -> bool:
        if self._open_stream is None or position < self._stream_position:
            return False
        gap = position - self._stream_position
        if self._stream is None and self._stream_position == 0:
            return gap <= _SMALL  # start at the front, not at the zip directory
        if gap <= _SMALL:
            return True
        if self._parallel_may_serve(gap):
            # The stretch is an array HDF5 peeked past: fetched by concurrent
            # ranges when it is read, not through the one stream now.
            return False
        # Holding a skipped stretch costs memory; the stretch is an array
        # HDF5 is about to read anyway, but all held stretches together never
        # exceed a share of the file (a walk over the headers alone skips
        # every array and reads none).
        held = sum(data.nbytes for data in self._held.values())
        return held + gap <= min(_HOLD_LIMIT, max(_RANGE_PIECE, self.size // 4))

    def _from_memory(self, position: int, target: memoryview) -> int:
        for start, data in self._held.items():
            if start <= position < start + data.nbytes:
                count = min(target.nbytes, start + data.nbytes - position)
                target[:count] = data[position - start : position - start + count]
                if count <= _SMALL:  # metadata inside the stretch; HDF5 may look again
                    self._remember_small(position, bytes(target[:count]))
                if position + count == start + data.nbytes:
                    del self._held[start]  # read to its end: HDF5 reads an array once
                return count
        for start, data in self._small.items():
            if start <= position < start + len(data):
                self._small.move_to_end(start)
                count = min(target.nbytes, start + len(data) - position)
                target[:count] = memoryview(data)[position - start : position - start + count]
                return count
        return 0

    def _next_held(self, position: int, end: int) -> int:
        """Bytes from ``position`` up to the next one held in memory (at most to ``end``)."""
        return min([end, *(start for start in [*self._held, *self._small] if start > position)]) - position

    def _parallel_may_serve(self, size: int) -> bool:
        return self._fill_ranges is not None and size >= _PARALLEL_FROM

    def _from_parallel_ranges(self, position: int, target: memoryview) -> int:
        self._restart_stream_after(position + target.nbytes)
        self._fill_parallel_ranges(position, target)
        return target.nbytes

    def _restart_stream_after(self, end: int) -> None:
        if self._stream_position < end:
            # The stream would bring these bytes again: it starts afresh after them.
            self._close_stream()
            self._stream_position = end

    def _fill_parallel_ranges(self, position: int, target: memoryview) -> None:
        concurrency = self._options.concurrency
        part = _transfer.part_size(target.nbytes, concurrency, self._options.part_size)
        assert self._fill_ranges is not None
        try:
            self._fill_ranges(position, target, part, concurrency)
        except Exception as exc:
            self._raise_if_replaced(exc)
            raise

    def _ranged_read_size(self, position: int, end: int) -> int:
        """Up to the next byte held in memory or the stream, so those are not read twice."""
        limit = end
        for start in [*self._held, *self._small]:
            if position < start < limit:
                limit = start
        if (
            self._open_stream is not None
            and self._stream is not None
            and position < self._stream_position < limit
        ):
            limit = self._stream_position
        return limit - position

    def _from_ranged_reads(self, position: int, target: memoryview) -> int:
        done = 0
        while done < target.nbytes:
            first = position + done
            if target.nbytes - done >= _SMALL:
                # Past the block cache, which suits small reads only.
                piece = self._file._fetch_range(first, first + min(_RANGE_PIECE, target.nbytes - done))
                fetched = (first, first + len(piece))
            else:
                self._file.seek(first)
                piece = self._file.read(target.nbytes - done)
                # The block cache fetches (or has) whole blocks around the read.
                block = max(1, int(getattr(self._file, "blocksize", 1) or 1))
                fetched = (first // block * block, min(self.size, -(-(first + len(piece)) // block) * block))
            if not piece:
                raise EOFError(f"{self._file.path} ended early at byte {first} of {self.size}")
            self._fetched(fetched[0], fetched[1] - fetched[0])
            target[done : done + len(piece)] = piece
            done += len(piece)
        return done

    # The stream ------------------------------------------------------------

    def _skip_stream_to(self, position: int) -> None:
        gap = position - self._stream_position
        if gap <= 0:
            return
        if gap <= _SMALL:
            start, data = self._stream_position, bytearray(gap)
            self._fill_from_stream(memoryview(data))
            self._remember_small(start, bytes(data))
            return
        # Held in pieces, each freed once read: the array HDF5 then reads out
        # of the stretch grows as the stretch shrinks, instead of both being
        # whole at once. The pieces are anonymous maps, unmapped when dropped:
        # malloc would keep freed pieces of this size in its heap.
        for start in range(self._stream_position, position, _HOLD_PIECE):
            data = memoryview(mmap.mmap(-1, min(_HOLD_PIECE, position - start)))
            self._fill_from_stream(data)
            self._held[start] = data

    def _from_stream(self, target: memoryview) -> int:
        count = min(target.nbytes, self.size - self._stream_position)
        start = self._stream_position
        self._fill_from_stream(target[:count])
        if count <= _SMALL:
            self._remember_small(start, bytes(target[:count]))
        return count

    def _fill_from_stream(self, target: memoryview) -> None:
        done = 0
        failures = 0
        while done < target.nbytes:
            try:
                if self._stream is None:
                    self._stream = self._open_stream(self._stream_position)
                count = self._stream.readinto(target[done : done + STREAM_PIECE])
                self._fetched(self._stream_position, count)
                failures = 0  # a stream that moves on is healthy again
            except Exception as exc:  # a dropped connection: resume where it stopped
                self._close_stream()
                self._raise_if_replaced(exc)
                failures += 1
                if failures >= _STREAM_ATTEMPTS:
                    raise
                continue
            if not count:
                raise EOFError(
                    f"{self._file.path} ended early at byte {self._stream_position} of {self.size}"
                )
            done += count
            self._stream_position += count

    def _raise_if_replaced(self, exc: Exception) -> None:
        if "pre-condition" in str(exc):  # If-Match failed: not the object we started
            raise FileChangedError(f"{self._file.path} was replaced while it was being read") from exc

    def _remember_small(self, start: int, data: bytes) -> None:
        previous = self._small.pop(start, None)
        if previous is not None:
            self._small_bytes -= len(previous)
        self._small[start] = data
        self._small_bytes += len(data)
        while self._small_bytes > _SMALL_CACHE_BYTES and len(self._small) > 1:
            _, dropped = self._small.popitem(last=False)
            self._small_bytes -= len(dropped)

    def _close_stream(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            try:
                stream.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass


_gc_pause_lock = threading.Lock()


_gc_pause_users = 0


_gc_was_enabled = False


@contextmanager
def _garbage_collection_paused() -> Iterator[None]:
    """No garbage collection while this thread waits on the network.

    h5py holds its global lock while it calls back into our reads. If another
    thread (the event loop's, one the server or a proxy starts) runs a
    collection meanwhile and frees an h5py object, that object's destructor
    waits for h5py's lock while holding the GIL: the event loop never runs
    again, and the read never finishes. Seen as a load frozen in the tests.

    The switch is process-wide, so pauses are counted: with two remote loads
    in threads (Kedro's ThreadRunner), the first to finish must not turn
    collection back on under the other; the last one restores what it found.
    """
    global _gc_pause_users, _gc_was_enabled
    with _gc_pause_lock:
        if _gc_pause_users == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pause_users += 1
    try:
        yield
    finally:
        with _gc_pause_lock:
            _gc_pause_users -= 1
            if _gc_pause_users == 0 and _gc_was_enabled:
                gc.enable()
