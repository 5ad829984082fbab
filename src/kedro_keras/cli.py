"""``kedro keras``: the project's Keras models from the command line.

    kedro keras list                  every kedro-keras entry: type, path, versions, size, saved with
    kedro keras inspect NAME          the entry's preview (what Kedro-Viz shows) as a table
    kedro keras verify NAME           the checksums a load would check, without building the model
    kedro keras prune NAME --keep-last N [--older-than DAYS] [--dry-run]
                                      remove old versions (never the newest)
    kedro keras diff NAME V1 V2       per layer: shape changes, largest absolute weight difference

``kedro-keras ARGS`` (``main``) is the same for scripts: only the answer on stdout.

A ``kedro.project_commands`` plugin. Kedro imports this module for every
``kedro`` command in a project, so it imports only click here; Kedro's
session, rich and the datasets are imported when a command runs.

What the commands print comes mostly from files (a model's and its layers'
names, versions' folder names, manifest fields, error messages quoting
them): everything goes out through ``_echo``, ``_print`` or ``_Failure``,
which show control characters escaped and let rich interpret no markup, so
a name can neither forge lines nor reach the terminal as escape sequences.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click


@click.group(name="kedro-keras")
def commands() -> None:
    """kedro-keras's project commands."""


@commands.group(name="keras")
def keras_commands() -> None:
    """The Keras models in this project's catalog."""
    _logs_to_stderr()


def _logs_to_stderr() -> None:
    """A command's stdout is its answer (a table; JSON, for scripts), so the
    log records that the project's logging config sends to stdout (Kedro's
    template does) go to stderr while it runs. Kedro's own first line, logged
    as Kedro starts and before any plugin runs, is the config's to route."""
    import logging

    loggers = [logging.getLogger()] + [
        logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            console = getattr(handler, "console", None)  # rich's handler (Kedro's default) prints through one
            if console is not None and getattr(console, "file", None) in (sys.stdout, sys.__stdout__):
                console.file = sys.stderr
            elif isinstance(handler, logging.StreamHandler) and handler.stream in (
                sys.stdout,
                sys.__stdout__,
            ):
                handler.setStream(sys.stderr)


def main() -> None:
    """``kedro-keras ARGS``: ``kedro keras ARGS`` with nothing but the
    command's answer on stdout, for scripts (``kedro-keras list --json``).

    Kedro logs which logging config it uses while it is imported, before any
    plugin runs, through that config's console handler: stdout in Kedro's
    default and template, so ``kedro keras list --json`` starts with that
    line. Here Kedro is imported with stdout pointed at stderr.
    """
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):
        import kedro.framework.project  # noqa: F401 - configures logging and logs the line

    from kedro.framework.cli import main as kedro_main

    sys.argv = ["kedro", "keras", *sys.argv[1:]]
    kedro_main()


_ENV = click.option("--env", "-e", default=None, help="Kedro configuration environment.")
_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")


@keras_commands.command(name="list")
@_ENV
@_JSON
def list_entries(env: str | None, as_json: bool) -> None:
    """Every kedro-keras entry of the catalog."""
    rows = []
    for name, dataset in _our_entries(env):
        preview = _rows(dataset)
        rows.append(
            {
                "name": name,
                "type": type(dataset).__name__,
                "path": preview.get("path", ""),
                "versions": preview.get("versions") or preview.get("checkpoints") or "",
                "size": preview.get("file size", ""),
                "saved with": preview.get("saved with") or preview.get("exported with") or "",
            }
        )
    _print(
        rows, ["name", "type", "path", "versions", "size", "saved with"], as_json, title="kedro-keras entries"
    )


@keras_commands.command(name="inspect")
@click.argument("name")
@click.option("--version", "version", default=None, help="A version to inspect instead of the newest.")
@_ENV
@_JSON
def inspect_entry(name: str, version: str | None, env: str | None, as_json: bool) -> None:
    """What entry NAME holds: its Kedro-Viz preview as a table."""
    dataset = _entry(name, env, version)
    if version is not None:  # a version that is not there is an error, not "nothing saved yet"
        _answer(lambda: dataset.stored_path(version), failing=f"cannot inspect {name} {version}: ")
    rows = [{"property": key, "value": value} for key, value in dataset.preview()["data"]]
    _print(rows, ["property", "value"], as_json, title=name)


