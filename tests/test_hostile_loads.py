"""Model loads against a hostile catalog value or file (#27): ``safe_mode``
that is not literally false, ``custom_objects`` import paths that alias
something other than model code, and configs built to take a load's time,
through the model, history and weights datasets.

The gadget list is the one a red team ran against 0.x: each path reaches a
function or class that runs commands, loads code, unpickles or touches files.
"""

from __future__ import annotations

import importlib.util
import logging
import shlex
import time

import keras
import numpy as np
import pytest
from kedro.io.core import DatasetError

from kedro_keras import KerasModelDataset, KerasTimestampedModelDataset, KerasWeightsDataset
from test_safe_configs import relu_lambda_model, rewrite_member

DATASETS = {
    "model": lambda tmp_path, **kw: KerasModelDataset(filepath=str(tmp_path / "m.keras"), **kw),
    "history": lambda tmp_path, **kw: KerasTimestampedModelDataset(filepath=str(tmp_path / "h"), **kw),
    "weights": lambda tmp_path, **kw: KerasWeightsDataset(filepath=str(tmp_path / "m.weights.h5"), **kw),
}


# -- safe_mode ----------------------------------------------------------------


@pytest.mark.parametrize("dataset", list(DATASETS))
@pytest.mark.parametrize("value", [None, "", "false", "False", 0, 1, "no"])
def test_safe_mode_that_is_not_a_literal_boolean_is_refused_when_the_catalog_is_built(
    dataset, value, tmp_path
):
    with pytest.raises(DatasetError, match=r"load_args\.safe_mode: must be true or false, got"):
        DATASETS[dataset](tmp_path, load_args={"safe_mode": value})


@pytest.mark.parametrize("dataset", list(DATASETS))
@pytest.mark.parametrize("value", [True, False])
def test_safe_mode_true_or_false_is_taken(dataset, value, tmp_path):
    assert DATASETS[dataset](tmp_path, load_args={"safe_mode": value})._load_args["safe_mode"] is value


# -- custom_objects -------------------------------------------------------------

# Each reaches code that is not a model building block; several were let
# through by the module denylist this allowlist replaced.
GADGETS = [
    "pydoc.pipepager",
    "pydoc.importfile",
    "pydoc.locate",
    "_imp.create_dynamic",
    "_frozen_importlib_external.SourceFileLoader",
    "_pickle.loads",
    "copyreg._reconstructor",
    "_ctypes.dlopen",
    "numpy.ctypeslib.load_library",
    "numpy.load",
    "keras.src.utils.file_utils.rmtree",
    "keras.utils.get_file",
    "keras.saving.load_model",
    "keras.config.set_floatx",
    "keras.layers.TFSMLayer",
    "timeit.timeit",
    "cProfile.run",
    "_posixsubprocess.fork_exec",
    "codecs.open",
    "functools.partial",
    "operator.attrgetter",
    "h5py.File",
    "kedro_keras._io.files.Location",
    # Present only where these packages are installed (the TensorFlow run has both).
    "pandas.read_pickle",
    "tensorflow.io.gfile.rmtree",
]
INSTALLED_GADGETS = [path for path in GADGETS if importlib.util.find_spec(path.split(".")[0]) is not None]


def test_the_gadget_list_is_mostly_present_here():
    assert len(INSTALLED_GADGETS) >= len(GADGETS) - 2


def scaled_relu(x):
    """A function of the project's own code (this test module), not registered."""
    return keras.activations.relu(x) * 2.0


@keras.saving.register_keras_serializable(package="kedro_keras_tests")
def registered_relu(x):
    return keras.activations.relu(x) * 3.0


def lambda_model(function, **arguments) -> keras.Model:
    inputs = keras.Input((4,))
    x = keras.layers.Lambda(function, arguments=arguments or None, name="gadget")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(x), name="victim")


def saved(tmp_path, model, dataset="model"):
    DATASETS[dataset](tmp_path).save(model)
    return model


