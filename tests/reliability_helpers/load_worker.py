"""A child process that loads model files on request, for the fuzz and bomb tests.

    python -m reliability_helpers.load_worker

Reads one JSON request per line on stdin and answers one JSON line on stdout:

    {"kind": "keras" | "h5" | "weights", "path": "...", "public_api": false}
    -> {"outcome": "loaded" | "dataset_error" | "other", "type": ..., "message": ...,
        "traceback": ..., "digest": ..., "rss_delta": bytes, "written": bytes, "seconds": ...}

``loaded``: the dataset returned a model (``digest`` is a SHA-256 of its weights,
and of its optimizer state for ``.keras``). ``dataset_error``: it raised
``kedro.io.DatasetError``. ``other``: anything else, which is a bug.
``rss_delta`` is how far the load raised the process's peak memory and
``written`` how many bytes it wrote (``/proc/self/io`` wchar): a zip bomb that
is inflated shows up in one or the other.

Runs as a separate process so that a crash (a segfault in HDF5) or a hang on
malformed input cannot take the test process down: the test sees the worker
die or time out, and reports the input. Memory is capped (``RLIMIT_DATA``) so
that a file declaring huge arrays fails here instead of exhausting a shared
machine.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import threading
import time
import traceback
import warnings

MEMORY_LIMIT = int(os.environ.get("KEDRO_KERAS_WORKER_MEMORY", str(4 * 2**30)))


def _written() -> int:
    with open("/proc/self/io") as io_stats:
        for line in io_stats:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


class _PeakMemory:
    """The highest resident memory seen while a load runs (sampled every 5 ms;
    ``ru_maxrss`` cannot be reset between loads)."""

    def __init__(self) -> None:
        self.peak = 0
        self._running = False
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _PeakMemory:
        self.start = self.peak = _rss()
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while self._running:
            self.peak = max(self.peak, _rss())
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def delta(self) -> int:
        return max(0, self.peak - self.start)


def main() -> None:
    resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_LIMIT, MEMORY_LIMIT))
    # Messages go to stderr; stdout carries only the answers.
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)

    import keras  # imported once, before the first request
    from kedro.io import DatasetError

    from kedro_keras import KerasModelDataset, KerasWeightsDataset
    from reliability_helpers import weights_digest

    answers.write(json.dumps({"ready": True}) + "\n")
    loads = 0
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("public_api"):
            os.environ["KEDRO_KERAS_PUBLIC_API_ONLY"] = "1"
        else:
            os.environ.pop("KEDRO_KERAS_PUBLIC_API_ONLY", None)
        kind, path = request["kind"], request["path"]
        load_args = request.get("load_args")
        answer: dict = {}
        memory = _PeakMemory().__enter__()
        written_before, start = _written(), time.monotonic()
        try:
            if kind == "weights":
                dataset = KerasWeightsDataset(filepath=path, load_args=load_args)
            elif kind == "h5":
                dataset = KerasModelDataset(filepath=path, load_args=load_args or {"compile": False})
            else:
                dataset = KerasModelDataset(filepath=path, load_args=load_args)
            model = dataset.load()
            answer = {"outcome": "loaded", "digest": weights_digest(model, optimizer=kind == "keras")}
            del model
        except DatasetError as exc:
            answer = {"outcome": "dataset_error", "message": str(exc)}
        except BaseException as exc:  # noqa: BLE001 - reported, never swallowed
            answer = {
                "outcome": "other",
                "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                "message": str(exc)[:2000],
                "traceback": traceback.format_exc()[-6000:],
            }
        memory.__exit__()
        answer.update(
            rss_delta=memory.delta,
            written=_written() - written_before,
            seconds=time.monotonic() - start,
        )
        answers.write(json.dumps(answer) + "\n")
        loads += 1
        if loads % 200 == 0:
            keras.backend.clear_session()


if __name__ == "__main__":
    main()
