"""safe_mode against files built by an attacker: a config may name model
building blocks and nothing else, in every format and through every dataset.

Each gadget is built here from a real model whose Lambda calls
``keras.activations.relu`` (allowed), by renaming the function in the stored
config to a public Keras function that changes the process or reaches out:
``keras.config.set_floatx`` (the process's float type),
``keras.utils.set_random_seed`` (Python's global random state),
``keras.datasets.mnist.load_data`` (a download and a write into KERAS_HOME).
Keras's own safe mode lets each of them through.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
import zipfile

import h5py
import keras
import numpy as np
import pytest
from kedro.io.core import DatasetError

from kedro_keras import KerasModelDataset, KerasTimestampedModelDataset, KerasWeightsDataset
from kedro_keras._formats import legacy_h5 as _legacy_h5

GADGETS = {
    "set_floatx": ("keras.config", "set_floatx"),
    "set_random_seed": ("keras.utils", "set_random_seed"),
    "load_data": ("keras.datasets.mnist", "load_data"),
    # Already refused by Keras's own denylist; refused here before Keras sees them.
    "get_file": ("keras.utils", "get_file"),
    "enable_unsafe_deserialization": ("keras.config", "enable_unsafe_deserialization"),
}


def relu_lambda_model() -> keras.Model:
    inputs = keras.Input((4,))
    x = keras.layers.Lambda(keras.activations.relu, name="gadget")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(x), name="victim")


def with_gadget(config: dict, module: str, name: str) -> dict:
    """The config with the Lambda's function renamed to ``module.name``."""
    text = json.dumps(config)
    relu = '{"module": "builtins", "class_name": "function", "config": "relu", "registered_name": "function"}'
    assert relu in text
    return json.loads(
        text.replace(relu, json.dumps({"module": module, "class_name": "function", "config": name}))
    )


def rewrite_member(path, member, change):
    data = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            data[info.filename] = archive.read(info)
    data[member] = json.dumps(change(json.loads(data[member]))).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in data.items():
            archive.writestr(name, content)


def keras_file(tmp_path, module, name):
    path = tmp_path / "model.keras"
    KerasModelDataset(filepath=str(path)).save(relu_lambda_model())
    rewrite_member(path, "config.json", lambda config: with_gadget(config, module, name))
    return lambda: KerasModelDataset(filepath=str(path)).load()


def history_file(tmp_path, module, name):
    history = KerasTimestampedModelDataset(filepath=str(tmp_path / "history"))
    history.save(relu_lambda_model())
    (path,) = (tmp_path / "history").iterdir()
    rewrite_member(path, "config.json", lambda config: with_gadget(config, module, name))
    return lambda: KerasTimestampedModelDataset(filepath=str(tmp_path / "history")).load()


def weights_file(tmp_path, module, name):
    path = tmp_path / "model.weights.h5"
    KerasWeightsDataset(filepath=str(path)).save(relu_lambda_model())
    architecture = tmp_path / "model.architecture.json"
    architecture.write_text(json.dumps(with_gadget(json.loads(architecture.read_text()), module, name)))
    return lambda: KerasWeightsDataset(filepath=str(path)).load()


def sharded_index(tmp_path, module, name):
    path = tmp_path / "model.weights.json"
    KerasWeightsDataset(filepath=str(path)).save(relu_lambda_model())
    index = json.loads(path.read_text())
    index["kedro_keras"]["architecture"] = with_gadget(index["kedro_keras"]["architecture"], module, name)
    path.write_text(json.dumps(index))
    (tmp_path / "model.architecture.json").unlink()  # only the index's copy is there to use
    return lambda: KerasWeightsDataset(filepath=str(path)).load()


def legacy_h5(tmp_path, module, name):
    """A Keras 2 style Lambda (function by module and name) under a renamed class."""
    path = tmp_path / "model.h5"
    with open(path, "wb") as file:
        _legacy_h5.write_legacy_h5(relu_lambda_model(), file, include_optimizer=False)
    if (module, name) == ("keras.activations", "relu"):
        pass  # as written: Keras 3 cannot build a Keras 2 style Lambda config anyway
    else:
        _plant_keras_2_lambda(path, module, name)
    with pytest.warns(UserWarning, match="legacy HDF5"):
        dataset = KerasModelDataset(filepath=str(path), load_args={"compile": False})
    return dataset.load