def rename_lambda_function(config: dict, module: str, name: str) -> dict:
    for layer in config["config"]["layers"]:
        if layer["class_name"] == "Lambda":
            layer["config"]["function"] = {"module": module, "class_name": "function", "config": name}
    return config


@pytest.mark.parametrize("path", INSTALLED_GADGETS)
def test_a_custom_object_that_is_not_model_code_is_refused_at_load(path, tmp_path):
    saved(tmp_path, relu_lambda_model())
    with pytest.raises(DatasetError, match=rf"refusing '{path}'"):
        KerasModelDataset(
            filepath=str(tmp_path / "m.keras"), load_args={"custom_objects": {"f": path}}
        ).load()


def takes_a_command(x, cmd=None):
    """What the model is built with; the stored config then names pipepager."""
    return x


def pipepager_file(tmp_path):
    """A model whose Lambda calls the custom object 'pipepager' with a shell
    command as an argument the file chose (``touch <marker>``)."""
    marker = tmp_path / "the-command-ran"
    model = lambda_model(takes_a_command, cmd=f"touch {shlex.quote(str(marker))}")
    saved(tmp_path, model)
    rewrite_member(
        tmp_path / "m.keras", "config.json", lambda c: rename_lambda_function(c, "pydoc", "pipepager")
    )
    return marker


def test_pipepager_named_in_custom_objects_is_a_live_gadget_once_safe_mode_is_off(tmp_path):
    """The attack is real: with safe_mode off, the file's shell command runs."""
    marker = pipepager_file(tmp_path)
    dataset = KerasModelDataset(
        filepath=str(tmp_path / "m.keras"),
        load_args={"custom_objects": {"pipepager": "pydoc.pipepager"}, "safe_mode": False},
    )
    with pytest.raises(DatasetError, match="Lambda"):
        dataset.load()  # pipepager starts the shell command, then fails on the tensor it is handed
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the command runs in its own process
    assert marker.exists()


def test_pipepager_named_in_custom_objects_is_refused_and_runs_nothing(tmp_path):
    marker = pipepager_file(tmp_path)
    dataset = KerasModelDataset(
        filepath=str(tmp_path / "m.keras"), load_args={"custom_objects": {"pipepager": "pydoc.pipepager"}}
    )
    with pytest.raises(DatasetError, match=r"refusing 'pydoc.pipepager': it is the function pydoc.pipepager"):
        dataset.load()
    time.sleep(1)  # as long as the command took to appear in the test above, and more
    assert not marker.exists()


@pytest.mark.parametrize("dataset", ["model", "weights"])
@pytest.mark.parametrize(
    "path, function, factor",
    [
        ("test_hostile_loads.scaled_relu", scaled_relu, 2.0),
        ("test_hostile_loads.registered_relu", registered_relu, 3.0),
    ],
)
def test_the_projects_own_and_registered_functions_still_load(dataset, path, function, factor, tmp_path):
    model = saved(tmp_path, lambda_model(function), dataset)
    name = "scaled_relu" if function is scaled_relu else "kedro_keras_tests>registered_relu"
    loaded = DATASETS[dataset](tmp_path, load_args={"custom_objects": {name: path}}).load()
    x = np.linspace(-1, 1, 8, dtype="float32").reshape(2, 4)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert float(loaded.get_layer("gadget")(x)[1, -1]) == pytest.approx(factor * x[1, -1])


@pytest.mark.parametrize(
    "path", ["keras.layers.Dense", "keras.losses.Huber", "keras.optimizers.Adam", "keras.activations.gelu"]
)
def test_keras_classes_and_modelling_functions_are_custom_objects(path, tmp_path):
    model = saved(tmp_path, relu_lambda_model())
    loaded = KerasModelDataset(
        filepath=str(tmp_path / "m.keras"), load_args={"custom_objects": {"x": path}}
    ).load()
    x = np.ones((1, 4), dtype="float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


# -- configs built to take a load's time ------------------------------------------


def nested_models(levels: int) -> keras.Model:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)], name="core")
    for level in range(levels):
        inputs = keras.Input((4,))
        model = keras.Model(inputs, model(inputs), name=f"wrap{level}")
    return model


