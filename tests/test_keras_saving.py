"""_keras_saving: Keras's internals are used only where they are present
with the parameters we pass, and KEDRO_KERAS_PUBLIC_API_ONLY switches
every one of them off."""

from __future__ import annotations

import inspect

import pytest

from kedro_keras._keras import build as _keras_build
from kedro_keras._keras import saving as _keras_saving


@pytest.mark.private_api
def test_private_api_detection(monkeypatch):
    assert _keras_saving.available()
    assert _keras_saving.legacy_h5_format() is not None
    assert _keras_build._uninitialized_variable_registry() is not None
    monkeypatch.setenv("KEDRO_KERAS_PUBLIC_API_ONLY", "1")
    assert not _keras_saving.available()
    assert _keras_saving.legacy_h5_format() is None
    assert _keras_build._uninitialized_variable_registry() is None


def test_a_changed_signature_turns_the_fast_path_off(monkeypatch):
    """If Keras renamed a parameter we pass by keyword, we must not call it."""
    from keras.src.saving import saving_lib

    def reordered(config_json, custom_objects, safe_mode, compile_model):  # 'compile' renamed
        raise AssertionError("never called")

    monkeypatch.setattr(saving_lib, "_model_from_config", reordered)
    assert not _keras_saving.available()


def test_every_internal_we_call_is_checked():
    """Each saving_lib name the module calls is in the table checked before use."""
    import re

    called = set(re.findall(r"_lib\(\)\.(\w+)", inspect.getsource(_keras_saving)))
    assert called and called <= set(_keras_saving._SAVING_LIB)


@pytest.mark.private_api
def test_a_second_save_builds_no_reference_objects(tmp_path, monkeypatch):
    """Keras's get_attr_skipset stores its skip-sets under one key and looks
    them up under another, so every save built a reference Layer and
    Optimizer again (8 ms of a small model's checkpoint); we store them under
    the key it looks up."""
    import keras
    from keras.src.layers.layer import Layer

    from kedro_keras import KerasModelDataset

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    KerasModelDataset(filepath=str(tmp_path / "first.keras")).save(model)
    built = []
    original = Layer.__init__

    def counting(self, *args, **kwargs):
        built.append(type(self).__name__)
        original(self, *args, **kwargs)

    monkeypatch.setattr(Layer, "__init__", counting)
    KerasModelDataset(filepath=str(tmp_path / "second.keras")).save(model)
    assert built == []
    # The fault is real: with the keys Keras looks up cleared, its walk builds them again.
    from keras.src.backend.common import global_state

    for obj_type in _keras_saving._SKIPSET_TYPES:
        global_state.set_global_attribute(f"saving_attr_skiplist_{obj_type}", None)
    keras.saving.save_model(model, str(tmp_path / "plain.keras"))
    assert "Layer" in built
