"""What the benchmark measures: contestants, operations, targets, the model's
shape, the defaults of the command line and the order of the measured runs.

Shared by the harness (run.py), the measuring child (child.py) and the report
(report.py); imports nothing heavy.
"""

from __future__ import annotations

import math
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
WORK_ROOT = BENCH_DIR / ".work"  # same disk as the repository; removed after each run

DEFAULT_DOC = REPO / "docs" / "performance.md"
DEFAULT_PNG = REPO / "docs" / "img" / "benchmark.png"
DEFAULT_JSON = BENCH_DIR / "results.json"
QUICK_OUT_DIR = WORK_ROOT / "quick"
ONLY_OUT_DIR = WORK_ROOT / "only"  # a run with --only writes its outputs here

MB = 1_000_000  # reported megabytes are 10**6 bytes

# Command-line defaults (the report's "Reproducing" section prints these).
DEFAULT_SIZE_MB = 400.0
DEFAULT_REPEATS = 5
QUICK_SIZE_MB = 40.0
QUICK_REPEATS = 1
BIG_PARAMS = 2_500_000_000  # --big: ~10 GB of float32 weights, local disk
BIG_LINK_PARAMS = 1_000_000_000  # --big: ~4 GB through the S3 link
DEFAULT_BIG_REPEATS = 1

BUCKET = "kedro-keras-bench"
N_LAYERS = 6  # Dense(width) x 6, input width wide: ~ 6 * width**2 parameters

# Peak memory: a psutil thread samples RSS this often, next to the kernel's VmHWM.
SAMPLE_INTERVAL_S = 0.005

# A ranged GET of at most this many bytes is a read through kedro-keras's
# 1 MiB block cache (what lies behind its stream: the zip directory at the
# file's end, a header HDF5 looks back at), not a piece of the transfer (the
# page's transfer column, from child.py's count of GETs).
SMALL_RANGE_BYTES = 2**20

# Set in every child process, on top of the harness's own environment.
CHILD_ENV = {
    "KERAS_BACKEND": "tensorflow",
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "KEDRO_DISABLE_TELEMETRY": "1",
    # moto and s3fs: nothing talks to real AWS
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "PYTHONUNBUFFERED": "1",
}

CONTESTANTS = {
    "ours": "kedro_keras KerasModelDataset",
    "keras": "plain Keras (model.save / keras.saving.load_model)",
    "kd": "kedro-datasets TensorFlowModelDataset",
}
SHORT_NAMES = {
    "ours": "kedro-keras",
    "history": "kedro-keras (history)",
    "keras": "plain Keras",
    "kd": "kedro-datasets",
}

# The --big part: (operation, contestant, kind, where, model). "history"
# is KerasTimestampedModelDataset: its save leaves a version that its load
# then reads (the newest). Plain Keras cannot save the 10 GB model here at
# all (its in-memory image needs 1.17x the weights on top of the model), so
# it is not a contestant. The ~4 GB one goes through the S3 link.
BIG_OPERATIONS = (
    ("local save", "ours", "save", "local", "big"),
    ("local load", "ours", "load", "local", "big"),
    ("local save", "history", "save", "local", "big"),
    ("local load", "history", "load", "local", "big"),
    ("S3 link save", "ours", "save", "link", "big_link"),
    ("S3 link load", "ours", "load", "link", "big_link"),
)

