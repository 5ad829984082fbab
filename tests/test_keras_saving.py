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
