"""docs/performance.md from performance.md.tmpl and a run's results (the dict
results.json holds). Every figure on the page comes from the results, from the
machine at run time or from plan.py's constants; the template holds prose only.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

import checkpoint_overhead
import processes_save
from plan import (
    BIG_LINK_PARAMS,
    BIG_PARAMS,
    BUSY_CORES,
    CHILD_ENV,
    DEFAULT_REPEATS,
    DEFAULT_SIZE_MB,
    LINK_FS_ARGS,
    MB,
    QUICK_REPEATS,
    QUICK_SIZE_MB,
    REPO,
    SAMPLE_INTERVAL_S,
    SHORT_NAMES,
    SMALL_RANGE_BYTES,
    model_shape,
)

TEMPLATE = Path(__file__).resolve().parent / "performance.md.tmpl"


def rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _fmt_ratio(value) -> str:
    return f"{value:.2f}x" if value is not None else "–"


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:,.1f} GB" if n_bytes >= 1e9 else f"{n_bytes / MB:,.0f} MB"


def markdown_table(summary) -> str:
    lines = [
        "| Operation | Contestant | Median time (s) | Time vs reference | Peak extra memory (MB) | Memory / weights "
        "| Memory / loaded state |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in summary:
        name = SHORT_NAMES[row["contestant"]]
        if row["contestant"] == "ours":
            name = f"**{name}**"
        if row["status"] == "n/a":
            lines.append(f"| {row['operation']} | {name} | n/a | n/a | n/a | n/a | n/a |")
            continue
        if "median_time_s" not in row:
            lines.append(f"| {row['operation']} | {name} | error | – | – | – | – |")
            continue
        ratio = _fmt_ratio(row.get("time_ratio"))
        if row["contestant"] == row["reference"]:
            ratio += " (ref)"
        time_cell = f"{row['median_time_s']:.2f}"
        if row["status"] == "error":
            time_cell += " (some repeats failed)"
        lines.append(
            f"| {row['operation']} | {name} | {time_cell} | {ratio} | "
            f"{row['median_peak_extra_bytes'] / MB:,.0f} | {row['memory_ratio']:.2f}x | "
            f"{_fmt_ratio(row.get('state_ratio'))} |"
        )
    return "\n".join(lines)


def big_table(rows) -> str:
    lines = [
        "| Operation | Model | Contestant | Median time (s) | Peak extra memory (MB) | Memory / weights | "
        "Time / link floor | Transfer |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        start = (
            f"| {row['operation']} | {_size(row['weights_bytes'])} | **{SHORT_NAMES[row['contestant']]}** |"
        )
        if "median_time_s" not in row:
            lines.append(f"{start} error | – | – | – | – |")
            continue
        floor = f"{row['link_floor_ratio']:.2f}x" if "link_floor_ratio" in row else "–"
        lines.append(
            f"{start} {row['median_time_s']:.2f} | {row['median_peak_extra_bytes'] / MB:,.0f} | "
            f"{row['memory_ratio']:.2f}x | {floor} | {row.get('transfer') or '–'} |"
        )
    return "\n".join(lines)


def _row(report, operation: str, contestant: str) -> dict:
    return next(
        (r for r in report["summary"] if r["operation"] == operation and r["contestant"] == contestant), {}
    )


def _times(row: dict) -> str:
    """A row's measured times: median and the fastest to slowest repeat."""
    if "median_time_s" not in row:
        return "not measured"
    if row["repeats"] == 1:
        return f"{row['median_time_s']:.2f} s (1 repeat)"
    return (
        f"{row['median_time_s']:.2f} s median, {row['min_time_s']:.2f}-{row['max_time_s']:.2f} s over "
        f"{row['repeats']} repeats"
    )


def _notices(report) -> str:
    meta = report["meta"]
    text = ""
    if meta["quick"]:
        text += (
            f"\n> **Quick mode** (`--quick`): {_size(report['model']['weights_bytes'])} of weights and "
            f"{meta['repeats']} repeat(s) per row, to check that the harness works. "
            "These numbers are not the project's benchmark.\n"
        )
    if report["failures"]:
        text += "\n**Some operations failed in this run:** " + ", ".join(report["failures"])
        text += ". See the harness output.\n"
    if meta["src_changed_during_run"]:
        text += (
            "\n**`src/` changed while this benchmark ran**: the rows may mix two implementations of kedro-keras. "
            "Rerun it.\n"
        )
    return text


