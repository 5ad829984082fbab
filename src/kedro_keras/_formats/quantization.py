"""The quantization modes a saved model's config names, read as data.

``model.quantize(mode)`` gives each quantized layer a dtype policy that its
config records: ``{"class_name": "QuantizedDTypePolicy", "config": {"mode":
"int8", "source_name": "float32"}}`` (``Int4DTypePolicy`` with ``int4/128``,
``QuantizedFloat8DTypePolicy``, ``GPTQDTypePolicy`` with ``gptq/4/128``,
``AWQDTypePolicy``), one per layer or, in a KerasHub backbone, one per layer
path in the backbone's ``DTypePolicyMap``. Keras before 3.4 wrote the same
as a policy name, ``int8_from_float32``. Previews, ``kedro keras inspect``
and a failed load's message read them here without building anything.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from kedro_keras._log import printable

# The modes Keras 3 has had; a mode string from a file is shown only if it
# starts with one of them (and is cut short: it came from anyone).
KNOWN_MODES = ("int8", "int4", "float8", "gptq", "awq")
_MODE = re.compile(r"(?:int8|int4|float8|gptq|awq)(?:/-?\d{1,6}){0,2}")
_MODE_IN_POLICY_NAME = re.compile(rf"({_MODE.pattern})_from_\w+")
# A config holds a few policies per layer; these bound the walk of one read
# from a file, whatever it holds (previews and loads bound the JSON before).
_MAX_ITEMS = 2_000_000
_MAX_MODES_SHOWN = 4


class QuantizedModelError(ValueError):
    """A quantized model that the installed Keras cannot rebuild or fill."""


def quantization_modes(config: Any) -> Counter[str]:
    """How many layers each quantization mode is recorded for in ``config``
    (``Counter({"int8": 4})``); empty for a model that is not quantized."""
    modes: Counter[str] = Counter()
    stack = [config]
    seen = 0
    while stack and seen < _MAX_ITEMS:
        item = stack.pop()
        seen += 1
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        mode = _policy_mode(item)
        if mode is not None:
            modes[mode] += 1
            continue
        for key, value in item.items():
            if key == "dtype" and isinstance(value, str):
                found = _MODE_IN_POLICY_NAME.fullmatch(value)
                if found:
                    modes[found.group(1)] += 1
            elif isinstance(value, (dict, list)):
                stack.append(value)
    return modes


def _policy_mode(item: dict[str, Any]) -> str | None:
    """The mode of a serialised quantized dtype policy, or None for anything else."""
    class_name = item.get("class_name")
    inner = item.get("config")
    if (
        not isinstance(class_name, str)
        or not class_name.endswith("DTypePolicy")
        or not isinstance(inner, dict)
    ):
        return None
    mode, name = inner.get("mode"), inner.get("name")
    if isinstance(mode, str):
        found = _MODE.fullmatch(mode)
        return found.group(0) if found else printable(mode, 40)
    if isinstance(name, str):
        found = _MODE_IN_POLICY_NAME.fullmatch(name)
        return found.group(1) if found else None
    return None


def describe(modes: Counter[str]) -> str:
    """``int8 (4 layers)``, or ``int4/128 (3 layers), float8 (1 layer)``."""
    shown = [
        f"{mode} ({count} layer{'s' if count != 1 else ''})"
        for mode, count in modes.most_common(_MAX_MODES_SHOWN)
    ]
    more = len(modes) - _MAX_MODES_SHOWN
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def cannot_rebuild(config: Any, written_by: Any, exc: BaseException) -> QuantizedModelError | None:
    """For a load of ``config`` that failed with ``exc``: the error that says
    the model is quantized, which Keras wrote it and which one runs, or None
    if the config names no quantization mode (the failure is another one)."""
    import keras

    modes = quantization_modes(config)
    if not modes:
        return None
    written = printable(str(written_by), 40) if written_by else "an unrecorded version"
    running = keras.__version__
    if _version(written) > _version(running):
        remedy = (
            f"Load it with Keras {written} or later, or save the model unquantized and quantize it after "
            "loading"
        )
    else:
        remedy = (
            f"Keras {running} cannot rebuild these quantized layers from the file; save the model "
            "unquantized and quantize it after loading"
        )
    cause = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    return QuantizedModelError(
        f"it is a model quantized with {describe(modes)}, written by Keras {written}, which Keras "
        f"{running} (installed here) cannot load: {type(exc).__name__}: {printable(cause, 600)}. {remedy}."
    )


def _version(text: str) -> tuple[int, ...]:
    """``(3, 15, 1)`` for ``3.15.1`` (``3.16.0.dev2025``: ``(3, 16, 0)``); ``()`` if none."""
    found = re.match(r"\d+(?:\.\d+)*", text)
    return tuple(int(part) for part in found.group(0).split(".")) if found else ()
