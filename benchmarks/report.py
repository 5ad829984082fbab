"""Results of a benchmark run: the summary (medians, ratios, targets) and its
three outputs, results.json, the bar chart and the page rendered from
performance.md.tmpl (see page.py)."""

from __future__ import annotations

import json
import shlex
import statistics
import sys
from collections import Counter
from pathlib import Path

import facts
import page
from plan import (
    BIG_OPERATIONS,
    BIG_TARGETS,
    BUSY_CORES,
    MB,
    SAVE_BUDGET_BYTES,
    SAVE_BUDGET_FRACTION,
    SHORT_NAMES,
    TARGETS,
    is_trained,
    operations,
    target_label,
)


def _rows(runs, model: str, operation: str, contestant: str) -> tuple[list, list]:
    mine = [
        r
        for r in runs
        if r["model"] == model and r["operation"] == operation and r["contestant"] == contestant
    ]
    return mine, [r for r in mine if r.get("ok")]


def _plural(count: float, word: str) -> str:
    return f"{count:g} {word}" + ("" if count == 1 else "s")


def transfer(run: dict) -> str | None:
    """The transfer strategy one S3 save or load used, from the requests it
    made (child.py counts them on the dataset's s3fs client): "one stream
    (1 GET)", "ranged GETs (N GETs, concurrency C)", "one PUT", "multipart
    (N parts, concurrency C)", joined by "+" when it used more than one. The
    concurrency is kedro-keras's (its Location's); None for a run that made
    no S3 request, or was recorded before GETs were told apart."""
    requests = run.get("s3_requests")
    if not requests:
        return None
    concurrency = run.get("concurrency")
    at = f", concurrency {concurrency}" if concurrency else ""
    parts, puts = requests.get("UploadPart", 0), requests.get("PutObject", 0)
    if parts or puts:
        pieces = [f"multipart ({_plural(parts, 'part')}{at})"] if parts else []
        if puts:
            pieces.append("one PUT" if puts == 1 else f"{puts} PUTs")
        return " + ".join(pieces)
    gets = run.get("s3_gets")
    if gets is None:
        return None
    pieces = []
    if gets["ranges"]:
        pieces.append(f"ranged GETs ({_plural(gets['ranges'], 'GET')}{at})")
    if gets["streams"] == 1:
        pieces.append("one stream (1 GET)")
    elif gets["streams"]:
        pieces.append(f"{gets['streams']} streams ({_plural(gets['streams'], 'GET')})")
    if gets["small_ranges"]:
        pieces.append(
            f"{_plural(gets['small_ranges'], 'small ranged GET')} "
            f"({gets['small_range_bytes'] / 2**20:,.1f} MiB in all)"
        )
    return " + ".join(pieces) or "no GET"


def _transfers(ok: list) -> str | None:
    """A row's transfer strategy: the one every repeat used, or each with how many used it."""
    seen = Counter(label for label in map(transfer, ok) if label)
    if len(seen) <= 1:
        return next(iter(seen), None)
    return "; ".join(f"{label} ({count} of {len(ok)} repeats)" for label, count in seen.most_common())


def _busy(ok: list) -> dict | None:
    """How busy the other processes kept the cores during a row's timed calls."""
    busy = [r["busy"] for r in ok if r.get("busy")]
    if not busy:
        return None
    out = {"processes": busy[0]["processes"]}
    for key in ("cores_busy", "machine_cores_busy"):
        values = [b[key] for b in busy if b.get(key) is not None]
        if values:
            out[f"median_{key}"] = statistics.median(values)
    return out


_METRICS = {
    "time": "time_ratio",
    "memory": "memory_ratio",
    "state": "state_ratio",
    "save memory": "save_budget_ratio",
    "link": "link_floor_ratio",
    "vs foreground": "foreground_ratio",
}


def _target(label: str, row: dict | None, metric: str, threshold: float) -> dict:
    label = target_label(label, threshold)
    value = None if row is None else row.get(_METRICS[metric])
    if value is None:
        return {"label": label, "value": None, "threshold": threshold, "met": None, "text": "not measured"}
    return {
        "label": label,
        "value": value,
        "threshold": threshold,
        "met": value <= threshold,
        "text": f"{value:.2f}x (target <= {threshold}x)",
    }


