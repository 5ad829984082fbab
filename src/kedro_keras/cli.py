"""``kedro keras``: the project's Keras models from the command line.

    kedro keras list                  every kedro-keras entry: type, path, versions, size, saved with
    kedro keras inspect NAME          the entry's preview (what Kedro-Viz shows) as a table
    kedro keras verify NAME           the checksums a load would check, without building the model
    kedro keras prune NAME --keep-last N [--older-than DAYS] [--dry-run]
                                      remove old versions (never the newest)
    kedro keras diff NAME V1 V2       per layer: shape changes, largest absolute weight difference

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
    rows = [{"property": key, "value": value} for key, value in dataset.preview()["data"]]
    _print(rows, ["property", "value"], as_json, title=name)


@keras_commands.command(name="verify")
@click.argument("name")
@click.option("--version", "version", default=None, help="A version to verify instead of the newest.")
@_ENV
def verify_entry(name: str, version: str | None, env: str | None) -> None:
    """Check NAME's stored file against its checksums, reading it once,
    without building the model. Exits 1 if it is damaged."""
    from kedro_keras._dataset.verify import verify_dataset

    dataset = _entry(name, env, version)
    try:
        what = verify_dataset(dataset)
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
    versions = _versions_of(dataset, name)  # newest first: (version, remove, seconds since saved)
    now = time.time()
    doomed = [
        (version, remove)
        for version, remove, saved_at in versions[keep_last:]
        if older_than is None or (saved_at is not None and now - saved_at > older_than * 86400)
    ]
    for version, remove in doomed:
        if not dry_run:
            remove()
        _echo(f"{'would remove' if dry_run else 'removed'} {name} version {version}")
    _echo(f"{name}: {len(versions) - (0 if dry_run else len(doomed))} version(s) kept of {len(versions)}")


@keras_commands.command(name="diff")
@click.argument("name")
@click.argument("first")
@click.argument("second")
@_ENV
@_JSON
def diff_versions(name: str, first: str, second: str, env: str | None, as_json: bool) -> None:
    """Compare versions FIRST and SECOND of NAME, layer by layer: groups added
    or removed, shapes changed, and the largest absolute weight difference."""
    from kedro_keras._dataset.verify import diff_files, open_regular_file

    dataset = _entry(name, env, None)
    paths = [_version_path(dataset, name, version) for version in (first, second)]
    location = dataset._location
    try:
        with open_regular_file(location, paths[0]) as one, open_regular_file(location, paths[1]) as other:
            rows = diff_files(one, other)
    except Exception as exc:  # the command's answer is the message
        raise _Failure(f"cannot compare {name} {first} and {second}: {_reason(exc)}") from exc
    _print(rows, ["group", "change"], as_json, title=f"{name}: {first} -> {second}")


def _version_path(dataset: Any, name: str, version: str) -> Any:
    from kedro.io import DatasetError

    if type(dataset).__name__ == "KerasCheckpointDataset":
        try:
            path = dataset._model_path(version)
        except DatasetError as exc:  # not a checkpoint name at all (and never a path)
            raise _Failure(f"'{name}' has no version '{version}': {exc}") from exc
    elif getattr(dataset, "_version", None) is None:
        raise _Failure(f"'{name}' keeps one file, not versions: add versioned: true to compare them.")
    else:
        path = dataset._get_versioned_path(version)
    if not dataset._location.exists(path):
        raise _Failure(f"'{name}' has no version '{version}' (kedro keras list shows them).")
    return path


def _versions_of(dataset: Any, name: str) -> list[tuple[str, Any, float | None]]:
    """Newest first: each version, how to remove it, when it was saved."""
    kind = type(dataset).__name__
    location = dataset._location
    if kind == "KerasCheckpointDataset":
        return [(v, lambda v=v: dataset._remove(v), None) for v in dataset.versions()]
    if getattr(dataset, "_version", None) is None:
        raise _Failure(f"'{name}' keeps one file, not versions: add versioned: true to prune it.")
    from kedro_keras.keras_model_dataset import saved_versions_newest_first

    # Listed afresh: versions saved since this process last looked count before any is removed.
    found = []
    for path in saved_versions_newest_first(dataset):
        # A Kedro version is a folder holding the file; a history's version is the file itself.
        target = path if kind == "KerasTimestampedModelDataset" else str(_parent(path))
        found.append(
            (
                dataset._get_version_from_path(path),
                lambda target=target: location.fs.rm(target, recursive=True),
                _saved_at(location, path),
            )
        )
    return found


def _parent(path: str) -> Any:
    from pathlib import PurePosixPath

    return PurePosixPath(path).parent


def _saved_at(location: Any, path: str) -> float | None:
    try:
        modified = location.fs.modified(path)
    except Exception:  # noqa: BLE001 - a filesystem without times: age unknown, kept by --older-than
        return None
    return modified.timestamp()


def _our_entries(env: str | None) -> list[tuple[str, Any]]:
    from kedro.framework.project import pipelines

    catalog = _catalog(env)
    # The entries written out, and those a dataset factory gives the pipelines' datasets.
    names = set(catalog.keys()) | {name for pipeline in pipelines.values() for name in pipeline.datasets()}
    found = []
    for name in sorted(names):
        dataset = catalog.get(name) if not name.startswith("params:") and name != "parameters" else None
        if dataset is not None and type(dataset).__module__.startswith("kedro_keras."):
            found.append((name, dataset))
    return found


def _entry(name: str, env: str | None, version: str | None) -> Any:
    from kedro.io.core import AbstractVersionedDataset, Version

    # A version pinned through the catalog's public get(): a copy of the entry, as --load-versions makes.
    dataset = _catalog(env).get(name, version=Version(version, None) if version else None)
    if dataset is None:  # a dataset factory's entries too are found by get()
        raise _Failure(f"'{name}' is not an entry of this project's catalog.")
    if not type(dataset).__module__.startswith("kedro_keras."):
        raise _Failure(f"'{name}' is a {type(dataset).__name__}, not a kedro-keras dataset.")
    if version and (not isinstance(dataset, AbstractVersionedDataset) or dataset._version is None):
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
    bootstrap_project(project)
    return KedroSession.create(project_path=project, env=env).load_context().catalog


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
            table.add_column(column)
        for row in rows:
            table.add_row(*(Text(row[column]) for column in columns))
        Console().print(table)
        return
    for row in rows:  # piped: one tab-separated line per row
        click.echo("\t".join(row[column] for column in columns))
