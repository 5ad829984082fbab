"""The test side of the child processes: the load worker and the fork server."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from reliability_helpers import LineReader, child_env, spawn, stop


class WorkerDied(AssertionError):
    """The worker crashed (e.g. a segfault in HDF5) or hung on one input."""


class LoadWorker:
    """A ``load_worker`` process, restarted after it crashes or hangs.

    Its temporary folder (``TMPDIR``) is private, so leftovers can be checked
    without seeing other processes' files.
    """

    def __init__(self, folder: Path, timeout: float = 30, **env: str) -> None:
        self.folder = Path(folder)
        self.tmpdir = self.folder / "worker-tmp"
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self.env = child_env(TMPDIR=str(self.tmpdir), **env)
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def _start(self) -> None:
        self.starts += 1
        self.stderr_path = self.folder / f"worker-{self.starts}.stderr"
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in _stop
        self.proc = spawn("load_worker", env=self.env, stderr=self._stderr, cwd=str(self.folder))
        self.reader = LineReader(self.proc)
        line = self.reader.readline(timeout=180)
        if line is None or not json.loads(line).get("ready"):
            self._stop()
            raise RuntimeError(f"load_worker did not start:\n{self.stderr_tail()}")

    def stderr_tail(self, limit: int = 3000) -> str:
        try:
            return Path(self.stderr_path).read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def _stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self._stderr.close()
            self.proc = None

    def load(
        self, kind: str, path: str | Path, *, public_api: bool = False, timeout: float | None = None, **extra
    ) -> dict:
        if self.proc is None:
            self._start()
        request = {"kind": kind, "path": str(path), "public_api": public_api, **extra}
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        try:
            line = self.reader.readline(timeout=timeout or self.timeout)
        except TimeoutError:
            self._stop()
            raise WorkerDied(
                f"loading {path} ({kind}) did not finish within {timeout or self.timeout} s"
            ) from None
        if line is None:
            self.proc.wait(timeout=30)
            code = self.proc.returncode
            tail = self.stderr_tail()
            self._stop()
            raise WorkerDied(f"the load worker died (exit status {code}) loading {path} ({kind}):\n{tail}")
        return json.loads(line)

    def temp_leftovers(self) -> list[str]:
        return sorted(os.listdir(self.tmpdir))

    def close(self) -> None:
        self._stop()


class ForkServer:
    """The test side of ``forkserver``: fork jobs, kill them, reap them."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.stderr_path = self.folder / "forkserver.stderr"
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = spawn("forkserver", env=child_env(), stderr=self._stderr)
        self.reader = LineReader(self.proc)
        self.count = 0
        self._expect("ready", timeout=180)

    def stderr_tail(self, limit: int = 4000) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")[-limit:]

    def _expect(self, prefix: str, timeout: float = 120) -> str:
        line = self.reader.readline(timeout=timeout)
        if line is None or not line.startswith(prefix):
            raise AssertionError(f"forkserver said {line!r}, expected {prefix!r}:\n{self.stderr_tail()}")
        return line[len(prefix) :].strip()

    def _send(self, line: str) -> None:
        self.proc.stdin.write(f"{line}\n".encode())
        self.proc.stdin.flush()

    def fork(self, job: str, **arguments) -> tuple[int, Path]:
        """Start a job; returns its pid and the file it writes its lines to."""
        self.count += 1
        output = self.folder / f"{job}-{self.count}.out"
        output.touch()
        self._send(f"fork {job} {output} {json.dumps(arguments)}")
        return int(self._expect("pid")), output

    def reap(self, pid: int) -> int:
        """Wait for a job to end; its exit status (negative: the signal that killed it)."""
        self._send(f"reap {pid}")
        return int(self._expect("status", timeout=600))

    @staticmethod
    def lines(output: Path) -> list[str]:
        return output.read_text().splitlines()

    def wait_for_line(self, output: Path, wanted: str, timeout: float = 120) -> None:
        import time

        deadline = time.monotonic() + timeout
        while wanted not in self.lines(output):
            if time.monotonic() > deadline:
                raise AssertionError(f"{output.name} never said {wanted!r}:\n{self.stderr_tail()}")
            time.sleep(0.01)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._send("quit")
                self.proc.wait(timeout=30)
            except Exception:  # noqa: BLE001
                pass
        stop(self.proc)
        self._stderr.close()
