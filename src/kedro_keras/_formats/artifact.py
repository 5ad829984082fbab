"""An export artifact from strangers: the refusal every format's check
raises, and the tensor budget they share (``load_args.max_tensor_bytes``)."""

from __future__ import annotations

import math

# The most bytes one tensor an artifact declares may take (load_args.max_tensor_bytes).
# A self-contained ONNX file, like a LiteRT flatbuffer, holds under 2 GiB in
# all, so a model's own weights stay under this; a larger declared tensor is
# one the file would have the runtime conjure from a few bytes.
DEFAULT_MAX_TENSOR_BYTES = 2**30


class RefusedArtifactError(ValueError):
    """An artifact declares something a runtime would act on unsafely: data
    in another file, a tensor over the budget, an operator it cannot run."""


def _size_text(nbytes: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{nbytes} bytes"


def over_budget(what: str, dims: list[int], itemsize: int, max_tensor_bytes: int) -> RefusedArtifactError:
    """The refusal of a tensor over the budget, in one wording for every format."""
    shown = "x".join(str(d) for d in dims[:8]) + ("x..." if len(dims) > 8 else "")
    return RefusedArtifactError(
        f"{what} declares a tensor of shape [{shown}] ({_size_text(math.prod(dims) * itemsize)}), over the "
        f"{_size_text(max_tensor_bytes)} budget of load_args.max_tensor_bytes; raise it only for a file you "
        "trust"
    )
