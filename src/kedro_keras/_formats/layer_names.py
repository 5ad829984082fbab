"""The names users gave their layers, beside the paths Keras's weights files use.

A weights file names each layer's group by the layer's class, numbered in
order (``layers/dense_1``), not by the name the user gave it (``hidden``):
Keras's saving walk does so that two builds of one model match whatever
names were generated. Messages and ``kedro keras diff`` show both. From a
model, the names come from its variables' own paths (the recorder in
``_keras.stores``); from a stored ``.keras`` archive, from its
``config.json``, read here as untrusted data without building anything.
"""

from __future__ import annotations

import re
from typing import Any

# Keras's saving walk names a container's items by the snake case of their
# class name; this is the same transformation (tests compare it with Keras's
# own on many class names), written here so that ``kedro keras diff`` does
# not import Keras and a backend to name a row.
_NOT_WORD = re.compile(r"\W+")
_BEFORE_CAPITALISED = re.compile("(.)([A-Z][a-z]+)")
_LOWER_THEN_UPPER = re.compile("([a-z])([A-Z])")

# Bounds for a config read from a file: a name longer than this is cut, and
# nesting deeper than Keras builds (safe_configs' max_config_depth default) is not walked.
_MAX_NAME = 200
_MAX_DEPTH = 100


def snake_case(class_name: str) -> str:
    name = _NOT_WORD.sub("", class_name)
    name = _BEFORE_CAPITALISED.sub(r"\1_\2", name)
    return _LOWER_THEN_UPPER.sub(r"\1_\2", name).lower()


def group_names(class_names: list[str]) -> list[str]:
    """The names Keras's walk gives a container's items, in order: the class
    in snake case, numbered from the second of a kind on (``dense``,
    ``dense_1``)."""
    used: dict[str, int] = {}
    names = []
    for class_name in class_names:
        key = snake_case(class_name)
        used[key] = used[key] + 1 if key in used else 0
        names.append(f"{key}_{used[key]}" if used[key] else key)
    return names


def names_by_group(config: Any) -> dict[str, str]:
    """``{"layers/dense_1": "hidden", "layers/sequential/layers/dense":
    "encoder/inner"}`` for the layers of a Functional or Sequential model's
    config (nested ones included). A subclassed model's groups are named by
    its attributes, which the user chose: none are listed for them. Anything
    malformed is skipped, never an error: names only help to read a diff."""
    names: dict[str, str] = {}
    pending = [(config, "", "", 0)]  # (a model's config, its group path, its user path, depth)
    while pending:
        item, group, user, depth = pending.pop()
        layers = _layers_of(item)
        if layers is None or depth > _MAX_DEPTH:
            continue
        described = [(layer, *_class_and_name(layer)) for layer in layers]
        described = [
            (layer, class_name, name) for layer, class_name, name in described if class_name is not None
        ]
        stored = group_names([class_name for _, class_name, _ in described])
        for (layer, _, name), key in zip(described, stored, strict=True):
            path = f"{group}layers/{key}"
            label = f"{user}{name}" if name else ""
            if label:
                names[path] = label
            pending.append((layer, f"{path}/", f"{label}/" if label else "", depth + 1))
    return names


def shown(group: str, names: dict[str, str]) -> str:
    """``'hidden' (layers/dense_1)``, or ``'layers/dense_1'`` where the name
    is unknown or the same."""
    name = names.get(group)
    if not name or name == group:
        return f"'{group}'"
    return f"'{name}' ({group})"


def _layers_of(item: Any) -> list[Any] | None:
    if not isinstance(item, dict):
        return None
    config = item.get("config", item)
    layers = config.get("layers") if isinstance(config, dict) else None
    return layers if isinstance(layers, list) else None


def _class_and_name(layer: Any) -> tuple[str | None, str]:
    if not isinstance(layer, dict) or not isinstance(layer.get("class_name"), str):
        return None, ""
    config = layer.get("config")
    name = config.get("name") if isinstance(config, dict) else None
    return layer["class_name"], name[:_MAX_NAME] if isinstance(name, str) else ""