@keras_commands.command(name="verify")
@click.argument("name")
@click.option("--version", "version", default=None, help="A version to verify instead of the newest.")
@_ENV
def verify_entry(name: str, version: str | None, env: str | None) -> None:
    """Check NAME's stored file against its checksums, reading it once,
    without building the model. Exits 1 if it is damaged."""
    from kedro.io.core import VersionNotFoundError

    dataset = _entry(name, env, None)
    try:
        what = dataset.verify(version)
    except VersionNotFoundError as exc:  # nothing to check: not damage
        raise _Failure(f"{name}: {_reason(exc)}") from exc
    except Exception as exc:  # noqa: BLE001 - the command's answer is the message
        _echo(f"{name}: DAMAGED: {_reason(exc)}", err=True)
        sys.exit(1)
    _echo(f"{name}: intact ({what})")


@keras_commands.command(name="prune")
@click.argument("name")
@click.option(
    "--keep-last", type=click.IntRange(min=1), required=True, help="Versions to keep, newest first."
)
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    default=None,
    help="Remove only versions older than this many days.",
)
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@_ENV
def prune_entry(name: str, keep_last: int, older_than: float | None, dry_run: bool, env: str | None) -> None:
    """Remove NAME's old versions, keeping the newest KEEP_LAST (Kedro never
    prunes versions itself). For versioned: true entries, histories and
    checkpoints; the newest version is never removed."""
    import time

    dataset = _entry(name, env, None)
    # Listed afresh: versions saved since this process last looked count before any is removed.
    versions = _answer(dataset.stored_versions)  # newest first
    protected = dataset.protected_versions()  # the checkpoint best by monitor, which pruning keeps too
    now = time.time()
    doomed = [
        version
        for version in versions[keep_last:]
        if version.name not in protected
        and (older_than is None or _older(dataset.saved_at(version), now, older_than))
    ]
    for kept, why in protected.items():
        if any(version.name == kept for version in versions[keep_last:]):
            _echo(f"kept {name} version {kept}: {why}")
    for version in doomed:
        if not dry_run:
            dataset.remove_version(version)
        _echo(f"{'would remove' if dry_run else 'removed'} {name} version {version.name}")
    remaining = len(versions) - len(doomed)
    if dry_run:
        _echo(f"{name}: {remaining} version(s) of {len(versions)} would remain (dry run: nothing removed)")
    else:
        _echo(f"{name}: {remaining} version(s) kept of {len(versions)}")


def _older(saved_at: float | None, now: float, days: float) -> bool:
    # Unknown age (a filesystem without times): kept.
    return saved_at is not None and now - saved_at > days * 86400


@keras_commands.command(name="diff")
@click.argument("name")
@click.argument("first")
@click.argument("second")
@_ENV
@_JSON
def diff_versions(name: str, first: str, second: str, env: str | None, as_json: bool) -> None:
    """Compare versions FIRST and SECOND of NAME, layer by layer: groups added
    or removed, shapes changed, and the largest absolute weight difference.
    Each row names the layer as it was named (where the file's config says)
    and Keras's group in the file."""
    dataset = _entry(name, env, None)
    rows = _answer(
        lambda: dataset.compare(first, second), failing=f"cannot compare {name} {first} and {second}: "
    )
    _print(rows, ["layer", "group", "change"], as_json, title=f"{name}: {first} -> {second}")


def _answer(ask: Any, failing: str = "") -> Any:
    """What the dataset answers; its DatasetError (no such version, not
    versioned, not applicable, damaged) as the command's one-line failure."""
    from kedro.io import DatasetError

    try:
        return ask()
    except DatasetError as exc:
        raise _Failure(f"{failing}{_reason(exc)}") from exc


def _our_entries(env: str | None) -> list[tuple[str, Any]]:
    catalog = _catalog(env)
    # The entries written out, and those a dataset factory gives the
    # pipelines' datasets: only a catalog with factories needs the pipelines
    # (importing them imports their nodes' imports: TensorFlow, seconds).
    names = set(catalog.keys())
    if _has_dataset_factories(catalog):
        from kedro.framework.project import pipelines

        names |= {name for pipeline in pipelines.values() for name in pipeline.datasets()}
    found = []
    for name in sorted(names):
        dataset = catalog.get(name) if not name.startswith("params:") and name != "parameters" else None
        if dataset is not None and type(dataset).__module__.startswith("kedro_keras."):
            found.append((name, dataset))
    return found


