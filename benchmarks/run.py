#!/usr/bin/env python
"""Save/load benchmark: kedro_keras.KerasModelDataset against plain Keras and
kedro-datasets' TensorFlowModelDataset, on local disk and on S3 (a moto server
on loopback).

    python benchmarks/run.py                  # ~400 MB model, 5 repeats
    python benchmarks/run.py --quick          # 40 MB model, 1 repeat (development, tests)
    python benchmarks/run.py --big            # adds a ~4 GB model, our dataset only

Every measured operation runs in its own fresh Python process, so its peak
memory is its own. The process builds the model to save (or prepares to load
a file written once beforehand by plain Keras), imports everything, measures
its resident memory, and only then times the single save or load call while
tracking peak resident memory. Contestants are interleaved (round robin,
starting contestant rotated each repeat) and the median over the repeats is
reported.

Writes a markdown report (docs/performance.md), a bar chart
(docs/img/benchmark.png) and machine-readable results (benchmarks/results.json);
``--quick`` writes them under benchmarks/.work/quick/ instead so that it never
overwrites the real numbers (``--out-dir`` chooses any folder).

Exits 0 when every operation ran, whether or not the targets are met (they
are reported), and non-zero if any operation failed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from importlib import metadata as _metadata
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
WORK_ROOT = BENCH_DIR / ".work"  # same disk as the repository; gitignored

DEFAULT_DOC = REPO / "docs" / "performance.md"
DEFAULT_PNG = REPO / "docs" / "img" / "benchmark.png"
DEFAULT_JSON = BENCH_DIR / "results.json"

BUCKET = "kedro-keras-bench"
N_LAYERS = 6  # Dense(width) x 6, input width wide: ~ 6 * width**2 parameters
BIG_PARAMS = 1_000_000_000  # --big: ~4 GB of float32 weights

CONTESTANTS = {
    "ours": "kedro_keras KerasModelDataset",
    "keras": "plain Keras (model.save / keras.saving.load_model)",
    "kd": "kedro-datasets TensorFlowModelDataset",
}
SHORT_NAMES = {"ours": "kedro-keras", "keras": "plain Keras", "kd": "kedro-datasets"}

# (operation, where, kind, contestants, reference contestant)
OPERATIONS = [
    ("local save", "local", "save", ["ours", "keras", "kd"], "keras"),
    ("local load", "local", "load", ["ours", "keras", "kd"], "keras"),
    ("S3 save", "s3", "save", ["ours", "kd"], "kd"),
    ("S3 load", "s3", "load", ["ours", "kd"], "kd"),
]

# (label, operation, metric, threshold): metric "time" is ours / reference
# median time, "memory" is ours' peak extra memory / weights bytes.
TARGETS = [
    ("local load time <= 0.5x plain Keras", "local load", "time", 0.5),
    ("local load peak extra memory <= 1.25x weights", "local load", "memory", 1.25),
    ("local save time <= 1.05x model.save", "local save", "time", 1.05),
    ("S3 save time <= 0.7x kedro-datasets", "S3 save", "time", 0.7),
    ("S3 load time <= 0.6x kedro-datasets", "S3 load", "time", 0.6),
    ("S3 save peak extra memory <= 1.25x weights", "S3 save", "memory", 1.25),
    ("S3 load peak extra memory <= 1.25x weights", "S3 load", "memory", 1.25),
]

MB = 1_000_000  # reported megabytes are 10**6 bytes


# ==========================================================================
# The model
# ==========================================================================


def model_shape(n_params: float) -> dict[str, int]:
    """Width and depth of a stack of square Dense layers with ~n_params weights."""
    width = max(64, int(round(math.sqrt(n_params / N_LAYERS) / 64)) * 64)
    params = N_LAYERS * (width * width + width)
    return {"width": width, "layers": N_LAYERS, "params": params, "weights_bytes": 4 * params}


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


def model_checksum(model, layers: int) -> float:
    import numpy as np

    total = 0.0
    for name in ("dense_0", f"dense_{layers - 1}"):
        total += float(np.asarray(model.get_layer(name).kernel).sum(dtype=np.float64))
    return total


# ==========================================================================
# Child process: one measured operation
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
    psutil sampling thread every 5 ms as a cross-check / fallback."""

    def __init__(self, interval: float = 0.005) -> None:
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

    def __enter__(self) -> "PeakMemory":
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


def _s3fs(credentials):
    import s3fs

    return s3fs.S3FileSystem(**credentials)


