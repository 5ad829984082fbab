"""ONNX files checked before onnxruntime reads them: data kept in another
file, tensors over a budget, subgraphs nested too deep. ``onnx`` is imported
when a file is checked, not at import time."""

from __future__ import annotations

import math
from typing import Any

from kedro_keras._formats.artifact import DEFAULT_MAX_TENSOR_BYTES, RefusedArtifactError, over_budget
from kedro_keras._log import printable

# Subgraphs (If, Loop, Scan bodies) nest this deep at most; real models nest a few levels.
MAX_GRAPH_DEPTH = 32
# Constants this small are read as values (the shapes ConstantOfShape, Expand, Tile, Range are given).
_SHAPE_CONSTANT_ELEMENTS = 64


def check_onnx(content: bytes, max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES) -> Any:
    """The parsed ``onnx.ModelProto`` of ``content``, once it is known to be
    self-contained and to declare no tensor over ``max_tensor_bytes``.

    onnxruntime, given bytes, resolves a tensor's external data against the
    working directory: a file could make ``predict`` return another file's
    bytes. This package's exports are single files, so any external data is
    refused. Sizes are checked where the file states them: initializers,
    constants, static value shapes, and the constant shapes that
    ConstantOfShape, Expand, Tile and Range are given.

    Raises:
        RefusedArtifactError: external data, a tensor over the budget, or
            subgraphs nested deeper than ``MAX_GRAPH_DEPTH``.
        ValueError: not an ONNX model.
    """
    import onnx
    from google.protobuf.message import DecodeError

    model = onnx.ModelProto()
    try:
        # Plain protobuf parsing: nothing is read from anywhere else.
        model.ParseFromString(content)
    except (DecodeError, RecursionError) as exc:
        raise ValueError(f"not an ONNX model ({printable(str(exc) or type(exc).__name__)})") from exc
    if not model.HasField("graph"):
        raise ValueError("not an ONNX model (it has no graph)")
    checker = _OnnxChecker(max_tensor_bytes)
    checker.graph(model.graph, depth=0, outer={})
    for info in model.training_info:  # graphs onnxruntime may read beside the main one
        for graph in (info.initialization, info.algorithm):
            checker.graph(graph, depth=1, outer={})
    for function in model.functions:
        checker.nodes(function.node, f"function '{printable(function.name, 80)}'", depth=1, constants={})
    return model


