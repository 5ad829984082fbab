"""`kedro-keras ARGS`, the commands for scripts, in a fresh `kedro new`
project: stdout holds only the answer (#30). `kedro keras list --json`
printed Kedro's "Using '.../rich_logging.yml' as logging configuration"
line first, logged while Kedro is imported, before any plugin runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from e2e_support import kedro, kedro_new, run

CATALOG = """\
classifier:
  type: kedro_keras.KerasModelDataset
  filepath: data/06_models/classifier.keras
  versioned: true
"""


def test_kedro_keras_list_json_is_only_json_in_a_fresh_project(tmp_path):
    project = kedro_new(tmp_path, "scripted")
    (project / "conf" / "base" / "catalog.yml").write_text(CATALOG)
    script = Path(sys.executable).parent / "kedro-keras"

    listed = run([str(script), "list", "--json"], project)
    rows = json.loads(listed.stdout)
    assert [(row["name"], row["type"]) for row in rows] == [("classifier", "KerasModelDataset")]
    assert "Using" in listed.stderr  # Kedro's line (wrapped by rich), on stderr

    # Through `kedro keras`, Kedro's own line comes first on stdout: the
    # reason for the script (docs/viz-and-cli.md says so).
    through_kedro = kedro(project, "keras", "list", "--json")
    assert "Using" in through_kedro.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(through_kedro.stdout)

    missing = run([str(script), "inspect", "classifier", "--version", "nope"], project, check=False)
    assert missing.returncode == 1 and missing.stdout == ""
