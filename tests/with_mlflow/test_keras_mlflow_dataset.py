"""``KerasMlflowDataset`` against a real MLflow tracking server
(mlflow_support.py): every kedro-keras dataset's files in a run, on a local
artifact store, on S3 written by the client, and on S3 behind the server's
artifact proxy; the Model Registry by alias, number and newest; what a
registry entry may not make a load do."""

from __future__ import annotations

from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from kedro.io import DatasetError
from mlflow_support import mlflow_server  # noqa: F401 - a fixture, used by name

from kedro_keras import KerasExportDataset, KerasMlflowDataset, KerasModelDataset, KerasWeightsDataset
from kedro_keras._dataset import mlflow_runs

X = np.random.default_rng(0).random((16, 6), dtype=np.float32)

# Each kedro-keras dataset once, as a catalog entry's `dataset:` (path inside the run).
DATASETS = {
    "model": {"type": "kedro_keras.KerasModelDataset", "artifact_path": "clf/model.keras"},
    "weights": {"type": "kedro_keras.KerasWeightsDataset", "artifact_path": "clf/model.weights.h5"},
    "sharded": {
        "type": "kedro_keras.KerasWeightsDataset",
        "artifact_path": "clf/model.weights.json",
        "save_args": {"max_shard_size": 0.000004},
    },
    "history": {"type": "kedro_keras.KerasTimestampedModelDataset", "artifact_path": "clf/history"},
    "onnx": {"type": "kedro_keras.KerasExportDataset", "artifact_path": "clf/model.onnx"},
    "openvino": {
        "type": "kedro_keras.KerasExportDataset",
        "artifact_path": "clf/openvino",
        "format": "openvino",
    },
    "saved_model": {
        "type": "kedro_keras.KerasExportDataset",
        "artifact_path": "clf/saved_model",
        "load_args": {"safe_mode": False},
    },
}


def wrap(spec: dict) -> dict:
    """A DATASETS spec as KerasMlflowDataset's arguments."""
    dataset = {key: value for key, value in spec.items() if key != "artifact_path"}
    return {"dataset": dataset, "artifact_path": spec["artifact_path"]}


def trained(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)], name="clf"
    )
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(seed)
    model.fit(
        rng.random((32, 6), dtype=np.float32), rng.random((32, 3), dtype=np.float32), epochs=2, verbose=0
    )
    return model


def predictions(model) -> np.ndarray:
    return np.asarray(model.predict(X, verbose=0) if hasattr(model, "predict") else model(X))


def run_files(run_id: str, path: str = "") -> list[str]:
    """Every file of the run's artifacts, as MLflow lists them."""
    found = []
    for entry in mlflow.MlflowClient().list_artifacts(run_id, path or None):
        found.extend(run_files(run_id, entry.path) if entry.is_dir else [entry.path])
    return sorted(found)


def local_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def shape(names: list[str]) -> list[str]:
    """File names with their generated parts (hex ids, timestamps) blanked."""
    import re

    return sorted(re.sub(r"[0-9a-f]{8,}|\d{4}-\d\d-\d\dT[\d.]+Z", "*", name) for name in names)


@pytest.mark.parametrize("store", ["local", "s3", "proxied-s3"])
@pytest.mark.parametrize("kind", list(DATASETS))
def test_every_dataset_logs_all_its_files_and_loads_back_exactly(mlflow_server, store, kind, tmp_path):
    model = trained()
    entry = DATASETS[kind]
    with mlflow.start_run(experiment_id=mlflow_server.experiments[store]) as run:
        KerasMlflowDataset(**wrap(entry)).save(model)
        assert run.info.artifact_uri.startswith(
            {"local": "file:", "s3": "s3:", "proxied-s3": "mlflow-artifacts:"}[store]
        )
        # Within the run (the next node's load): the active run's files.
        in_run = KerasMlflowDataset(**wrap(entry)).load()
    assert mlflow.active_run() is None
    # The same files as the dataset writes on its own, every one of them in the run.
    plain = {key: value for key, value in entry.items() if key not in ("type", "load_args", "artifact_path")}
    plain_class = {
        "model": KerasModelDataset,
        "onnx": KerasExportDataset,
        "openvino": KerasExportDataset,
        "saved_model": KerasExportDataset,
    }.get(kind, KerasWeightsDataset)
    if kind == "history":
        from kedro_keras import KerasTimestampedModelDataset as plain_class
    plain_class(**{**plain, "filepath": str(tmp_path / "plain" / entry["artifact_path"])}).save(model)
    logged = run_files(run.info.run_id)
    assert shape(logged) == shape(local_files(tmp_path / "plain")), logged
    # Later, from anywhere: the run named by id.
    later = KerasMlflowDataset(**wrap(entry), run_id=run.info.run_id).load()
    np.testing.assert_array_equal(predictions(later), predictions(model))
    np.testing.assert_array_equal(predictions(in_run), predictions(model))
    # What MLflow itself downloads of the run is a complete save the plain dataset loads.
    copy = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(tmp_path / "copy")))
    load_args = entry.get("load_args", {})
    args = {k: v for k, v in plain.items() if k != "save_args"}
    from_copy = plain_class(
        **{
            **args,
            "filepath": str(copy / entry["artifact_path"]),
            **({"load_args": load_args} if load_args else {}),
        }
    ).load()
    np.testing.assert_array_equal(predictions(from_copy), predictions(model))