# (operation, where, kind, contestants, reference contestant). The main case
# is the model a training node returns: compiled with Adam and fitted one
# step, so the file holds twice as much optimizer state as weights. The same
# model uncompiled (weights only) is the second case.
OPERATIONS = [
    ("trained local save", "local", "save", ["ours", "keras", "kd"], "keras"),
    ("trained local load", "local", "load", ["ours", "keras", "kd"], "keras"),
    ("trained S3 save", "s3", "save", ["ours", "kd"], "kd"),
    ("trained S3 load", "s3", "load", ["ours", "kd"], "kd"),
    # The same load while busy loops keep every core busy (BUSY_CORES).
    ("trained S3 load (busy cores)", "s3", "load", ["ours", "kd"], "kd"),
    ("local save", "local", "save", ["ours", "keras", "kd"], "keras"),
    ("local load", "local", "load", ["ours", "keras", "kd"], "keras"),
    ("S3 save", "s3", "save", ["ours", "kd"], "kd"),
    ("S3 load", "s3", "load", ["ours", "kd"], "kd"),
    # The uncompiled model through an endpoint that behaves like a real
    # store's link (s3_link.py: per-connection rate, first-byte latency, an
    # aggregate cap), where one connection is a fraction of the link.
    ("S3 link save", "link", "save", ["ours", "kd"], "kd"),
    ("S3 link load", "link", "load", ["ours", "kd"], "kd"),
    # One epoch-end checkpoint of the trained model: KerasCheckpointDataset's
    # callback against Keras's ModelCheckpoint writing a .keras file.
    ("local checkpoint", "local", "checkpoint", ["ours", "keras"], "keras"),
    # The same with background: true, after a first checkpoint (which makes
    # the copy's model): the time is how long training waits; the write goes
    # on beside it, and the memory window runs until it is done.
    ("local checkpoint (background)", "local", "checkpoint", ["ours", "keras"], "keras"),
]

# Operations measured while busy loops (one process per core, each
# `while True: pass`, started in the measuring process just before the timed
# call and stopped right after) keep every core busy, and the most repeats
# each gets. Its repeats are long (kedro-datasets' load of the trained model
# took 62-91 s with the cores busy, kedro-keras's 14-21 s; a repeat, both
# processes, 99-127 s): two add 3.3-4.2 min to `make bench`, three took
# 5.0 min, and the ratio (0.18-0.24x) is far from its target. A load used to
# choose its transfer from a timed probe of its first bytes; on a busy CPU
# the probe took moto for a slow link and sent the load down the ranged
# path, which moto serves by reading the whole object for every range (a
# 386 MB load took 8.2 s instead of 3.6 s).
BUSY_CORES = {"trained S3 load (busy cores)": 2}

# fs_args of kedro-keras's datasets on the S3 link rows. The link is a proxy
# on loopback, so kedro-keras would take it for a store on this host and use
# one connection (fs_args.concurrency 1); it plays a remote store's link, for
# which concurrency 8 is the default. kedro-datasets gets no fs_args.
LINK_FS_ARGS = {"concurrency": 8}

# The --big part's targets, on its rows: (label, operation, contestant,
# model, metric, threshold), metrics as in TARGETS.
BIG_TARGETS = [
    (
        "--big: 4 GB S3 link load time <= {}x the link's floor",
        "S3 link load",
        "ours",
        "big_link",
        "link",
        1.43,
    ),
    (
        "--big: 4 GB S3 link save time <= {}x the link's floor",
        "S3 link save",
        "ours",
        "big_link",
        "link",
        1.43,
    ),
    (
        "--big: 4 GB S3 link load peak extra memory <= {}x weights",
        "S3 link load",
        "ours",
        "big_link",
        "memory",
        1.1,
    ),
    (
        "--big: 10 GB local save peak extra memory <= {}x max(256 MB, 0.1x weights)",
        "local save",
        "ours",
        "big",
        "save memory",
        1.0,
    ),
    (
        "--big: 10 GB history save peak extra memory <= {}x max(256 MB, 0.1x weights)",
        "local save",
        "history",
        "big",
        "save memory",
        1.0,
    ),
    (
        "--big: 10 GB local load peak extra memory <= {}x weights",
        "local load",
        "ours",
        "big",
        "memory",
        1.1,
    ),
    (
        "--big: 10 GB history load peak extra memory <= {}x weights",
        "local load",
        "history",
        "big",
        "memory",
        1.1,
    ),
]


def is_trained(operation: str) -> bool:
    """Whether an operation's model is the trained one (with Adam state)."""
    return operation.startswith("trained ") or operation.startswith("local checkpoint")


