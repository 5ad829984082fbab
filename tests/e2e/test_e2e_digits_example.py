"""End to end on examples/digits, as `make demo` and its README run it: a copy
of the project (no outputs, no credentials), `kedro run`, show_results.py,
the notebook in a real Jupyter kernel, and `--env s3` against the loopback
S3 server."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

# new_bucket and s3fs_client are fixtures, used by name.
from e2e_support import (  # noqa: F401
    NOTEBOOK,
    copy_example,
    kedro,
    new_bucket,
    read_json,
    run,
    s3_credentials_yaml,
    s3fs_client,
    subprocess_env,
)


def read_yaml(path: Path):
    import yaml

    return yaml.safe_load(path.read_text())


MODELS = ["classifier_model", "classifier_weights", "classifier_history"]
EXPORTS = ["classifier_saved_model", "classifier_onnx"]  # scored beside the models
MIN_ACCURACY = 0.9


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """The example and the notebook, laid out as in the repository."""
    root = tmp_path_factory.mktemp("checkout")
    copy_example(root / "examples" / "digits")
    (root / "notebooks").mkdir()
    shutil.copy(NOTEBOOK, root / "notebooks")
    return root


@pytest.fixture(scope="module")
def digits(checkout) -> Path:
    """The example after one `kedro run`."""
    project = checkout / "examples" / "digits"
    (project / "run.log").write_text(kedro(project, "run").stdout)
    return project


def test_kedro_run_trains_saves_three_ways_and_scores_each_reloaded_model(digits):
    metrics = read_json(digits / "data" / "08_reporting" / "metrics.json")
    assert metrics["test_images"] == 450
    accuracy = metrics["accuracy"]
    assert set(accuracy) == set(MODELS + EXPORTS)
    for name in MODELS + EXPORTS:
        assert accuracy[name] >= MIN_ACCURACY, (name, accuracy)
    # One trained model behind all three entries and both exports: the same predictions.
    assert len(set(accuracy.values())) == 1

    models = digits / "data" / "06_models"
    (version,) = [p.name for p in (models / "classifier.keras").iterdir()]
    assert (models / "classifier.keras" / version / "classifier.keras").is_file()
    assert (models / "classifier.weights.h5").is_file()
    assert (models / "classifier.architecture.json").is_file()
    assert len(list((models / "classifier_history").glob("model_*.keras"))) == 1
    manifest = read_json(models / "classifier_saved_model" / "manifest.json")
    assert manifest["format"] == "tf_saved_model" and "saved_model.pb" in manifest["files"]
    assert (models / "classifier.onnx").is_file()
    # A checkpoint per epoch while training ran, removed once it ended normally.
    log = (digits / "run.log").read_text()
    epochs = read_yaml(digits / "conf" / "base" / "parameters.yml")["training"]["epochs"]
    for epoch in range(1, epochs + 1):
        assert f"Checkpoint e{epoch:05d}-s0000000 written to" in log
    assert "Resuming" not in log
    assert list((models / "classifier_checkpoints").glob("ckpt-*")) == []


def test_show_results_prints_each_accuracy_and_where_each_model_is(digits):
    metrics = read_json(digits / "data" / "08_reporting" / "metrics.json")
    out = run([sys.executable, "show_results.py"], digits).stdout
    for name in MODELS + EXPORTS:
        line = next(line for line in out.splitlines() if line.strip().startswith(name + " "))
        _, shown_accuracy, path, *_ = line.split()
        assert float(shown_accuracy) == pytest.approx(metrics["accuracy"][name], abs=5e-5)
        assert (digits / path).is_dir() if path.endswith("/") else (digits / path).is_file(), line
    assert "data/06_models/classifier.keras/" in out
    assert "data/06_models/classifier_history/model_" in out


def test_notebook_loads_all_three_entries_in_a_jupyter_kernel(digits, checkout):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(checkout / "notebooks" / "load_models.ipynb", as_version=4)
    client = NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(checkout / "notebooks")}},
    )
    client.execute(env=subprocess_env())
    text = "\n".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream"
    )
    errors = [
        o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors

    labels = re.search(r"^true labels\s+([\d ]+)$", text, re.M).group(1).split()
    assert len(labels) == 8
    metrics = read_json(digits / "data" / "08_reporting" / "metrics.json")
    for name in MODELS:
        predicted = re.search(rf"^{name}\s+([\d ]+)$", text, re.M).group(1).split()
        correct = sum(p == t for p, t in zip(predicted, labels, strict=True))
        assert correct >= 7, (name, predicted, labels)
        shown = float(re.search(rf"^accuracy {name}\s+([\d.]+)$", text, re.M).group(1))
        # The notebook's models are the ones the pipeline scored.
        assert shown == pytest.approx(metrics["accuracy"][name], abs=5e-5)
    assert re.search(r"classifier_history versions, newest first: \['\d{4}-\d\d-\d\dT[\d.]+Z'\]", text)


@pytest.fixture(scope="module")
def digits_s3(tmp_path_factory, s3_endpoint, new_bucket):
    """What examples/digits/README.md says to do for S3: credentials.yml from
    the example file, a bucket in conf/s3/globals.yml, `kedro run --env s3`.
    ParallelRunner, too: every node in its own process."""
    project = copy_example(tmp_path_factory.mktemp("s3") / "digits")
    bucket = new_bucket()
    (project / "conf" / "s3" / "globals.yml").write_text(f"model_bucket: {bucket}\n")
    example = (project / "conf" / "s3" / "credentials.yml.example").read_text()
    assert "model_store:" in example
    (project / "conf" / "s3" / "credentials.yml").write_text(s3_credentials_yaml("model_store", s3_endpoint))
    kedro(project, "run", "--env", "s3", "--runner", "ParallelRunner")
    return project, bucket


def test_env_s3_writes_the_models_to_s3_with_credentials_by_name(digits_s3, s3fs_client):
    project, bucket = digits_s3
    metrics = read_json(project / "data" / "08_reporting" / "metrics.json")
    for name in MODELS + EXPORTS:
        assert metrics["accuracy"][name] >= MIN_ACCURACY, (name, metrics)
    name = bucket.removeprefix("s3://")
    s3fs_client.invalidate_cache()
    (version,) = [p.rsplit("/", 1)[-1] for p in s3fs_client.ls(f"{name}/models/classifier.keras")]
    assert s3fs_client.isfile(f"{name}/models/classifier.keras/{version}/classifier.keras")
    assert s3fs_client.isfile(f"{name}/models/classifier.weights.h5")
    assert s3fs_client.isfile(f"{name}/models/classifier.architecture.json")
    assert len(s3fs_client.ls(f"{name}/models/classifier_history")) == 1
    assert s3fs_client.isfile(f"{name}/models/classifier_saved_model/manifest.json")
    assert s3fs_client.isfile(f"{name}/models/classifier.onnx")

    out = run([sys.executable, "show_results.py", "--env", "s3"], project).stdout
    assert f"{bucket}/models/classifier.keras/{version}/classifier.keras" in out
    assert f"{bucket}/models/classifier_history/model_" in out


def test_kedro_viz_build_holds_a_preview_of_each_model(digits):
    """`kedro viz build --include-previews`, as a user runs it: each model
    node's JSON carries our TablePreview, read without loading the model,
    naming paths as the catalog wrote them: the build holds no folder of this
    machine in what we contribute (#30; Kedro-Viz's own "filepath" field is
    absolute for every dataset, see docs/viz-and-cli.md)."""
    import json

    kedro(digits, "viz", "build", "--include-previews")
    previews = {}
    for path in (digits / "build" / "api" / "nodes").iterdir():
        node = json.loads(path.read_text())
        if str(node.get("type", "")).startswith("kedro_keras."):
            assert node["preview_type"] == "TablePreview", node
            assert digits.as_posix() not in json.dumps(node["preview"]), node["preview"]
            rows = dict(node["preview"]["data"])
            assert rows["path"].startswith("data/06_models/"), rows
            previews[rows["path"].rsplit("/06_models/", 1)[-1]] = rows
    model = next(rows for path, rows in previews.items() if path.startswith("classifier.keras/"))
    assert model["model"] == "digits_cnn (Functional)"
    assert model["layer conv_1"] == "Conv2D, 160 parameters"  # 3x3x1x16 + 16
    assert model["optimizer state"].startswith("Adam: ")
    weights = previews["classifier.weights.h5"]
    assert weights["parameters"] == model["parameters"]
    assert previews["classifier_saved_model"]["format"] == "tf_saved_model"
    assert previews["classifier.onnx"]["format"] == "onnx"
    assert previews["classifier_checkpoints"]["checkpoints"] == "none yet"  # removed when training ended


def test_kedro_keras_commands_list_inspect_and_verify(digits):
    """`kedro keras ...` in the project, as a user types it."""
    import json

    out = kedro(digits, "keras", "list", "--json").stdout
    # The project's logging.yml writes Kedro's log lines to stdout too: the JSON is the last block.
    listed = {row["name"]: row for row in json.loads(out[out.rindex("\n[\n") :])}
    assert set(listed) == {*MODELS, *EXPORTS, "classifier_checkpoints"}
    assert listed["classifier_model"]["type"] == "KerasModelDataset"  # an entry of the dataset factory
    assert listed["classifier_model"]["versions"] == "1, newest first"

    shown = kedro(digits, "keras", "inspect", "classifier_model").stdout
    rows = dict(line.split("\t", 1) for line in shown.splitlines() if "\t" in line)
    assert rows["model"] == "digits_cnn (Functional)" and rows["layer hidden"] == "Dense, 32,832 parameters"

    weights = digits / "data" / "06_models" / "classifier.weights.h5"
    assert "classifier_weights: intact" in kedro(digits, "keras", "verify", "classifier_weights").stdout
    original = weights.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF
    try:
        weights.write_bytes(bytes(damaged))
        broken = kedro(digits, "keras", "verify", "classifier_weights", check=False)
        assert broken.returncode == 1 and "classifier_weights: DAMAGED" in broken.stderr, broken.stderr
    finally:
        weights.write_bytes(original)


def test_a_named_entry_is_inspected_without_importing_the_pipelines_or_a_backend(digits):
    """`kedro keras inspect NAME` took 9-17 s: Kedro validated the
    parameters against every pipeline while building the catalog, importing
    the nodes and so TensorFlow (#30). A named entry needs neither."""
    result = run(
        [sys.executable, "-X", "importtime", "-m", "kedro", "keras", "inspect", "classifier_model"], digits
    )
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "kedro_keras.keras_model_dataset" in imported  # the entry was built
    assert not {"digits.pipelines", "digits.pipelines.training.nodes", "tensorflow", "keras"} & imported
    rows = dict(line.split("\t", 1) for line in result.stdout.splitlines() if "\t" in line)
    assert rows["model"] == "digits_cnn (Functional)"


def test_a_catalog_without_dataset_factories_is_listed_without_importing_the_pipelines(digits, tmp_path):
    """`kedro keras list` imports the pipelines only to find what a dataset
    factory makes of their datasets: with the digits catalog's factory
    written out as the entry it makes, it lists the same entries from the
    configuration alone (#30)."""
    import json

    project = tmp_path / "digits"
    shutil.copytree(digits, project, ignore=shutil.ignore_patterns("build", "*.log"))
    catalog = project / "conf" / "base" / "catalog.yml"
    text = catalog.read_text()
    assert '"{name}_model":' in text and "filepath: data/06_models/{name}.keras" in text
    catalog.write_text(
        text.replace('"{name}_model":', "classifier_model:").replace("{name}.keras", "classifier.keras")
    )
    # kedro-keras's entry point (stdout only JSON), with import times on stderr.
    entry_point = "from kedro_keras.cli import main; main()"
    result = run([sys.executable, "-X", "importtime", "-c", entry_point, "list", "--json"], project)
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert not {"digits.pipelines", "digits.pipelines.training.nodes", "tensorflow"} & imported
    assert {row["name"] for row in json.loads(result.stdout)} == {*MODELS, *EXPORTS, "classifier_checkpoints"}


@pytest.fixture
def kedro_logging_left_alone(monkeypatch):
    """Kedro configures logging when a project is bootstrapped, with
    ``logging.config.dictConfig``, which closes every log handler of the
    process: pytest's own capture among them, so every later test fails to
    log. In this process the records go to pytest's handlers instead."""
    from kedro.framework.project import LOGGING

    monkeypatch.setattr(LOGGING, "configure", lambda logging_config: None)


@pytest.fixture
def keras_cli(monkeypatch, kedro_logging_left_alone):
    """``kedro keras <args>`` in a project, run in this process by Click's
    test runner on the command group Kedro loads: the same code as the
    command line, without a new Python and TensorFlow start per command
    (8-10 s each; the test above types them as a user does)."""
    from click.testing import CliRunner

    from kedro_keras.cli import commands

    monkeypatch.setattr(sys, "path", list(sys.path))
    runner = CliRunner()

    def invoke(project: Path, *args: str, check: bool = True):
        monkeypatch.chdir(project)
        result = runner.invoke(commands, ["keras", *args])
        if check:
            assert result.exit_code == 0, f"kedro keras {' '.join(args)}: {result.output}{result.exception!r}"
        return result

    return invoke


def test_kedro_keras_prune_keeps_the_newest_versions(digits, keras_cli):
    """Old versions made by copying the run's own (older timestamps), then
    pruned as a user would: a dry run first, then for real."""
    import shutil

    models = digits / "data" / "06_models" / "classifier.keras"
    (newest,) = [p.name for p in models.iterdir()]
    old = ["2020-01-01T00.00.00.000Z", "2021-01-01T00.00.00.000Z"]
    for version in old:
        shutil.copytree(models / newest, models / version)

    # A copy differs in nothing, layer by layer.
    diff = keras_cli(digits, "diff", "classifier_model", old[0], newest).stdout
    rows = [line.split("\t") for line in diff.splitlines() if line.count("\t") == 2]
    changes = {group: change for _, group, change in rows}
    assert "layers/dense" in changes and set(changes.values()) == {"same"}, diff
    # Each row names the layer as the node named it, beside Keras's group in the file.
    layers = {group: layer for layer, group, _ in rows}
    assert layers["layers/dense"] == "hidden" and layers["layers/conv2d_1"] == "conv_2", diff

    # --version pins one version through the catalog's public get() (Kedro's _get_catalog before).
    shown = keras_cli(digits, "inspect", "classifier_model", "--version", old[0]).stdout
    (path,) = [line for line in shown.splitlines() if line.startswith("path")]
    assert f"/{old[0]}/" in path and newest not in path, shown

    dry = keras_cli(digits, "prune", "classifier_model", "--keep-last", "2", "--dry-run").stdout
    assert f"would remove classifier_model version {old[0]}" in dry and old[1] not in dry
    assert len(list(models.iterdir())) == 3

    done = keras_cli(digits, "prune", "classifier_model", "--keep-last", "1").stdout
    assert "classifier_model: 1 version(s) kept of 3" in done
    assert [p.name for p in models.iterdir()] == [newest]

    refused = keras_cli(digits, "prune", "classifier_weights", "--keep-last", "1", check=False)
    assert refused.exit_code != 0 and "keeps one file, not versions" in refused.output


def test_kedro_keras_commands_on_s3_entries(digits_s3, s3fs_client, keras_cli):
    """The same commands on the `--env s3` entries: everything read from the
    bucket, a damaged object caught, old versions compared and pruned there."""
    import json

    project, bucket = digits_s3
    out = keras_cli(project, "list", "--env", "s3", "--json").stdout
    # Log lines may come before the JSON, as in a terminal: it is the last block.
    listed = {row["name"]: row for row in json.loads(out[out.rindex("\n[\n") :] if "\n[\n" in out else out)}
    assert listed["classifier_model"]["path"].startswith(f"{bucket}/models/classifier.keras/")
    assert listed["classifier_model"]["versions"] == "1, newest first"
    assert listed["classifier_weights"]["size"].endswith("KB")
    assert listed["classifier_weights"]["saved with"].startswith("Keras ")

    shown = keras_cli(project, "inspect", "classifier_history", "-e", "s3").stdout
    rows = dict(line.split("\t", 1) for line in shown.splitlines() if "\t" in line)
    assert rows["model"] == "digits_cnn (Functional)" and rows["path"].startswith(f"{bucket}/models/")

    name = bucket.removeprefix("s3://")
    weights = f"{name}/models/classifier.weights.h5"
    assert (
        "classifier_weights: intact" in keras_cli(project, "verify", "classifier_weights", "-e", "s3").stdout
    )
    original = s3fs_client.cat_file(weights)
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF
    s3fs_client.pipe_file(weights, bytes(damaged))
    try:
        broken = keras_cli(project, "verify", "classifier_weights", "-e", "s3", check=False)
        assert broken.exit_code == 1 and "classifier_weights: DAMAGED" in broken.output, broken.output
    finally:
        s3fs_client.pipe_file(weights, original)

    models = f"{name}/models/classifier.keras"
    (newest,) = [p.rsplit("/", 1)[-1] for p in s3fs_client.ls(models)]
    old = "2020-01-01T00.00.00.000Z"
    s3fs_client.copy(f"{models}/{newest}/classifier.keras", f"{models}/{old}/classifier.keras")
    diff = keras_cli(project, "diff", "classifier_model", old, newest, "-e", "s3").stdout
    rows = [line.split("\t") for line in diff.splitlines() if line.count("\t") == 2]
    changes = {group: change for _, group, change in rows if group.startswith("layers/")}
    assert changes and set(changes.values()) == {"same"}, diff

    done = keras_cli(project, "prune", "classifier_model", "--keep-last", "1", "-e", "s3").stdout
    assert f"removed classifier_model version {old}" in done
    s3fs_client.invalidate_cache()
    assert [p.rsplit("/", 1)[-1] for p in s3fs_client.ls(models)] == [newest]


def test_kedro_keras_commands_in_process_with_clicks_runner(digits, monkeypatch, kedro_logging_left_alone):
    """The command group as Kedro loads it, run by Click's test runner inside
    this process: exit codes and output as a script would see them."""
    import json

    from click.testing import CliRunner

    from kedro_keras.cli import commands

    monkeypatch.chdir(digits)
    monkeypatch.setattr(sys, "path", list(sys.path))
    runner = CliRunner()

    listed = runner.invoke(commands, ["keras", "list", "--json"], catch_exceptions=False)
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)  # only JSON: the log lines go to stderr
    assert {row["name"] for row in rows} == {*MODELS, *EXPORTS, "classifier_checkpoints"}

    verified = runner.invoke(commands, ["keras", "verify", "classifier_onnx"])
    assert verified.exit_code == 0 and "classifier_onnx: intact" in verified.stdout, verified.output

    # (Not "..._model": the project's dataset factory "{name}_model" would make it one.)
    unknown = runner.invoke(commands, ["keras", "inspect", "nothing_here"])
    assert unknown.exit_code == 1
    assert "'nothing_here' is not an entry of this project's catalog" in unknown.output

    bad = runner.invoke(commands, ["keras", "prune", "classifier_model", "--keep-last", "0"])
    assert bad.exit_code == 2 and "--keep-last" in bad.output
