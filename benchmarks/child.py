"""The processes the harness (run.py) starts.

    python benchmarks/child.py SPEC.json      # one measured save or load, or the input file
    python benchmarks/child.py --moto-server  # the S3 server, until its stdin closes

A measuring child imports everything any contestant needs, builds the model
for a save (or prepares to load a file written once beforehand by plain
Keras), measures its resident memory, and only then times the single save or
load call while tracking peak resident memory. It writes what it measured to
the spec's ``result_file``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from plan import BUCKET, SAMPLE_INTERVAL_S, SMALL_RANGE_BYTES

# ==========================================================================
# The model
# ==========================================================================


def build_model(width: int, layers: int):
    """A deterministic functional model: seeded initializers, no training.

    Not compiled, so the file holds the architecture and the float32 weights
    only (no optimizer state)."""
    import keras

    inputs = keras.Input((width,), name="x")
    hidden = inputs
    for i in range(layers):
        hidden = keras.layers.Dense(
            width,
            name=f"dense_{i}",
            kernel_initializer=keras.initializers.RandomUniform(-0.02, 0.02, seed=1 + i),
            bias_initializer=keras.initializers.RandomUniform(-0.02, 0.02, seed=1001 + i),
        )(hidden)
    return keras.Model(inputs, hidden, name="bench_model")


def trained_one_step(model):
    """The model compiled with Adam and fitted on one batch, so that it
    carries optimizer state (two moments per weight) as a training node's does."""
    import numpy as np

    model.compile(optimizer="adam", loss="mse")
    x = np.zeros((1, model.input_shape[-1]), dtype="float32")
    model.fit(x, x, epochs=1, verbose=0)
    return model


def model_checksum(model, layers: int) -> float:
    import numpy as np

    total = 0.0
    for name in ("dense_0", f"dense_{layers - 1}"):
        total += float(np.asarray(model.get_layer(name).kernel).sum(dtype=np.float64))
    return total


# ==========================================================================
# Memory
# ==========================================================================