# (label, operation, metric, threshold): metric "time" is ours / reference
# median time, "memory" is ours' peak extra memory / weights bytes, "state"
# ours' peak extra memory / the loaded state's bytes (weights + optimizer
# variables), "save memory" ours' peak extra memory / max(256 MB, 0.1x
# weights), "link" ours' median time / the file's bytes over the link's
# aggregate bandwidth (1/0.7 = reaching 70 % of the link), "vs foreground"
# ours' median time / ours' on the row without "(background)". The label gets the threshold through "{}", so the two cannot disagree.
TARGETS = [
    ("trained local load time <= {}x plain Keras", "trained local load", "time", 0.25),
    ("trained local load peak extra memory <= {}x loaded state", "trained local load", "state", 1.1),
    ("trained S3 load time <= {}x kedro-datasets", "trained S3 load", "time", 0.5),
    ("trained S3 load peak extra memory <= {}x loaded state", "trained S3 load", "state", 1.1),
    (
        "trained S3 load with every core busy time <= {}x kedro-datasets",
        "trained S3 load (busy cores)",
        "time",
        0.6,
    ),
    ("trained local save time <= {}x model.save", "trained local save", "time", 1.0),
    (
        "trained local save peak extra memory <= {}x max(256 MB, 0.1x weights)",
        "trained local save",
        "save memory",
        1.0,
    ),
    (
        "trained S3 save peak extra memory <= {}x max(256 MB, 0.1x weights)",
        "trained S3 save",
        "save memory",
        1.0,
    ),
    ("local load time <= {}x plain Keras", "local load", "time", 0.5),
    ("local load peak extra memory <= {}x weights", "local load", "memory", 1.25),
    ("local save time <= {}x model.save", "local save", "time", 1.05),
    ("S3 save time <= {}x kedro-datasets", "S3 save", "time", 0.7),
    ("S3 load time <= {}x kedro-datasets", "S3 load", "time", 0.6),
    ("S3 save peak extra memory <= {}x weights", "S3 save", "memory", 1.25),
    ("S3 load peak extra memory <= {}x weights", "S3 load", "memory", 1.25),
    ("S3 link load time <= {}x the link's floor (>= 70 % of its bandwidth)", "S3 link load", "link", 1.43),
    ("S3 link save time <= {}x the link's floor (>= 70 % of its bandwidth)", "S3 link save", "link", 1.43),
    ("S3 link load peak extra memory <= {}x weights", "S3 link load", "memory", 1.1),
    (
        "local checkpoint in the background: training waits <= {}x a foreground checkpoint",
        "local checkpoint (background)",
        "vs foreground",
        0.2,
    ),
]

# The bounded-memory budget of a save: the larger of these.
SAVE_BUDGET_BYTES = 256 * MB
SAVE_BUDGET_FRACTION = 0.1


def target_label(label: str, threshold: float) -> str:
    return label.format(f"{threshold:g}")


def model_shape(n_params: float) -> dict[str, int]:
    """Width and depth of a stack of square Dense layers with ~n_params weights."""
    width = max(64, round(math.sqrt(n_params / N_LAYERS) / 64) * 64)
    params = N_LAYERS * (width * width + width)
    return {"width": width, "layers": N_LAYERS, "params": params, "weights_bytes": 4 * params}


def operations(skip_s3: bool, skip_link: bool = False, only: str | list[str] | None = None) -> list[tuple]:
    """The operations a run measures; ``only``: names, one of which an
    operation's name must contain (``--only``, repeatable)."""
    wanted = [only] if isinstance(only, str) else only
    return [
        op
        for op in OPERATIONS
        if not (skip_s3 and op[1] in ("s3", "link"))
        and not (skip_link and op[1] == "link")
        and (not wanted or any(name in op[0] for name in wanted))
    ]


def plan(args) -> list[tuple]:
    """The measured runs of the main model, in order: (repeat, operation, where, kind, contestant).

    Within each repeat every operation runs every contestant in turn, the
    starting contestant rotating from repeat to repeat. An operation of
    BUSY_CORES runs in its first repeats only."""
    jobs = []
    for repeat in range(args.repeats):
        for operation, where, kind, contestants, _ in operations(args.skip_s3, args.skip_link, args.only):
            if repeat >= BUSY_CORES.get(operation, args.repeats):
                continue
            shift = repeat % len(contestants)
            for contestant in contestants[shift:] + contestants[:shift]:
                jobs.append((repeat, operation, where, kind, contestant))
    return jobs