def _file_sizes(report) -> str:
    meta = report["meta"]
    saved = [r["file_bytes"] for r in report["runs"] if r.get("model") == "main" and r.get("file_bytes")]
    if meta.get("input_file_bytes"):
        text = f"the `.keras` file plain Keras wrote as the load input is {_size(meta['input_file_bytes'])}"
        if meta.get("trained_input_file_bytes"):
            text += f" ({_size(meta['trained_input_file_bytes'])} for the trained model)"
    else:
        text = "the size of the load input file was not recorded"
    if saved:
        low, high = _size(min(saved)), _size(max(saved))
        text += f", and the saves wrote {low}" if low == high else f", and the saves wrote {low} to {high}"
    return text + "."


def _trained_state(report) -> str:
    state = (report["meta"].get("state_bytes") or {}).get("trained")
    if not state:
        return "its size not recorded"
    return f"{_size(state)} of weights and optimizer variables, {state / report['model']['weights_bytes']:.1f}x the weights"


def _s3_section(report, weights_mb: float) -> str:
    meta = report["meta"]
    request_rows = [r for r in report["summary"] if r.get("s3_requests")]
    if not (request_rows or meta["s3_probe"]):
        return ""
    text = "\n### S3 requests\n\n"
    if meta["s3_probe"]:
        probe = meta["s3_probe"]
        size = _size(meta["input_file_bytes"]) if meta.get("input_file_bytes") else f"{weights_mb:,.0f} MB"
        text += (
            f"The moto server, on the {size} input object in this run: a whole-object GET took "
            f"{probe['full_get_s']:.2f} s and a 1-byte ranged GET {probe['range_get_1_byte_s']:.2f} s. moto reads "
            "the whole object for every GET and then slices the range, so each ranged GET of a large object "
            "costs a large fixed amount here that real S3 does not charge (there a request costs a round trip "
            "plus the bytes asked for). A loader that reads with many ranged GETs is penalised on this benchmark; "
            "read the S3 load row together with the request counts below.\n\n"
        )
    if request_rows:
        text += (
            "S3 API calls per operation (median over the repeats), counted on the s3fs client of each "
            "dataset's filesystem, and for kedro-keras the transfer they add up to. **Transfer** is read "
            "from the requests each repeat made, not from the settings: a GET of the whole object or from a "
            f"byte to its end is a stream, one of a bounded range over {SMALL_RANGE_BYTES / 2**20:g} MiB a "
            "ranged GET (the small ones, reads through kedro-keras's 1 MiB block cache of what lies behind its "
            "stream, such as the zip directory at the file's end, are listed apart), a PutObject one PUT and "
            "UploadParts a multipart upload; the concurrency is the one kedro-keras's dataset settled on "
            "(`fs_args.concurrency`, or its default for the endpoint: 1 for a store on this host such as moto, "
            "8 for any other). kedro-keras gets `fs_args="
            f"{_fs_args()}` on the S3 link rows only: the link is a proxy on loopback standing in for a "
            "remote store, which gets that by default, while kedro-keras would take the proxy for a store on "
            "this host and use 1. The moto rows use the defaults.\n\n"
            "| Operation | Contestant | Requests | Transfer |\n| --- | --- | --- | --- |\n"
        )
        for row in request_rows:
            calls = ", ".join(f"{name} {count:g}" for name, count in row["s3_requests"].items())
            text += (
                f"| {row['operation']} | {SHORT_NAMES[row['contestant']]} | {calls} | "
                f"{row.get('transfer') or '–'} |\n"
            )
    return text


def _fs_args() -> str:
    return "{" + ", ".join(f'"{key}": {value!r}' for key, value in LINK_FS_ARGS.items()) + "}"


_POSSESSIVE = {"ours": "kedro-keras's", "kd": "kedro-datasets'"}


