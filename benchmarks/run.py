#!/usr/bin/env python
"""Save/load benchmark: kedro_keras.KerasModelDataset against plain Keras and
kedro-datasets' TensorFlowModelDataset, on local disk and on S3 (a moto server
on loopback).

    python benchmarks/run.py                  # ~400 MB model, 5 repeats
    python benchmarks/run.py --quick          # 40 MB model, 1 repeat (development, tests)
    python benchmarks/run.py --big            # adds ~10 GB (local) and ~4 GB (S3 link) models, ours only
    python benchmarks/run.py --only "S3 load" --only "S3 link load"   # those rows only, to try them

This file is the command line and the harness: it plans the runs (plan.py),
starts one fresh measuring process (child.py) per save or load, so that its
peak memory is its own, and collects what each measured. Contestants are
interleaved (round robin, starting contestant rotated each repeat) and the
median over the repeats is reported (report.py).

Writes a markdown report (docs/performance.md, from performance.md.tmpl), a bar
chart (docs/img/benchmark.png) and machine-readable results
(benchmarks/results.json); ``--quick`` writes them under benchmarks/.work/quick/
and ``--only`` under benchmarks/.work/only/ instead, so that they never
overwrite the real numbers (``--out-dir`` chooses any folder).

Exits 0 when every operation ran, whether or not the targets are met (they
are reported), and non-zero if any operation failed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
import uuid
from pathlib import Path

import checkpoint_overhead
import facts
import page
import report
import s3_link
from plan import (
    BENCH_DIR,
    BIG_LINK_PARAMS,
    BIG_OPERATIONS,
    BIG_PARAMS,
    BUCKET,
    BUSY_CORES,
    CHILD_ENV,
    DEFAULT_BIG_REPEATS,
    DEFAULT_DOC,
    DEFAULT_JSON,
    DEFAULT_PNG,
    DEFAULT_REPEATS,
    DEFAULT_SIZE_MB,
    LINK_FS_ARGS,
    MB,
    ONLY_OUT_DIR,
    QUICK_OUT_DIR,
    QUICK_REPEATS,
    QUICK_SIZE_MB,
    SHORT_NAMES,
    WORK_ROOT,
    is_trained,
    model_shape,
    plan,
)

CHILD = BENCH_DIR / "child.py"


def child_env(tmp_dir: Path) -> dict:
    # every temporary file (kedro-datasets' temp copies, moto's spooled
    # objects) goes to the work folder on the repository's disk
    return {**os.environ, **CHILD_ENV, "TMPDIR": str(tmp_dir)}


class MotoServer:
    """The S3 server: `child.py --moto-server`, its own process, so it never shares a GIL with anyone."""

    def __init__(self, env: dict, log_path: Path) -> None:
        self._log = open(log_path, "wb")  # noqa: SIM115  (open while the server runs; closed by stop())
        self.process = subprocess.Popen(
            [sys.executable, str(CHILD), "--moto-server"],
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
                [sys.executable, str(CHILD), str(spec_path)],
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
            result = {
                "ok": False,
                "error": "timed out" if code is None else f"child exited {code} with no result",
            }
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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size-mb",
        type=float,
        default=None,
        help=f"model size in MB of float32 weights (default {DEFAULT_SIZE_MB:g})",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"repeats per operation and contestant (default {DEFAULT_REPEATS}: this virtual machine's page faults "
        "make single runs vary by 2x)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_SIZE_MB:g} MB model, {QUICK_REPEATS} repeat, results under benchmarks/.work/quick/",
    )
    parser.add_argument(
        "--big",
        action="store_true",
        help=f"also save+load a ~{BIG_PARAMS * 4 / 1e9:g} GB model ({BIG_PARAMS:.0e} params) on local disk "
        f"(KerasModelDataset and KerasTimestampedModelDataset) and a ~{BIG_LINK_PARAMS * 4 / 1e9:g} GB one "
        "through the S3 link, kedro-keras only",
    )
    parser.add_argument(
        "--big-size-mb",
        type=float,
        default=None,
        help=f"size of the --big model in MB (default {BIG_PARAMS * 4 / MB:g}; smaller only to try the harness)",
    )
    parser.add_argument(
        "--big-repeats",
        type=int,
        default=DEFAULT_BIG_REPEATS,
        help=f"repeats of the --big case (default {DEFAULT_BIG_REPEATS})",
    )
    parser.add_argument("--skip-s3", action="store_true", help="local disk only, no moto server")
    parser.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="NAME",
        help="measure only the operations whose name contains NAME (repeatable: any of them), to try some rows, "
        'e.g. --only "S3 load" (the moto S3 loads, busy cores included) --only "S3 link load"; no '
        "checkpoint-overhead table, and the outputs go to benchmarks/.work/only/ unless --out-dir is given",
    )
    parser.add_argument(
        "--skip-link", action="store_true", help="no rows through the throttled S3 link (s3_link.py)"
    )
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="write performance.md, benchmark.png and results.json here"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per child process")
    parser.add_argument(
        "--keep-work", action="store_true", help="keep benchmarks/.work/run-* (logs) afterwards"
    )
    args = parser.parse_args(argv)
    if args.size_mb is None:
        args.size_mb = QUICK_SIZE_MB if args.quick else DEFAULT_SIZE_MB
    if args.repeats is None:
        args.repeats = QUICK_REPEATS if args.quick else DEFAULT_REPEATS
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def outputs_for(args) -> dict[str, Path]:
    out_dir = args.out_dir
    if out_dir is None and args.quick:
        out_dir = QUICK_OUT_DIR
    elif out_dir is None and args.only:
        out_dir = ONLY_OUT_DIR  # a partial run never replaces the page
    if out_dir is None:
        return {"doc": DEFAULT_DOC, "png": DEFAULT_PNG, "json": DEFAULT_JSON}
    return {
        "doc": out_dir / "performance.md",
        "png": out_dir / "benchmark.png",
        "json": out_dir / "results.json",
    }


def run_big(args, harness, run_dir, shapes, link, runs, failures) -> None:
    """The --big part: a ~10 GB model on local disk through KerasModelDataset
    and KerasTimestampedModelDataset, and a ~4 GB one through the S3 link;
    kedro-keras only. Each input is written by our own save (see _prepare)."""
    inputs: dict[str, dict] = {}
    for which, shape in shapes.items():
        if which == "big_link" and link is None:
            continue
        print(
            f"{which} model: {shape['layers']} x Dense({shape['width']}), {shape['params']:,} params, "
            f"{shape['weights_bytes'] / MB:.0f} MB",
            flush=True,
        )
        local = run_dir / f"{which}-input.keras"
        prepared = harness.run_child(
            {
                **shape,
                "credentials": None,
                "role": "prepare",
                "prepare_with": "ours",
                "target": str(local),
                "local_input": str(local),
            },
            f"prepare {which} input file (kedro-keras)",
            args.timeout * 3,
        )
        if not prepared.get("ok"):
            failures.append(f"prepare {which}")
            continue
        inputs[which] = {
            "local": str(local),
            "checksum": prepared["checksum"],
            "file_bytes": prepared["file_bytes"],
        }
        if which == "big_link":
            inputs[which]["link"] = f"s3://{BUCKET}/big-input.keras"
            s3_link.upload(link, local, inputs[which]["link"])
            local.unlink()
    history = run_dir / "big-history"
    for repeat in range(args.big_repeats):
        for operation, contestant, kind, where, which in BIG_OPERATIONS:
            if which not in inputs:
                continue
            source = inputs[which]
            if contestant == "history":
                target = str(history)
            elif kind == "load":
                target = source[where]
            elif where == "link":
                target = f"s3://{BUCKET}/big-save-{repeat}.keras"
            else:
                target = str(run_dir / f"big-save-{repeat}.keras")
            result = harness.run_child(
                {
                    **shapes[which],
                    "credentials": link.credentials() if where == "link" else None,
                    # A remote store's default concurrency (plan.LINK_FS_ARGS).
                    "fs_args": LINK_FS_ARGS if where == "link" else None,
                    "checksum": source["checksum"],
                    "role": "measure",
                    "contestant": contestant,
                    "kind": kind,
                    "target": target,
                    "keep": contestant == "history",
                },
                f"BIG {operation} | {SHORT_NAMES[contestant]} | repeat {repeat + 1}",
                args.timeout * 3,
            )
            runs.append(
                {
                    "operation": operation,
                    "contestant": contestant,
                    "repeat": repeat + 1,
                    "model": which,
                    "input_file_bytes": source["file_bytes"],
                    **result,
                }
            )
            if not result.get("ok"):
                failures.append(f"BIG {operation} / {contestant} / repeat {repeat + 1}")
        shutil.rmtree(history, ignore_errors=True)
    for source in inputs.values():
        Path(source["local"]).unlink(missing_ok=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    outputs = outputs_for(args)
    shape = model_shape(args.size_mb * MB / 4)
    big_params = BIG_PARAMS if args.big_size_mb is None else args.big_size_mb * MB / 4
    big_shape = model_shape(big_params) if args.big else None
    big_link_params = (
        BIG_LINK_PARAMS if args.big_size_mb is None else big_params * BIG_LINK_PARAMS / BIG_PARAMS
    )
    big_shapes = {"big": big_shape, "big_link": model_shape(big_link_params)} if args.big else {}
    run_dir = WORK_ROOT / f"run-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    run_dir.mkdir(parents=True)
    started = time.perf_counter()
    started_at = _dt.datetime.now(_dt.timezone.utc)
    run_facts: dict = {"src_fingerprint": facts.src_fingerprint()}

    print(
        f"model: {shape['layers']} x Dense({shape['width']}), {shape['params']:,} params, "
        f"{shape['weights_bytes'] / MB:.0f} MB of float32 weights; {args.repeats} repeat(s)",
        flush=True,
    )
    harness = Harness(args, run_dir)
    moto = link = None
    if not args.skip_s3 and not args.skip_link and s3_link.available():
        print(f"no S3 link rows: {s3_link.available()}", flush=True)
        args.skip_link = True
    runs: list[dict] = []
    failures: list[str] = []
    try:
        credentials = None
        if not args.skip_s3:
            moto = MotoServer(harness.env, run_dir / "moto.log")
            credentials = {
                "key": "testing",
                "secret": "testing",
                "client_kwargs": {"endpoint_url": moto.endpoint},
            }
            print(f"moto S3 server on {moto.endpoint}", flush=True)
        if not args.skip_s3 and not args.skip_link:
            link = s3_link.Link(run_dir / "s3-link", BUCKET, run_dir / "s3-link.log")
            run_facts["s3_link"] = s3_link.describe()
            print(
                f"S3 link (rclone serve s3 behind a throttle) on {link.endpoint}: {s3_link.describe()}",
                flush=True,
            )

        jobs = plan(args)
        harness.total = 2 + len(jobs) + (2 + len(BIG_OPERATIONS) * args.big_repeats if args.big else 0)

        # The load benchmarks' input files, written by plain Keras: the
        # trained model (the main case) and the uncompiled one.
        inputs, states = {}, {}
        for trained in (True, False):
            name = "input-trained.keras" if trained else "input.keras"
            local_input = run_dir / name
            s3_input = f"s3://{BUCKET}/{name}" if credentials else None
            prepared = harness.run_child(
                {
                    **shape,
                    "credentials": credentials,
                    "trained": trained,
                    "role": "prepare",
                    "target": str(local_input),
                    "local_input": str(local_input),
                    "s3_input": s3_input,
                },
                f"prepare {'trained' if trained else 'uncompiled'} input file (plain Keras)",
                args.timeout,
            )
            if not prepared.get("ok"):
                failures.append("prepare")
                raise SystemExit(1)
            if link is not None and not trained:
                s3_link.upload(link, local_input, f"s3://{BUCKET}/{name}")
            inputs[trained] = {
                "local": str(local_input),
                "s3": s3_input,
                "link": f"s3://{BUCKET}/{name}" if link is not None else None,
                "checksum": prepared["checksum"],
                "state_bytes": prepared["state_bytes"],
            }
            states["trained" if trained else "uncompiled"] = prepared["state_bytes"]
            if not trained:
                run_facts.update(
                    s3_probe=prepared.get("s3_probe"),
                    input_file_bytes=prepared.get("file_bytes"),
                    gpus=prepared.get("gpus"),
                )
            else:
                run_facts["trained_input_file_bytes"] = prepared.get("file_bytes")
        run_facts["state_bytes"] = states

        for repeat, operation, where, kind, contestant in jobs:
            trained = is_trained(operation)
            source = inputs[trained]
            if kind == "load":
                target = source[where]
            else:
                name = f"{kind}-{contestant}-{repeat}-{uuid.uuid4().hex[:8]}"
                # KerasCheckpointDataset's filepath is a folder; everything else a .keras file.
                name += "" if (kind, contestant) == ("checkpoint", "ours") else ".keras"
                target = f"s3://{BUCKET}/{name}" if where in ("s3", "link") else str(run_dir / name)
            spec = {
                **shape,
                "credentials": link.credentials() if where == "link" else credentials,
                "trained": trained,
                "checksum": source["checksum"],
                "state_bytes": source["state_bytes"],
                "role": "measure",
                "contestant": contestant,
                "kind": kind,
                "target": target,
                "busy_cores": operation in BUSY_CORES,
                "background": operation.endswith("(background)"),
            }
            if where == "link" and contestant in ("ours", "history"):
                # The link is a proxy on loopback, so kedro-keras would take it
                # for a store on this host (concurrency 1); it plays a remote
                # store, for which 8 is the default (plan.LINK_FS_ARGS).
                spec["fs_args"] = LINK_FS_ARGS
            result = harness.run_child(
                spec, f"{operation} | {SHORT_NAMES[contestant]} | repeat {repeat + 1}", args.timeout
            )
            runs.append(
                {
                    "operation": operation,
                    "contestant": contestant,
                    "repeat": repeat + 1,
                    "model": "main",
                    **result,
                }
            )
            if not result.get("ok"):
                failures.append(f"{operation} / {contestant} / repeat {repeat + 1}")

        if args.big:
            big_started = time.perf_counter()
            run_big(args, harness, run_dir, big_shapes, link, runs, failures)
            run_facts["big_runtime_s"] = time.perf_counter() - big_started
    except KeyboardInterrupt:
        failures.append("interrupted")
        if harness.current is not None:
            harness.current.kill()
    except Exception as error:  # noqa: BLE001 - the rows measured so far are still written out
        # One failure late in a run (s3rver refusing a 4 GB upload) once
        # lost every measurement before it.
        traceback.print_exc()
        failures.append(f"harness: {error!r}")
    finally:
        if moto is not None:
            moto.stop()
        if link is not None:
            link.stop()
        elapsed = time.perf_counter() - started
        if args.keep_work:
            print(f"work folder kept: {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
            try:
                WORK_ROOT.rmdir()  # only if nothing else (quick results) is in it
            except OSError:
                pass

    results = report.summarise(args, shape, big_shapes, runs, failures, elapsed, started_at, run_facts)
    if args.only is None:
        print("Per-checkpoint overhead on a small model (checkpoint_overhead.py):", flush=True)
        results["checkpoint_overhead"] = checkpoint_overhead.measure(
            *((1, 20) if args.quick else (args.repeats, 100)), timeout=args.timeout
        )
        results["meta"]["total_runtime_s"] = time.perf_counter() - started
    report.write_outputs(results, outputs)
    print()
    print(page.markdown_table(results["summary"]))
    if results["big_summary"]:
        print()
        print(page.big_table(results["big_summary"]))
    print()
    print("Targets (kedro-keras, this run):")
    for target in results["targets"]:
        state = "met    " if target["met"] else "NOT MET" if target["met"] is False else "n/a    "
        print(f"  {state}  {target['label']}: {target['text']}")
    print()
    print(f"wrote {page.rel(outputs['doc'])}, {page.rel(outputs['png'])}, {page.rel(outputs['json'])}")
    print(f"total {elapsed / 60:.1f} min")
    if failures:
        print(f"FAILED operations: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
