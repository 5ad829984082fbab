"""Import paths written in YAML: builders and ``custom_objects``.

A catalog entry names classes and functions as strings. They are imported,
never evaluated: only dotted Python names are accepted.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import inspect
import re
import sys
from typing import Any

from kedro_keras._log import SafeDatasetError, as_data, printable

# Only dotted Python names, matched against the whole string (``re.fullmatch``:
# a ``$`` would let a trailing newline through).
_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)?")


# Modules that are never model code. An import path into one (or to an object
# defined in one, re-exported elsewhere) would give a model file's config, which
# can name any custom object, a way to run commands, touch files or the network,
# or change the process: refused whatever safe_mode says.
_NEVER_MODEL_CODE = frozenset(
    {
        "_thread", "asyncio", "builtins", "code", "codeop", "ctypes", "dill", "fcntl", "fileinput",
        "ftplib", "gc", "glob", "http", "importlib", "inspect", "io", "marshal", "mmap", "multiprocessing",
        "nt", "os", "pathlib", "pdb", "pickle", "pkgutil", "posix", "pty", "pwd", "requests", "resource",
        "runpy", "select", "selectors", "shelve", "shutil", "signal", "site", "smtplib", "socket",
        "sqlite3", "subprocess", "sys", "sysconfig", "tarfile", "telnetlib", "tempfile", "threading",
        "urllib", "webbrowser", "zipfile", "zipimport", "cloudpickle", "joblib", "fsspec", "s3fs",
    }
)  # fmt: skip


def _refuse_never_model_code(import_path: str, obj: Any = None) -> None:
    modules = [import_path.replace(":", ".")]
    if obj is not None:
        modules.append(
            getattr(obj, "__name__", "") if inspect.ismodule(obj) else getattr(obj, "__module__", "") or ""
        )
    for module in (name.split(".")[0] for name in modules):
        if module in _NEVER_MODEL_CODE:
            raise ValueError(
                f"refusing '{import_path}': it is (or comes from) module '{module}', which is never model "
                "code; name the class or function of your own project that the model uses"
            )
    if inspect.ismodule(obj):
        raise ValueError(f"refusing '{import_path}': it is a module; name a class or function in it")


def _candidates(import_path: Any) -> list[tuple[str, list[str]]]:
    """The (module, attributes) an import path may mean, longest module first
    ('a.b.C.D' may be class D nested in C), once it is checked to be a dotted
    name outside the modules that are never model code."""
    if not isinstance(import_path, str) or not _IMPORT_PATH.fullmatch(import_path):
        raise ValueError(
            f"'{import_path}' is not an import path: expected dotted Python "
            "names such as 'my_project.layers.Scale'"
        )
    _refuse_never_model_code(import_path)
    if ":" in import_path:
        module_name, attribute_path = import_path.split(":")
        return [(module_name, attribute_path.split("."))]
    parts = import_path.split(".")
    return [(".".join(parts[:i]), parts[i:]) for i in range(len(parts) - 1, 0, -1)]


def check_import_path(import_path: Any) -> None:
    """Check an import path when the catalog is built, before any training:
    well formed, allowed, and naming a module that exists. Nothing is
    imported where the files show the module: a project's
    ``pipelines/__init__.py`` imports its nodes and so TensorFlow, which made
    ``kedro keras list`` take 9 s. Only a module not found that way is looked
    for again with its parent packages imported (a package may extend its
    own ``__path__``).

    Raises:
        ValueError: as ``import_object`` would, for these causes.
    """
    candidates = _candidates(import_path)
    # The longest reading first: 'pkg.mod.func' found as module pkg.mod is
    # settled; a shorter one leaves its next name to be an attribute, which
    # only the import below can tell (or a mistyped module: 'pkg.modz.func').
    if _found_without_importing(candidates[0][0]):
        return
    missing = None
    for module_name, attributes in candidates:
        try:
            if importlib.util.find_spec(module_name) is not None:
                # Imported already as the parent of a longer candidate that is
                # no module: then its next name must be an attribute of it.
                module = sys.modules.get(module_name)
                if missing and module is not None and not hasattr(module, attributes[0]):
                    break
                return
        except ModuleNotFoundError as exc:  # a parent package is missing
            missing = missing or exc.name
            continue
        except Exception:  # noqa: BLE001 - a parent that fails to import: reported in full at load
            return
        missing = missing or module_name
    raise ValueError(f"cannot import '{import_path}': there is no module '{missing}'")


def _found_without_importing(module_name: str) -> bool:
    """Whether the files show module ``module_name``, found the way the import
    system would, one package's search path at a time, running no package's
    ``__init__``."""
    parts = module_name.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])  # a top-level name: no parent to import
        for end in range(2, len(parts) + 1):
            parent = sys.modules.get(".".join(parts[: end - 1]))
            locations = getattr(parent, "__path__", None) if parent else None
            if locations is None:
                locations = spec.submodule_search_locations if spec is not None else None
            if locations is None:
                return False
            spec = importlib.machinery.PathFinder.find_spec(".".join(parts[:end]), list(locations))
    except (ImportError, ValueError):
        return False
    return spec is not None


def check_known_args(kind: str, args: dict[str, Any], known: set[str], filepath: str) -> None:
    """Refuse keys of ``load_args``/``save_args``/... that the dataset does not
    read, so a typo fails when the catalog is built. One wording for every
    dataset.

    Raises:
        DatasetError: naming the unknown keys, the entry and the known ones.
    """

    unknown = set(args) - known
    if unknown:
        raise SafeDatasetError(
            f"Unknown {kind} {sorted(unknown)} for '{filepath}'; the ones understood are {sorted(known)}."
        )


def check_model_load_args(load_args: dict[str, Any], also_known: set[str], filepath: str) -> None:
    """The ``load_args`` checks every dataset that loads a model makes when
    the catalog is built: no unknown key, ``safe_mode`` a boolean, the config
    bounds positive whole numbers, and ``custom_objects`` import paths that
    exist. ``also_known``: the dataset's own keys beside those.

    Raises:
        DatasetError: naming the entry, the key and the cause.
    """
    from kedro_keras._formats.safe_configs import BOUND_ARGS, check_bound_args

    check_known_args(
        "load_args", load_args, {"custom_objects", "safe_mode", *BOUND_ARGS, *also_known}, filepath
    )
    try:
        check_safe_mode(load_args)
        check_bound_args(load_args)
    except ValueError as exc:
        raise SafeDatasetError(f"'{filepath}': load_args.{exc}.") from as_data(exc)
    try:  # a typo fails when the catalog is built, not after training
        check_custom_objects(load_args.get("custom_objects"))
    except ValueError as exc:
        raise SafeDatasetError(f"'{filepath}': load_args.custom_objects: {exc}.") from as_data(exc)


def check_safe_mode(load_args: dict[str, Any]) -> None:
    """``safe_mode`` must be the boolean ``true`` or ``false``.

    Keras reads ``None`` as "safe", but a check that tests truthiness reads it
    as "unsafe"; a YAML ``null``, an empty value or the string ``"false"`` is
    a typo, never a decision to run a file's code. Only a literal ``false``
    turns the checks off.

    Raises:
        ValueError: any other value, naming it.
    """
    value = load_args.get("safe_mode", True)
    if not isinstance(value, bool):
        raise ValueError(
            f"safe_mode: must be true or false, got {value!r} ({type(value).__name__}); safe_mode stays on "
            "unless it is literally false, and any other value is refused rather than guessed"
        )


def check_custom_objects(custom_objects: Any) -> None:
    """``check_import_path`` on each import path of a ``custom_objects`` value."""
    if isinstance(custom_objects, (list, tuple)):
        paths = list(custom_objects)
    elif isinstance(custom_objects, dict):
        paths = [value for value in custom_objects.values() if isinstance(value, str)]
    else:
        return  # its type is reported at load, with the forms it may take
    for path in paths:
        check_import_path(path)


def import_object(import_path: str) -> Any:
    """Import ``package.module.Name`` (or ``package.module:Name``).

    Raises:
        ValueError: the string is not a dotted Python name, or nothing
            importable is at that path.
    """
    candidates = _candidates(import_path)
    missing_module = None  # the longest prefix that is not a module
    for module_name, attributes in candidates:
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                missing_module = missing_module or exc.name
                continue  # this prefix is not a module; try a shorter one
            raise  # the module exists but one of its own imports failed
        try:
            for attribute in attributes:
                obj = getattr(obj, attribute)
        except AttributeError:
            if missing_module and len(attributes) > 1:
                # 'demo.modelz.build' with no module 'demo.modelz': the typo
                # is in the module, not in an attribute of 'demo'.
                raise ValueError(
                    f"cannot import '{import_path}': there is no module '{missing_module}'"
                ) from None
            raise ValueError(
                f"cannot import '{import_path}': module '{module_name}' has no "
                f"attribute '{'.'.join(attributes)}'"
            ) from None
        _refuse_never_model_code(import_path, obj)
        return obj
    raise ValueError(f"cannot import '{import_path}': there is no module '{missing_module or import_path}'")


def resolve_custom_objects(custom_objects: Any, safe_mode: bool = True) -> dict[str, Any] | None:
    """Turn a YAML-friendly ``custom_objects`` into what Keras expects.

    Accepts a mapping whose values are objects or import-path strings, or a
    list of import paths (each registered under its last name). With
    ``safe_mode`` on, what an import path resolves to must be something
    Keras would take as a custom object (``check_custom_object``).
    """
    if custom_objects is None:
        return None
    if isinstance(custom_objects, (list, tuple)):
        custom_objects = {path.replace(":", ".").rsplit(".", 1)[-1]: path for path in custom_objects}
    if not isinstance(custom_objects, dict):
        raise ValueError(
            "custom_objects must be a mapping of names to classes or import "
            f"paths, or a list of import paths; got {type(custom_objects).__name__}"
        )
    resolved = {}
    for name, value in custom_objects.items():
        if isinstance(value, str):
            obj = import_object(value)
            if safe_mode is not False:
                check_custom_object(value, obj)
            value = obj
        resolved[name] = value
    return resolved


# The kinds of class Keras serialises by name. A custom object of any other
# kind is not model code: Keras would only ever call it with arguments the
# model file chose.
_KERAS_KINDS = (
    "layers.Layer",
    "losses.Loss",
    "metrics.Metric",
    "optimizers.Optimizer",
    "optimizers.schedules.LearningRateSchedule",
    "initializers.Initializer",
    "regularizers.Regularizer",
    "constraints.Constraint",
)
# Keras layers that load a program from a path the config chooses: refused by
# name in a model file, so not to be let back in through custom_objects.
_PROGRAM_LOADERS = ("TFSMLayer", "TorchModuleWrapper", "JaxLayer", "FlaxLayer")


def check_custom_object(import_path: str, obj: Any) -> None:
    """Refuse an import path (from YAML) whose object is not something Keras
    would take as a custom object, whatever alias reached it: a class of the
    kinds Keras serialises (layers, models, losses, metrics, optimizers, their
    schedules, initializers, regularizers, constraints; never an instance,
    which may wrap any callable), or a function that is registered with Keras, is a Keras modelling function,
    or is defined in the project's own code (not in the standard library, not
    in an installed package, not in kedro-keras).

    A list of dangerous modules would always miss an alias (``pydoc.pipepager``
    runs a shell command; ``copyreg._reconstructor`` and ``pandas.read_pickle``
    unpickle), so this is an allowlist of what model code is.

    Raises:
        ValueError: naming the path, what it resolved to and why that is refused.
    """
    import keras

    kinds = tuple(_keras_attribute(keras, name) for name in _KERAS_KINDS)
    kinds = tuple(kind for kind in kinds if isinstance(kind, type))
    shown = f"'{import_path}'"
    if isinstance(obj, type):
        loaders = [getattr(keras.layers, name, None) for name in _PROGRAM_LOADERS]
        if any(isinstance(loader, type) and issubclass(obj, loader) for loader in loaders):
            raise ValueError(
                f"refusing {shown}: {obj.__name__} loads a program from a path the model file chooses; "
                "with safe_mode on it is never a custom object (load_args: {safe_mode: false} for files "
                "you trust)"
            )
        if issubclass(obj, kinds):
            return
        raise ValueError(
            f"refusing {shown}: it is the class {obj.__module__}.{obj.__qualname__}, which is not a Keras "
            "layer, model, loss, metric, optimizer, schedule, initializer, regularizer or constraint, so "
            "Keras would only call it with arguments the model file chose"
        )
    # An instance is never taken, even of a Keras kind: a Lambda or a loss wrapper holds any callable.
    if inspect.isfunction(obj):
        if _is_registered_or_modelling(obj) or _is_project_code(obj):
            return
        raise ValueError(
            f"refusing {shown}: it is the function {obj.__module__}.{obj.__qualname__} from "
            f"{_where_defined(obj)}, not your project's own code, not registered with Keras "
            "(keras.saving.register_keras_serializable) and not a Keras modelling function, so a model "
            "file could have it called with arguments of the file's choosing"
        )
    if callable(obj) and _is_registered_or_modelling(obj):
        return
    raise ValueError(
        f"refusing {shown}: it is {type(obj).__name__} {obj!r:.80}, not a Keras class or a function of "
        "your project's own code; name the class or function itself (a partial or other callable object "
        "can wrap anything)"
    )


def _keras_attribute(keras: Any, dotted: str) -> Any:
    found = keras
    for part in dotted.split("."):
        found = getattr(found, part, None)
    return found


def _is_registered_or_modelling(obj: Any) -> bool:
    import keras

    from kedro_keras._formats.safe_configs import is_modelling_function

    registered = keras.saving.get_custom_objects().values()
    return any(obj is value for value in registered) or is_modelling_function(obj)


def _where_defined(function: Any) -> str:
    """The file a function's code is in: its code object's, which re-exports
    under another module's name cannot change."""
    filename = function.__code__.co_filename
    if filename.startswith("<"):  # generated code: judge it by its module's file
        module = sys.modules.get(function.__module__)
        filename = getattr(module, "__file__", None) or filename
    return filename