# -- the Model Registry --------------------------------------------------------

MODEL_ENTRY = DATASETS["model"]
MODEL_TYPE = {"type": "kedro_keras.KerasModelDataset"}


def register_run(server, name: str, seed: int, alias: str | None = "champion", store: str = "local") -> str:
    """A run that trains a model and saves it through a registering entry."""
    registered = {"name": name, **({"alias": alias} if alias else {})}
    with mlflow.start_run(experiment_id=server.experiments[store]) as run:
        KerasMlflowDataset(**wrap(MODEL_ENTRY), registered_model=registered).save(trained(seed))
    return run.info.run_id


@pytest.mark.parametrize("store", ["local", "proxied-s3"])
def test_registered_versions_load_by_alias_number_and_newest(mlflow_server, store):
    name = f"digits-{store}"
    first, second = (register_run(mlflow_server, name, seed, store=store) for seed in (1, 2))
    client = mlflow.MlflowClient()
    versions = {v.version: v for v in client.search_model_versions(f"name='{name}'")}
    assert sorted(versions) == ["1", "2"]
    assert [versions["1"].run_id, versions["2"].run_id] == [first, second]
    assert versions["2"].tags["kedro_keras.dataset"] == "KerasModelDataset"
    assert versions["2"].tags["kedro_keras.backend"] == keras.backend.backend()
    assert versions["2"].source.endswith(f"{second}/artifacts/clf/model.keras")
    expected = {seed: predictions(trained(seed)) for seed in (1, 2)}

    def load(**registered):
        return predictions(
            KerasMlflowDataset(**wrap(MODEL_ENTRY), registered_model={"name": name, **registered}).load()
        )

    # The second save moved the alias to its version.
    np.testing.assert_array_equal(load(alias="champion"), expected[2])
    np.testing.assert_array_equal(load(version=1), expected[1])
    np.testing.assert_array_equal(load(), expected[2])
    # Someone promotes version 1 in MLflow's UI: the next load follows the alias.
    client.set_registered_model_alias(name, "champion", "1")
    np.testing.assert_array_equal(load(alias="champion"), expected[1])


def test_a_version_pointing_outside_its_run_is_refused(mlflow_server):
    """Registry entries are data anyone with write access can edit. (MLflow
    itself refuses a local source outside the run; not an S3 one.)"""
    name = "tampered"
    run_id = register_run(mlflow_server, name, 1, store="s3")
    other = register_run(mlflow_server, "elsewhere", 2, store="s3")
    client = mlflow.MlflowClient()
    elsewhere = client.get_model_version("elsewhere", "1").source
    tags = {"kedro_keras.dataset": "KerasModelDataset"}
    root = client.get_run(run_id).info.artifact_uri
    for source in (
        elsewhere,
        f"s3://{mlflow_server.bucket}/uploads/model.keras",
    ):
        client.create_model_version(name, source=source, run_id=run_id, tags=tags)
    for version in (2, 3):
        dataset = KerasMlflowDataset(**wrap(MODEL_ENTRY), registered_model={"name": name, "version": version})
        with pytest.raises(
            DatasetError,
            match=rf"version {version} of 'tampered' points at .*outside the artifacts of its run {run_id}",
        ):
            dataset.load()
    # MLflow's server refuses a source with '..' in it; another registry might not.
    assert not mlflow_runs.inside(f"{root}/clf/../../../{other}/artifacts/clf/model.keras", root)
    assert mlflow_runs.inside(f"{root}/clf/model.keras", root)
    assert not mlflow_runs.inside(f"{root}-other/clf/model.keras", root)
    # Version 1, which the entry registered, still loads.
    loaded = KerasMlflowDataset(**wrap(MODEL_ENTRY), registered_model={"name": name, "version": 1}).load()
    np.testing.assert_array_equal(predictions(loaded), predictions(trained(1)))


