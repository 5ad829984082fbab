"""Rebuilding a model and filling it from a file, with Keras's variable
internals: the third of the modules that use Keras's private names.

Keras builds a model by initialising every variable (random draws over the
whole model) and then overwrites them from the file. Here variables are
created without a value inside ``keras.StatelessScope(initialize_variables=
False)``, and each one's first ``assign`` becomes its initial value: under
TensorFlow the very array HDF5 read into, adopted with no copy.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable

from kedro_keras._keras import saving as _keras_saving

if TYPE_CHECKING:
    import keras


def build_model_and_fill(
    config_json: str | bytes,
    fill: Callable[[keras.Model], None],
    *,
    custom_objects: dict[str, Any] | None = None,
    compile: bool = True,
    safe_mode: bool = True,
) -> keras.Model:
    """Rebuild a model from its JSON config and fill its state with ``fill``.

    Compiling is taken out of deserialisation and done between building and
    filling, as Keras does, because the optimizer makes variables with
    concrete values, which the uninitialised build below does not allow.
    """
    import keras

    config = json.loads(config_json)
    compile_config = portable_compile_config(config.get("compile_config")) if compile else None
    config["compile_config"] = None

    def build() -> keras.Model:
        if _keras_saving.available():  # also restores objects shared between layers
            return _keras_saving.model_from_config(json.dumps(config), custom_objects, safe_mode)
        return keras.saving.deserialize_keras_object(
            config, custom_objects=custom_objects, safe_mode=safe_mode
        )

    def prepare(model: keras.Model) -> None:
        if compile_config:
            with (
                keras.saving.custom_object_scope(custom_objects or {}),
                _keras_saving.safe_mode_scope(safe_mode),
            ):
                _compile_from_config(model, compile_config)

    return build_and_fill(build, fill, prepare=prepare)


def _compile_from_config(model: keras.Model, compile_config: dict[str, Any]) -> None:
    """``model.compile_from_config``, less its last step where it is Keras's
    own: the optimizer is built by ``build_and_fill``, with its variables
    left without a value for the file to fill (Keras would fill them with
    zeros first, a second copy of twice the weights for Adam)."""
    import keras

    if (
        type(model).compile_from_config is keras.Model.compile_from_config
        and type(model).compile is keras.Model.compile
    ):
        model.compile(**keras.saving.deserialize_keras_object(compile_config))
    else:
        model.compile_from_config(compile_config)


def build_optimizer(model: keras.Model) -> None:
    """Create the optimizer's variables, so that its saved state can be loaded.

    Keras's ``compile_from_config`` does this only for a model that reports
    itself built and keeps the base ``compile``; a model with its own
    ``compile`` (KerasHub's tasks) or a builder's compiled model would
    otherwise skip the saved optimizer state with a warning, and training
    would restart from step 0.
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or getattr(optimizer, "built", True) or not model.trainable_variables:
        return
    optimizer.build(model.trainable_variables)


# Keras's PyTorch backend swaps each built-in optimizer for a subclass of its
# own and saves it under that module (keras.src.backend.torch.optimizers.
# torch_adam), which imports torch: no other backend can load the file, not
# even with keras.saving.load_model. The class is keras.optimizers.<Name> on
# every backend, and the torch backend swaps it in again on load.
_BACKEND_OPTIMIZER_MODULE = re.compile(r"^keras\.src\.backend\.\w+\.optimizers(\.|$)")


def portable_compile_config(compile_config: dict[str, Any] | None) -> dict[str, Any] | None:
    """``compile_config`` with a backend's own optimizer class named as Keras's public one."""
    optimizer = (compile_config or {}).get("optimizer")
    if isinstance(optimizer, dict) and _BACKEND_OPTIMIZER_MODULE.match(str(optimizer.get("module"))):
        return {**compile_config, "optimizer": {**optimizer, "module": "keras.optimizers"}}
    return compile_config


def build_and_fill(
    build: Callable[[], keras.Model],
    fill: Callable[[keras.Model], None],
    *,
    prepare: Callable[[keras.Model], None] | None = None,
    skip_initialisation: bool = True,
) -> keras.Model:
    """Build a model and fill it from a file, skipping random initialisation.

    Keras initialises every variable (random draws over the whole model,
    often the slowest part of a load) only to overwrite it with the stored
    value. Built inside a ``StatelessScope``, variables are created without a
    value; each one's first ``assign`` from the file then becomes its
    initial value. Variables the file does not hold get their usual
    initialiser afterwards. A model that cannot be built that way (a layer
    that makes a variable from a concrete value) is built the usual way.
    """
    registry = _uninitialized_variable_registry() if skip_initialisation else None
    made = _made_without_values(build, registry)
    if made is None:
        model = build()
        fill(model)
    else:
        model, created = made
        _fill_first_values(created, lambda: fill(model))
    if prepare is not None:
        # Compiling adds the optimizer, whose state the file may hold too:
        # its variables (twice the weights for Adam) are made without values
        # as the layers' were, and filled the same way.
        prepare(model)
        made = _made_without_values(lambda: build_optimizer(model), registry)
        if made is None:
            if registry is not None:
                prepare(model)  # a fresh optimizer: the refused build may have left half of one
            fill(model)
        else:
            _fill_first_values(made[1], lambda: fill(model))
    return model


def _made_without_values(
    make: Callable[[], Any], registry: Callable[[], list[Any]] | None
) -> tuple[Any, list[Any]] | None:
    """``make()``, with every variable it creates left without a value:
    its result and those variables. None if there is no registry, or if
    something in ``make`` needs a concrete value (what it had created is
    forgotten; the caller makes it again the usual way)."""
    if registry is None:
        return None
    import keras

    known = {id(variable) for variable in registry()}
    try:
        with keras.StatelessScope(initialize_variables=False):
            result = make()
    except Exception as exc:
        if not _refused_in_stateless_scope(exc):
            raise
        _forget_variables(registry, {id(v) for v in registry()} - known)
        return None
    created = [variable for variable in registry() if id(variable) not in known]
    _forget_variables(registry, {id(variable) for variable in created})
    return result, created


def _fill_first_values(created: list[Any], fill: Callable[[], None]) -> None:
    """Run ``fill``, each variable of ``created`` taking its first assigned
    value as its own; those it did not fill get their usual initialiser."""
    for variable in created:
        variable.assign = _first_assign(variable)
    try:
        fill()
    finally:
        for variable in created:
            variable.__dict__.pop("assign", None)
    # Only now, and only after a fill that succeeded: a file refused for the
    # sizes it declares must not make us allocate (and randomly initialise)
    # those sizes anyway.
    for variable in created:
        if variable._value is None:
            variable._deferred_initialize()


def _refused_in_stateless_scope(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, ValueError) and "stateless scope" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _first_assign(variable: Any) -> Callable[[Any], Any]:
    """An ``assign`` that gives an uninitialised variable its first value.

    A NumPy array of the right dtype goes straight into the backend's
    variable, skipping the intermediate tensor ``assign`` would make: one
    copy per array instead of two.
    """

    import keras
    import numpy as np

    # TensorFlow copies a NumPy array into its variable (arrays offered for
    # adoption are adopted instead); JAX and PyTorch would keep the array
    # itself as the value, so convert for them.
    numpy_direct = keras.backend.backend() == "tensorflow"

    # PyTorch keeps a tensor's memory layout through assign, and an orthogonal
    # initialiser's output is a transposed view: Keras's own load (initialise,
    # then assign) leaves such a kernel column-major, and torch's matmul takes
    # another path for it, a last-bit difference in a recurrent layer's output.
    # Small (units x units), so initialised the usual way to keep that layout.
    keep_layout = keras.backend.backend() == "torch" and isinstance(
        getattr(variable, "_initializer", None), keras.initializers.Orthogonal
    )

    def assign(value: Any) -> Any:
        del variable.assign  # later assigns are ordinary ones
        if keep_layout:
            variable._deferred_initialize()
            return variable.assign(value)
        if _adopt(variable, value):
            variable._initializer = None
            return variable.value
        if not (numpy_direct and isinstance(value, np.ndarray) and value.dtype.name == variable._dtype):
            value = variable._convert_to_tensor(value, dtype=variable._dtype)
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"the stored value for variable '{variable.path}' has shape "
                f"{tuple(value.shape)}, but the variable has shape {tuple(variable.shape)}"
            )
        variable._initialize(value)
        variable._initializer = None
        return value

    return assign