def _installed_code_folders() -> list[str]:
    import os
    import site
    import sysconfig

    folders = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    folders.update(site.getsitepackages())
    folders.add(site.getusersitepackages())
    # A venv that sees the system's packages, PYTHONPATH or a .pth file can add more of them.
    folders.update(
        entry for entry in sys.path if os.path.basename(entry) in ("site-packages", "dist-packages")
    )
    folders.add(os.path.dirname(os.path.dirname(__file__)))  # kedro-keras itself, even when installed -e
    return [os.path.join(os.path.realpath(folder), "") for folder in folders if folder]


def _is_project_code(function: Any) -> bool:
    """Defined in the project's own code: a Kedro project's package (even
    installed as a wheel), or any file outside the standard library,
    installed packages and kedro-keras (a package installed -e, a notebook)."""
    import os

    top = function.__module__.split(".")[0] if isinstance(function.__module__, str) else ""
    try:
        from kedro.framework.project import PACKAGE_NAME
    except ImportError:  # pragma: no cover - Kedro is a dependency
        PACKAGE_NAME = None
    if PACKAGE_NAME and top == PACKAGE_NAME and top != "kedro_keras":
        return True
    filename = _where_defined(function)
    if filename.startswith("<"):
        return function.__module__ == "__main__"  # typed into this session, e.g. a notebook
    real = os.path.realpath(filename)
    return not any(real.startswith(folder) for folder in _installed_code_folders())


def unknown_class_hint(exc: BaseException) -> str | None:
    """For Keras's "could not locate" / "could not be deserialized" errors: the
    class or function it could not find, and the custom_objects line to add,
    with the module the file records for it."""
    text = str(exc)
    found = re.search(r"Could not (?:locate|deserialize) (?:class|function) '([^']+)'", text)
    if not found:
        return None
    name = printable(found.group(1), limit=80)
    # The config Keras quotes after the name is that object's own.
    module = re.search(r"['\"]module['\"]: ['\"]([\w.]+)['\"]", text[found.end() :])
    where = (
        printable(module.group(1), limit=120)
        if module and module.group(1).split(".")[0] not in ("keras", "builtins")
        else None
    )
    path = f"{where}.{name}" if where else f"<your module>.{name}"
    recorded = f" (the file records it in module '{where}')" if where else ""
    return (
        f"it uses '{name}'{recorded}, which Keras cannot find. Give it in load_args, e.g. "
        f"custom_objects: {{{name}: {path}}} (an import path), or decorate it with "
        "@keras.saving.register_keras_serializable() in a module that is imported."
    )