def test_a_version_another_dataset_wrote_or_no_kedro_keras_version_is_refused(mlflow_server):
    with mlflow.start_run(experiment_id=mlflow_server.experiments["local"]):
        KerasMlflowDataset(**wrap(DATASETS["weights"]), registered_model="weights-only").save(trained())
    entry = KerasMlflowDataset(**wrap(MODEL_ENTRY), registered_model="weights-only")
    with pytest.raises(
        DatasetError,
        match="version 1 of 'weights-only' was written by KerasWeightsDataset; this entry loads with KerasModelDataset",
    ):
        entry.load()
    run_id = register_run(mlflow_server, "foreign", 1)
    client = mlflow.MlflowClient()
    client.create_model_version(
        "foreign", source=client.get_model_version("foreign", "1").source, run_id=run_id
    )
    with pytest.raises(DatasetError, match="version 2 of 'foreign' was not written by kedro-keras"):
        KerasMlflowDataset(**wrap(MODEL_ENTRY), registered_model={"name": "foreign", "version": 2}).load()


def test_safe_mode_holds_for_registered_models(mlflow_server):
    """A registered model is loaded by the wrapped dataset's own load: a
    Lambda layer (marshalled bytecode) is refused as it is anywhere else."""
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Lambda(lambda x: x * 2.0), keras.layers.Dense(3)]
    )
    with mlflow.start_run(experiment_id=mlflow_server.experiments["s3"]):
        KerasMlflowDataset(
            **wrap(MODEL_ENTRY), registered_model={"name": "lambda", "alias": "champion"}
        ).save(model)
    entry = KerasMlflowDataset(**wrap(MODEL_ENTRY), registered_model={"name": "lambda", "alias": "champion"})
    with pytest.raises(DatasetError, match="(?i)lambda"):
        entry.load()
    trusted = {**MODEL_ENTRY, "load_args": {"safe_mode": False}}
    loaded = KerasMlflowDataset(
        **wrap(trusted), registered_model={"name": "lambda", "alias": "champion"}
    ).load()
    np.testing.assert_array_equal(predictions(loaded), predictions(model))


def test_missing_registry_entries_and_runs_say_what_is_missing(mlflow_server):
    with pytest.raises(DatasetError, match=r"has no 'nobody' alias 'champion'"):
        KerasMlflowDataset(
            **wrap(MODEL_ENTRY), registered_model={"name": "nobody", "alias": "champion"}
        ).load()
    with pytest.raises(
        DatasetError, match="no MLflow run is active and the entry names neither run_id nor registered_model"
    ):
        KerasMlflowDataset(**wrap(MODEL_ENTRY)).load()
    assert not KerasMlflowDataset(**wrap(MODEL_ENTRY)).exists()
    with pytest.raises(DatasetError, match="the registry numbers new versions itself"):
        KerasMlflowDataset(**wrap(MODEL_ENTRY), registered_model={"name": "x", "version": 2}).save(trained())


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            {"dataset": MODEL_TYPE, "artifact_path": "/abs/model.keras"},
            "must be a relative path inside the MLflow run",
        ),
        (
            {"dataset": MODEL_TYPE, "artifact_path": "../model.keras"},
            "must be a relative path inside the MLflow run",
        ),
        (
            {"dataset": MODEL_TYPE, "artifact_path": "s3://b/model.keras"},
            "must be a relative path inside the MLflow run",
        ),
        (
            {"dataset": {**MODEL_TYPE, "filepath": "data/06_models/model.keras"}, "artifact_path": "m.keras"},
            "give the path inside the MLflow run as artifact_path on the entry itself",
        ),
        (
            {"dataset": {**MODEL_TYPE, "versioned": True}, "artifact_path": "m.keras"},
            "versioned by its MLflow run",
        ),
        (
            {"dataset": {"type": "pandas.CSVDataset"}, "artifact_path": "a.csv"},
            "cannot use dataset|wraps kedro-keras datasets",
        ),
        ({"dataset": {"type": "kedro.io.MemoryDataset"}, "artifact_path": "m"}, "wraps kedro-keras datasets"),
        (
            {"dataset": {**MODEL_TYPE, "credentials": {}}, "artifact_path": "m.keras"},
            "give credentials on the KerasMlflowDataset entry itself",
        ),
        (
            {**wrap(MODEL_ENTRY), "registered_model": {"name": "m", "alias": "a", "version": 1}},
            "both alias 'a' and version 1",
        ),
        (
            {**wrap(MODEL_ENTRY), "registered_model": {"name": "m", "stage": "Production"}},
            "takes name, alias and version",
        ),
        ({**wrap(MODEL_ENTRY), "registered_model": {"name": "m", "version": 0}}, "must be a version number"),
    ],
)
def test_entries_that_cannot_work_are_refused_when_the_catalog_is_built(arguments, message):
    with pytest.raises(DatasetError, match=message):
        KerasMlflowDataset(**arguments)