def test_models_nested_deeper_than_the_default_are_refused_and_load_when_allowed(tmp_path):
    """40 nested models (128 levels of JSON) are refused by default, before
    anything is built; the bound is the entry's to set: 10 nested models (38
    levels) are refused under a bound of 30 and load, predicting as saved,
    under the default. (40 would then meet the weights file's own group-depth
    guard on the public-API path.)"""
    saved(tmp_path, nested_models(40))
    with pytest.raises(
        DatasetError, match=r"nests more than 100 levels deep.*raise load_args max_config_depth"
    ):
        DATASETS["model"](tmp_path).load()
    (tmp_path / "ten").mkdir()
    model = saved(tmp_path / "ten", nested_models(10))
    with pytest.raises(DatasetError, match=r"nests more than 30 levels deep"):
        DATASETS["model"](tmp_path / "ten", load_args={"max_config_depth": 30}).load()
    loaded = DATASETS["model"](tmp_path / "ten").load()
    x = np.ones((3, 4), dtype="float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_the_weights_datasets_saved_architecture_is_bounded_too(tmp_path):
    """40 nested models are refused there already, by the weights file's own
    group-depth guard; the architecture's bound is the entry's to set."""
    model = saved(tmp_path, nested_models(5), "weights")
    with pytest.raises(DatasetError, match=r"nests more than 20 levels deep"):
        DATASETS["weights"](tmp_path, load_args={"max_config_depth": 20}).load()
    loaded = DATASETS["weights"](tmp_path).load()
    x = np.ones((3, 4), dtype="float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_a_config_with_more_layers_than_the_default_is_refused_before_keras_builds_anything(tmp_path):
    saved(tmp_path, relu_lambda_model())

    def many_layers(config):
        layers = config["config"]["layers"]
        config["config"]["layers"] = layers + [layers[-1]] * 10_001
        return config

    rewrite_member(tmp_path / "m.keras", "config.json", many_layers)
    with pytest.raises(DatasetError, match=r"holds more than 10000 layers.*raise load_args max_layers"):
        KerasModelDataset(filepath=str(tmp_path / "m.keras")).load()


def test_max_layers_is_a_bound_the_entry_sets(tmp_path):
    inputs = keras.Input((4,))
    x = inputs
    for _ in range(30):
        x = keras.layers.Activation("relu")(x)
    model = saved(tmp_path, keras.Model(inputs, x))
    with pytest.raises(DatasetError, match=r"more than 20 layers"):
        KerasModelDataset(filepath=str(tmp_path / "m.keras"), load_args={"max_layers": 20}).load()
    loaded = KerasModelDataset(filepath=str(tmp_path / "m.keras"), load_args={"max_layers": 40}).load()
    assert len(loaded.layers) == len(model.layers) == 31


@pytest.mark.parametrize("key", ["max_layers", "max_config_depth"])
@pytest.mark.parametrize("value", [0, -1, "100", 1.5, True, None])
def test_a_bound_that_is_not_a_positive_whole_number_is_refused(key, value, tmp_path):
    with pytest.raises(DatasetError, match=rf"load_args\.{key}: must be a positive whole number"):
        KerasModelDataset(filepath=str(tmp_path / "m.keras"), load_args={key: value})


# -- values from files are shown as data in logs -------------------------------------


def test_a_model_name_with_control_characters_and_markup_is_logged_as_data(tmp_path, caplog):
    hostile = "victim\n[12-06-26 10:00:00] INFO  forged\x1b]52;c;ZXZpbA==\x07[red]x[bold]y"
    saved(tmp_path, relu_lambda_model())
    rewrite_member(
        tmp_path / "m.keras", "config.json", lambda c: {**c, "config": {**c["config"], "name": hostile}}
    )
    with caplog.at_level(logging.INFO, logger="kedro_keras"):
        model = KerasModelDataset(filepath=str(tmp_path / "m.keras")).load()
    assert model.name == hostile  # the model itself keeps its name
    (record,) = [r for r in caplog.records if r.getMessage().startswith("Loaded Keras model")]
    line = record.getMessage()
    assert "\n" not in line and "\x1b" not in line and "\x07" not in line
    assert "\\n[12-06-26" in line and "\\x1b]52" in line and "[red]x[bold]y" in line
    assert record.markup is False  # Kedro's RichHandler reads this before its own markup setting


def test_the_log_filter_keeps_ordinary_messages_unchanged(tmp_path, caplog):
    model = saved(tmp_path, relu_lambda_model())
    with caplog.at_level(logging.INFO, logger="kedro_keras"):
        KerasModelDataset(filepath=str(tmp_path / "m.keras")).load()
    (record,) = [r for r in caplog.records if r.getMessage().startswith("Loaded Keras model")]
    assert record.getMessage().startswith(f"Loaded Keras model '{model.name}' from {tmp_path / 'm.keras'}")


def test_the_config_bounds_walk_a_hostile_nesting_without_recursion():
    """5,000 levels: a recursive walk would hit Python's recursion limit (a
    RecursionError, not a refusal) long before the bound."""
    from kedro_keras._formats.safe_configs import ConfigTooLargeError, check_config_bounds

    deep: list = []
    for _ in range(5_000):
        deep = [deep]
    with pytest.raises(ConfigTooLargeError, match="nests more than 100 levels"):
        check_config_bounds({"config": deep})
    check_config_bounds({"config": deep}, max_depth=6_000)  # within its bound: walked, not refused


def test_a_failed_loads_message_shows_the_files_text_escaped(tmp_path):
    saved(tmp_path, relu_lambda_model())
    hostile = "a/b\n\x1b[2J forged"  # Keras refuses the '/', quoting the name in its error
    rewrite_member(
        tmp_path / "m.keras", "config.json", lambda c: {**c, "config": {**c["config"], "name": hostile}}
    )
    with pytest.raises(DatasetError) as raised:
        KerasModelDataset(filepath=str(tmp_path / "m.keras")).load()
    message = str(raised.value)
    assert "a/b\\n\\x1b[2J forged" in message
    assert "\x1b" not in message and "\n" not in message.split("Cannot load the Keras model", 1)[1]


# -- files that are not files ---------------------------------------------------------


@pytest.fixture
def fifo_unblocker():
    """Opens each FIFO for writing if a reader ever opens it (the regression
    this guards against), then closes it, so a test fails instead of hanging."""
    import os
    import threading

    fifos, done = [], threading.Event()
    readers_seen = []

    def unblock():
        while not done.is_set():
            for fifo in fifos:
                try:
                    descriptor = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:
                    continue  # no reader yet
                readers_seen.append(fifo)
                os.close(descriptor)
            time.sleep(0.05)

    thread = threading.Thread(target=unblock, daemon=True)
    thread.start()
    yield fifos, readers_seen
    done.set()
    thread.join()


@pytest.mark.parametrize("what", ["model", "weights", "architecture", "device"])
def test_a_fifo_or_device_planted_as_a_model_file_is_refused_without_opening_it(
    what, tmp_path, fifo_unblocker
):
    import os

    fifos, readers_seen = fifo_unblocker
    kind_of_dataset = "model" if what in ("model", "device") else "weights"
    saved(tmp_path, relu_lambda_model(), kind_of_dataset)  # a real save, then its file replaced
    dataset = DATASETS[kind_of_dataset]
    names = {"model": "m.keras", "device": "m.keras", "weights": "m.weights.h5"}
    target = tmp_path / names.get(what, "m.architecture.json")
    if target.exists():
        target.unlink()
    if what == "device":
        target.symlink_to("/dev/zero")
    else:
        os.mkfifo(target)
        fifos.append(str(target))
    kind = "a device" if what == "device" else "a FIFO"
    with pytest.raises(DatasetError, match=rf"it is {kind}, not a regular file"):
        dataset(tmp_path).load()
    assert readers_seen == []
    rows = dict((row["property"], row["value"]) for row in _preview_rows(dataset(tmp_path).preview()))
    assert readers_seen == []
    assert any(kind in value for value in rows.values()), rows


def _preview_rows(preview):
    columns = preview["columns"]
    return [dict(zip(columns, row, strict=True)) for row in preview["data"]]


def test_a_failed_loads_whole_traceback_shows_the_files_text_escaped(tmp_path):
    """Kedro prints the chained cause too: Keras's own error quoting the name
    reaches it escaped, not only our message."""
    import traceback

    saved(tmp_path, relu_lambda_model())
    hostile = "a/b\n[12-06-26 10:00:00] INFO  forged \x1b[31mred"
    rewrite_member(
        tmp_path / "m.keras", "config.json", lambda c: {**c, "config": {**c["config"], "name": hostile}}
    )
    with pytest.raises(DatasetError) as raised:
        KerasModelDataset(filepath=str(tmp_path / "m.keras")).load()
    printed = "".join(traceback.format_exception(raised.value))
    assert "\x1b" not in printed and "\nforged" not in printed and "\n[12-06-26" not in printed
    assert "a/b\\n[12-06-26 10:00:00] INFO  forged \\x1b[31mred" in str(raised.value.__cause__)
    assert type(raised.value.__cause__).__name__ == "ShownAsDataError"
    assert str(raised.value.__cause__).startswith("ValueError: ")  # Keras's refusal of the '/'


# An instance of a Keras kind wraps any callable: refused however it is reached.
wrapped_pager = keras.layers.Lambda(lambda x: x)


def test_an_instance_of_a_keras_kind_named_in_custom_objects_is_refused(tmp_path):
    saved(tmp_path, relu_lambda_model())
    with pytest.raises(DatasetError, match=r"refusing 'test_hostile_loads.wrapped_pager': it is Lambda"):
        KerasModelDataset(
            filepath=str(tmp_path / "m.keras"),
            load_args={"custom_objects": {"x": "test_hostile_loads.wrapped_pager"}},
        ).load()


def test_a_registered_name_beside_a_keras_function_does_not_let_it_through(tmp_path):
    """Keras finds a function by its name; a registered_name naming the
    project's own function must not make set_floatx pass (Keras 3.12 would
    then call set_floatx; 3.15 refuses it itself)."""

    def gadget(config):
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "Lambda":
                layer["config"]["function"] = {
                    "module": "keras.config",
                    "class_name": "function",
                    "config": "set_floatx",
                    "registered_name": "kedro_keras_tests>registered_relu",
                }
        return config

    saved(tmp_path, relu_lambda_model())
    rewrite_member(tmp_path / "m.keras", "config.json", gadget)
    before = keras.config.floatx()
    with pytest.raises(DatasetError, match=r"calls 'keras.config.set_floatx', which is not a model building"):
        KerasModelDataset(filepath=str(tmp_path / "m.keras")).load()
    assert keras.config.floatx() == before


def test_a_fifo_planted_as_a_legacy_h5_model_is_refused_without_opening_it(tmp_path, fifo_unblocker):
    import os

    fifos, readers_seen = fifo_unblocker
    os.mkfifo(tmp_path / "m.h5")
    fifos.append(str(tmp_path / "m.h5"))
    with pytest.warns(UserWarning, match="legacy HDF5"):
        dataset = KerasModelDataset(filepath=str(tmp_path / "m.h5"))
    with pytest.raises(DatasetError, match=r"it is a FIFO, not a regular file"):
        dataset.load()
    assert readers_seen == []


@pytest.mark.parametrize("module, name", [("keras.activations", "deserialize"), ("keras.losses", "get")])
def test_the_lookup_helpers_of_keras_modelling_modules_are_not_building_blocks(module, name, tmp_path):
    from test_safe_configs import with_gadget

    saved(tmp_path, relu_lambda_model())
    rewrite_member(tmp_path / "m.keras", "config.json", lambda config: with_gadget(config, module, name))
    with pytest.raises(DatasetError, match=rf"calls '{module}.{name}', which is not a model building block"):
        KerasModelDataset(filepath=str(tmp_path / "m.keras")).load()