def child_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    result: dict = {"ok": False}
    try:
        result.update(_child_run(spec))
        result["ok"] = True
    except BaseException as exc:  # report, never hide
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

    import kedro_keras
    from kedro_datasets.tensorflow import TensorFlowModelDataset

    role, contestant, kind = spec["role"], spec.get("contestant"), spec.get("kind")
    width, layers = spec["width"], spec["layers"]
    target = spec["target"]  # local path or s3:// URL
    credentials = spec.get("credentials")
    is_s3 = target.startswith("s3://")

    if role == "prepare":
        return _prepare(spec, build_model(width, layers))

    model = build_model(width, layers) if kind == "save" else None
    if contestant == "ours":
        dataset = kedro_keras.KerasModelDataset(filepath=target, credentials=credentials)
    elif contestant == "kd":
        dataset = TensorFlowModelDataset(filepath=target, credentials=credentials)
    else:
        dataset = None
    s3_calls = None
    if is_s3:
        # Connect (botocore session, service model, event loop) before the
        # baseline: that one-off cost is the same for any S3 client.
        dataset._fs.ls("")
        dataset._fs.invalidate_cache()
        s3_calls = _count_s3_calls(dataset._fs)

    if contestant == "keras":
        operation = (lambda: model.save(target)) if kind == "save" else (lambda: keras.saving.load_model(target))
    elif kind == "save":
        operation = lambda: dataset.save(model)  # noqa: E731
    else:
        operation = dataset.load

    _release_free_memory()
    baseline = _read_status_kb("VmRSS") * 1024
    with PeakMemory() as memory:
        start = time.perf_counter()
        loaded = operation()
        elapsed = time.perf_counter() - start

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

    # Check the result (not timed): a load gives the prepared model back, a
    # save leaves a whole file, which is then removed.
    if kind == "load":
        if loaded.count_params() != spec["params"]:
            raise AssertionError(f"loaded {loaded.count_params()} parameters, expected {spec['params']}")
        checksum = model_checksum(loaded, layers)
        if not np.isclose(checksum, spec["checksum"], rtol=1e-9, atol=1e-6):
            raise AssertionError(f"loaded weights differ: checksum {checksum} != {spec['checksum']}")
    else:
        if is_s3:
            fs = _s3fs(credentials)
            fs.invalidate_cache()
            size = fs.info(target)["size"]
            fs.rm(target)
        else:
            size = os.path.getsize(target)
            os.remove(target)
        out["file_bytes"] = size
        if size < spec["weights_bytes"]:
            raise AssertionError(f"saved file has {size} bytes, fewer than the weights' {spec['weights_bytes']}")
    return out


def _count_s3_calls(fs):
    """Count the S3 API calls made through this s3fs filesystem's client."""
    from collections import Counter

    calls: Counter = Counter()

    def count(model=None, **_):
        if model is not None:
            calls[model.name] += 1

    fs.s3.meta.events.register("before-call.s3", count)
    return calls


def _prepare(spec: dict, model) -> dict:
    """Write the input file of the load benchmarks with plain Keras (and upload it)."""
    local = spec["local_input"]
    model.save(local)
    info = {
        "params": model.count_params(),
        "checksum": model_checksum(model, spec["layers"]),
        "file_bytes": os.path.getsize(local),
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


class MotoServer:
    def __init__(self, env: dict, log_path: Path) -> None:
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--moto-server"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
        )
        line = self.process.stdout.readline().decode().strip()
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"moto server did not start (see {log_path})")
        self.endpoint = line

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.close()
                self.process.wait(timeout=20)
            except (subprocess.TimeoutExpired, OSError):
                self.process.kill()  # only the process we started
                self.process.wait()
        self._log.close()


# ==========================================================================
# Harness
# ==========================================================================


def child_env(tmp_dir: Path) -> dict:
    env = dict(os.environ)
    env.update(
        KERAS_BACKEND="tensorflow",
        TF_CPP_MIN_LOG_LEVEL="3",
        KEDRO_DISABLE_TELEMETRY="1",
        # moto and s3fs: nothing talks to real AWS
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        # every temporary file (kedro-datasets' temp copies, moto's spooled
        # objects) goes to the work folder on the repository's disk
        TMPDIR=str(tmp_dir),
        PYTHONUNBUFFERED="1",
    )
    return env


class Harness:
    def __init__(self, args, run_dir: Path) -> None:
        self.args = args
        self.run_dir = run_dir
        self.tmp_dir = run_dir / "tmp"
        self.tmp_dir.mkdir(parents=True)
        self.env = child_env(self.tmp_dir)
        self.counter = 0
        self.total = 0
        self.current: subprocess.Popen | None = None

    def run_child(self, spec: dict, label: str, timeout: float) -> dict:
        self.counter += 1
        name = f"{self.counter:03d}"
        spec = {**spec, "result_file": str(self.run_dir / f"{name}.result.json")}
        spec_path = self.run_dir / f"{name}.spec.json"
        spec_path.write_text(json.dumps(spec))
        log_path = self.run_dir / f"{name}.log"
        if hasattr(os, "sync"):
            os.sync()  # write back the previous operation's dirty pages first
        start = time.perf_counter()
        with open(log_path, "wb") as log:
            self.current = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=str(self.run_dir),
            )
            try:
                code = self.current.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.current.kill()
                self.current.wait()
                code = None
            finally:
                self.current = None
        wall = time.perf_counter() - start
        result_file = Path(spec["result_file"])
        if result_file.exists():
            result = json.loads(result_file.read_text())
        else:
            result = {"ok": False, "error": "timed out" if code is None else f"child exited {code} with no result"}
        if not result.get("ok"):
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            result.setdefault("log_tail", tail)
        result["wall_s"] = wall
        progress = f"[{self.counter:>3}/{self.total}] {label:<40}"
        if result.get("ok") and "time_s" in result:
            print(
                f"{progress} {result['time_s']:8.2f} s  +{result['peak_extra_bytes'] / MB:8.0f} MB"
                f"  (process {wall:.0f} s)",
                flush=True,
            )
        elif result.get("ok"):
            print(f"{progress} done in {wall:.0f} s", flush=True)
        else:
            print(f"{progress} FAILED: {result.get('error')}", flush=True)
            for line in result.get("traceback", "").splitlines()[-8:] or result.get("log_tail", []):
                print(f"      {line}", flush=True)
        return result