def _read_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _release_free_memory() -> None:
    import ctypes
    import gc

    gc.collect()
    try:  # hand freed heap pages back, so the baseline is what is really in use
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak RSS during a block: the kernel's VmHWM (reset at the start) and a
    psutil sampling thread (every SAMPLE_INTERVAL_S) as a cross-check / fallback."""

    def __init__(self, interval: float = SAMPLE_INTERVAL_S) -> None:
        import threading

        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.sampled_peak = 0
        self.samples = 0
        self.hwm_peak: int | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = self._process.memory_info().rss
            self.sampled_peak = max(self.sampled_peak, rss)
            self.samples += 1
            self._stop.wait(self._interval)

    def __enter__(self):
        self._hwm_reset = _reset_peak_rss()
        self.sampled_peak = self._process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sampled_peak = max(self.sampled_peak, self._process.memory_info().rss)
        if self._hwm_reset:
            hwm = _read_status_kb("VmHWM")
            self.hwm_peak = hwm * 1024 if hwm is not None else None

    @property
    def peak(self) -> int:
        return max(self.sampled_peak, self.hwm_peak or 0)


# ==========================================================================
# One measured operation
# ==========================================================================


def _s3fs(credentials):
    import s3fs

    return s3fs.S3FileSystem(**credentials)


def child_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    result: dict = {"ok": False}
    try:
        result.update(_child_run(spec))
        result["ok"] = True
    except BaseException as exc:  # noqa: BLE001  (report anything, even an interrupt; never hide)
        import traceback

        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
    Path(spec["result_file"]).write_text(json.dumps(result))
    return 0 if result["ok"] else 1


def _child_run(spec: dict) -> dict:
    import logging

    logging.disable(logging.WARNING)

    # Everything any contestant needs is imported before the baseline, by every
    # contestant alike, so imports are never part of a measurement.
    import keras
    import numpy as np
    import tensorflow  # noqa: F401  (Keras's backend; TensorFlowModelDataset's too)
    from kedro_datasets.tensorflow import TensorFlowModelDataset

    import kedro_keras

    role, contestant, kind = spec["role"], spec.get("contestant"), spec.get("kind")
    width, layers = spec["width"], spec["layers"]
    target = spec["target"]  # local path or s3:// URL
    credentials = spec.get("credentials")
    is_s3 = target.startswith("s3://")

    trained = spec.get("trained", False)
    if role == "prepare":
        model = build_model(width, layers)
        return _prepare(spec, trained_one_step(model) if trained else model)

    model = build_model(width, layers) if kind in ("save", "checkpoint") else None
    if model is not None and trained:
        trained_one_step(model)
    background = spec.get("background", False)
    if kind == "checkpoint":
        if contestant == "ours":
            entry = kedro_keras.KerasCheckpointDataset(filepath=target, background=background)
            callback = entry.load().callback()
        else:
            callback = keras.callbacks.ModelCheckpoint(target)
        callback.set_model(model)
        dataset = None
    elif contestant == "ours":
        # fs_args: on the S3 link rows only (plan.LINK_FS_ARGS); never given to kedro-datasets.
        dataset = kedro_keras.KerasModelDataset(
            filepath=target, credentials=credentials, fs_args=spec.get("fs_args")
        )
    elif contestant == "history":
        dataset = kedro_keras.KerasTimestampedModelDataset(
            filepath=target, credentials=credentials, fs_args=spec.get("fs_args")
        )
    elif contestant == "kd":
        dataset = TensorFlowModelDataset(filepath=target, credentials=credentials)
    else:
        dataset = None
    s3_calls = s3_gets = None
    if is_s3:
        # Connect (botocore session, service model, event loop) before the
        # baseline: that one-off cost is the same for any S3 client.
        dataset._fs.ls("")
        dataset._fs.invalidate_cache()
        s3_calls, s3_gets = _count_s3_calls(dataset._fs)

    if kind == "checkpoint":

        def operation():
            return callback.on_epoch_end(1, {"loss": 0.0})

    elif contestant == "keras":
        operation = (
            (lambda: model.save(target)) if kind == "save" else (lambda: keras.saving.load_model(target))
        )
    elif kind == "save":

        def operation():
            return dataset.save(model)

    else:
        operation = dataset.load

    with BusyCores((os.cpu_count() or 1) if spec.get("busy_cores") else 0) as busy:
        _release_free_memory()
        baseline = _read_status_kb("VmRSS") * 1024
        with PeakMemory() as memory:
            if background and contestant == "ours":
                # The first checkpoint (in the foreground) makes the copy's
                # model: its memory counts, its time does not.
                callback.on_train_begin()
                callback.on_epoch_end(0, {"loss": 0.0})
            busy.mark()
            start = time.perf_counter()
            loaded = operation()
            elapsed = time.perf_counter() - start
            busy.measure()
            if background and contestant == "ours":
                callback.on_train_end()  # the write done (and checked) before the memory window closes

    out = {
        "time_s": elapsed,
        "baseline_bytes": baseline,
        "peak_bytes": memory.peak,
        "peak_extra_bytes": memory.peak - baseline,
        "sampled_peak_extra_bytes": memory.sampled_peak - baseline,
        "hwm_peak_extra_bytes": None if memory.hwm_peak is None else memory.hwm_peak - baseline,
        "samples": memory.samples,
    }
    if s3_calls is not None:
        out["s3_requests"] = dict(s3_calls)
        out["s3_gets"] = _summarise_gets(s3_gets)
    location = getattr(dataset, "_location", None)
    if is_s3 and location is not None:
        # The concurrency kedro-keras's Location settled on (fs_args, or its
        # default for this endpoint): the page's transfer column says it.
        out["concurrency"] = location.transfer.concurrency
    if busy.processes:
        out["busy"] = busy.report()

    # Check the result (not timed): a load gives the prepared model back, a
    # save leaves a whole file, which is then removed.
    if kind == "load":
        if loaded.count_params() != spec["params"]:
            raise AssertionError(f"loaded {loaded.count_params()} parameters, expected {spec['params']}")
        checksum = model_checksum(loaded, layers)
        if not np.isclose(checksum, spec["checksum"], rtol=1e-9, atol=1e-6):
            raise AssertionError(f"loaded weights differ: checksum {checksum} != {spec['checksum']}")
        if trained and _state_bytes(loaded) != spec["state_bytes"]:
            raise AssertionError(
                f"loaded state is {_state_bytes(loaded)} bytes, expected {spec['state_bytes']}"
            )
    else:
        keep = spec.get("keep", False)  # a history's version, which its load reads next
        if is_s3:
            fs = _s3fs(credentials)
            fs.invalidate_cache()
            size = fs.info(target)["size"]
            fs.rm(target)
        elif os.path.isdir(target):  # a checkpoint folder, a history
            import shutil

            size = sum(path.stat().st_size for path in Path(target).iterdir())
            if not keep:
                shutil.rmtree(target)
        else:
            size = os.path.getsize(target)
            os.remove(target)
        out["file_bytes"] = size
        if size < spec["weights_bytes"]:
            raise AssertionError(
                f"saved file has {size} bytes, fewer than the weights' {spec['weights_bytes']}"
            )
    return out


def _state_bytes(model) -> int:
    """Bytes of what a load restores: the weights and the optimizer's variables."""
    optimizer = getattr(model, "optimizer", None)
    variables = list(model.weights) + (list(optimizer.variables) if optimizer is not None else [])
    return sum(int(v.numpy().nbytes) for v in variables)


def _count_s3_calls(fs):
    """Count the S3 API calls made through this s3fs filesystem's client, and
    keep the Range header of every GetObject (None: the whole object)."""
    from collections import Counter

    calls: Counter = Counter()
    gets: list = []

    def count(model=None, params=None, **_):
        if model is not None:
            calls[model.name] += 1
            if model.name == "GetObject":
                gets.append(((params or {}).get("headers") or {}).get("Range"))

    fs.s3.meta.events.register("before-call.s3", count)
    return calls, gets


