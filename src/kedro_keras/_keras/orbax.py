"""A model's state as Orbax writes and reads it (JAX only).

Orbax writes a tree of JAX arrays so that each process writes only the
shards it holds (its ``ocdbt.process_<i>`` folder) and reads back only the
slices each of its devices needs, onto whatever layout is in force then.
That is what a model larger than one host's memory needs, and what
gathering every variable into process 0 cannot give.

Two trees, each an Orbax checkpoint folder of its own: ``weights`` (the
model's variables) and ``optimizer`` (its optimizer's), each keyed by the
variable's position (``00000``, ``00001``, ...). Keras's own Orbax glue
matches arrays to variables by their *paths*, which change whenever a model
is built a second time in a process (``dense_2`` for ``dense``): its
restores then silently skip every array (see docs/processes.md). Positions
in the model's own order are what a ``.weights.h5`` file matches by too;
the index beside the trees records each one's path, shape and dtype, and
a model that does not match them is refused before anything is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kedro_keras._log import printable

if TYPE_CHECKING:
    import keras

GROUPS = ("weights", "optimizer")
EXTRA = "pip install 'kedro-keras[orbax]'"


def require_orbax() -> Any:
    """``orbax.checkpoint``, or a ValueError saying what is missing."""
    import keras

    backend = keras.backend.backend()
    if backend != "jax":
        raise ValueError(
            f"the Orbax format ('.orbax') holds JAX arrays and needs the JAX backend; this process runs "
            f"Keras on {backend}. Run with KERAS_BACKEND=jax, or save '.weights.json' (sharded weights), "
            "which every backend reads"
        )
    try:
        import orbax.checkpoint as ocp
    except ImportError as exc:
        raise ValueError(f"the Orbax format ('.orbax') needs orbax-checkpoint: {EXTRA}") from exc
    return ocp


def group_variables(model: keras.Model, group: str) -> list[Any]:
    """The variables of ``group``, in the model's own order (the optimizer's
    are empty until it is built)."""
    if group == "weights":
        return list(model.weights)
    optimizer = getattr(model, "optimizer", None)
    return list(getattr(optimizer, "variables", None) or [])


def describe(variables: list[Any]) -> list[dict[str, Any]]:
    """What the index records of each variable: enough to refuse a model
    that does not match before reading a byte of the arrays."""
    return [
        {"path": str(variable.path), "shape": [int(n) for n in variable.shape], "dtype": str(variable.dtype)}
        for variable in variables
    ]


def _key(position: int) -> str:
    return f"{position:05d}"


def write_group(variables: list[Any], directory: Path) -> None:
    """Write ``variables`` as one Orbax checkpoint at ``directory`` (which
    must not exist). A collective: every process calls it, with the same
    variables in the same order and the same ``directory``; each writes the
    shards it holds."""
    ocp = require_orbax()
    tree = {_key(position): variable.value for position, variable in enumerate(variables)}
    checkpointer = ocp.PyTreeCheckpointer()
    checkpointer.save(str(directory), tree)


def read_group(variables: list[Any], directory: Path) -> None:
    """Assign the arrays of the Orbax checkpoint at ``directory`` to
    ``variables`` (already checked against the index), each read onto the
    variable's own placement: under a distribution, each process reads the
    slices its devices hold."""
    ocp = require_orbax()
    import jax

    target = {}
    for position, variable in enumerate(variables):
        target[_key(position)] = jax.ShapeDtypeStruct(
            tuple(variable.shape), variable.dtype, sharding=_placement(variable, jax)
        )
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    restored = ocp.PyTreeCheckpointer().restore(
        str(directory), args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args)
    )
    for position, variable in enumerate(variables):
        variable.assign(restored[_key(position)])


def _placement(variable: Any, jax: Any) -> Any:
    """Where ``variable``'s value lives, or would under the distribution in
    force (a variable built without a value has none yet)."""
    value = getattr(variable, "_value", None)
    if value is not None and hasattr(value, "sharding"):
        return value.sharding
    layout = getattr(variable, "_layout", None)
    if layout is None:
        import keras

        distribution = keras.distribution.distribution()
        layout = None if distribution is None else distribution.get_variable_layout(variable)
    if layout is not None:
        return getattr(layout, "backend_layout", layout)
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def mismatch(variables: list[Any], recorded: list[dict[str, Any]]) -> str | None:
    """How ``variables`` differ from what the index recorded (None: they match)."""
    if len(variables) != len(recorded):
        return f"the model has {len(variables)} variables here, the saved state {len(recorded)}"
    for variable, saved in zip(variables, recorded, strict=True):
        shape = [int(n) for n in variable.shape]
        if shape != saved["shape"] or str(variable.dtype) != saved["dtype"]:
            return (
                f"'{variable.path}' is {tuple(shape)} {variable.dtype} in the model, and the saved "
                f"'{printable(saved['path'], 120)}' is {tuple(saved['shape'])} {saved['dtype']}"
            )
    return None