def _plant_keras_2_lambda(path, module, name):
    with h5py.File(path, "r+") as h5_file:
        config = json.loads(h5_file.attrs["model_config"])
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "Lambda":
                layer["class_name"], layer["module"] = "layers.Lambda", "keras"
                layer["config"].update(function=name, function_type="function", module=module)
        h5_file.attrs["model_config"] = json.dumps(config)


ROUTES = {
    ".keras": keras_file,
    "history": history_file,
    ".weights.h5 + architecture": weights_file,
    "sharded index": sharded_index,
    "legacy .h5": legacy_h5,
}


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("gadget", list(GADGETS))
def test_a_lambda_naming_a_public_keras_function_is_refused(tmp_path, monkeypatch, route, gadget):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    module, name = GADGETS[gadget]
    load = ROUTES[route](tmp_path, module, name)
    floatx, state = keras.config.floatx(), random.getstate()

    with pytest.raises(DatasetError) as error:
        load()

    message = str(error.value)
    assert f"'{module}.{name}', which is not a model building block" in message
    assert "layer 'gadget'" in message and "safe_mode: false" in message
    assert keras.config.floatx() == floatx and random.getstate() == state
    assert not (tmp_path / "keras_home" / "datasets").exists()  # Keras downloads datasets there


@pytest.mark.parametrize("route", list(ROUTES))
def test_model_building_blocks_still_load(tmp_path, route):
    """The allowlist is no denylist in disguise: a Lambda calling a Keras
    activation loads with safe_mode on, through every route."""
    model = ROUTES[route](tmp_path, "keras.activations", "relu")()
    x = np.linspace(-2, 2, 8, dtype="float32").reshape(2, 4)
    assert model.predict(x, verbose=0).shape == (2, 2)


def test_a_layer_that_loads_a_program_from_a_path_is_refused(tmp_path):
    path = tmp_path / "model.keras"
    KerasModelDataset(filepath=str(path)).save(relu_lambda_model())

    def plant(config):
        layer = config["config"]["layers"][1]
        layer["class_name"], layer["module"] = "layers.TFSMLayer", "keras"
        layer["config"] = {"name": "gadget", "filepath": str(tmp_path / "saved_model")}
        return config

    rewrite_member(path, "config.json", plant)
    with pytest.raises(
        DatasetError, match=r"layer 'gadget' .* is a TFSMLayer, which loads a program .*safe_mode: false"
    ):
        KerasModelDataset(filepath=str(path)).load()


def test_through_a_catalog_entry_in_a_child_nothing_changes_and_nothing_reaches_out(tmp_path):
    """The download gadget through a catalog entry, in a child whose every
    socket connection is recorded: the load fails with the cause and no
    connection is attempted, no file written."""
    keras_file(tmp_path, "keras.datasets.mnist", "load_data")
    code = textwrap.dedent(
        f"""
        import os, socket
        attempts = []
        real_connect = socket.socket.connect
        def connect(self, address):
            attempts.append(address)
            return real_connect(self, address)
        socket.socket.connect = connect
        os.environ["KERAS_HOME"] = {str(tmp_path / "keras_home")!r}
        from kedro.io import DataCatalog
        catalog = DataCatalog.from_config(
            {{"model": {{"type": "kedro_keras.KerasModelDataset", "filepath": {str(tmp_path / "model.keras")!r}}}}}
        )
        try:
            catalog.load("model")
            print("LOADED")
        except Exception as exc:
            print("ERROR", type(exc).__name__, exc)
        print("ATTEMPTS", attempts)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "ERROR DatasetError" in result.stdout, result.stdout + result.stderr[-2000:]
    assert "which is not a model building block" in result.stdout
    assert "ATTEMPTS []" in result.stdout
    assert not (tmp_path / "keras_home" / "datasets").exists()  # Keras downloads datasets there
