"""``kedro keras``: the project's Keras models from the command line.

    kedro keras list                  every kedro-keras entry: type, path, versions, size, saved with
    kedro keras inspect NAME          the entry's preview (what Kedro-Viz shows) as a table
    kedro keras verify NAME           the checksums a load would check, without building the model

A ``kedro.project_commands`` plugin. Kedro imports this module for every
``kedro`` command in a project, so it imports only click here; Kedro's
session, rich and the datasets are imported when a command runs.
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
    from kedro_keras._verify import verify_dataset

    dataset = _entry(name, env, version)
    try:
        what = verify_dataset(dataset)
    except Exception as exc:  # noqa: BLE001 - the command's answer is the message
        click.echo(f"{name}: DAMAGED: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{name}: intact ({what})")


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
    catalog = _catalog(env, {name: version} if version else None)
    dataset = catalog.get(name)  # a dataset factory's entries too
    if dataset is None:
        raise click.ClickException(f"'{name}' is not an entry of this project's catalog.")
    if not type(dataset).__module__.startswith("kedro_keras."):
        raise click.ClickException(f"'{name}' is a {type(dataset).__name__}, not a kedro-keras dataset.")
    return dataset


def _catalog(env: str | None, load_versions: dict[str, str] | None = None) -> Any:
    from pathlib import Path

    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    project = Path.cwd()
    bootstrap_project(project)
    session = KedroSession.create(project_path=project, env=env)
    return session.load_context().catalog if not load_versions else _with_versions(session, load_versions)


def _with_versions(session: Any, load_versions: dict[str, str]) -> Any:
    context = session.load_context()
    return context._get_catalog(load_versions=load_versions)


def _rows(dataset: Any) -> dict[str, str]:
    try:
        return dict(dataset.preview()["data"])
    except Exception as exc:  # noqa: BLE001 - one unreadable entry must not hide the others
        return {"path": "?", "versions": f"could not read: {exc}"}


def _print(rows: list[dict[str, str]], columns: list[str], as_json: bool, title: str) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*(str(row[column]) for column in columns))
        Console().print(table)
        return
    for row in rows:  # piped: one tab-separated line per row
        click.echo("\t".join(str(row[column]) for column in columns))