def summarise(args, shape, big_shapes, runs, failures, elapsed, started_at, run_facts) -> dict:
    """Everything results.json holds. ``run_facts``: what the harness learnt while
    running (source fingerprint at the start, the prepared input, the --big part's time)."""
    weights_bytes = shape["weights_bytes"]
    states = run_facts.get("state_bytes") or {}
    save_budget = max(SAVE_BUDGET_BYTES, SAVE_BUDGET_FRACTION * weights_bytes)
    summary = []
    medians: dict[tuple[str, str], dict] = {}
    for operation, _where, _kind, contestants, reference in operations(
        args.skip_s3, args.skip_link, args.only
    ):
        for contestant in ["ours", "keras", "kd"]:
            row = {"operation": operation, "contestant": contestant, "reference": reference}
            if contestant not in contestants:
                row["status"] = "n/a"
                summary.append(row)
                continue
            mine, ok = _rows(runs, "main", operation, contestant)
            row["repeats"] = len(ok)
            row["status"] = "error" if not ok or len(ok) < len(mine) else "ok"
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
                    save_budget_ratio=statistics.median(extras) / save_budget,
                )
                state = states.get("trained" if is_trained(operation) else "uncompiled")
                if state:
                    row["state_bytes"] = state
                    row["state_ratio"] = statistics.median(extras) / state
                requests = [r["s3_requests"] for r in ok if r.get("s3_requests")]
                if requests:
                    names = sorted({name for counts in requests for name in counts})
                    row["s3_requests"] = {
                        name: statistics.median(counts.get(name, 0) for counts in requests) for name in names
                    }
                    if contestant == "ours":
                        # kedro-datasets' are in the requests column: s3fs opens a
                        # whole-object GET, drops it and fetches 50 MiB ranges.
                        row["transfer"] = _transfers(ok)
                busy = _busy(ok)
                if busy:
                    row["busy"] = busy
                medians[(operation, contestant)] = row
            summary.append(row)
    link = run_facts.get("s3_link")
    for row in summary:
        ref = medians.get((row["operation"], row["reference"]))
        if "median_time_s" in row and ref:
            row["time_ratio"] = row["median_time_s"] / ref["median_time_s"]
        foreground = medians.get((row["operation"].removesuffix(" (background)"), row["contestant"]))
        if row["operation"].endswith(" (background)") and "median_time_s" in row and foreground:
            row["foreground_ratio"] = row["median_time_s"] / foreground["median_time_s"]
        if "median_time_s" in row and link and row["operation"].startswith("S3 link"):
            floor = run_facts["input_file_bytes"] / (link["aggregate_MB_s"] * 1e6)
            row["link_floor_s"] = floor
            row["link_floor_ratio"] = row["median_time_s"] / floor

    targets = [
        _target(label, medians.get((operation, "ours")), metric, threshold)
        for label, operation, metric, threshold in TARGETS
    ]

    big_rows = []
    for operation, contestant, _kind, where, which in BIG_OPERATIONS if big_shapes else ():
        mine, ok = _rows(runs, which, operation, contestant)
        if where == "link" and not link:
            continue  # no S3 link in this run: said once, in the link section
        weights = big_shapes[which]["weights_bytes"]
        row = {
            "operation": operation,
            "contestant": contestant,
            "model": which,
            "weights_bytes": weights,
            "repeats": len(ok),
        }
        row["status"] = "ok" if ok and len(ok) == len(mine) else "error"
        if ok:
            extras = [r["peak_extra_bytes"] for r in ok]
            row.update(
                median_time_s=statistics.median(r["time_s"] for r in ok),
                median_peak_extra_bytes=statistics.median(extras),
                memory_ratio=statistics.median(extras) / weights,
                save_budget_ratio=statistics.median(extras)
                / max(SAVE_BUDGET_BYTES, SAVE_BUDGET_FRACTION * weights),
            )
            if where == "link" and link:
                floor = ok[0]["input_file_bytes"] / (link["aggregate_MB_s"] * 1e6)
                row.update(link_floor_s=floor, link_floor_ratio=row["median_time_s"] / floor)
            if _transfers(ok):
                row["transfer"] = _transfers(ok)
        big_rows.append(row)

    if big_shapes:
        by_key = {(row["operation"], row["contestant"], row["model"]): row for row in big_rows}
        targets += [
            _target(label, by_key.get((operation, contestant, model)), metric, threshold)
            for label, operation, contestant, model, metric, threshold in BIG_TARGETS
        ]

    command = shlex.join(["python", "benchmarks/run.py", *sys.argv[1:]])
    return {
        "meta": {
            "date": started_at.strftime("%Y-%m-%d %H:%M UTC"),
            "command": command,
            "total_runtime_s": elapsed,
            "machine": {**facts.machine_info(), "gpus": run_facts.get("gpus")},
            "versions": facts.versions(),
            "git_commit": facts.git("rev-parse", "--short", "HEAD"),
            "src_modified": bool(facts.git("status", "--porcelain", "--", "src")),
            "src_fingerprint": run_facts["src_fingerprint"],
            "src_changed_during_run": facts.src_fingerprint() != run_facts["src_fingerprint"],
            "public_api_only": facts.public_api_only(),
            "s3_probe": run_facts.get("s3_probe"),
            "s3_link": run_facts.get("s3_link"),
            "input_file_bytes": run_facts.get("input_file_bytes"),
            "trained_input_file_bytes": run_facts.get("trained_input_file_bytes"),
            "state_bytes": states,
            "save_budget_bytes": save_budget,
            "quick": args.quick,
            "repeats": args.repeats,
            "busy_cores": dict(BUSY_CORES),  # the most repeats of each busy-cores row
            "big_repeats": args.big_repeats if args.big else 0,
            "big_runtime_s": run_facts.get("big_runtime_s"),
        },
        "model": shape,
        "big_model": big_shapes.get("big"),
        "big_link_model": big_shapes.get("big_link"),
        "summary": summary,
        "big_summary": big_rows,
        "targets": targets,
        "failures": failures,
        "runs": [{k: v for k, v in r.items() if k != "log_tail"} for r in runs],
    }


