"""End to end on a project made by `kedro new`: the three datasets in a real
catalog (with a dataset factory, import-path builders and custom objects,
credentials by name), driven by `kedro run` in subprocesses, by ParallelRunner
on local disk and on S3, and by a KedroSession in this process.

Every model written is fingerprinted by a node (class, layers, sum of |weights|,
predictions) right after training and again after loading it back through the
catalog, so the tests can tell which model, which version, was loaded.

One project serves the module; the tests read what they need from its outputs
and do not depend on running in a particular order.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

# new_bucket and s3fs_client are fixtures, used by name.
from e2e_support import (  # noqa: F401
    OVERLAY,
    kedro,
    kedro_new,
    new_bucket,
    overlay,
    read_json,
    s3_credentials_yaml,
    s3fs_client,
)

LOCAL_DENSE = ["reg_model", "reg_weights", "reg_history"]
LOCAL_TINY = ["sub_model", "sub_weights", "sub_weights_json"]
REMOTE = ["remote_model", "remote_weights", "remote_history"]
SEEDS = [1, 2, 3]


@pytest.fixture(scope="module")
def bucket(new_bucket):
    return new_bucket()


@pytest.fixture(scope="module")
def project(tmp_path_factory, s3_endpoint, bucket):
    """kedro new + our files; S3 entries point at a fresh bucket whose
    endpoint and keys are only in conf/local/credentials.yml."""
    path = kedro_new(tmp_path_factory.mktemp("kedro-new"), "kk_e2e")
    overlay(OVERLAY, path, {"{bucket}": bucket})
    (path / "conf" / "local" / "credentials.yml").write_text(s3_credentials_yaml("model_store", s3_endpoint))
    return path


def model_versions(folder: Path) -> list[str]:
    """Kedro's version folders of a versioned file, oldest first."""
    return sorted(p.name for p in folder.iterdir() if (p / folder.name).is_file())


def history_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("model_*.keras"))


@pytest.fixture(scope="module")
def runs(project):
    """Three `kedro run`s with different seeds; what each left behind."""
    models = project / "data" / "06_models"
    found = []
    for seed in SEEDS:
        kedro(project, "run", "--params", f"train.seed={seed}")
        found.append(
            {
                "seed": seed,
                "fingerprints": read_json(project / "data" / "08_reporting" / "fingerprints.json"),
                "model_versions": model_versions(models / "reg.keras"),
                "history": history_files(models / "reg_history"),
            }
        )
    return found


def test_each_run_saves_all_three_entries_and_loads_back_what_it_trained(project, runs):
    for run in runs:
        fp = run["fingerprints"]
        trained = fp["trained_dense"]
        for name in LOCAL_DENSE:
            assert fp[name]["weight_sum"] == trained["weight_sum"], name
            np.testing.assert_allclose(fp[name]["prediction"], trained["prediction"], rtol=1e-6)
            assert fp[name]["layers"] == ["Dense", "Dense", "InputLayer", "Scale"]
    # Different seeds, different models: the fingerprint tells runs apart.
    assert len({run["fingerprints"]["trained_dense"]["weight_sum"] for run in runs}) == len(SEEDS)

    models = project / "data" / "06_models"
    assert (models / "reg.weights.h5").is_file()
    assert (models / "reg.architecture.json").is_file()


def test_repeated_runs_add_versions_and_the_history_keeps_the_last_two(runs):
    # KerasModelDataset, versioned: one more Kedro version folder per run.
    assert [len(run["model_versions"]) for run in runs] == [1, 2, 3]
    assert runs[0]["model_versions"] == runs[1]["model_versions"][:1] == runs[2]["model_versions"][:1]
    # KerasTimestampedModelDataset, keep_last: 2. The third save pruned the first.
    assert [len(run["history"]) for run in runs] == [1, 2, 2]
    assert runs[2]["history"] == [runs[1]["history"][-1], runs[2]["history"][-1]]
    assert runs[0]["history"][0] not in runs[2]["history"]