def _busy_section(report) -> str:
    rows = [r for r in report["summary"] if r["operation"] in BUSY_CORES and r.get("status") != "n/a"]
    if not rows:
        return ""
    text = "\n### With every core busy\n\n"
    for operation in dict.fromkeys(r["operation"] for r in rows):
        ours, kd = _row(report, operation, "ours"), _row(report, operation, "kd")
        busy = ours.get("busy") or kd.get("busy") or {}
        processes = busy.get("processes")
        load = (
            f"{processes} busy-loop processes (`while True: pass` in Python, one per core)"
            if processes
            else "busy-loop processes (one per core)"
        )
        cores = report["meta"]["machine"]["cores"]
        kept = [
            f"during {_POSSESSIVE[name]} load {busy['median_machine_cores_busy']:.1f} of the "
            f"{cores} cores were busy ({busy['median_cores_busy']:.1f} with the busy loops)"
            for name, busy in (("ours", ours.get("busy") or {}), ("kd", kd.get("busy") or {}))
            if busy.get("median_machine_cores_busy") is not None and busy.get("median_cores_busy") is not None
        ]
        kept_text = (
            f" On average over the timed call (median over the repeats), {'; '.join(kept)}: the rest went to "
            "the measuring process, the moto server and whatever else ran on the machine."
            if kept
            else ""
        )
        ratio = f", {_fmt_ratio(ours['time_ratio'])} kedro-datasets' time" if ours.get("time_ratio") else ""
        repeats = report["meta"]["repeats"]
        # The cap this run had (results.json's meta), else today's.
        cap = (report["meta"].get("busy_cores") or {}).get(operation, BUSY_CORES[operation])
        repeats_text = (
            f"At most {cap} repeats (median of those), against {repeats} for the other rows"
            if cap < repeats
            else f"{repeats} repeat(s), as for the other rows (at most {cap})"
        )
        text += (
            f"**{operation}**: the moto load of the trained model (as in the trained S3 load row) while {load} "
            "run beside it: the measuring process starts them half a second before the timed load, so they "
            f"are running, and kills them right after it; they end by themselves if it dies.{kept_text} "
            f"{repeats_text}: its repeats are long, and this keeps the row's cost to `make bench` within "
            "about 5 minutes. "
            f"kedro-keras took {_times(ours)}{ratio}; transfer: {ours.get('transfer') or 'not recorded'}. "
            f"kedro-datasets took {_times(kd)}.\n\n"
            "A load used to choose one stream or concurrent ranged GETs from a timed probe of its first "
            "8 MiB. On a busy CPU the probe took moto for a slow link and sent the load down the ranged path, "
            "which moto serves by reading the whole object for every range: a 386 MB load took 8.2 s instead "
            "of 3.6 s. The choice now follows the endpoint's address alone (a store on this host gets one "
            "stream), so a busy CPU cannot change it; this row checks that.\n"
        )
    return text


def _big_section(report) -> str:
    big_shape, rows = report["big_model"], report["big_summary"]
    if not rows:
        return ""
    link_shape = report.get("big_link_model")
    link_text = ""
    if link_shape and any(row["model"] == "big_link" for row in rows):
        link_text = (
            f" The {_size(link_shape['weights_bytes'])} model ({link_shape['layers']} x "
            f"`Dense({link_shape['width']})`) goes through the throttled S3 link above; its floor is the "
            "file's size over the link's aggregate bandwidth."
        )
    return f"""
### The largest models this machine holds (`--big`)

{big_shape["layers"]} x `Dense({big_shape["width"]})`, {big_shape["params"]:,} float32 parameters
({big_shape["weights_bytes"] / MB:,.0f} MB of weights) on local disk, through `KerasModelDataset` and
`KerasTimestampedModelDataset` (whose load reads the version its save wrote).{link_text} kedro-keras only: plain
`model.save` needs 1.17x the weights in memory on top of the model, more than this machine has for the
largest. Each load input was written by our own save. Median of {report["meta"]["big_repeats"]} run(s).

{big_table(rows)}
"""


def _spread(report) -> str:
    spreads = [
        (row["max_time_s"] - row["min_time_s"]) / row["median_time_s"]
        for row in report["summary"]
        if row.get("median_time_s") and row.get("repeats", 0) > 1
    ]
    if not spreads:
        return "one repeat per row says nothing about the spread."
    return (
        f"in this run the slowest repeat of a row was up to {max(spreads):.0%} of its median slower than the fastest "
        "(the min-max bars in the chart)."
    )


def _load_memory(report) -> str:
    parts = [
        f"{_fmt_ratio(row['memory_ratio'])} the weights {where}"
        for where, row in (
            ("on local disk", _row(report, "local load", "ours")),
            ("on S3", _row(report, "S3 load", "ours")),
        )
        if "memory_ratio" in row
    ]
    if not parts:
        return "This run did not measure kedro-keras's load memory."
    return f"In this run kedro-keras's load peaked at {' and '.join(parts)} (median peak extra memory)."


def _commands(report) -> str:
    default = model_shape(DEFAULT_SIZE_MB * MB / 4)["weights_bytes"]
    quick = model_shape(QUICK_SIZE_MB * MB / 4)["weights_bytes"]
    big = model_shape(BIG_PARAMS)["weights_bytes"]
    big_link = model_shape(BIG_LINK_PARAMS)["weights_bytes"]
    lines = [
        ("make bench", "installs benchmarks/requirements.txt, then runs benchmarks/run.py $(BENCH_ARGS)"),
        ("python benchmarks/run.py", f"{_size(default)} model, {DEFAULT_REPEATS} repeats"),
        (
            "python benchmarks/run.py --big",
            f"adds a {_size(big)} model (local disk) and a {_size(big_link)} one (S3 link), kedro-keras only",
        ),
        (
            "python benchmarks/run.py --quick",
            f"{_size(quick)}, {QUICK_REPEATS} repeat; writes to benchmarks/.work/quick/, not here",
        ),
        (
            'python benchmarks/run.py --only "S3 load"',
            "the rows named so (repeatable); writes to benchmarks/.work/only/, not here",
        ),
        ("python benchmarks/run.py --size-mb 200 --repeats 5 --skip-s3", ""),
    ]
    width = max(len(command) for command, comment in lines if comment) + 2
    return "\n".join(f"{command:<{width}}# {comment}" if comment else command for command, comment in lines)


