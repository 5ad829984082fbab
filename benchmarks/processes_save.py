#!/usr/bin/env python
"""A model sharded across two processes, saved through the catalog (JAX, CPU devices).

    .venv-jax/bin/python benchmarks/processes_save.py            # 3 repeats
    .venv-jax/bin/python benchmarks/processes_save.py --quick    # 1 repeat, a small model

The same model (two Dense kernels split along the model axis, after one
training step: about 1.2 GB of weights and optimizer state, the size of run.py's
trained model) is saved:

- by two processes (two CPU devices each, the model axis across them) to a
  ``KerasWeightsDataset`` ``.orbax`` folder: each process writes the shards it
  holds;
- by the same two processes to a ``KerasModelDataset`` ``.keras`` file: the
  variables are gathered and process 0 writes them all;
- by one process (four CPU devices, the same layout) to an ``.orbax`` folder.

Each run is fresh processes; the time is from a barrier before the save to
the end of the slowest process's save. The bytes each process wrote come
from the ``.orbax`` index (each file records its writer). Writes
``benchmarks/processes_save.json`` and the table between the markers in
docs/performance.md (``--quick`` writes under benchmarks/.work/quick/ only).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "processes_save.json"
QUICK_RESULTS = BENCH_DIR / ".work" / "quick" / "processes_save.json"
DOC = BENCH_DIR.parent / "docs" / "performance.md"
BEGIN, END = "<!-- processes-save:begin -->", "<!-- processes-save:end -->"
RUNS = {
    "orbax-2": (2, "state.orbax", "two processes, `.orbax` folder (each writes its own shards)"),
    "keras-2": (2, "model.keras", "two processes, `.keras` file (gathered, process 0 writes)"),
    "orbax-1": (1, "state.orbax", "one process, `.orbax` folder"),
}


def child(run: str, process: int, port: int, folder: str, width: int) -> None:
    processes, name, _ = RUNS[run]
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={4 // processes}"
    os.environ["KERAS_BACKEND"] = "jax"
    import logging

    logging.disable(logging.INFO)
    import jax
    import keras
    import numpy as np
    from jax.experimental import multihost_utils

    from kedro_keras import KerasModelDataset, KerasWeightsDataset

    if processes > 1:
        keras.distribution.initialize(
            job_addresses=f"127.0.0.1:{port}", num_processes=processes, process_id=process
        )
    devices = jax.devices()
    mesh = keras.distribution.DeviceMesh((len(devices) // 2, 2), ["model", "batch"], devices)
    layouts = keras.distribution.LayoutMap(mesh)
    layouts[".*kernel"] = (None, "model")
    keras.distribution.set_distribution(
        keras.distribution.ModelParallel(layout_map=layouts, batch_dim_name="batch", auto_shard_dataset=False)
    )
    model = keras.Sequential(
        [keras.Input((width,)), keras.layers.Dense(3 * width), keras.layers.Dense(width)], name="sharded"
    )
    model.compile(optimizer="adam", loss="mse")
    # One step, so that the optimizer state is as a training leaves it (zeros would compress to nothing).
    rng = np.random.default_rng(0)
    model.train_on_batch(rng.random((8, width), dtype=np.float32), rng.random((8, width), dtype=np.float32))
    state = sum(v.value.size * v.value.dtype.itemsize for v in model.weights + model.optimizer.variables)
    path = os.path.join(folder, name)
    dataset = (KerasWeightsDataset if name.endswith(".orbax") else KerasModelDataset)(filepath=path)
    if processes > 1:
        multihost_utils.sync_global_devices("before the save")
    start = time.perf_counter()
    dataset.save(model)
    if processes > 1:
        multihost_utils.sync_global_devices("after the save")
    seconds = time.perf_counter() - start
    print("RESULT " + json.dumps({"seconds": seconds, "state_bytes": int(state)}), flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def measure(run: str, width: int, work: Path) -> dict:
    processes, name, _ = RUNS[run]
    with tempfile.TemporaryDirectory(dir=work) as folder:
        port = free_port()
        launched = [
            subprocess.Popen(
                [sys.executable, __file__, "--child", run, str(index), str(port), folder, str(width)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for index in range(processes)
        ]
        outputs = [process.communicate(timeout=1800)[0] for process in launched]
        for process, output in zip(launched, outputs, strict=True):
            if process.returncode != 0:
                raise SystemExit(f"{run} failed:\n{output[-3000:]}")
        said = [
            json.loads(line.removeprefix("RESULT "))
            for output in outputs
            for line in output.splitlines()
            if line.startswith("RESULT ")
        ]
        written = [0] * processes
        path = Path(folder) / name
        if name.endswith(".orbax"):
            index = json.loads((path / "index.json").read_text())
            for entry in index["files"].values():
                written[entry["process"]] += entry["size"]
        else:
            written[0] = path.stat().st_size
        return {
            "seconds": max(s["seconds"] for s in said),
            "state_bytes": said[0]["state_bytes"],
            "written": written,
        }


def table(results: dict) -> str:
    lines = [
        f"{results['state_mb']:,} MB of weights and Adam state (two Dense kernels split along the model axis), "
        f"four CPU devices in all; median of {results['repeats']} run(s), {results['when']}.",
        "",
        "| save | median wall time | bytes written by process 0 | by process 1 |",
        "| --- | ---: | ---: | ---: |",
    ]
    for run, (processes, _, label) in RUNS.items():
        row = results["runs"][run]
        shares = [f"{n / 1e6:,.0f} MB ({n / sum(row['written']):.0%})" for n in row["written"]]
        lines.append(
            f"| {label} | {row['seconds']:.2f} s | {shares[0]} | {shares[1] if processes > 1 else '–'} |"
        )
    return "\n".join(lines)


def section() -> str:
    """The page's table from the last full run's results, for page.py (which
    rewrites the whole page after run.py's rows)."""
    if not RESULTS.exists():
        return "Not measured yet (`.venv-jax/bin/python benchmarks/processes_save.py`)."
    return table(json.loads(RESULTS.read_text()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.child:
        run, process, port, folder, width = args.child
        child(run, int(process), int(port), folder, int(width))
        return
    width = 256 if args.quick else 4096
    repeats = 1 if args.quick else args.repeats
    work = BENCH_DIR / ".work" / "processes"
    work.mkdir(parents=True, exist_ok=True)
    samples: dict[str, list[dict]] = {run: [] for run in RUNS}
    for _ in range(repeats):
        for run in RUNS:  # interleaved: a slow minute of the disk falls on every run alike
            samples[run].append(measure(run, width, work))
            print(run, samples[run][-1], flush=True)
    results = {
        "repeats": repeats,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "state_mb": round(samples["orbax-1"][0]["state_bytes"] / 1e6),
        "runs": {
            run: {
                "seconds": statistics.median(s["seconds"] for s in found),
                "written": found[0]["written"],
                "all_seconds": [s["seconds"] for s in found],
            }
            for run, found in samples.items()
        },
    }
    target = QUICK_RESULTS if args.quick else RESULTS
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    if not args.quick:
        page = DOC.read_text()
        if BEGIN in page and END in page:
            before, rest = page.split(BEGIN, 1)
            DOC.write_text(before + BEGIN + "\n" + table(results) + "\n" + END + rest.split(END, 1)[1])


if __name__ == "__main__":
    main()
