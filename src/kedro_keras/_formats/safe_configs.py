"""What a model file may make us call with ``safe_mode`` on: model building
blocks, and nothing else.

Keras's own safe mode refuses marshalled bytecode (a ``lambda``'s code) and
a short denylist of non-modelling functions. A config can still name any
other public Keras function (``keras.config.set_floatx``,
``keras.utils.set_random_seed``, ``keras.datasets.mnist.load_data``) as a
``Lambda``'s function, which then runs with arguments the file chose. So
every configuration we deserialise (``config.json`` with its compile
config, the architecture JSON of weights files, the architecture inside a
sharded index, a legacy ``.h5``'s ``model_config`` and ``training_config``)
is walked here first, and every function it names must be on an allowlist:
activations, losses, metrics, initializers, regularizers, constraints and
``keras.ops`` math, or an object of the entry's own ``custom_objects`` (or
registered with ``keras.saving.register_keras_serializable``: the project's
own code). Keras layers that read files or run stored graphs are refused by
name, however the config spells the name.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from kedro_keras._log import printable

# Public Keras modules whose functions may appear in a layer, loss or metric config.
_MODELLING_MODULES = (
    "activations",
    "losses",
    "metrics",
    "initializers",
    "regularizers",
    "constraints",
    "ops",
    "ops.nn",
    "ops.numpy",
    "ops.linalg",
    "ops.image",
)
# keras.ops functions that take and call other functions, or build graphs: a
# config could hand them anything.
_OPS_THAT_CALL = frozenset(
    {
        "associative_scan",
        "cond",
        "custom_gradient",
        "fori_loop",
        "map",
        "scan",
        "switch",
        "vectorized_map",
        "while_loop",
        # The lookup helpers of activations, losses, metrics, ...: they take a
        # name or a config and deserialise it, which is not a computation.
        "get",
        "deserialize",
        "serialize",
    }
)
# Keras layers that read a path the config chooses (a SavedModel, a torch or
# JAX program) or run a stored graph: code, whatever safe mode says.
_REFUSED_CLASSES = frozenset({"TFSMLayer", "TorchModuleWrapper", "JaxLayer", "FlaxLayer"})
_FUNCTION_CLASSES = frozenset({"function", "__lambda__"})
_allowed_ids: frozenset[int] | None = None


class UnsafeConfigError(ValueError):
    """A configuration names something that is not a model building block."""


# What a model's configuration may hold before we let Keras build it. Building
# costs time in the number of layers and, for models nested in models, in the
# square of the nesting (measured with tests/test_hostile_loads.py's
# nested_models under TensorFlow on the 2-core dev machine: 10 nested models
# 0.06 s, 20 0.15 s, 40 0.44 s; a file of a few KB can nest thousands). keras.applications' largest
# (NASNetLarge, EfficientNetV2L) hold about 1,040 layers, and no model of
# tests/real_architectures.py nor keras.applications serialises deeper than 11
# levels (measured with serialize_keras_object; Keras 3.15); each model nested
# in another adds three. tests/test_real_architectures.py loads its whole
# matrix under these defaults. Adjustable per entry with load_args max_layers
# and max_config_depth.
DEFAULT_MAX_LAYERS = 10_000
DEFAULT_MAX_CONFIG_DEPTH = 100


BOUND_ARGS = ("max_layers", "max_config_depth")


def check_bound_args(load_args: dict[str, Any]) -> None:
    """``max_layers`` and ``max_config_depth``, if given, are positive integers.

    Raises:
        ValueError: starting with the key's name, for a message 'load_args.<key>: ...'.
    """
    for key in BOUND_ARGS:
        value = load_args.get(key)
        if key in load_args and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{key}: must be a positive whole number, got {value!r}")


class ConfigTooLargeError(ValueError):
    """A configuration is larger or deeper than a load is allowed to build."""


def check_config_bounds(
    config: Any, max_layers: int = DEFAULT_MAX_LAYERS, max_depth: int = DEFAULT_MAX_CONFIG_DEPTH
) -> None:
    """Raise ``ConfigTooLargeError`` if ``config`` holds more than
    ``max_layers`` layers (nested models' included) or nests deeper than
    ``max_depth`` levels of JSON, before anything is built from it.

    The walk is iterative and stops at the first limit crossed, so a hostile
    config costs no more than the limits allow.
    """
    layers = 0
    stack: list[tuple[Any, int]] = [(config, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            raise ConfigTooLargeError(
                f"the model's configuration nests more than {max_depth} levels deep (models inside "
                f"models); a real model nests far less. If you trust the file, raise load_args "
                f"max_config_depth"
            )
        if isinstance(item, dict):
            inner = item.get("layers")
            if isinstance(inner, list):
                layers += len(inner)
                if layers > max_layers:
                    raise ConfigTooLargeError(
                        f"the model's configuration holds more than {max_layers} layers; if you trust the "
                        "file and the model is this large, raise load_args max_layers"
                    )
            stack.extend((value, depth + 1) for value in item.values())
        elif isinstance(item, list):
            stack.extend((value, depth + 1) for value in item)


def _allowed_functions() -> frozenset[int]:
    global _allowed_ids
    if _allowed_ids is None:
        import keras

        found = set()
        for name in _MODELLING_MODULES:
            module = keras
            for part in name.split("."):
                module = getattr(module, part, None)
            for attribute, value in vars(module or object()).items():
                if callable(value) and not isinstance(value, type) and attribute not in _OPS_THAT_CALL:
                    found.add(id(value))
        _allowed_ids = frozenset(found)
    return _allowed_ids


def is_modelling_function(function: Any) -> bool:
    """One of Keras's modelling functions (activations, losses, metrics,
    initializers, regularizers, constraints, ``keras.ops`` math)."""
    return id(function) in _allowed_functions()


def _last_name(name: Any) -> str:
    """``Lambda`` for 'Lambda', 'layers.Lambda', 'keras.layers.Lambda' or 'keras>Lambda'."""
    return re.split(r"[.>:]", str(name))[-1] if name else ""


def refuse_unsafe_config(config: Any, custom_objects: dict[str, Any] | None) -> None:
    """Raise ``UnsafeConfigError`` if ``config`` names a function that is not
    a model building block, or a layer that reads files or runs stored code.

    The message names the layer and the function, and ``safe_mode: false``
    as the only way through.
    """
    custom = dict(custom_objects or {})
    _walk(config, custom, layer="the model")


def _walk(item: Any, custom: dict[str, Any], layer: str) -> None:
    if isinstance(item, list):
        for value in item:
            _walk(value, custom, layer)
        return
    if not isinstance(item, dict):
        return
    class_names = {_last_name(item.get("class_name")), _last_name(item.get("registered_name"))}
    inner = item.get("config")
    if isinstance(inner, dict) and isinstance(inner.get("name"), str) and item.get("class_name"):
        layer = f"'{printable(inner['name'], 80)}' ({printable(str(item.get('class_name')), 80)})"
    if item.get("class_name") in _FUNCTION_CLASSES:
        _check_function(item, custom, layer)
        return
    refused = class_names & _REFUSED_CLASSES
    if refused and not (class_names & set(custom)):
        raise UnsafeConfigError(
            f"layer {layer} is a {refused.pop()}, which loads a program from a path the file chooses"
            + _WAY_THROUGH
        )
    if "Lambda" in class_names and isinstance(inner, dict):
        _check_legacy_lambda(inner, custom, layer)
    for value in item.values():
        _walk(value, custom, layer)


_WAY_THROUGH = (
    "; refused because safe_mode is on. Load the file with load_args: {safe_mode: false} only if "
    "you trust where it came from: loading it then can run any code it names"
)


def _check_function(item: dict[str, Any], custom: dict[str, Any], layer: str) -> None:
    name = item.get("config")
    shown = f"{printable(str(item.get('module') or ''), 80)}.{printable(str(name), 80)}".lstrip(".")
    if item.get("class_name") == "__lambda__" or not isinstance(name, str):
        raise UnsafeConfigError(f"layer {layer} holds Python code (a lambda's bytecode)" + _WAY_THROUGH)
    # Keras finds a function by its config name alone (a registered one's is 'package>name'); a
    # registered_name beside it is not looked at, so it must not let the name through here either.
    if _is_users_own(name, custom):
        return
    function = _resolve(item.get("module"), name)
    if function is None or id(function) not in _allowed_functions():
        raise UnsafeConfigError(
            f"layer {layer} calls '{shown}', which is not a model building block (allowed: functions "
            "of keras.activations, losses, metrics, initializers, regularizers, constraints and "
            "keras.ops, and the entry's custom_objects)" + _WAY_THROUGH
        )


def _check_legacy_lambda(config: dict[str, Any], custom: dict[str, Any], layer: str) -> None:
    """Keras 2's Lambda config (legacy .h5): the function as bytecode, or by module and name."""
    kind = config.get("function_type")
    if kind in ("lambda", "raw"):
        raise UnsafeConfigError(f"layer {layer} holds Python code (a lambda's bytecode)" + _WAY_THROUGH)
    if kind == "function":
        _check_function(
            {"class_name": "function", "module": config.get("module"), "config": config.get("function")},
            custom,
            layer,
        )


def _is_users_own(name: Any, custom: dict[str, Any]) -> bool:
    if not isinstance(name, str) or not name or name == "function":
        return False
    if name in custom:
        return True
    import keras

    return name in keras.saving.get_custom_objects()


def _resolve(module: Any, name: str) -> Any:
    """The Keras function a config names, found as Keras finds it: by its
    module (only Keras's own modules are imported), else by its bare name in
    Keras's built-in modules (what Keras does for module 'builtins')."""
    import keras

    if isinstance(module, str) and (module == "keras" or module.startswith("keras.")):
        try:
            found = importlib.import_module(module)
            for part in name.split("."):
                found = getattr(found, part)
            return found
        except (ImportError, AttributeError):
            return None
    for module_name in _MODELLING_MODULES:
        found = keras
        for part in module_name.split("."):
            found = getattr(found, part, None)
        if found is not None and hasattr(found, name):
            return getattr(found, name)
    return None