class _OnnxChecker:
    def __init__(self, max_tensor_bytes: int) -> None:
        self.max_tensor_bytes = max_tensor_bytes

    def graph(self, graph: Any, depth: int, outer: dict[str, Any]) -> None:
        if depth > MAX_GRAPH_DEPTH:
            raise RefusedArtifactError(f"its subgraphs nest more than {MAX_GRAPH_DEPTH} deep")
        where = f"graph '{printable(graph.name, 80)}'"
        constants = dict(outer)
        for tensor in graph.initializer:
            self.tensor(tensor, f"initializer '{printable(tensor.name, 80)}'")
            constants[tensor.name] = tensor
        for sparse in graph.sparse_initializer:
            self.sparse(sparse, f"sparse initializer '{printable(sparse.values.name, 80)}'")
        for info in (*graph.input, *graph.output, *graph.value_info):
            self.value_info(info)
        self.nodes(graph.node, where, depth, constants)

    def nodes(self, nodes: Any, where: str, depth: int, constants: dict[str, Any]) -> None:
        for node in nodes:
            what = f"node '{printable(node.name or node.op_type, 80)}' ({printable(node.op_type, 40)}) in {where}"
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    self.tensor(attribute.t, what)
                for tensor in attribute.tensors:
                    self.tensor(tensor, what)
                if attribute.HasField("sparse_tensor"):
                    self.sparse(attribute.sparse_tensor, what)
                for sparse in attribute.sparse_tensors:
                    self.sparse(sparse, what)
                if attribute.HasField("g"):
                    self.graph(attribute.g, depth + 1, constants)
                for graph in attribute.graphs:
                    self.graph(graph, depth + 1, constants)
                if node.op_type == "Constant" and node.output:
                    constants[node.output[0]] = _constant_attribute(attribute)
            self.computed(node, what, constants)

    def computed(self, node: Any, what: str, constants: dict[str, Any]) -> None:
        """What ops that make a tensor from a constant shape would allocate."""
        if node.domain not in ("", "ai.onnx"):
            return
        values = [_small_constant(constants.get(name)) for name in node.input]
        if node.op_type in ("RandomNormal", "RandomUniform"):
            attributes = {a.name: a for a in node.attribute}
            if "shape" in attributes:
                dtype = attributes["dtype"].i if "dtype" in attributes else 1
                self.dims(list(attributes["shape"].ints), _itemsize(dtype), what)
        elif node.op_type == "Resize" and len(values) > 3 and values[3] is not None:
            self.dims(values[3], 1, what)
        elif node.op_type == "ConstantOfShape" and values and values[0] is not None:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            self.dims(values[0], _itemsize(value.data_type if value is not None else 1), what)
        elif node.op_type == "Expand" and len(values) > 1 and values[1] is not None:
            self.dims(values[1], 1, what)
        elif node.op_type == "Tile" and len(values) > 1 and values[1] is not None:
            self.dims(values[1], 1, what)
        elif (
            node.op_type == "Range"
            and len(values) == 3
            and all(v is not None and len(v) == 1 for v in values)
        ):
            start, limit, delta = (v[0] for v in values)
            try:
                count = 0 if delta == 0 else max(math.ceil((limit - start) / delta), 0)
            except (OverflowError, ValueError):  # infinite or NaN bounds: onnxruntime refuses them itself
                return
            self.dims([count], 1, what)

    def dims(self, dims: list[Any], itemsize: int, what: str) -> None:
        try:
            sizes = [int(d) for d in dims]
        except (OverflowError, ValueError) as exc:
            raise RefusedArtifactError(f"{what} declares a shape that is not a list of sizes") from exc
        if any(d < 0 for d in sizes):
            if any(d < -1 for d in sizes):
                raise RefusedArtifactError(f"{what} declares a negative size in shape {sizes[:8]}")
            return  # -1: a size onnxruntime infers (Reshape's convention), not one the file states
        if math.prod(sizes) * itemsize > self.max_tensor_bytes:
            raise over_budget(what, sizes, itemsize, self.max_tensor_bytes)

    def tensor(self, tensor: Any, what: str) -> None:
        import onnx

        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            name = f"'{printable(tensor.name, 80)}'"
            if tensor.name and name not in what:
                what = f"{what}, tensor {name}"
            raise RefusedArtifactError(
                f"{what} keeps its data in another file "
                f"('{printable(location, 120)}', external data), which would be read from the working "
                "directory; export the model again as one self-contained file"
            )
        self.dims(list(tensor.dims), _itemsize(tensor.data_type), what)

    def sparse(self, sparse: Any, what: str) -> None:
        self.tensor(sparse.values, what)
        self.tensor(sparse.indices, what)
        self.dims(list(sparse.dims), _itemsize(sparse.values.data_type), what)

    def value_info(self, info: Any) -> None:
        kind = info.type.WhichOneof("value")
        if kind != "tensor_type" or not info.type.tensor_type.HasField("shape"):
            return
        tensor_type = info.type.tensor_type
        dims = tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            self.dims(
                [d.dim_value for d in dims],
                _itemsize(tensor_type.elem_type),
                f"value '{printable(info.name, 80)}'",
            )


def _itemsize(data_type: int) -> int:
    import onnx

    try:
        return max(onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize, 1)
    except Exception:  # noqa: BLE001 - strings, 4-bit types, unknown codes: count one byte each
        return 1


def _constant_attribute(attribute: Any) -> Any:
    """What a Constant node's attribute holds: a tensor, or a list of numbers."""
    if attribute.name in ("value_int", "value_float"):
        return [attribute.i if attribute.name == "value_int" else attribute.f]
    if attribute.name in ("value_ints", "value_floats"):
        return list(attribute.ints if attribute.name == "value_ints" else attribute.floats)
    return attribute.t if attribute.name == "value" else None


def _small_constant(tensor: Any) -> list[Any] | None:
    """The values of a small integer or float constant, else None."""
    if isinstance(tensor, list):
        return tensor if len(tensor) <= _SHAPE_CONSTANT_ELEMENTS else None
    if tensor is None or tensor.data_location != 0 or math.prod(tensor.dims) > _SHAPE_CONSTANT_ELEMENTS:
        return None
    from onnx import numpy_helper

    try:
        return numpy_helper.to_array(tensor).reshape(-1).tolist()
    except Exception:  # noqa: BLE001 - a damaged constant: onnxruntime reports it better
        return None


def onnx_signature(content: bytes) -> dict[str, list[str]]:
    """The graph's inputs and outputs as ``name: dtype[dims]`` (a dimension
    the file leaves open shown by its name or None), from an export we just
    wrote: what a server feeds and gets back, under the file's own names."""
    import onnx

    graph = onnx.load_model_from_string(content).graph
    initializers = {tensor.name for tensor in graph.initializer}  # old opsets list weights as inputs

    def described(value: Any) -> str:
        tensor = value.type.tensor_type
        dims = [
            dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or None)
            for dim in tensor.shape.dim
        ]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name if tensor.elem_type else "?"
        return f"{value.name}: {dtype}{dims}"

    inputs = [value for value in graph.input if value.name not in initializers]
    return {
        "inputs": [described(value) for value in inputs],
        "outputs": [described(value) for value in graph.output],
        "input_names": [value.name for value in inputs],
    }
