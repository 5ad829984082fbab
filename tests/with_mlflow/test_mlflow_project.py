"""A project made by `kedro new`, with kedro-mlflow's hooks (`kedro mlflow
init`) pointing at the real tracking server of mlflow_support.py: each
`kedro run` is an MLflow run that logs the model and its ONNX export and
registers the model; a later node of the same run reads both back through
the catalog; the model moves from the training node to the next in memory,
as the same object (a `copy_mode: assign` dataset factory)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow_support import mlflow_server  # noqa: F401 - a fixture, used by name

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from e2e_support import kedro, kedro_new, overlay

from kedro_keras import KerasMlflowDataset

OVERLAY = Path(__file__).resolve().parent / "mlflow_project"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mlflow_server):
    project = kedro_new(tmp_path_factory.mktemp("kedro-new"), "kk_mlflow")
    overlay(OVERLAY, project)
    kedro(project, "mlflow", "init")
    settings = project / "conf" / "local" / "mlflow.yml"
    text = settings.read_text()
    assert "mlflow_tracking_uri: null" in text, text[:500]
    settings.write_text(
        text.replace("mlflow_tracking_uri: null", f"mlflow_tracking_uri: {mlflow_server.url}")
    )
    reports = []
    for seed in (1, 2):
        kedro(project, "run", "--params", f"seed={seed}")
        reports.append(json.loads((project / "data" / "08_reporting" / "report.json").read_text()))
    return reports


def test_each_kedro_run_logs_registers_and_reads_back_its_model(runs):
    client = mlflow.MlflowClient()
    for report in runs:
        assert report["same_object"] is True  # no deep copy between the nodes
        np.testing.assert_array_equal(report["reloaded"], report["predictions"])
        np.testing.assert_allclose(report["onnx"], report["predictions"], rtol=1e-5, atol=1e-6)
        files = sorted(entry.path for entry in client.list_artifacts(report["run_id"], "classifier"))
        assert files == [
            "classifier/model.keras",
            "classifier/model.onnx",
            "classifier/model.onnx.manifest.json",
        ]
        # The run was kedro-mlflow's: it logged the parameters too.
        assert client.get_run(report["run_id"]).data.params["seed"] in ("1", "2")
    versions = {v.version: v.run_id for v in client.search_model_versions("name='kk-mlflow-classifier'")}
    assert versions == {"1": runs[0]["run_id"], "2": runs[1]["run_id"]}
    assert client.get_model_version_by_alias("kk-mlflow-classifier", "champion").version == "2"


def test_a_notebook_loads_the_champion_through_the_same_catalog_entry(runs):
    """The entry as the project's catalog.yml has it, loaded outside any run
    (a notebook, a serving job): the registry's champion, the second run's model."""
    import keras
    import yaml

    entry = yaml.safe_load((OVERLAY / "conf" / "base" / "catalog.yml").read_text())["classifier"]
    entry.pop("type")
    sys.path.insert(0, str(OVERLAY / "src"))  # the project's registered Scale layer
    try:
        import kk_mlflow.nodes  # noqa: F401

        model = KerasMlflowDataset(**entry).load()
    finally:
        sys.path.remove(str(OVERLAY / "src"))
    assert isinstance(model, keras.Model)
    x = np.random.default_rng(7).random((8, 6), dtype=np.float32)
    np.testing.assert_array_equal(
        model.predict(x, verbose=0), np.asarray(runs[1]["predictions"], dtype=np.float32)
    )