def _uninitialized_variable_registry() -> Callable[[], list[Any]] | None:
    """Keras's (thread-local) list of variables created without a value."""
    import keras

    if _keras_saving.public_api_only():
        return None
    try:
        from keras.src.backend.common import global_state
    except ImportError:  # pragma: no cover - depends on the Keras version
        return None
    if not all(
        hasattr(keras.Variable, name)
        for name in ("_initialize", "_deferred_initialize", "_convert_to_tensor")
    ):
        return None
    return lambda: global_state.get_global_attribute("uninitialized_variables", [], set_to_default=True)


def _forget_variables(registry: Callable[[], list[Any]], ids: set[int]) -> None:
    # Keras would later try to initialise them again, and fail, if they stayed.
    registry()[:] = [variable for variable in registry() if id(variable) not in ids]


def build_from_builder(builder: Callable[..., Any], builder_args: dict[str, Any]) -> keras.Model:
    """Call a builder function or Model class and check it gave a model."""
    import keras

    model = builder(**builder_args)
    if not isinstance(model, keras.Model):
        raise ValueError(f"the architecture builder returned {type(model).__name__}, not a keras.Model")
    return model


# ---------------------------------------------------------------------------
# Adoption: a variable's memory is the array HDF5 read into
# ---------------------------------------------------------------------------

