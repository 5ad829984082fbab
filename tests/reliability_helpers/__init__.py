"""Helpers for the reliability tests (tests/test_reliability_*.py).

Real processes, real files and a real S3-protocol server: the scripts in this
folder run as child processes (``python -m reliability_helpers.<name>``), so a
``kill -9``, a crash in HDF5 or a hang stays in the child and the test process
can report it.
"""

from __future__ import annotations

import hashlib
import os
import select
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
PYTHON = sys.executable

# Names the atomic writers may leave behind when killed: ``.<name>.<uuid>.tmp``.
TEMP_NAME = r"^\.(?P<target>.+)\.[0-9a-f]{32}\.tmp$"


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python: same backend, tests importable."""
    env = dict(os.environ)
    env.setdefault("KERAS_BACKEND", "tensorflow")
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["KEDRO_DISABLE_TELEMETRY"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("AWS_ACCESS_KEY_ID", "testing")
    env.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def spawn(module: str, *args: str, env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    """Start ``python -m reliability_helpers.<module> args...`` with pipes."""
    return subprocess.Popen(
        [PYTHON, "-m", f"reliability_helpers.{module}", *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=popen.pop("stderr", subprocess.PIPE),
        env=env or child_env(),
        cwd=popen.pop("cwd", str(TESTS)),
        **popen,
    )


class LineReader:
    """Reads a child's stdout line by line with a timeout (no threads)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self._fd = proc.stdout.fileno()
        self._buffer = b""

    def readline(self, timeout: float) -> str | None:
        """The next line, or None at EOF; TimeoutError if none arrives in time."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no line from child {self.proc.pid} within {timeout} s")
            ready, _, _ = select.select([self._fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._fd, 65536)
            if not chunk:
                if self._buffer:
                    line, self._buffer = self._buffer, b""
                    return line.decode()
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def rest(self, timeout: float = 10) -> list[str]:
        """Every remaining line, once the child has exited."""
        lines = []
        while (line := self.readline(timeout)) is not None:
            lines.append(line)
        return lines


def stderr_tail(proc: subprocess.Popen, limit: int = 4000) -> str:
    try:
        return proc.stderr.read().decode(errors="replace")[-limit:]
    except Exception:  # noqa: BLE001 - only for a failure message
        return "<stderr unavailable>"


def weights_digest(model, *, optimizer: bool = False) -> str:
    """SHA-256 over every weight array of a model (and, if asked, the optimizer's)."""
    import keras

    variables = list(model.weights)
    if optimizer and getattr(model, "optimizer", None) is not None:
        variables += list(model.optimizer.variables)
    digest = hashlib.sha256()
    for variable in variables:
        array = keras.ops.convert_to_numpy(variable)
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def stop(proc: subprocess.Popen) -> None:
    """Kill a child we started (by its pid) and reap it."""
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:  # pragma: no cover - the kernel reaps SIGKILLed children
        pass
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass


# The process-level tests (kill -9, concurrency, network faults, zip bombs)
# exercise the file layer, which is the same under every Keras backend; they
# run under TensorFlow (make test-tensorflow) and are skipped under the other
# backends' runs of the suite to keep `make test` short, unless this is set.
ALL_BACKENDS = os.environ.get("KEDRO_KERAS_RELIABILITY_ALL_BACKENDS", "").lower() in ("1", "true", "yes")
BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")


def file_layer_only_once():
    """A pytest mark: run under TensorFlow only, unless KEDRO_KERAS_RELIABILITY_ALL_BACKENDS=1."""
    import pytest

    return pytest.mark.skipif(
        BACKEND != "tensorflow" and not ALL_BACKENDS,
        reason="file-layer test, run under the TensorFlow backend "
        "(KEDRO_KERAS_RELIABILITY_ALL_BACKENDS=1 runs it under this one too)",
    )