def test_kedro_mlflow_artifact_wrapper_logs_one_path_where_ours_logs_every_file(mlflow_server, tmp_path):
    """What docs/mlflow.md says of kedro-mlflow's MlflowArtifactDataset
    around our datasets: it logs the one path the entry names. A weights
    entry's architecture, a sharded entry's shards, a folder's contents
    beyond it are not in the run."""
    from kedro_mlflow.io.artifacts import MlflowArtifactDataset

    model = trained()
    logged = {}
    for kind in ("model", "weights", "sharded"):
        entry = {
            **wrap(DATASETS[kind])["dataset"],
            "filepath": str(tmp_path / kind / DATASETS[kind]["artifact_path"]),
        }
        with mlflow.start_run(experiment_id=mlflow_server.experiments["local"]) as run:
            MlflowArtifactDataset(dataset=entry).save(model)
        logged[kind] = run_files(run.info.run_id)
    assert logged == {
        "model": ["model.keras"],
        "weights": ["model.weights.h5"],
        "sharded": ["model.weights.json"],
    }


def test_checkpoints_are_written_into_the_run_and_resume_from_it(mlflow_server):
    entry = {
        "dataset": {"type": "kedro_keras.KerasCheckpointDataset", "keep_last": 2},
        "artifact_path": "ckpt",
    }
    rng = np.random.default_rng(0)
    x, y = rng.random((32, 6), dtype=np.float32), rng.random((32, 3), dtype=np.float32)
    with mlflow.start_run(experiment_id=mlflow_server.experiments["s3"]) as run:
        checkpoints = KerasMlflowDataset(**entry).load()
        assert checkpoints.restore() is None
        model = trained()
        model.fit(x, y, epochs=3, verbose=0, callbacks=[checkpoints.callback()])
    assert [name for name in run_files(run.info.run_id) if name.endswith(".keras")] == [
        "ckpt/ckpt-e00002-s0000000.keras",
        "ckpt/ckpt-e00003-s0000000.keras",
    ]
    again = KerasMlflowDataset(**entry, run_id=run.info.run_id).load()
    resumed = again.restore(continue_finished=True)
    assert again.initial_epoch == 3
    np.testing.assert_array_equal(predictions(resumed), predictions(model))
    with mlflow.start_run(experiment_id=mlflow_server.experiments["proxied-s3"]):
        with pytest.raises(
            DatasetError,
            match="which only MLflow's server reaches, and a checkpoint is written as training goes",
        ):
            KerasMlflowDataset(**entry).load()


def test_kedro_mlflow_wrapper_cannot_log_an_s3_entry(mlflow_server):
    """docs/mlflow.md says so: its save fails, and nothing is in the run."""
    from kedro_mlflow.io.artifacts import MlflowArtifactDataset

    entry = {
        "type": "kedro_keras.KerasModelDataset",
        "filepath": f"s3://{mlflow_server.bucket}/kedro-mlflow/model.keras",
        "credentials": {"client_kwargs": {"endpoint_url": mlflow_server.s3_endpoint}},
    }
    with mlflow.start_run(experiment_id=mlflow_server.experiments["local"]) as run:
        with pytest.raises(DatasetError):
            MlflowArtifactDataset(dataset=entry).save(trained())
    assert run_files(run.info.run_id) == []