def plan(args) -> list[tuple]:
    ops = [op for op in OPERATIONS if not (args.skip_s3 and op[1] == "s3")]
    jobs = []
    for repeat in range(args.repeats):
        for operation, where, kind, contestants, _ in ops:
            shift = repeat % len(contestants)
            for contestant in contestants[shift:] + contestants[:shift]:
                jobs.append((repeat, operation, where, kind, contestant))
    return jobs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=None, help="model size in MB of float32 weights (default 400)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per operation and contestant (default 5: this virtual machine's page faults make single runs vary by 2x)")
    parser.add_argument("--quick", action="store_true", help="40 MB model, 1 repeat, results under benchmarks/.work/quick/")
    parser.add_argument("--big", action="store_true", help="also save+load a ~4 GB model (1e9 params) with kedro-keras only, local disk")
    parser.add_argument("--big-repeats", type=int, default=1, help="repeats of the --big case (default 1)")
    parser.add_argument("--skip-s3", action="store_true", help="local disk only, no moto server")
    parser.add_argument("--out-dir", type=Path, default=None, help="write performance.md, benchmark.png and results.json here")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per child process")
    parser.add_argument("--keep-work", action="store_true", help="keep benchmarks/.work/run-* (logs) afterwards")
    args = parser.parse_args(argv)

    if args.size_mb is None:
        args.size_mb = 40.0 if args.quick else 400.0
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    out_dir = args.out_dir if args.out_dir is not None else (WORK_ROOT / "quick" if args.quick else None)
    if out_dir is not None:
        outputs = {"doc": out_dir / "performance.md", "png": out_dir / "benchmark.png", "json": out_dir / "results.json"}
    else:
        outputs = {"doc": DEFAULT_DOC, "png": DEFAULT_PNG, "json": DEFAULT_JSON}

    shape = model_shape(args.size_mb * MB / 4)
    big_shape = model_shape(BIG_PARAMS) if args.big else None
    run_dir = WORK_ROOT / f"run-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    run_dir.mkdir(parents=True)
    started = time.perf_counter()
    started_at = _dt.datetime.now(_dt.timezone.utc)
    args.src_at_start = src_fingerprint()
    args.s3_probe = None

    print(
        f"model: {shape['layers']} x Dense({shape['width']}), {shape['params']:,} params, "
        f"{shape['weights_bytes'] / MB:.0f} MB of float32 weights; {args.repeats} repeat(s)",
        flush=True,
    )
    harness = Harness(args, run_dir)
    moto = None
    runs: list[dict] = []
    failures: list[str] = []
    try:
        credentials = None
        if not args.skip_s3:
            moto = MotoServer(harness.env, run_dir / "moto.log")
            credentials = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": moto.endpoint}}
            print(f"moto S3 server on {moto.endpoint}", flush=True)

        jobs = plan(args)
        harness.total = 1 + len(jobs) + (1 + 2 * args.big_repeats if args.big else 0)

        local_input = run_dir / "input.keras"
        s3_input = f"s3://{BUCKET}/input.keras" if credentials else None
        common = {**shape, "credentials": credentials}
        prepared = harness.run_child(
            {**common, "role": "prepare", "target": str(local_input), "local_input": str(local_input), "s3_input": s3_input},
            "prepare input file (plain Keras)",
            args.timeout,
        )
        if not prepared.get("ok"):
            failures.append("prepare")
            raise SystemExit(1)
        common["checksum"] = prepared["checksum"]
        args.s3_probe = prepared.get("s3_probe")

        for repeat, operation, where, kind, contestant in jobs:
            if kind == "load":
                target = s3_input if where == "s3" else str(local_input)
            else:
                name = f"save-{contestant}-{repeat}-{uuid.uuid4().hex[:8]}.keras"
                target = f"s3://{BUCKET}/{name}" if where == "s3" else str(run_dir / name)
            result = harness.run_child(
                {**common, "role": "measure", "contestant": contestant, "kind": kind, "target": target},
                f"{operation} | {SHORT_NAMES[contestant]} | repeat {repeat + 1}",
                args.timeout,
            )
            runs.append({"operation": operation, "contestant": contestant, "repeat": repeat + 1, "model": "main", **result})
            if not result.get("ok"):
                failures.append(f"{operation} / {contestant} / repeat {repeat + 1}")

        if args.big:
            big_input = run_dir / "big-input.keras"
            big_common = {**big_shape, "credentials": None}
            print(
                f"big model: {big_shape['layers']} x Dense({big_shape['width']}), {big_shape['params']:,} params, "
                f"{big_shape['weights_bytes'] / MB:.0f} MB",
                flush=True,
            )
            big_prepared = harness.run_child(
                {**big_common, "role": "prepare", "target": str(big_input), "local_input": str(big_input)},
                "prepare big input file (plain Keras)",
                args.timeout * 3,
            )
            if big_prepared.get("ok"):
                big_common["checksum"] = big_prepared["checksum"]
                for repeat in range(args.big_repeats):
                    for operation, kind in (("local save", "save"), ("local load", "load")):
                        target = str(big_input) if kind == "load" else str(run_dir / f"big-save-{repeat}.keras")
                        result = harness.run_child(
                            {**big_common, "role": "measure", "contestant": "ours", "kind": kind, "target": target},
                            f"BIG {operation} | kedro-keras | repeat {repeat + 1}",
                            args.timeout * 3,
                        )
                        runs.append(
                            {"operation": operation, "contestant": "ours", "repeat": repeat + 1, "model": "big", **result}
                        )
                        if not result.get("ok"):
                            failures.append(f"BIG {operation} / ours / repeat {repeat + 1}")
            else:
                failures.append("prepare big")
            if big_input.exists():
                big_input.unlink()
    except KeyboardInterrupt:
        failures.append("interrupted")
        if harness.current is not None:
            harness.current.kill()
    finally:
        if moto is not None:
            moto.stop()
        elapsed = time.perf_counter() - started
        if args.keep_work:
            print(f"work folder kept: {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
            try:
                WORK_ROOT.rmdir()  # only if nothing else (quick results) is in it
            except OSError:
                pass

    report = summarise(args, shape, big_shape, runs, failures, elapsed, started_at, outputs)
    write_outputs(report, outputs)
    print()
    print(report["markdown_table"])
    if report["big_table"]:
        print()
        print(report["big_table"])
    print()
    print("Targets (kedro-keras, this run):")
    for target in report["targets"]:
        print(f"  {'met    ' if target['met'] else 'NOT MET' if target['met'] is False else 'n/a    '}  {target['label']}: {target['text']}")
    print()
    print(f"wrote {_rel(outputs['doc'])}, {_rel(outputs['png'])}, {_rel(outputs['json'])}")
    print(f"total {elapsed / 60:.1f} min")
    if failures:
        print(f"FAILED operations: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


# ==========================================================================
# Results
# ==========================================================================


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _version(*names: str) -> str:
    for name in names:
        try:
            return _metadata.version(name)
        except _metadata.PackageNotFoundError:
            continue
    return "not installed"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def src_fingerprint() -> str:
    """A short hash of kedro_keras's source files, to tell implementations apart."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((REPO / "src").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import psutil

        ram = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    except ImportError:
        ram = "?"
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram": ram,
        "python": platform.python_version(),
    }


def versions() -> dict:
    return {
        "kedro-keras": _version("kedro-keras"),
        "keras": _version("keras"),
        "tensorflow": _version("tensorflow-cpu", "tensorflow"),
        "kedro": _version("kedro"),
        "kedro-datasets": _version("kedro-datasets"),
        "fsspec": _version("fsspec"),
        "s3fs": _version("s3fs"),
        "moto": _version("moto"),
        "h5py": _version("h5py"),
        "numpy": _version("numpy"),
    }


def summarise(args, shape, big_shape, runs, failures, elapsed, started_at, outputs) -> dict:
    weights_bytes = shape["weights_bytes"]
    summary = []
    medians: dict[tuple[str, str], dict] = {}
    ops = [op for op in OPERATIONS if not (args.skip_s3 and op[1] == "s3")]
    for operation, where, kind, contestants, reference in ops:
        for contestant in ["ours", "keras", "kd"]:
            row = {"operation": operation, "contestant": contestant, "reference": reference}
            if contestant not in contestants:
                row["status"] = "n/a"
                summary.append(row)
                continue
            mine = [r for r in runs if r["model"] == "main" and r["operation"] == operation and r["contestant"] == contestant]
            ok = [r for r in mine if r.get("ok")]
            row["repeats"] = len(ok)
            if not ok or len(ok) < len(mine):
                row["status"] = "error"
            else:
                row["status"] = "ok"
            if ok:
                times = [r["time_s"] for r in ok]
                extras = [r["peak_extra_bytes"] for r in ok]
                row.update(
                    median_time_s=statistics.median(times),
                    min_time_s=min(times),
                    max_time_s=max(times),
                    median_peak_extra_bytes=statistics.median(extras),
                    min_peak_extra_bytes=min(extras),
                    max_peak_extra_bytes=max(extras),
                    memory_ratio=statistics.median(extras) / weights_bytes,
                )
                requests = [r["s3_requests"] for r in ok if r.get("s3_requests")]
                if requests:
                    names = sorted({name for counts in requests for name in counts})
                    row["s3_requests"] = {
                        name: statistics.median(counts.get(name, 0) for counts in requests) for name in names
                    }
                medians[(operation, contestant)] = row
            summary.append(row)
    for row in summary:
        ref = medians.get((row["operation"], row["reference"]))
        if "median_time_s" in row and ref:
            row["time_ratio"] = row["median_time_s"] / ref["median_time_s"]

    targets = []
    for label, operation, metric, threshold in TARGETS:
        row = medians.get((operation, "ours"))
        value = None
        if row is not None:
            value = row.get("time_ratio") if metric == "time" else row.get("memory_ratio")
        if value is None:
            targets.append({"label": label, "value": None, "threshold": threshold, "met": None, "text": "not measured"})
        else:
            targets.append(
                {
                    "label": label,
                    "value": value,
                    "threshold": threshold,
                    "met": value <= threshold,
                    "text": f"{value:.2f}x (target <= {threshold}x)",
                }
            )

    big_rows = []
    if big_shape is not None:
        for operation in ("local save", "local load"):
            mine = [r for r in runs if r["model"] == "big" and r["operation"] == operation]
            ok = [r for r in mine if r.get("ok")]
            row = {"operation": operation, "contestant": "ours", "repeats": len(ok)}
            row["status"] = "ok" if ok and len(ok) == len(mine) else "error"
            if ok:
                extras = [r["peak_extra_bytes"] for r in ok]
                row.update(
                    median_time_s=statistics.median(r["time_s"] for r in ok),
                    median_peak_extra_bytes=statistics.median(extras),
                    memory_ratio=statistics.median(extras) / big_shape["weights_bytes"],
                )
            big_rows.append(row)

    command = "python benchmarks/run.py" + ("".join(f" {a}" for a in sys.argv[1:]) if sys.argv[1:] else "")
    report = {
        "meta": {
            "date": started_at.strftime("%Y-%m-%d %H:%M UTC"),
            "command": command,
            "total_runtime_s": elapsed,
            "machine": machine_info(),
            "versions": versions(),
            "git_commit": _git("rev-parse", "--short", "HEAD"),
            "src_modified": bool(_git("status", "--porcelain", "--", "src")),
            "src_fingerprint": args.src_at_start,
            "src_changed_during_run": src_fingerprint() != args.src_at_start,
            "public_api_only": os.environ.get("KEDRO_KERAS_PUBLIC_API_ONLY", ""),
            "s3_probe": args.s3_probe,
            "quick": args.quick,
            "repeats": args.repeats,
            "big_repeats": args.big_repeats if args.big else 0,
        },
        "model": shape,
        "big_model": big_shape,
        "summary": summary,
        "big_summary": big_rows,
        "targets": targets,
        "failures": failures,
        "runs": [{k: v for k, v in r.items() if k != "log_tail"} for r in runs],
    }
    report["markdown_table"] = markdown_table(summary)
    report["big_table"] = big_table(big_rows, big_shape) if big_rows else ""
    return report


def _fmt_ratio(value) -> str:
    return f"{value:.2f}x" if value is not None else "–"


def markdown_table(summary) -> str:
    lines = [
        "| Operation | Contestant | Median time (s) | Time vs reference | Peak extra memory (MB) | Memory / weights |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in summary:
        name = SHORT_NAMES[row["contestant"]]
        if row["contestant"] == "ours":
            name = f"**{name}**"
        if row["status"] == "n/a":
            lines.append(f"| {row['operation']} | {name} | n/a | n/a | n/a | n/a |")
            continue
        if "median_time_s" not in row:
            lines.append(f"| {row['operation']} | {name} | error | – | – | – |")
            continue
        ratio = _fmt_ratio(row.get("time_ratio"))
        if row["contestant"] == row["reference"]:
            ratio += " (ref)"
        time_cell = f"{row['median_time_s']:.2f}"
        if row["status"] == "error":
            time_cell += " (some repeats failed)"
        lines.append(
            f"| {row['operation']} | {name} | {time_cell} | {ratio} | "
            f"{row['median_peak_extra_bytes'] / MB:,.0f} | {row['memory_ratio']:.2f}x |"
        )
    return "\n".join(lines)


def big_table(rows, big_shape) -> str:
    lines = [
        f"| Operation ({big_shape['weights_bytes'] / 1e9:.1f} GB model) | Contestant | Median time (s) | "
        "Peak extra memory (MB) | Memory / weights |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        if "median_time_s" not in row:
            lines.append(f"| {row['operation']} | **kedro-keras** | error | – | – |")
            continue
        lines.append(
            f"| {row['operation']} | **kedro-keras** | {row['median_time_s']:.2f} | "
            f"{row['median_peak_extra_bytes'] / MB:,.0f} | {row['memory_ratio']:.2f}x |"
        )
    return "\n".join(lines)


def plot(report, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = report["summary"]
    operations = list(dict.fromkeys(row["operation"] for row in summary))
    contestants = ["ours", "keras", "kd"]
    colours = {"ours": "#d1495b", "keras": "#8d99ae", "kd": "#2e86ab"}
    weights_mb = report["model"]["weights_bytes"] / MB
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    bar = 0.26
    for ax, key, low, high, scale, title in (
        (axes[0], "median_time_s", "min_time_s", "max_time_s", 1.0, "Median time (s), lower is better"),
        (
            axes[1],
            "median_peak_extra_bytes",
            "min_peak_extra_bytes",
            "max_peak_extra_bytes",
            MB,
            "Peak extra memory (MB), lower is better",
        ),
    ):
        for i, contestant in enumerate(contestants):
            xs, ys, errs = [], [], [[], []]
            for j, operation in enumerate(operations):
                row = next((r for r in summary if r["operation"] == operation and r["contestant"] == contestant), None)
                if row is None or key not in row:
                    if row is not None:
                        label = "n/a" if row["status"] == "n/a" else "error"
                        ax.annotate(label, (j + (i - 1) * bar, 0), xytext=(0, 2), textcoords="offset points",
                                    ha="center", va="bottom", fontsize=7, color="grey")
                    continue
                x = j + (i - 1) * bar
                y = row[key] / scale
                xs.append(x)
                ys.append(y)
                errs[0].append(y - row[low] / scale)
                errs[1].append(row[high] / scale - y)
                ax.annotate(
                    (f"{y:.2f}" if y < 10 else f"{y:.1f}") if scale == 1.0 else f"{y:,.0f}",
                    (x, row[high] / scale),  # above the error bar
                    xytext=(0, 2),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
            if xs:
                ax.bar(xs, ys, bar, yerr=errs, capsize=2, color=colours[contestant], label=SHORT_NAMES[contestant])
        ax.set_xticks(range(len(operations)), operations)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    axes[1].axhline(weights_mb, color="black", lw=0.8, ls=":", label="1x weights")
    axes[1].axhline(1.25 * weights_mb, color="black", lw=0.8, ls="--", label="1.25x weights (target)")
    handles, labels = axes[0].get_legend_handles_labels()
    more_handles, more_labels = axes[1].get_legend_handles_labels()
    for handle, label in zip(more_handles, more_labels):
        if label not in labels:
            handles.append(handle)
            labels.append(label)
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    meta = report["meta"]
    fig.suptitle(
        f"Saving and loading a {weights_mb:.0f} MB Keras model ({report['model']['params'] / 1e6:.0f}M float32 params), "
        f"median of {meta['repeats']} (bars: min-max); S3 = moto on loopback",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def write_outputs(report, outputs) -> None:
    outputs["json"].parent.mkdir(parents=True, exist_ok=True)
    data = {k: v for k, v in report.items() if k not in ("markdown_table", "big_table")}
    outputs["json"].write_text(json.dumps(data, indent=2) + "\n")
    try:
        plot(report, outputs["png"])
    except ImportError as exc:
        print(f"no plot ({exc}); pip install -r benchmarks/requirements.txt", file=sys.stderr)
    outputs["doc"].parent.mkdir(parents=True, exist_ok=True)
    outputs["doc"].write_text(render_doc(report, outputs))


def render_doc(report, outputs) -> str:
    meta, shape = report["meta"], report["model"]
    machine, vers = meta["machine"], meta["versions"]
    weights_mb = shape["weights_bytes"] / MB
    image = os.path.relpath(outputs["png"], outputs["doc"].parent)
    targets = "\n".join(
        f"| {t['label']} | {_fmt_ratio(t['value'])} | {'met' if t['met'] else 'not met' if t['met'] is False else 'not measured'} |"
        for t in report["targets"]
    )
    failures = (
        "\n**Some operations failed in this run:** " + ", ".join(report["failures"]) + ". See the harness output.\n"
        if report["failures"]
        else ""
    )
    quick = (
        "\n> **Quick mode** (`--quick`): a small model and one repeat, to check that the harness works. "
        "These numbers are not the project's benchmark.\n"
        if meta["quick"]
        else ""
    )
    src_state = ", with uncommitted changes under `src/`" if meta["src_modified"] else ""
    src_state += f", source fingerprint `{meta['src_fingerprint']}`"
    if meta["src_changed_during_run"]:
        failures += (
            "\n**`src/` changed while this benchmark ran**: the rows may mix two implementations of kedro-keras. "
            "Rerun it.\n"
        )
    s3_notes = ""
    request_rows = [r for r in report["summary"] if r.get("s3_requests")]
    if request_rows or meta["s3_probe"]:
        s3_notes = "\n### S3 requests\n\n"
        if meta["s3_probe"]:
            probe = meta["s3_probe"]
            s3_notes += (
                f"The moto server, on the {weights_mb:,.0f} MB input object in this run: a whole-object GET took "
                f"{probe['full_get_s']:.2f} s and a 1-byte ranged GET {probe['range_get_1_byte_s']:.2f} s. moto reads "
                "the whole object for every GET and then slices the range, so each ranged GET of a large object "
                "costs a large fixed amount here that real S3 does not charge (there a request costs a round trip "
                "plus the bytes asked for). A loader that reads with many ranged GETs is penalised on this benchmark; "
                "read the S3 load row together with the request counts below.\n\n"
            )
        if request_rows:
            s3_notes += (
                "S3 API calls per operation (median over the repeats), counted on the s3fs client of each "
                "dataset's filesystem:\n\n| Operation | Contestant | Requests |\n| --- | --- | --- |\n"
            )
            for row in request_rows:
                calls = ", ".join(f"{name} {count:g}" for name, count in row["s3_requests"].items())
                s3_notes += f"| {row['operation']} | {SHORT_NAMES[row['contestant']]} | {calls} |\n"
    public_api = (
        f"\n`KEDRO_KERAS_PUBLIC_API_ONLY={meta['public_api_only']}` was set: kedro-keras used its public-API fallback.\n"
        if meta["public_api_only"]
        else ""
    )
    spreads = [
        (row["max_time_s"] - row["min_time_s"]) / row["median_time_s"]
        for row in report["summary"]
        if row.get("median_time_s") and row.get("repeats", 0) > 1
    ]
    spread = (
        f"in this run the slowest repeat of a row was up to {max(spreads):.0%} of its median slower than the fastest "
        "(the min-max bars in the chart)."
        if spreads
        else "one repeat per row says nothing about the spread."
    )
    big = ""
    if report["big_table"]:
        big_shape = report["big_model"]
        big = f"""
### A ~{big_shape['weights_bytes'] / 1e9:.0f} GB model (`--big`)

{big_shape['layers']} x `Dense({big_shape['width']})`, {big_shape['params']:,} float32 parameters
({big_shape['weights_bytes'] / MB:,.0f} MB of weights), local disk, kedro-keras only; the load input was written
by `model.save`. Median of {meta['big_repeats']} run(s).

{report['big_table']}
"""
    return f"""# Performance: saving and loading large models

How long `kedro_keras.KerasModelDataset` takes to save and load a large Keras model, and how much memory it
needs on top of the model itself, next to plain Keras and to kedro-datasets' `TensorFlowModelDataset`, on local
disk and on S3. All numbers on this page were produced by `benchmarks/run.py`, which rewrites this page on each
run; rerun it after changing the I/O layer (`make bench`).
{quick}{failures}
![Median save and load times and peak extra memory per contestant]({image})

## Results

Model: {shape['layers']} x `Dense({shape['width']})` (functional, not compiled, seeded random weights),
{shape['params']:,} float32 parameters = **{weights_mb:,.0f} MB of weights**; the `.keras` file is about the same size.
Median of {meta['repeats']} repeat(s) per row. Run on {meta['date']}, commit `{meta['git_commit']}`{src_state}.
{public_api}
{report['markdown_table']}

- **Time vs reference**: median time divided by the reference's median time: plain Keras for local disk, kedro-datasets
  for S3 (plain Keras cannot write to `s3://`, hence n/a).
- **Peak extra memory**: peak resident memory of the process during the one save or load call, minus its resident
  memory just before the call (megabytes of 10^6 bytes). For a save the model is already in memory before the call;
  for a load the model being built is part of the extra, so a load can never need less than about 1x the weights.
- **Memory / weights**: peak extra memory divided by the size of the weights ({weights_mb:,.0f} MB).
{s3_notes}{big}
## Targets

The performance issue's goals for kedro-keras, evaluated on the medians of this one run:

| Target | This run | Status |
| --- | ---: | --- |
{targets}

The benchmark reports these and does not fail on them; it exits non-zero only if an operation errors.

Where the time and memory go (measured in-process on this model; see docs/design.md):

- **Local load** (about 0.2-0.5 s): almost all of it is copying 403 MB from the page cache into memory
  the process has never touched, whose page faults are slow and vary a lot on this virtual machine (the
  same copy into reused memory takes about 0.06 s). The CRC-32 check costs about 0.015 s (zlib-ng) and
  handing the arrays to TensorFlow about 0.02 s. Plain Keras's own time varies between runs for the same
  reason (1.0-1.5 s here).
- **Load memory under TensorFlow**: TensorFlow adopts an aligned array offered through `__array__`
  without copying it, so each variable's memory is the array HDF5 read into: about 1.0x the weights.
  On S3 the stream also holds the array HDF5 peeked past (it reads the group's header after the array
  before the array) until it reads it, in 4 MB pieces unmapped as they are read, so the array and the
  held stretch together stay near one copy of the array.

## What is measured

Three contestants, each through its ordinary public API:

| Contestant | Save | Load |
| --- | --- | --- |
| kedro-keras | `KerasModelDataset(filepath=..., credentials=...).save(model)` | `.load()` |
| plain Keras (local only) | `model.save(path)` | `keras.saving.load_model(path)` |
| kedro-datasets | `tensorflow.TensorFlowModelDataset(filepath=....keras, credentials=...).save(model)` | `.load()` |

Default `save_args`/`load_args` everywhere (`TensorFlowModelDataset` picks the `.keras` format from the file name and
goes through a local temporary copy: save to a temp folder then `fs.put`, `fs.get` to a temp folder then load). S3
is a [moto](https://github.com/getmoto/moto) `ThreadedMotoServer` on 127.0.0.1 in its own process; both datasets
reach it through s3fs with `credentials={{"key": ..., "secret": ..., "client_kwargs": {{"endpoint_url": ...}}}}`.

How each number is taken:

- Every save or load runs in its **own fresh Python process** (`KERAS_BACKEND=tensorflow`, `TF_CPP_MIN_LOG_LEVEL=3`).
  The process imports Keras, TensorFlow, kedro-keras and kedro-datasets (all contestants alike), builds the model for
  a save, creates the dataset, and for S3 connects once (`fs.ls("")`) so that botocore's start-up is not counted.
  Then it collects garbage, returns free heap pages to the OS (`malloc_trim`), reads its RSS as the baseline and
  times only the save or load call.
- Peak memory is the kernel's high-water mark of resident memory (`VmHWM`, reset through `/proc/self/clear_refs`
  just before the call), cross-checked by a psutil thread sampling RSS every 5 ms; the larger is used.
- The load input is one file written beforehand by plain Keras (`model.save`) and, for S3, uploaded once.
  Every load is checked (parameter count and a checksum of two kernels); every saved file is checked to hold at
  least the weights' bytes and then removed.
- Contestants are interleaved: within each repeat, each operation runs every contestant in turn, the starting
  contestant rotating from repeat to repeat. `os.sync()` runs between processes so one save's writeback does not
  slow the next operation. The local input file stays in the page cache (24 GiB RAM), so local loads read from
  memory for every contestant alike.
- Temporary files (`TMPDIR` of the processes, kedro-datasets' temporary copies, moto's spooled objects) live in
  `benchmarks/.work/` on the repository's disk and are removed at the end.

Caveats: moto on loopback is not AWS. There is no network latency or bandwidth limit, and the moto server shares
the machine's {machine['cores']} cores with the process being measured, so S3 times mostly show CPU and copying
overhead, not network transfer. Times are noisy on a small machine: {spread} Ratios near a target deserve a rerun
with more repeats (`--repeats 9`).

## Machine and versions

| | |
| --- | --- |
| Machine | {machine['cpu']}, {machine['cores']} cores, {machine['ram']} RAM, no GPU |
| OS | {machine['platform']} |
| Python | {machine['python']} |
| kedro-keras | {vers['kedro-keras']}: commit `{meta['git_commit']}`{src_state} |
| Keras / TensorFlow | {vers['keras']} / {vers['tensorflow']} (CPU) |
| Kedro / kedro-datasets | {vers['kedro']} / {vers['kedro-datasets']} |
| fsspec / s3fs / moto | {vers['fsspec']} / {vers['s3fs']} / {vers['moto']} |
| h5py / NumPy | {vers['h5py']} / {vers['numpy']} |

Date: {meta['date']}. Total benchmark runtime: {meta['total_runtime_s'] / 60:.1f} min.

## Reproducing

```
make bench                                   # installs benchmarks/requirements.txt, then runs the line below
python benchmarks/run.py                     # {weights_mb:,.0f} MB model, 5 repeats (about 8 min on 2 cores)
python benchmarks/run.py --big               # adds a ~4 GB model, kedro-keras only (about 2 min more, ~12 GB RAM)
python benchmarks/run.py --quick             # 40 MB, 1 repeat; writes to benchmarks/.work/quick/, not here
python benchmarks/run.py --size-mb 200 --repeats 5 --skip-s3
```

This page came from: `{meta['command']}`. Raw numbers, every repeat included: `{_rel(outputs['json'])}`
(`--out-dir` writes all three outputs elsewhere).
"""


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        sys.exit(child_main(sys.argv[2]))
    if len(sys.argv) == 2 and sys.argv[1] == "--moto-server":
        sys.exit(moto_main())
    sys.exit(main())
