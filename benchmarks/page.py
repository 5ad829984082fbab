"""docs/performance.md from a run's results (the dict results.json holds)."""

from __future__ import annotations

import os
from pathlib import Path

from plan import MB, REPO, SHORT_NAMES


def rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


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
        (
            f"| Operation ({big_shape['weights_bytes'] / 1e9:.1f} GB model) | Contestant | Median time (s) | "
            "Peak extra memory (MB) | Memory / weights |"
        ),
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


def render(report, outputs) -> str:
    meta, shape = report["meta"], report["model"]
    machine, vers = meta["machine"], meta["versions"]
    weights_mb = shape["weights_bytes"] / MB
    image = os.path.relpath(outputs["png"], outputs["doc"].parent)
    targets = "\n".join(
        f"| {t['label']} | {_fmt_ratio(t['value'])} | {'met' if t['met'] else 'not met' if t['met'] is False else 'not measured'} |"
        for t in report["targets"]
    )
    failures = (
        "\n**Some operations failed in this run:** "
        + ", ".join(report["failures"])
        + ". See the harness output.\n"
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
    if report["big_summary"]:
        big_shape = report["big_model"]
        big = f"""
### A ~{big_shape["weights_bytes"] / 1e9:.0f} GB model (`--big`)

{big_shape["layers"]} x `Dense({big_shape["width"]})`, {big_shape["params"]:,} float32 parameters
({big_shape["weights_bytes"] / MB:,.0f} MB of weights), local disk, kedro-keras only; the load input was written
by `model.save`. Median of {meta["big_repeats"]} run(s).

{big_table(report["big_summary"], big_shape)}
"""
    return f"""# Performance: saving and loading large models

How long `kedro_keras.KerasModelDataset` takes to save and load a large Keras model, and how much memory it
needs on top of the model itself, next to plain Keras and to kedro-datasets' `TensorFlowModelDataset`, on local
disk and on S3. All numbers on this page were produced by `benchmarks/run.py`, which rewrites this page on each
run; rerun it after changing the I/O layer (`make bench`).
{quick}{failures}
![Median save and load times and peak extra memory per contestant]({image})

## Results

Model: {shape["layers"]} x `Dense({shape["width"]})` (functional, not compiled, seeded random weights),
{shape["params"]:,} float32 parameters = **{weights_mb:,.0f} MB of weights**; the `.keras` file is about the same size.
Median of {meta["repeats"]} repeat(s) per row. Run on {meta["date"]}, commit `{meta["git_commit"]}`{src_state}.
{public_api}
{markdown_table(report["summary"])}

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
the machine's {machine["cores"]} cores with the process being measured, so S3 times mostly show CPU and copying
overhead, not network transfer. Times are noisy on a small machine: {spread} Ratios near a target deserve a rerun
with more repeats (`--repeats 9`).

## Machine and versions

| | |
| --- | --- |
| Machine | {machine["cpu"]}, {machine["cores"]} cores, {machine["ram"]} RAM, no GPU |
| OS | {machine["platform"]} |
| Python | {machine["python"]} |
| kedro-keras | {vers["kedro-keras"]}: commit `{meta["git_commit"]}`{src_state} |
| Keras / TensorFlow | {vers["keras"]} / {vers["tensorflow"]} (CPU) |
| Kedro / kedro-datasets | {vers["kedro"]} / {vers["kedro-datasets"]} |
| fsspec / s3fs / moto | {vers["fsspec"]} / {vers["s3fs"]} / {vers["moto"]} |
| h5py / NumPy | {vers["h5py"]} / {vers["numpy"]} |

Date: {meta["date"]}. Total benchmark runtime: {meta["total_runtime_s"] / 60:.1f} min.

## Reproducing

```
make bench                                   # installs benchmarks/requirements.txt, then runs the line below
python benchmarks/run.py                     # {weights_mb:,.0f} MB model, 5 repeats (about 8 min on 2 cores)
python benchmarks/run.py --big               # adds a ~4 GB model, kedro-keras only (about 2 min more, ~12 GB RAM)
python benchmarks/run.py --quick             # 40 MB, 1 repeat; writes to benchmarks/.work/quick/, not here
python benchmarks/run.py --size-mb 200 --repeats 5 --skip-s3
```

This page came from: `{meta["command"]}`. Raw numbers, every repeat included: `{rel(outputs["json"])}`
(`--out-dir` writes all three outputs elsewhere).
"""
