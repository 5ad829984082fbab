#!/usr/bin/env python
"""Per-checkpoint overhead on a small model: the same 100 short epochs of
``fit`` with no checkpoints, with ``KerasCheckpointDataset``'s callback (a
checkpoint every epoch, its defaults) and with Keras's ``ModelCheckpoint``
(a ``.keras`` file every epoch).

    python benchmarks/checkpoint_overhead.py            # 5 repeats, 100 epochs
    python benchmarks/checkpoint_overhead.py --quick    # 1 repeat, 20 epochs (tries the harness)

On a small model the arrays are nothing; what a checkpoint costs is its
fixed work (serialising the config, opening files, the record, pruning),
paid once per epoch, which the ~400 MB rows of ``run.py`` cannot show. Each
run is its own fresh process (imports and the first epoch's tracing are
done before the clock starts, by every contestant alike), contestants are
interleaved and the starting one rotates; the medians are reported. The
overhead per checkpoint is (median fit time - median fit time without
checkpoints) / epochs.

Writes ``benchmarks/checkpoint_overhead.json`` (``run.py`` puts its table
into docs/performance.md) and, run by itself, rewrites that table in the
page in place. ``--quick`` writes under benchmarks/.work/quick/ only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "checkpoint_overhead.json"
QUICK_RESULTS = BENCH_DIR / ".work" / "quick" / "checkpoint_overhead.json"
DOC = BENCH_DIR.parent / "docs" / "performance.md"
BEGIN, END = "<!-- checkpoint-overhead:begin -->", "<!-- checkpoint-overhead:end -->"
CONTESTANTS = {
    "none": "no checkpoints",
    "ours": "kedro-keras `KerasCheckpointDataset` (defaults: every epoch, `keep_last: 3`)",
    "keras": "Keras `ModelCheckpoint(path.keras)` (every epoch)",
}
SAMPLES, FEATURES, CLASSES, BATCH = 512, 32, 10, 64  # 8 steps an epoch


def child(contestant: str, folder: str, epochs: int) -> dict:
    import logging

    logging.disable(logging.WARNING)  # our one INFO line per checkpoint is not the cost measured
    import keras
    import numpy as np

    import kedro_keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, FEATURES)).astype("float32")
    y = rng.integers(0, CLASSES, size=SAMPLES)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)  # tracing, for every contestant alike
    if contestant == "ours":
        checkpoints = kedro_keras.KerasCheckpointDataset(filepath=f"{folder}/checkpoints").load()
        callbacks = [checkpoints.callback()]
    elif contestant == "keras":
        callbacks = [keras.callbacks.ModelCheckpoint(f"{folder}/model.keras")]
    else:
        callbacks = []
    start = time.perf_counter()
    model.fit(x, y, batch_size=BATCH, epochs=epochs + 1, initial_epoch=1, verbose=0, callbacks=callbacks)
    elapsed = time.perf_counter() - start
    # Not timed: each contestant wrote what it says it wrote.
    if contestant == "ours":
        newest = checkpoints.versions()[0]
        if not newest.startswith(f"e{epochs + 1:05d}"):
            raise AssertionError(f"the newest checkpoint is {newest}, not epoch {epochs + 1}'s")
    elif contestant == "keras" and not os.path.isfile(f"{folder}/model.keras"):
        raise AssertionError("ModelCheckpoint wrote no file")
    return {"contestant": contestant, "fit_s": elapsed}


def measure(repeats: int, epochs: int, timeout: float = 900) -> dict:
    env = {
        **os.environ,
        "KERAS_BACKEND": "tensorflow",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "KEDRO_DISABLE_TELEMETRY": "1",
    }
    names = list(CONTESTANTS)
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for contestant in names[shift:] + names[:shift]:
            with tempfile.TemporaryDirectory(prefix="ckpt-bench-") as folder:
                done = subprocess.run(
                    [sys.executable, __file__, "--child", contestant, folder, str(epochs)],
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=timeout,
                )
            if done.returncode != 0:
                raise RuntimeError(f"{contestant} failed:\n{done.stderr[-2000:]}")
            fit_s = json.loads(done.stdout.strip().splitlines()[-1])["fit_s"]
            times[contestant].append(fit_s)
            print(
                f"  checkpoint overhead [{repeat + 1}/{repeats}] {contestant:<5} {fit_s:6.2f} s", flush=True
            )
    median = {name: statistics.median(values) for name, values in times.items()}
    per_checkpoint = {name: (median[name] - median["none"]) / epochs for name in ("ours", "keras")}
    return {
        "epochs": epochs,
        "repeats": repeats,
        "model": f"Dense(64) + Dense({CLASSES}) on {SAMPLES} x {FEATURES} samples, batch {BATCH}, Adam",
        "fit_s": times,
        "median_fit_s": median,
        "per_checkpoint_s": per_checkpoint,
        "ratio_ours_to_keras": per_checkpoint["ours"] / per_checkpoint["keras"]
        if per_checkpoint["keras"] > 0
        else None,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def section(results: dict | None) -> str:
    """The page's table, from the results (or a line saying there are none)."""
    if not results:
        return "Not measured in this run (`python benchmarks/checkpoint_overhead.py`)."
    epochs, median, per = results["epochs"], results["median_fit_s"], results["per_checkpoint_s"]
    rows = [
        "| callbacks | median fit time | per checkpoint | vs Keras |",
        "| --- | ---: | ---: | ---: |",
        f"| {CONTESTANTS['none']} | {median['none']:.2f} s | – | – |",
    ]
    for name in ("ours", "keras"):
        ratio = per[name] / per["keras"] if per["keras"] > 0 else float("nan")
        rows.append(
            f"| {CONTESTANTS[name]} | {median[name]:.2f} s | {per[name] * 1000:.1f} ms | {ratio:.2f}x |"
        )
    return (
        f"{results['model']}; {epochs} epochs of 8 steps, a checkpoint after each. Median of "
        f"{results['repeats']} run(s) each, {results['date']}.\n\n" + "\n".join(rows)
    )


def rewrite_doc(results: dict) -> None:
    text = DOC.read_text()
    if BEGIN not in text or END not in text:
        return
    head, rest = text.split(BEGIN, 1)
    DOC.write_text(f"{head}{BEGIN}\n{section(results)}\n{END}{rest.split(END, 1)[1]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--child", nargs=3, metavar=("CONTESTANT", "FOLDER", "EPOCHS"), help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 repeat of 20 epochs, results under benchmarks/.work/quick/"
    )
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args(argv)
    if args.child:
        contestant, folder, epochs = args.child
        print(json.dumps(child(contestant, folder, int(epochs))))
        return 0
    repeats = args.repeats or (1 if args.quick else 5)
    epochs = args.epochs or (20 if args.quick else 100)
    results = measure(repeats, epochs)
    out = QUICK_RESULTS if args.quick else RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    if not args.quick:
        rewrite_doc(results)
    print(section(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
