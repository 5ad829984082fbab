"""Bytes per item of each dtype a Keras variable can have: the one table.

Size hints for a save (how much a model's state takes), the largest
variable a shard must hold, and the bound on a checkpoint record's random
states all count bytes from a dtype's name. NumPy does not know bfloat16 or
the float8 types, so the table names them; a dtype it lacks counts as 8
bytes, the widest real type, so that a bound errs on the safe side.
"""

from __future__ import annotations

from typing import Any

DTYPE_BYTES: dict[str, int] = {
    "bool": 1,
    "int4": 1,  # Keras's int4 quantization stores one value per int8
    "int8": 1,
    "uint8": 1,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "int16": 2,
    "uint16": 2,
    "float16": 2,
    "bfloat16": 2,
    "int32": 4,
    "uint32": 4,
    "float32": 4,
    "int64": 8,
    "uint64": 8,
    "float64": 8,
    "complex64": 8,
    "complex128": 16,
}
_UNKNOWN_DTYPE_BYTES = 8


def dtype_name(dtype: Any) -> str:
    """The name Keras gives ``dtype``: a string already, or a NumPy,
    TensorFlow or PyTorch dtype (``torch.float32``) named as Keras would."""
    name = dtype if isinstance(dtype, str) else getattr(dtype, "name", None) or str(dtype)
    return str(name).removeprefix("torch.")


def dtype_bytes(dtype: Any) -> int:
    """Bytes per item of ``dtype`` (8 for one not in the table)."""
    return DTYPE_BYTES.get(dtype_name(dtype), _UNKNOWN_DTYPE_BYTES)
