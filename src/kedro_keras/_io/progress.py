"""Progress of long transfers to and from remote filesystems.

A 5 GB upload that says nothing for a minute looks like a hang. Transfers
of at least ``SHOWN_FROM_BYTES``, or still running after
``SHOWN_AFTER_SECONDS``, show a rich progress bar when Kedro's console is a
terminal (or a notebook) and an INFO log line every ``LOG_EVERY_SECONDS``
otherwise. Local files never do: they are as fast as the disk. Turned off
per entry with ``fs_args: {progress: false}``, or everywhere with the
environment variable ``KEDRO_KERAS_PROGRESS=0``.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from kedro_keras._log import get_logger

logger = get_logger(__name__)

SHOWN_FROM_BYTES = 100 * 10**6
SHOWN_AFTER_SECONDS = 5.0
LOG_EVERY_SECONDS = 10.0
# A time left is shown once the transfer has run this long and moved this
# share of its bytes: before, the rate is a few small reads' (a load reads
# the file's directory at its end first).
PACE_AFTER_SECONDS = 1.0
PACE_AFTER_FRACTION = 0.02
_OFF = {"0", "false", "no", "off"}


def wanted(option: Any) -> bool:
    """Whether an entry shows progress: its ``fs_args.progress`` (default
    on), unless ``KEDRO_KERAS_PROGRESS`` turns it off everywhere."""
    if os.environ.get("KEDRO_KERAS_PROGRESS", "").strip().lower() in _OFF:
        return False
    if isinstance(option, str):
        return option.strip().lower() not in _OFF
    return bool(option)


class Transfer:
    """One transfer's progress, told how far it is with ``at(done)`` from
    any thread (uploads run on fsspec's event-loop thread)."""

    def __init__(self, verb: str, url: str, total: int) -> None:
        self.verb, self.url, self.total = verb, url, total
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._shown = False
        self._bar: Any = None
        self._task: Any = None
        # The first line comes LOG_EVERY_SECONDS in: a transfer done sooner
        # has only its save/load line, and a rate measured over the first
        # read would be noise.
        self._logged_at = self._started
        self._done = 0
        self._moved_at = self._started

    def at(self, done: int) -> None:
        """``done`` of ``total`` bytes have moved (it may go back: a retried request)."""
        now = time.monotonic()
        with self._lock:
            self._done = min(done, self.total)
            self._moved_at = now
            if not self._shown:
                if self.total < SHOWN_FROM_BYTES and now - self._started < SHOWN_AFTER_SECONDS:
                    return
                self._show()
            if self._bar is not None:
                self._bar.update(self._task, completed=self._done)
            elif now - self._logged_at >= LOG_EVERY_SECONDS:
                self._logged_at = now
                logger.info("%s", self._line(now))

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.stop()
                self._bar = None
            if self._done:
                _ended_here().append((self.verb, self._started, self._done, self._moved_at))
                del _ended_here()[:-_KEPT_ENDED]

    def __enter__(self) -> Transfer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _show(self) -> None:
        self._shown = True
        console = _console()
        if not (console.is_terminal or console.is_jupyter):
            return
        from rich import progress

        transfer = self

        class Pace(progress.ProgressColumn):
            # Not rich's speed and time-remaining columns: they estimate from
            # the last updates, and a load (whose first reads are a few
            # small ones from the file's end) started at 4 h 40 min left.
            def render(self, task: Any) -> Any:
                return Text(transfer.pace(time.monotonic()), style="progress.data.speed")

        from rich.text import Text

        self._bar = progress.Progress(
            progress.TextColumn("{task.description}"),
            progress.BarColumn(),
            progress.DownloadColumn(),
            Pace(),
            console=console,
            transient=True,  # the save/load log line that follows says it all
        )
        self._task = self._bar.add_task(f"{self.verb} {self.url}", total=self.total, completed=self._done)
        self._bar.start()

    def pace(self, now: float) -> str:
        """The rate so far, as the final log line counts it (bytes over the
        time since the transfer began), and the time left at that rate once
        it means something."""
        done = self._done
        # Once all is moved the rate stays put while the save or load goes on.
        seconds = (self._moved_at if done >= self.total else now) - self._started
        if seconds <= 0 or not done:
            return "?/s"
        rate = done / seconds
        text = f"{size_text(int(rate))}/s"
        if done >= self.total:
            return text
        if seconds < PACE_AFTER_SECONDS or done < self.total * PACE_AFTER_FRACTION:
            return f"{text}, time left not known yet"
        return f"{text}, about {_duration_text((self.total - done) / rate)} left"

    def _line(self, now: float) -> str:
        line = f"{self.verb} {self.url}: {size_text(self._done)} of {size_text(self.total)}"
        return f"{line} ({100 * self._done // max(self.total, 1)} %), {self.pace(now)}"


class _NoProgress:
    def at(self, done: int) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


NO_PROGRESS = _NoProgress()


def _console() -> Any:
    # The console Kedro's rich log handler prints to, so log lines land
    # above the bar instead of through it.
    import rich

    return rich.get_console()


def size_text(nbytes: int | None) -> str:
    return "?" if nbytes is None else _format(nbytes)


def transfer_text(nbytes: int | None, seconds: float) -> str:
    """ "12.3 MB in 0.45 s, 27.3 MB/s", for the save and load log lines.

    The time is the whole save or load, building the model included; when
    a transfer with progress took part, the figures its bar ended on follow:
    from its start to its last byte, "...; sent in 0.30 s, 41.0 MB/s" (the
    store's answer after it is not counted there).
    """
    if nbytes is None:
        text = f"in {seconds:.2f} s"
    else:
        rate = f", {_format(nbytes / seconds)}/s" if seconds > 0 else ""
        text = f"{_format(nbytes)} in {seconds:.2f} s{rate}"
    now = time.monotonic()
    ended, _ended_here()[:] = _ended_here()[:], []
    for verb, started, done, stopped in ended:
        if started >= now - seconds:  # this operation's, not an earlier failed one's
            took = stopped - started
            text += f"; {'sent' if verb == 'Saving' else 'received'} in {took:.2f} s"
            text += f", {_format(done / took)}/s" if took > 0 else ""
    return text


_ended = threading.local()
_KEPT_ENDED = 16


def _ended_here() -> list[tuple[str, float, int, float]]:
    """Transfers that ended in this thread, not yet reported in a log line."""
    if not hasattr(_ended, "transfers"):
        _ended.transfers = []
    return _ended.transfers


def _duration_text(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _format(nbytes: float) -> str:
    unit = "bytes"
    for unit in ("bytes", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            break
        nbytes /= 1000
    return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
