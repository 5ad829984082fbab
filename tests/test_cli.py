"""cli: what the commands read, apart from the Kedro project around them
(tests/e2e runs them in real projects, as a user types them)."""

from __future__ import annotations

import s3fs
from kedro.io.core import Version

from kedro_keras import KerasModelDataset


def test_prune_counts_a_version_saved_by_another_process_since_the_last_listing(
    s3_bucket, s3_credentials, trained_model
):
    """A long-lived process (a notebook) lists the versions, another process
    saves one more: the next prune must see both, not s3fs's cached listing."""
    dataset = KerasModelDataset(
        filepath=f"{s3_bucket}/model.keras", credentials=s3_credentials, version=Version(None, None)
    )
    dataset.save(trained_model)
    assert len(dataset.stored_versions()) == 1

    # "Another process": a filesystem of its own, not the one fsspec shares in this process.
    elsewhere = s3fs.S3FileSystem(**s3_credentials, skip_instance_cache=True)
    (first,) = elsewhere.ls(f"{s3_bucket}/model.keras")
    newer = "2999-01-01T00.00.00.000Z"
    elsewhere.copy(f"{first}/model.keras", f"{s3_bucket}/model.keras/{newer}/model.keras")

    versions = [version.name for version in dataset.stored_versions()]
    assert versions[0] == newer and len(versions) == 2


def test_json_goes_alone_to_stdout_and_the_logs_to_stderr(tmp_path, trained_model, monkeypatch):
    """Kedro's template logging config prints to stdout, and building the
    catalog logs ('No typed parameter requirements found'): `--json` printed
    those lines before the JSON and json.load failed (#30)."""
    import json
    import logging
    import sys
    from types import SimpleNamespace

    from click.testing import CliRunner
    from kedro.io import DataCatalog

    from kedro_keras import cli

    dataset = KerasModelDataset(filepath=str(tmp_path / "m.keras"))
    dataset.save(trained_model)
    kedro_logger = logging.getLogger("kedro.test_cli")

    def bootstrap_project(project):  # as Kedro applies the template's logging config: a handler on stdout
        kedro_logger.addHandler(logging.StreamHandler(sys.stdout))
        monkeypatch.setattr(kedro_logger, "level", logging.INFO)

    class Session:  # building the catalog logs, as Kedro's parameter validator does
        @classmethod
        def create(cls, project_path, env):
            return cls()

        def load_context(self):
            kedro_logger.info("No typed parameter requirements found, returning original parameters")
            return SimpleNamespace(catalog=DataCatalog({"m": dataset}))

    monkeypatch.setattr("kedro.framework.startup.bootstrap_project", bootstrap_project)
    monkeypatch.setattr("kedro.framework.session.KedroSession", Session)
    try:
        result = CliRunner().invoke(cli.commands, ["keras", "inspect", "m", "--json"])
    finally:
        for handler in list(kedro_logger.handlers):
            kedro_logger.removeHandler(handler)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {row["property"] for row in rows} >= {"path", "file size"}
    assert "No typed parameter requirements found" in result.stderr  # the log line was written, elsewhere


def test_a_long_path_is_wrapped_in_a_terminal_not_cut_off(monkeypatch, capsys):
    """In a terminal the path column was cut with an ellipsis, losing the
    informative end (the version, the file) (#30)."""
    import re
    import sys

    from kedro_keras import cli

    monkeypatch.setenv("COLUMNS", "60")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    path = "s3://bucket/" + "deeply/nested/" * 4 + "2026-12-06T17.04.19.000Z/classifier.keras"
    cli._print([{"name": "classifier_model", "path": path}], ["name", "path"], False, title="entries")
    shown = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)  # rich's bold header
    assert max(len(line) for line in shown.splitlines()) <= 60
    assert path in re.sub(r"[│┃\s]", "", shown)  # every character, wrapped over lines


def test_inspect_shows_a_quantized_models_mode(tmp_path, monkeypatch):
    """`kedro keras inspect` prints the entry's preview: a quantized model's
    mode is among its rows, read from the saved config without building it."""
    import json
    from types import SimpleNamespace

    from click.testing import CliRunner
    from kedro.io import DataCatalog

    import quantized_models
    from kedro_keras import cli

    dataset = KerasModelDataset(filepath=str(tmp_path / "m.keras"))
    dataset.save(quantized_models.build("layers_stack", "int8"))

    class Session:
        @classmethod
        def create(cls, project_path, env):
            return cls()

        def load_context(self):
            return SimpleNamespace(catalog=DataCatalog({"m": dataset}))

    monkeypatch.setattr("kedro.framework.startup.bootstrap_project", lambda project: None)
    monkeypatch.setattr("kedro.framework.session.KedroSession", Session)
    result = CliRunner().invoke(cli.commands, ["keras", "inspect", "m", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["property"]: row["value"] for row in json.loads(result.stdout)}
    assert rows["quantization"] == "int8 (4 layers)" and rows["dtype policy"] == "float32"