def _has_dataset_factories(catalog: Any) -> bool:
    """Whether the project's catalog.yml declares dataset factory patterns
    (Kedro's own catch-all for unnamed datasets does not count). If Kedro's
    resolver changes shape, assume it does: listing then imports the pipelines."""
    resolver = getattr(catalog, "config_resolver", None)
    patterns = getattr(resolver, "_dataset_patterns", None)
    catch_all = getattr(resolver, "_user_catch_all_pattern", None)
    if not isinstance(patterns, dict) or not isinstance(catch_all, dict):
        return True
    return bool(patterns or catch_all)


def _entry(name: str, env: str | None, version: str | None) -> Any:
    from kedro.io.core import AbstractVersionedDataset, Version

    # A version pinned through the catalog's public get(): a copy of the entry, as --load-versions makes.
    dataset = _catalog(env).get(name, version=Version(version, None) if version else None)
    if dataset is None:  # a dataset factory's entries too are found by get()
        raise _Failure(f"'{name}' is not an entry of this project's catalog.")
    if not type(dataset).__module__.startswith("kedro_keras."):
        raise _Failure(f"'{name}' is a {type(dataset).__name__}, not a kedro-keras dataset.")
    if version and not (isinstance(dataset, AbstractVersionedDataset) and dataset.keeps_versions):
        # Otherwise the newest file would be read and reported as if it were the version asked for.
        raise _Failure(
            f"'{name}' keeps no Kedro versions, so --version does not apply to it "
            "(versioned: true entries and histories have them)."
        )
    return dataset


def _catalog(env: str | None) -> Any:
    from pathlib import Path

    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    project = Path.cwd()
    bootstrap_project(project)  # applies the project's logging config again: new handlers
    _logs_to_stderr()
    context = KedroSession.create(project_path=project, env=env).load_context()
    if hasattr(context, "_pipelines_to_validate"):
        # Kedro validates parameters against every pipeline's typed nodes while
        # it builds the catalog, importing the pipelines and so their nodes'
        # imports (TensorFlow: 5 s of `inspect NAME` in the digits example).
        # Our commands need neither; the session scopes validation this way.
        context._pipelines_to_validate = []
    catalog = context.catalog
    _logs_to_stderr()
    return catalog


def _rows(dataset: Any) -> dict[str, str]:
    try:
        return dict(dataset.preview()["data"])
    except Exception as exc:  # noqa: BLE001 - one unreadable entry must not hide the others
        return {"path": "?", "versions": f"could not read: {exc}"}


def _shown(value: Any) -> str:
    """``value`` as one line of plain text: control characters (newlines,
    tabs, ESC, bidirectional overrides) shown escaped, nothing cut off."""
    from kedro_keras._log import printable

    text = str(value)
    return printable(text, limit=len(text))


def _reason(exc: BaseException) -> str:
    # Not cut at its first newline: a file's name quoted in it may hold one.
    return str(exc).strip() or type(exc).__name__


def _echo(text: str, err: bool = False) -> None:
    click.echo(_shown(text), err=err)


class _Failure(click.ClickException):
    """A non-zero exit with a one-line reason, which may quote a file."""

    def __init__(self, message: str) -> None:
        super().__init__(_shown(message))


def _print(rows: list[dict[str, str]], columns: list[str], as_json: bool, title: str) -> None:
    # Escaped for JSON too: a script printing a value must not send a file's escape sequences on.
    rows = [{column: _shown(row[column]) for column in columns} for row in rows]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        # Text cells: rich reads no markup ([red], [link=...]) nor emoji codes in them.
        table = Table(title=Text(_shown(title)))
        for column in columns:
            table.add_column(column, overflow="fold")  # wrapped, not cut: a path's end tells versions apart
        for row in rows:
            table.add_row(*(Text(row[column]) for column in columns))
        Console().print(table)
        return
    for row in rows:  # piped: one tab-separated line per row
        click.echo("\t".join(row[column] for column in columns))