def _big_runtime(report) -> str:
    meta = report["meta"]
    if not meta.get("big_runtime_s"):
        return ""
    text = f"; the `--big` part took {meta['big_runtime_s'] / 60:.1f} min"
    peaks = [
        r["peak_bytes"]
        for r in report["runs"]
        if r.get("model", "").startswith("big") and r.get("peak_bytes")
    ]
    if peaks:
        text += f" and its largest measured process peaked at {_size(max(peaks))} resident"
    return text


def _gpus(count) -> str:
    if count is None:
        return "GPUs not recorded"
    return "no GPU visible to TensorFlow" if count == 0 else f"{count} GPU(s) visible to TensorFlow"


def _link(link: dict | None) -> str:
    if not link:
        return "not measured in this run (rclone missing, or `--skip-link`)"
    return (
        f"{link['per_connection_MB_s']:g} MB/s per connection, {link['aggregate_MB_s']:g} MB/s in all and "
        f"{link['first_byte_latency_ms']:g} ms to the first byte of every answer"
    )


def render(report, outputs) -> str:
    meta, shape = report["meta"], report["model"]
    machine, versions = meta["machine"], meta["versions"]
    weights_mb = shape["weights_bytes"] / MB
    src_state = ", with uncommitted changes under `src/`" if meta["src_modified"] else ""
    src_state += f", source fingerprint `{meta['src_fingerprint']}`"
    public_api = (
        f"\n`KEDRO_KERAS_PUBLIC_API_ONLY={meta['public_api_only']}` was set: kedro-keras used its public-API fallback.\n"
        if meta["public_api_only"]
        else ""
    )
    status = {True: "met", False: "not met", None: "not measured"}
    targets = "\n".join(
        f"| {t['label']} | {_fmt_ratio(t['value'])} | {status[t['met']]} |" for t in report["targets"]
    )
    local_load_times = (
        f"in this run kedro-keras took {_times(_row(report, 'local load', 'ours'))}; plain Keras took "
        f"{_times(_row(report, 'local load', 'keras'))}."
    )
    values = {
        "checkpoint_overhead": checkpoint_overhead.section(report.get("checkpoint_overhead")),
        "processes_save": processes_save.section(),
        "notices": _notices(report),
        "image": os.path.relpath(outputs["png"], outputs["doc"].parent),
        "layers": shape["layers"],
        "width": shape["width"],
        "params": f"{shape['params']:,}",
        "weights_mb": f"{weights_mb:,.0f}",
        "file_sizes": _file_sizes(report),
        "trained_state": _trained_state(report),
        "repeats": meta["repeats"],
        "date": meta["date"],
        "commit": meta["git_commit"],
        "src_state": src_state,
        "public_api": public_api,
        "results_table": markdown_table(report["summary"]),
        "s3_section": _s3_section(report, weights_mb),
        "busy_section": _busy_section(report),
        "link_fs_args": _fs_args(),
        "big_section": _big_section(report),
        "targets_table": targets,
        "local_load_times": local_load_times,
        "load_memory": _load_memory(report),
        "child_env": ", ".join(f"`{k}={CHILD_ENV[k]}`" for k in ("KERAS_BACKEND", "TF_CPP_MIN_LOG_LEVEL")),
        "sample_ms": f"{SAMPLE_INTERVAL_S * 1000:g}",
        "input_mb": _size(meta["input_file_bytes"]) if meta.get("input_file_bytes") else "size not recorded",
        "ram": machine["ram"],
        "cores": machine["cores"],
        "spread": _spread(report),
        "link": _link(meta.get("s3_link")),
        "cpu": machine["cpu"],
        "gpus": _gpus(machine.get("gpus")),
        "platform": machine["platform"],
        "python": machine["python"],
        "tensorflow_distribution": versions.get("tensorflow-distribution") or "distribution not recorded",
        "runtime_min": f"{meta['total_runtime_s'] / 60:.1f}",
        "commands": _commands(report),
        "command": meta["command"],
        "big_runtime": _big_runtime(report),
        "json_path": rel(outputs["json"]),
    }
    for name in (
        "kedro-keras",
        "keras",
        "tensorflow",
        "kedro",
        "kedro-datasets",
        "fsspec",
        "s3fs",
        "moto",
        "h5py",
        "numpy",
    ):
        values["v_" + name.replace("-", "_")] = versions[name]
    return string.Template(TEMPLATE.read_text()).substitute(values)