def test_load_versions_pins_the_whole_model_version(project, runs):
    first_version = runs[0]["model_versions"][0]
    kedro(project, "run", "--pipeline", "evaluate", "--load-versions", f"reg_model:{first_version}")
    evaluated = read_json(project / "data" / "08_reporting" / "eval_fingerprints.json")

    first = runs[0]["fingerprints"]["trained_dense"]["weight_sum"]
    newest = read_json(project / "data" / "08_reporting" / "fingerprints.json")["trained_dense"]["weight_sum"]
    assert first != newest
    assert evaluated["reg_model"]["weight_sum"] == first
    # The entries that were not pinned load their newest copy.
    assert evaluated["reg_weights"]["weight_sum"] == newest
    assert evaluated["reg_history"]["weight_sum"] == newest


def test_load_versions_pins_a_timestamped_history_entry(project):
    """`pinned_history` is a KerasTimestampedModelDataset with versioned: true."""
    folder = project / "data" / "06_models" / "pinned_history"
    trained = []
    for seed in (11, 12):
        kedro(project, "run", "--pipeline", "pinned", "--params", f"train.seed={seed}")
        fingerprints = read_json(project / "data" / "08_reporting" / "pinned_fingerprints.json")
        # In the same run, the node got back the model it had just saved.
        assert fingerprints["pinned_history"]["weight_sum"] == fingerprints["trained_dense"]["weight_sum"]
        trained.append(fingerprints["trained_dense"]["weight_sum"])
    assert trained[0] != trained[1]
    files = history_files(folder)
    assert len(files) == 2
    oldest = files[0].removeprefix("model_").removesuffix(".keras")

    kedro(project, "run", "--pipeline", "pinned_evaluate", "--load-versions", f"pinned_history:{oldest}")
    pinned = read_json(project / "data" / "08_reporting" / "pinned_eval_fingerprints.json")
    assert pinned["pinned_history"]["weight_sum"] == trained[0]

    kedro(project, "run", "--pipeline", "pinned_evaluate")
    newest = read_json(project / "data" / "08_reporting" / "pinned_eval_fingerprints.json")
    assert newest["pinned_history"]["weight_sum"] == trained[1]

    # A version that is not there is refused, naming the ones that are.
    missing = kedro(
        project,
        "run",
        "--pipeline",
        "pinned_evaluate",
        "--load-versions",
        "pinned_history:2001-01-01T00.00.00.000000Z",
        check=False,
    )
    assert missing.returncode != 0
    assert oldest in missing.stdout + missing.stderr


def test_subclassed_model_and_custom_layer_named_by_import_path(project, runs):
    fp = runs[-1]["fingerprints"]
    trained = fp["trained_tiny"]
    assert trained["class"] == "TinyRegressor"
    assert trained["layers"] == ["Dense", "Dense", "Scale"]
    # Whole model (custom_objects map), weights into a builder, and weights
    # into the architecture saved beside them (custom_objects list).
    for name in LOCAL_TINY:
        assert fp[name]["class"] == "TinyRegressor", name
        assert fp[name]["layers"] == ["Dense", "Dense", "Scale"], name
        assert fp[name]["weight_sum"] == trained["weight_sum"], name
        np.testing.assert_allclose(fp[name]["prediction"], trained["prediction"], rtol=1e-6)

    # The import paths in the catalog are what make it load: without them
    # Keras cannot find the classes.
    from kedro.io import DatasetError

    from kedro_keras import KerasModelDataset

    folder = project / "data" / "06_models" / "sub.keras"
    newest = model_versions(folder)[-1]
    bare = KerasModelDataset(filepath=str(folder / newest / "sub.keras"))
    with pytest.raises(DatasetError, match="TinyRegressor"):
        bare.load()