# TensorFlow copies every NumPy array it is given (``convert_to_eager_tensor``
# calls ``ndarray.copy()``, and the copy, not 64-byte aligned, is copied again),
# but it adopts an aligned array handed over through ``__array__``: the
# variable's memory is then the array HDF5 read into (measured: no extra
# memory, 5 ms instead of 60 ms per 64 MB; make bench's "local load" row
# shows the whole: 1.02x the weights in memory against plain Keras's 2.52x). The adopted array must be one no
# one else holds, or training would change it under its holder: only arrays
# read for Keras's own loaders, which pass them straight to ``assign``, are
# offered (``_keras.stores.single_file.called_by_keras_loader``), and only
# from this size up, where the copy costs.
_ADOPT_MIN = 2**20
_offered = threading.local()


def offer_for_adoption(array: Any) -> None:
    """Let the first ``assign`` of an uninitialised variable adopt ``array``."""
    import keras

    if array.nbytes < _ADOPT_MIN or keras.backend.backend() != "tensorflow":
        return
    offered = getattr(_offered, "arrays", None)
    if offered is None:
        offered = _offered.arrays = weakref.WeakValueDictionary()
    offered[id(array)] = array


def _take_offered(value: Any) -> bool:
    offered = getattr(_offered, "arrays", None)
    return offered is not None and offered.pop(id(value), None) is value


def _adopt(variable: Any, value: Any) -> bool:
    """Give an uninitialised variable ``value``'s memory, if it was offered
    and the types allow."""
    if not _take_offered(value):
        return False
    if value.dtype.name != variable._dtype or tuple(value.shape) != tuple(variable.shape):
        return False
    variable._initialize(_Adoptable(value))
    return True


class _Adoptable:
    """An array offered through ``__array__`` only, so TensorFlow adopts it
    instead of copying it (it copies ``ndarray`` instances unconditionally)."""

    def __init__(self, array: Any) -> None:
        self._array = array

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        array = self._array if dtype is None else self._array.astype(dtype, copy=False)
        return array.copy() if copy and array is self._array else array