def plot(report, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = report["summary"]
    operations = list(dict.fromkeys(row["operation"] for row in summary))
    contestants = ["ours", "keras", "kd"]
    colours = {"ours": "#d1495b", "keras": "#8d99ae", "kd": "#2e86ab"}
    weights_mb = report["model"]["weights_bytes"] / MB
    # One panel above the other, labels slanted: eleven operations of three bars side by side
    # made their names and values run into each other.
    fig, axes = plt.subplots(2, 1, figsize=(13, 9.5))
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
                row = next(
                    (r for r in summary if r["operation"] == operation and r["contestant"] == contestant),
                    None,
                )
                if row is None or key not in row:
                    if row is not None:
                        label = "n/a" if row["status"] == "n/a" else "error"
                        ax.annotate(
                            label,
                            (j + (i - 1) * bar, 0),
                            xytext=(0, 2),
                            textcoords="offset points",
                            ha="center",
                            va="bottom",
                            fontsize=7,
                            color="grey",
                        )
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
                    rotation=90,
                )
            if xs:
                ax.bar(
                    xs,
                    ys,
                    bar,
                    yerr=errs,
                    capsize=2,
                    color=colours[contestant],
                    label=SHORT_NAMES[contestant],
                )
        ax.set_xticks(range(len(operations)), operations, rotation=20, ha="right", fontsize=9)
        ax.margins(y=0.15)  # room for the upright value labels
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    axes[1].axhline(weights_mb, color="black", lw=0.8, ls=":", label="1x weights")
    for threshold in sorted({t for _, _, metric, t in TARGETS if metric == "memory"}):
        axes[1].axhline(
            threshold * weights_mb, color="black", lw=0.8, ls="--", label=f"{threshold:g}x weights (target)"
        )
    handles, labels = axes[0].get_legend_handles_labels()
    more_handles, more_labels = axes[1].get_legend_handles_labels()
    for handle, label in zip(more_handles, more_labels, strict=True):
        if label not in labels:
            handles.append(handle)
            labels.append(label)
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    meta = report["meta"]
    fig.suptitle(
        f"Saving and loading a {weights_mb:.0f} MB Keras model ({report['model']['params'] / 1e6:.0f}M float32 params), "
        f"median of {meta['repeats']} (bars: min-max); S3 = moto on loopback, S3 link = the throttled endpoint",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def write_outputs(report, outputs) -> None:
    outputs["json"].parent.mkdir(parents=True, exist_ok=True)
    outputs["json"].write_text(json.dumps(report, indent=2) + "\n")
    try:
        plot(report, outputs["png"])
    except ImportError as exc:
        print(f"no plot ({exc}); pip install -r benchmarks/requirements.txt", file=sys.stderr)
    outputs["doc"].parent.mkdir(parents=True, exist_ok=True)
    outputs["doc"].write_text(page.render(report, outputs))