def _summarise_gets(ranges: list) -> dict:
    """The GetObjects of one operation by kind: ``streams`` (the whole object,
    or from a byte to its end), ``ranges`` (a bounded range of more than
    SMALL_RANGE_BYTES) and ``small_ranges``, with the bytes the bounded ones asked for."""
    out = {"streams": 0, "ranges": 0, "range_bytes": 0, "small_ranges": 0, "small_range_bytes": 0}
    for header in ranges:
        first, _, last = (header or "bytes=0-").removeprefix("bytes=").partition("-")
        if not last:
            out["streams"] += 1
            continue
        size = int(last) - int(first) + 1
        kind = "ranges" if size > SMALL_RANGE_BYTES else "small_ranges"
        out[kind] += 1
        out[kind.removesuffix("s") + "_bytes"] += size
    return out


# One busy loop, until its parent (the measuring child) is gone: even a
# child killed on a timeout leaves none behind.
_BUSY_LOOP = """\
import os, sys
parent = int(sys.argv[1])
while os.getppid() == parent:
    for _ in range(100_000):
        pass
"""


class BusyCores:
    """``processes`` busy-loop processes while the block runs (none for 0),
    killed when it ends, however it ends. ``mark()`` and ``measure()``, at
    the start and the end of the timed call, note the CPU time they have had
    and the machine's, which ``report()`` gives as cores kept busy on
    average: by the busy loops, and by every process on the machine."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._children: list = []
        self._at_start: tuple[float, float, float] | None = None
        self._spent: tuple[float, float, float] | None = None

    def __enter__(self):
        import subprocess

        try:
            for _ in range(self.processes):
                self._children.append(subprocess.Popen([sys.executable, "-c", _BUSY_LOOP, str(os.getpid())]))
            if self._children:
                time.sleep(0.5)  # running, and the scheduler has seen them
        except BaseException:
            self._stop()
            raise
        return self

    def _clocks(self) -> tuple[float, float, float]:
        """Wall time, the busy loops' CPU time, and the machine's busy CPU time."""
        import psutil

        loops = 0.0
        for child in self._children:
            try:
                times = psutil.Process(child.pid).cpu_times()
                loops += times.user + times.system
            except psutil.Error:
                pass
        # guest times are in user and nice already; steal: the host ran another machine
        machine = psutil.cpu_times()
        busy = sum(
            getattr(machine, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal")
        )
        return time.perf_counter(), loops, busy

    def mark(self) -> None:
        """The timed call starts now."""
        if self._children:
            self._at_start = self._clocks()

    def measure(self) -> None:
        """The timed call has ended."""
        if self._at_start is not None:
            self._spent = tuple(
                end - start for end, start in zip(self._clocks(), self._at_start, strict=True)
            )

    def report(self) -> dict:
        out: dict = {"processes": self.processes}
        if self._spent and self._spent[0] > 0:
            wall, loops, machine = self._spent
            out.update(wall_s=wall, cpu_s=loops, cores_busy=loops / wall, machine_cores_busy=machine / wall)
        return out

    def _stop(self) -> None:
        for child in self._children:
            child.kill()  # only the processes we started
        for child in self._children:
            child.wait()

    def __exit__(self, *exc) -> None:
        self._stop()


def _prepare(spec: dict, model) -> dict:
    """Write the input file of the load benchmarks with plain Keras (and upload it)."""
    import tensorflow as tf

    local = spec["local_input"]
    if spec.get("prepare_with") == "ours":
        # The --big model: model.save would need 1.17x its weights in memory
        # on top of the model, more than this machine has for 10 GB.
        import kedro_keras

        kedro_keras.KerasModelDataset(filepath=local).save(model)
    else:
        model.save(local)
    info = {
        "state_bytes": _state_bytes(model),
        "params": model.count_params(),
        "checksum": model_checksum(model, spec["layers"]),
        "file_bytes": os.path.getsize(local),
        # For the report's machine line: what the children compute on.
        "gpus": len(tf.config.list_physical_devices("GPU")),
    }
    if spec.get("s3_input"):
        fs = _s3fs(spec["credentials"])
        if not fs.exists(BUCKET):
            fs.mkdir(BUCKET)
        fs.put_file(local, spec["s3_input"])
        fs.invalidate_cache()
        if fs.info(spec["s3_input"])["size"] != info["file_bytes"]:
            raise AssertionError("uploaded input file has the wrong size")
        # How this S3 server prices requests on this object (see the report).
        timings = {}
        for name, kwargs in (("full_get_s", {}), ("range_get_1_byte_s", {"start": 0, "end": 1})):
            best = float("inf")
            for _ in range(2):
                start = time.perf_counter()
                fs.cat_file(spec["s3_input"], **kwargs)
                best = min(best, time.perf_counter() - start)
            timings[name] = best
        info["s3_probe"] = timings
    return info


# ==========================================================================
# The moto server (its own process, so it never shares a GIL with anyone)
# ==========================================================================


def moto_main() -> int:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    print(f"http://{host}:{port}", flush=True)
    sys.stdin.read()  # runs until the harness closes our stdin
    server.stop()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] == "--moto-server":
        sys.exit(moto_main())
    if len(sys.argv) == 2:
        sys.exit(child_main(sys.argv[1]))
    sys.exit(f"usage: {sys.argv[0]} SPEC.json | --moto-server (started by benchmarks/run.py)")