@pytest.fixture
def session_catalog(project):
    """The project's catalog from a KedroSession in this process; leaves
    sys.path and the imported project package as they were."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    saved_path = list(sys.path)
    bootstrap_project(project)
    try:
        with KedroSession.create(project_path=project) as session:
            yield session.load_context().catalog
    finally:
        sys.path[:] = saved_path
        for module in [m for m in sys.modules if m == "kk_e2e" or m.startswith("kk_e2e.")]:
            del sys.modules[module]


def test_kedro_session_catalog_loads_every_entry(project, runs, session_catalog):
    from kk_e2e.nodes import fingerprint, make_data

    x, _ = make_data(0)
    newest = read_json(project / "data" / "08_reporting" / "fingerprints.json")
    loaded = {name: session_catalog.load(name) for name in LOCAL_DENSE + LOCAL_TINY}
    for name, model in loaded.items():
        trained = newest["trained_tiny" if name.startswith("sub") else "trained_dense"]
        assert fingerprint(model, x)["weight_sum"] == trained["weight_sum"], name
    for a, b in [
        ("reg_model", "reg_weights"),
        ("reg_model", "reg_history"),
        ("sub_model", "sub_weights_json"),
    ]:
        for wa, wb in zip(loaded[a].get_weights(), loaded[b].get_weights(), strict=True):
            np.testing.assert_array_equal(wa, wb)

    # catalog.load(name, version=...) pins a version in code too.
    first_version = runs[0]["model_versions"][0]
    first = session_catalog.load("reg_model", version=first_version)
    assert fingerprint(first, x)["weight_sum"] == runs[0]["fingerprints"]["trained_dense"]["weight_sum"]

    history = session_catalog.get("reg_history")
    versions = history.versions()
    assert len(versions) == 2 and versions == sorted(versions, reverse=True)
    older = session_catalog.load("reg_history", version=versions[1])
    assert fingerprint(older, x)["weight_sum"] != fingerprint(loaded["reg_history"], x)["weight_sum"]


def test_parallel_runner_on_local_disk(project, runs):
    models = project / "data" / "06_models"
    before = model_versions(models / "reg.keras")
    kedro(project, "run", "--runner", "ParallelRunner", "--params", "train.seed=21")
    after = model_versions(models / "reg.keras")
    assert len(after) == len(before) + 1 and after[:-1] == before

    fp = read_json(project / "data" / "08_reporting" / "fingerprints.json")
    assert fp["trained_dense"]["weight_sum"] not in {
        run["fingerprints"]["trained_dense"]["weight_sum"] for run in runs
    }
    for name in LOCAL_DENSE:
        assert fp[name]["weight_sum"] == fp["trained_dense"]["weight_sum"], name
    for name in LOCAL_TINY:
        assert fp[name]["weight_sum"] == fp["trained_tiny"]["weight_sum"], name
    assert len(history_files(models / "reg_history")) == 2


def test_parallel_runner_on_s3_with_credentials_from_conf_local(project, bucket, s3fs_client):
    """remote_* entries live in the bucket; the S3 endpoint and keys exist only
    in conf/local/credentials.yml, named `model_store` by the catalog."""
    bucket = bucket.removeprefix("s3://")
    trained = []
    for seed in (31, 32):
        kedro(
            project,
            "run",
            "--pipeline",
            "remote",
            "--runner",
            "ParallelRunner",
            "--params",
            f"train.seed={seed}",
        )
        fp = read_json(project / "data" / "08_reporting" / "remote_fingerprints.json")
        for name in REMOTE:
            assert fp[name]["weight_sum"] == fp["trained_dense"]["weight_sum"], name
        trained.append(fp["trained_dense"]["weight_sum"])
    assert trained[0] != trained[1]

    s3fs_client.invalidate_cache()
    root = f"{bucket}/models"
    versions = sorted(p.rsplit("/", 1)[-1] for p in s3fs_client.ls(f"{root}/reg.keras"))
    assert len(versions) == 2
    for version in versions:
        assert s3fs_client.isfile(f"{root}/reg.keras/{version}/reg.keras")
    assert s3fs_client.isfile(f"{root}/reg.weights.h5")
    assert s3fs_client.isfile(f"{root}/reg.architecture.json")
    history = s3fs_client.ls(f"{root}/reg_history")
    assert len(history) == 1  # keep_last: 1
    assert history[0].rsplit("/", 1)[-1].startswith("model_")


def test_missing_credentials_are_reported_by_name(project):
    credentials = project / "conf" / "local" / "credentials.yml"
    saved = credentials.read_text()
    credentials.write_text("someone_else:\n  key: x\n")
    try:
        result = kedro(project, "run", "--pipeline", "remote", check=False)
    finally:
        credentials.write_text(saved)
    assert result.returncode != 0
    assert "Unable to find credentials 'model_store'" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "said_first", "said_then"),
    [
        (
            "KERAS_DISTRIBUTION_NUM_PROCESSES",
            "2",
            "KERAS_DISTRIBUTION_NUM_PROCESSES=2 asks for a run in 2 processes",
            "only on the JAX backend; this run's backend is tensorflow",
        ),
        (
            "TF_CONFIG",
            '{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 1}}',
            "TF_CONFIG describes a cluster of 2 tasks (tf.distribute's MultiWorkerMirroredStrategy)",
            "kedro-keras picks one writer among processes only on the JAX backend",
        ),
    ],
    ids=["keras-distribution", "multi-worker-mirrored"],
)
def test_a_run_launched_in_several_processes_on_tensorflow_stops_before_any_node(
    project, monkeypatch, variable, value, said_first, said_then
):
    """Keras 3 joins processes only on JAX: on TensorFlow each process (a
    MultiWorkerMirroredStrategy worker too) would train and write its own
    copy. The run stops first, saying what to use instead."""
    monkeypatch.setenv(variable, value)
    monkeypatch.setenv("COLUMNS", "250")
    result = kedro(project, "run", "--pipeline", "evaluate", check=False)
    said = " ".join((result.stdout + result.stderr).split())  # rich wraps long lines
    assert result.returncode != 0
    assert said_first in said
    assert said_then in said
    assert "Running node" not in said


def test_a_fresh_projects_own_logging_shows_our_lines_and_one_level_quiets_them(project, monkeypatch):
    """The conf/logging.yml `kedro new` writes names Kedro's and the
    project's loggers only, and the root stays at WARNING: our INFO lines
    did not appear (#30). The plugin's hook puts kedro_keras at INFO unless
    the config gives it a level; `kedro_keras: {level: WARNING}` quiets it."""
    import kedro as kedro_package

    template = Path(kedro_package.__file__).parent / "templates" / "project" / "{{ cookiecutter.repo_name }}"
    fresh = (
        (template / "conf" / "logging.yml").read_text().replace("{{ cookiecutter.python_package }}", "kk_e2e")
    )
    assert "kedro_keras" not in fresh
    logging_yml = project / "conf" / "logging.yml"
    ours = logging_yml.read_text()
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps at the console's width
    saved_line = r"INFO\s+Saved (?:Keras model|weights of model) '\w+' to s3://"
    try:
        logging_yml.write_text(fresh)
        shown = kedro(project, "run", "--pipeline", "remote").stdout
        logging_yml.write_text(
            fresh.replace("loggers:\n", "loggers:\n  kedro_keras:\n    level: WARNING\n\n", 1)
        )
        quiet = kedro(project, "run", "--pipeline", "remote").stdout
    finally:
        logging_yml.write_text(ours)
    # One line per save and per load of each entry, with its path, size, time and rate.
    size_and_rate = r"[\d.]+ (bytes|KB|MB) in [\d.]+ s, [\d.]+ (bytes|KB|MB)/s"
    saved = re.findall(rf"{saved_line}(\S+): {size_and_rate}", shown)
    loaded = re.findall(
        r"INFO\s+Loaded (?:Keras model '\w+' from|weights from) (\S+) \(saved with Keras ", shown
    )
    assert len(saved) == 3, shown
    assert {f"s3://{path}" for path, *_ in saved} == set(loaded), shown
    assert re.findall(saved_line, quiet) == [] and "Running node" in quiet, quiet
