"""What ``KerasExportDataset`` hands back: something that predicts, for each
export format, and what a backend needs to write each format.

Nothing here imports a heavy library at import time: onnxruntime, LiteRT's
interpreter and Keras are imported when an artifact is loaded.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import re
from typing import Any

from kedro_keras._log import printable

FORMATS = ("tf_saved_model", "onnx", "litert")
FILE_SUFFIXES = {"onnx": ".onnx", "litert": ".tflite"}

# What ``model.export`` needs, per format and backend, beyond Keras: the
# modules to import and the pip packages (or extra) that provide them.
# None: the backend cannot write the format at all.
_EXPORT_NEEDS: dict[str, dict[str, list[tuple[str, str]] | None]] = {
    "tf_saved_model": {
        "tensorflow": [],
        "jax": [("tensorflow", "tensorflow-cpu")],
        "torch": [("torch_xla", "torch-xla"), ("tensorflow", "tensorflow-cpu")],
    },
    "onnx": {
        "tensorflow": [("tf2onnx", "kedro-keras[onnx]"), ("onnx", "kedro-keras[onnx]")],
        "jax": [("jax2onnx", "jax2onnx"), ("onnx", "kedro-keras[onnx]")],
        # torch.onnx's dynamo exporter (with onnxscript) is tried first, its TorchScript one needs onnx only.
        "torch": [("onnx", "kedro-keras[onnx]")],
    },
    "litert": {
        "tensorflow": [],
        "jax": None,
        "torch": [("litert_torch", "litert-torch")],
    },
}

# What loading each format needs.
# onnx too: a file is checked with it (external data, declared sizes) before onnxruntime sees it.
_LOAD_NEEDS = {
    "onnx": [("onnxruntime", "kedro-keras[onnx]"), ("onnx", "onnx")],
    "litert": [("ai_edge_litert", "kedro-keras[litert]")],
}


def _missing(needs: list[tuple[str, str]]) -> list[str]:
    return [package for module, package in needs if importlib.util.find_spec(module) is None]


def why_cannot_export(format: str, backend: str) -> str | None:
    """Why this backend cannot export ``format`` here (what to install or
    which backend to use), or None if it can."""
    if format == "litert" and importlib.util.find_spec("keras.src.export.litert") is None:
        import keras

        return f"Keras {keras.__version__} has no LiteRT export; a newer Keras has (pip install -U keras)"
    needs = _EXPORT_NEEDS[format].get(backend, [])
    if needs is None:
        able = sorted(name for name, value in _EXPORT_NEEDS[format].items() if value is not None)
        return f"the {backend} backend cannot export {format}; use the {' or '.join(able)} backend"
    missing = _missing(needs)
    if missing:
        return (
            f"exporting {format} from the {backend} backend needs {', '.join(dict.fromkeys(missing))} "
            f"(pip install {' '.join(dict.fromkeys(missing))})"
        )
    return None


def why_cannot_load(format: str, backend: str) -> str | None:
    if format == "tf_saved_model":
        if backend != "tensorflow":
            return (
                "a SavedModel loads only under the TensorFlow backend (set KERAS_BACKEND=tensorflow), "
                "or export the model as onnx, which loads anywhere"
            )
        return None
    missing = list(dict.fromkeys(_missing(_LOAD_NEEDS[format])))
    if missing:
        return f"loading {format} needs {', '.join(missing)} (pip install {' '.join(missing)})"
    return None


# --------------------------------------------------------------------------
# What a load returns
# --------------------------------------------------------------------------


# The most bytes one tensor an artifact declares may take (load_args.max_tensor_bytes).
# A self-contained ONNX file, like a LiteRT flatbuffer, holds under 2 GiB in
# all, so a model's own weights stay under this; a larger declared tensor is
# one the file would have the runtime conjure from a few bytes.
DEFAULT_MAX_TENSOR_BYTES = 2**30
# Subgraphs (If, Loop, Scan bodies) nest this deep at most; real models nest a few levels.
MAX_GRAPH_DEPTH = 32
# Constants this small are read as values (the shapes ConstantOfShape, Expand, Tile, Range are given).
_SHAPE_CONSTANT_ELEMENTS = 64


class RefusedArtifactError(ValueError):
    """An artifact declares something a runtime would act on unsafely: data
    in another file, a tensor over the budget, an operator it cannot run."""


def _size_text(nbytes: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{nbytes} bytes"


def _over_budget(what: str, dims: list[int], itemsize: int, max_tensor_bytes: int) -> RefusedArtifactError:
    shown = "x".join(str(d) for d in dims[:8]) + ("x..." if len(dims) > 8 else "")
    return RefusedArtifactError(
        f"{what} declares a tensor of shape [{shown}] ({_size_text(math.prod(dims) * itemsize)}), over the "
        f"{_size_text(max_tensor_bytes)} budget of load_args.max_tensor_bytes; raise it only for a file you "
        "trust"
    )


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
            raise _over_budget(what, sizes, itemsize, self.max_tensor_bytes)

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


class OnnxModel:
    """An ONNX artifact in an onnxruntime session, with Keras's ``predict``.

    The file is checked first (``check_onnx``). With ``safe_mode`` on the
    session runs without graph optimizations: constant folding computes at
    session creation whatever the graph's constants describe, which a
    600-byte file can make gigabytes.
    """

    def __init__(
        self,
        content: bytes,
        providers: list[str] | None = None,
        *,
        safe_mode: bool = True,
        max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES,
    ) -> None:
        import onnxruntime

        check_onnx(content, max_tensor_bytes)
        options = onnxruntime.SessionOptions()
        if safe_mode:
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.session = onnxruntime.InferenceSession(
            content, options, providers=providers or ["CPUExecutionProvider"]
        )
        self.input_names = [spec.name for spec in self.session.get_inputs()]
        self.output_names = [spec.name for spec in self.session.get_outputs()]
        self.input_shapes = {spec.name: spec.shape for spec in self.session.get_inputs()}
        self.output_shapes = {spec.name: spec.shape for spec in self.session.get_outputs()}
        self._input_types = {spec.name: spec.type for spec in self.session.get_inputs()}

    def predict(self, x: Any, **_: Any) -> Any:
        """Outputs for ``x``: one array, a list or a dict of arrays keyed by
        input name. One output comes back as an array, several as a list."""
        feed = {
            name: _as_input(value, self._input_types[name]) for name, value in _by_name(x, self.input_names)
        }
        outputs = self.session.run(None, feed)
        return outputs[0] if len(outputs) == 1 else outputs

    __call__ = predict

    def __repr__(self) -> str:
        return f"OnnxModel(inputs={_shown(self.input_shapes)}, outputs={_shown(self.output_shapes)})"


def _shown(shapes: dict[str, Any]) -> str:
    """Names and shapes from a file, as data: escaped and bounded."""
    items = [f"{printable(str(name), 80)}: {printable(str(shape), 80)}" for name, shape in shapes.items()]
    return "{" + ", ".join(items[:16]) + (", ..." if len(items) > 16 else "") + "}"


# LiteRT inputs an operator may leave out (-1), by operator: FULLY_CONNECTED's
# bias, the convolutions' bias, the LSTMs' peephole, projection, layer-norm
# and input-gate tensors (TFLite's lstm_shared.h). Anywhere else, a missing
# input is one the kernel dereferences: FULLY_CONNECTED without weights
# crashes the process in predict.
_LSTM_OPTIONAL = frozenset({1, 5, 9, 10, 11, 12, 16, 17, 20, 21, 22, 23})
_LITERT_OPTIONAL_INPUTS = {
    "FULLY_CONNECTED": frozenset({2}),
    "CONV_2D": frozenset({2}),
    "DEPTHWISE_CONV_2D": frozenset({2}),
    "CONV_3D": frozenset({2}),
    "TRANSPOSE_CONV": frozenset({3}),
    "CONV_3D_TRANSPOSE": frozenset({3}),
    "SVDF": frozenset({3}),
    "LSTM": _LSTM_OPTIONAL,
    "UNIDIRECTIONAL_SEQUENCE_LSTM": _LSTM_OPTIONAL,
    "BIDIRECTIONAL_SEQUENCE_LSTM": frozenset(
        {1, 5, 9, 10, 11, 12, 16, 17, 18, 22, 26, 27, 28, 29, 33, 34, *range(39, 48)}
    ),
    "BIDIRECTIONAL_SEQUENCE_RNN": frozenset(range(9, 12)),
}
_LITERT_ITEMSIZE = {
    0: 4,
    1: 2,
    2: 4,
    3: 1,
    4: 8,
    6: 1,
    7: 2,
    8: 8,
    9: 1,
    10: 8,
    11: 16,
    12: 8,
    15: 4,
    16: 2,
    18: 2,
}


def check_litert(
    content: bytes, max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES, safe_mode: bool = True
) -> None:
    """Check a LiteRT flatbuffer's structure before the interpreter reads it.

    The interpreter trusts the file's indices: an operator with a missing
    required input, or a signature naming a subgraph that does not exist,
    crashes the process (a segfault, not an exception). So every operator
    must be a builtin the schema knows (custom operators are refused with
    ``safe_mode`` on: they are native code registered by whoever built the
    interpreter), every index (operator code, tensor, buffer, subgraph) must
    be in range, required inputs present, data inside the file (no external
    buffers), and every tensor's declared size within ``max_tensor_bytes``.
    This checks the structure the interpreter relies on; it is not a sandbox
    for its kernels.

    Raises:
        RefusedArtifactError: what is wrong, and where.
        ValueError: not a LiteRT flatbuffer.
    """
    schema = _litert_schema()
    try:
        _LiteRTChecker(content, schema, max_tensor_bytes, safe_mode).model()
    except RefusedArtifactError:
        raise
    except Exception as exc:  # offsets that point outside the file: struct, index, numpy errors
        raise ValueError(
            f"not a readable LiteRT flatbuffer ({type(exc).__name__}: {printable(str(exc), 120)})"
        ) from exc


def _litert_schema() -> Any:
    """LiteRT's flatbuffer schema module: ai_edge_litert's own, else TensorFlow's."""
    for module in ("ai_edge_litert.schema_py_generated", "tensorflow.lite.python.schema_py_generated"):
        try:
            return importlib.import_module(module)
        except ImportError:
            continue
    raise RefusedArtifactError(
        "this ai-edge-litert has no flatbuffer schema to check the file with; upgrade it "
        "(pip install -U ai-edge-litert)"
    )


class _LiteRTChecker:
    def __init__(self, content: bytes, schema: Any, max_tensor_bytes: int, safe_mode: bool) -> None:
        self.content, self.schema = content, schema
        self.max_tensor_bytes, self.safe_mode = max_tensor_bytes, safe_mode
        operators = schema.BuiltinOperator
        self.names = {
            v: k for k, v in vars(operators).items() if not k.startswith("_") and isinstance(v, int)
        }
        self.custom, self.placeholder = operators.CUSTOM, operators.PLACEHOLDER_FOR_GREATER_OP_CODES
        # Tables may share offsets; a file that makes a walk longer than its
        # size allows (one element per byte) is refused, so time stays linear.
        self.budget = len(content) + 1024

    def spend(self, count: int) -> None:
        self.budget -= count
        if self.budget < 0:
            raise RefusedArtifactError("its tables refer to more elements than the file holds")

    def model(self) -> None:
        schema = self.schema
        if len(self.content) < 8 or not schema.Model.ModelBufferHasIdentifier(self.content, 0):
            raise ValueError("not a LiteRT flatbuffer (no 'TFL3' identifier)")
        model = schema.Model.GetRootAs(self.content, 0)
        if (
            getattr(model, "ExternalBuffersLength", lambda: 0)()
            or getattr(model, "ExternalBufferGroupsLength", lambda: 0)()
        ):
            raise RefusedArtifactError(
                "it keeps tensor data in other files (external buffers); export the model again as one "
                "self-contained file"
            )
        codes = [self.operator(model.OperatorCodes(i), i) for i in range(model.OperatorCodesLength())]
        self.spend(len(codes))
        buffers = model.BuffersLength()
        self.spend(buffers)
        for i in range(buffers):
            self.buffer(model.Buffers(i), i)
        subgraphs = model.SubgraphsLength()
        self.spend(subgraphs)
        tensor_counts = [
            self.subgraph(model.Subgraphs(i), i, codes, buffers, subgraphs) for i in range(subgraphs)
        ]
        for i in range(model.SignatureDefsLength()):
            self.signature(model.SignatureDefs(i), i, tensor_counts)

    def operator(self, code: Any, index: int) -> str:
        deprecated, builtin = code.DeprecatedBuiltinCode(), code.BuiltinCode()
        # TFLite's own rule: the larger of the two fields is the operator.
        effective = max(builtin, deprecated)
        if deprecated < 0 or effective not in self.names or effective == self.placeholder:
            raise RefusedArtifactError(
                f"operator code {index} is {effective}, not an operator this LiteRT knows"
            )
        if effective == self.custom and self.safe_mode:
            name = printable((code.CustomCode() or b"").decode("utf-8", "replace"), 80)
            kind = (
                "a TensorFlow op (Flex), which can read and write files as a SavedModel can"
                if name.startswith("Flex")
                else "native code outside LiteRT's builtins"
            )
            raise RefusedArtifactError(
                f"it uses the custom operator '{name}', {kind}; load it only if you trust the file, with "
                "load_args: {safe_mode: false}"
            )
        return self.names[effective]

    def buffer(self, buffer: Any, index: int) -> None:
        offset, size = buffer.Offset(), buffer.Size()
        # Offsets 0 and 1 mean "no data here" (the converter's convention).
        if offset > 1 and offset + size > len(self.content):
            raise RefusedArtifactError(f"buffer {index} lies outside the file")

    def subgraph(self, subgraph: Any, index: int, codes: list[str], buffers: int, subgraphs: int) -> int:
        tensors = subgraph.TensorsLength()
        self.spend(tensors)
        where = f"subgraph {index}"
        for t in range(tensors):
            self.tensor(subgraph.Tensors(t), f"{where}, tensor {t}", buffers)
        for name, values in (("inputs", subgraph.InputsAsNumpy()), ("outputs", subgraph.OutputsAsNumpy())):
            self.indices(values, tensors, f"{where} {name}", optional=frozenset())
        operators = subgraph.OperatorsLength()
        self.spend(operators)
        for o in range(operators):
            op = subgraph.Operators(o)
            what = f"{where}, operator {o}"
            opcode = op.OpcodeIndex()
            if opcode >= len(codes):
                raise RefusedArtifactError(f"{what} names operator code {opcode}; the file has {len(codes)}")
            what = f"{what} ({codes[opcode]})"
            optional = _LITERT_OPTIONAL_INPUTS.get(codes[opcode], frozenset())
            self.indices(op.InputsAsNumpy(), tensors, f"{what} inputs", optional)
            self.indices(op.OutputsAsNumpy(), tensors, f"{what} outputs", optional=None)
            self.indices(op.IntermediatesAsNumpy(), tensors, f"{what} intermediates", optional=None)
            self.subgraph_options(op, what, subgraphs)
        return tensors

    def indices(self, values: Any, tensors: int, what: str, optional: frozenset[int] | None) -> None:
        """Tensor indices in range; -1 (left out) only where ``optional``
        allows it (None: anywhere)."""
        if isinstance(values, int):  # the accessor's answer for an absent vector
            return
        self.spend(len(values))
        for position, value in enumerate(values.tolist()):
            if value == -1 and (optional is None or position in optional):
                continue
            if value == -1:
                raise RefusedArtifactError(f"{what}: required input {position} is missing (-1)")
            if not 0 <= value < tensors:
                raise RefusedArtifactError(f"{what}: tensor index {value} is outside the {tensors} tensors")

    def tensor(self, tensor: Any, what: str, buffers: int) -> None:
        if tensor.Buffer() >= buffers:
            raise RefusedArtifactError(f"{what} names buffer {tensor.Buffer()}; the file has {buffers}")
        if getattr(tensor, "ExternalBuffer", lambda: 0)():
            raise RefusedArtifactError(
                f"{what} keeps its data in another file (an external buffer); export the model again "
                "as one self-contained file"
            )
        shape = tensor.ShapeAsNumpy()
        dims = [] if isinstance(shape, int) else shape.tolist()
        self.spend(len(dims))
        if any(d < 0 for d in dims):
            raise RefusedArtifactError(f"{what} declares a negative size in shape {dims[:8]}")
        itemsize = _LITERT_ITEMSIZE.get(tensor.Type(), 1)
        if math.prod(dims) * itemsize > self.max_tensor_bytes:
            raise _over_budget(what, dims, itemsize, self.max_tensor_bytes)

    def subgraph_options(self, op: Any, what: str, subgraphs: int) -> None:
        """The subgraphs WHILE, IF and CALL_ONCE run must exist."""
        schema, kind = self.schema, op.BuiltinOptionsType()
        fields = {
            schema.BuiltinOptions.WhileOptions: (
                schema.WhileOptions,
                ("CondSubgraphIndex", "BodySubgraphIndex"),
            ),
            schema.BuiltinOptions.IfOptions: (schema.IfOptions, ("ThenSubgraphIndex", "ElseSubgraphIndex")),
            schema.BuiltinOptions.CallOnceOptions: (schema.CallOnceOptions, ("InitSubgraphIndex",)),
        }.get(kind)
        if fields is None or op.BuiltinOptions() is None:
            return
        options_class, names = fields
        table = op.BuiltinOptions()
        options = options_class()
        options.Init(table.Bytes, table.Pos)
        for name in names:
            value = getattr(options, name)()
            if not 0 <= value < subgraphs:
                raise RefusedArtifactError(f"{what} runs subgraph {value}; the file has {subgraphs}")

    def signature(self, signature: Any, index: int, tensor_counts: list[int]) -> None:
        subgraph = signature.SubgraphIndex()
        if not 0 <= subgraph < len(tensor_counts):
            raise RefusedArtifactError(
                f"signature {index} names subgraph {subgraph}; the file has {len(tensor_counts)}"
            )
        for kind, length, get in (
            ("inputs", signature.InputsLength(), signature.Inputs),
            ("outputs", signature.OutputsLength(), signature.Outputs),
        ):
            self.spend(length)
            for i in range(length):
                tensor = get(i).TensorIndex()
                if not 0 <= tensor < tensor_counts[subgraph]:
                    raise RefusedArtifactError(
                        f"signature {index} {kind} name tensor {tensor}; its subgraph has "
                        f"{tensor_counts[subgraph]}"
                    )


# A LiteRT file is run once, on zeros, in a child process before this one
# runs it (safe_mode). The limit covers the child's start and one inference.
LITERT_PROBE_SECONDS = float(os.environ.get("KEDRO_KERAS_LITERT_PROBE_SECONDS", "60"))
_LITERT_PROBE = """
import sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter

interpreter = Interpreter(model_content=sys.stdin.buffer.read())
signatures = interpreter.get_signature_list()
for key in signatures:
    runner = interpreter.get_signature_runner(key)
    runner(**{name: np.zeros(d["shape"], d["dtype"]) for name, d in runner.get_input_details().items()})
if not signatures:
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    interpreter.invoke()
"""


def probe_litert_in_child(content: bytes, timeout: float | None = None) -> None:
    """Run a LiteRT file once, on zeros of its declared input shapes, in a
    child process: a file that crashes the interpreter there is refused
    instead of crashing this process.

    Raises:
        RefusedArtifactError: the child was killed by a signal or did not
            finish within ``timeout``. A Python error in the child is left
            to the real load, which reports it better.
    """
    import signal
    import subprocess
    import sys

    timeout = LITERT_PROBE_SECONDS if timeout is None else timeout
    try:
        # -I: isolated, so no module beside the model (the current folder),
        # user site or PYTHON* variable changes what the child imports.
        child = subprocess.run(
            [sys.executable, "-I", "-c", _LITERT_PROBE],
            input=content,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RefusedArtifactError(
            f"run once on zeros in a child process, the interpreter did not finish within {timeout:g} s "
            "(KEDRO_KERAS_LITERT_PROBE_SECONDS)"
        ) from exc
    if child.returncode < 0:
        try:
            name = signal.Signals(-child.returncode).name
        except ValueError:
            name = f"signal {-child.returncode}"
        raise RefusedArtifactError(
            f"run once on zeros in a child process, the interpreter crashed ({name}): the file is damaged "
            "or built to crash it"
        )


class LiteRTModel:
    """A LiteRT (TensorFlow Lite) artifact in LiteRT's interpreter, with ``predict``.

    The interpreter trusts the file and crashes the process on some damaged
    ones, so with ``safe_mode`` on a file is checked twice before it runs
    here: its structure (``check_litert``: operators, indices, required
    inputs, sizes), then a run on zeros in a child process
    (``probe_litert_in_child``), which catches the crashes a structural
    check cannot foresee (kernels that trust their options or shapes).
    ``predict`` itself runs in this process, as a child per call would cost
    more than most LiteRT models take to run: inputs of other shapes than
    the declared ones take kernel paths the probe did not.
    """

    def __init__(
        self, content: bytes, *, safe_mode: bool = True, max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES
    ) -> None:
        from ai_edge_litert.interpreter import Interpreter

        check_litert(content, max_tensor_bytes, safe_mode)
        if safe_mode:
            probe_litert_in_child(content)
        self.interpreter = Interpreter(model_content=content)
        signatures = self.interpreter.get_signature_list()
        self._key = next(iter(signatures)) if signatures else None
        if self._key is not None:
            self._runner = self.interpreter.get_signature_runner(self._key)
            details = self._runner.get_input_details()
            self.input_names = list(signatures[self._key]["inputs"])
            self.output_names = list(signatures[self._key]["outputs"])
            self.input_shapes = {name: [int(n) for n in details[name]["shape"]] for name in self.input_names}
        else:  # no signature: tensors by index
            self.interpreter.allocate_tensors()
            details = self.interpreter.get_input_details()
            self.input_names = [d["name"] for d in details]
            self.output_names = [d["name"] for d in self.interpreter.get_output_details()]
            self.input_shapes = {d["name"]: [int(n) for n in d["shape"]] for d in details}

    def predict(self, x: Any, **_: Any) -> Any:
        """Outputs for ``x`` (as for ``OnnxModel.predict``). The batch size is
        the one the model was exported with unless the interpreter can resize."""
        if self._key is None:
            return self._predict_by_index(x)
        import numpy as np

        feed = {name: np.asarray(value) for name, value in _by_name(x, self.input_names)}
        outputs = self._runner(**feed)
        values = [outputs[name] for name in self.output_names]
        return values[0] if len(values) == 1 else values

    def _predict_by_index(self, x: Any) -> Any:
        import numpy as np

        details = self.interpreter.get_input_details()
        for detail, (_, value) in zip(details, _by_name(x, self.input_names), strict=True):
            value = np.asarray(value, dtype=detail["dtype"])
            if list(value.shape) != list(detail["shape"]):
                self.interpreter.resize_tensor_input(detail["index"], value.shape)
                self.interpreter.allocate_tensors()
            self.interpreter.set_tensor(detail["index"], value)
        self.interpreter.invoke()
        values = [self.interpreter.get_tensor(d["index"]) for d in self.interpreter.get_output_details()]
        return values[0] if len(values) == 1 else values

    __call__ = predict

    def __repr__(self) -> str:
        outputs = ", ".join(printable(str(name), 80) for name in self.output_names[:16])
        return f"LiteRTModel(inputs={_shown(self.input_shapes)}, outputs=[{outputs}])"


def _by_name(x: Any, names: list[str]) -> list[tuple[str, Any]]:
    shown = [printable(str(name), 80) for name in names[:16]]  # names from the file, as data
    if isinstance(x, dict):
        unknown = set(x) - set(names)
        if unknown:
            raise ValueError(
                f"unknown input(s) {sorted(map(str, unknown))}; the artifact's inputs are {shown}"
            )
        return [(name, x[name]) for name in names]
    if isinstance(x, (list, tuple)):
        if len(x) != len(names):
            raise ValueError(f"{len(x)} inputs given; the artifact's inputs are {shown}")
        return list(zip(names, x, strict=True))
    if len(names) != 1:
        raise ValueError(f"the artifact has {len(names)} inputs {shown}: pass a dict keyed by these names")
    return [(names[0], x)]


def _as_input(value: Any, onnx_type: str) -> Any:
    import numpy as np

    dtype = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(int64)": "int64"}.get(onnx_type)
    return np.asarray(value, dtype=dtype)


def saved_model_as_keras(local_folder: str, endpoint: str | None) -> Any:
    """A Keras model over a SavedModel folder (TensorFlow backend): Keras 3's
    ``model.export``, Keras 2's ``model.save`` and ``tf.saved_model.save``
    alike. The endpoint is ``endpoint``, else ``serve`` (Keras 3's, which
    keeps the inputs' structure), else ``serving_default``."""
    import keras

    layer_class = _signature_layer_class()
    tried = [endpoint] if endpoint else ["serve", "serving_default"]
    available = "none"
    for name in tried:
        try:
            layer = layer_class(local_folder, call_endpoint=name)
            break
        except ValueError as exc:
            listed = re.search(r"Available endpoints for this SavedModel: (\[.*\])", str(exc))
            if listed is None:
                raise
            available = listed.group(1)
    else:
        raise ValueError(
            f"no endpoint {' or '.join(repr(name) for name in tried)} in the SavedModel; its signatures: "
            f"{available}. Name one in load_args.endpoint"
        )
    specs = layer.input_specs
    if specs is None:  # a tf.function attribute (Keras 3's "serve"): inputs as Keras exported them
        signature = layer.call_endpoint_fn.input_signature
        inputs = _inputs_like(signature[0] if len(signature) == 1 else list(signature))
    else:
        inputs = {
            name: keras.Input(shape=tuple(spec.shape[1:]), dtype=spec.dtype.name, name=name)
            for name, spec in specs.items()
        }
        if len(inputs) == 1:
            inputs = next(iter(inputs.values()))
    model = keras.Model(inputs, layer(inputs), name="saved_model")
    model.endpoint = layer.call_endpoint
    return model


def _inputs_like(structure: Any) -> Any:
    import keras

    if isinstance(structure, dict):
        return {name: _inputs_like(spec) for name, spec in structure.items()}
    if isinstance(structure, (list, tuple)):
        return [_inputs_like(spec) for spec in structure]
    return keras.Input(shape=tuple(structure.shape[1:]), dtype=structure.dtype.name, name=structure.name)


def _signature_layer_class() -> type:
    import keras

    class SignatureLayer(keras.layers.TFSMLayer):
        """TFSMLayer that also calls signatures with several inputs (by name)
        and hands back a single output as a tensor rather than a dict."""

        @property
        def input_specs(self) -> dict[str, Any] | None:
            signature = getattr(self.call_endpoint_fn, "structured_input_signature", None)
            if not signature or signature[0] or not isinstance(signature[1], dict):
                return None
            return dict(sorted(signature[1].items()))

        def call(self, inputs: Any, training: bool = False, **kwargs: Any) -> Any:
            specs = self.input_specs
            if specs is None:
                return super().call(inputs, training=training, **kwargs)
            names = list(specs)
            if isinstance(inputs, dict):
                feed = {name: inputs[name] for name in names}
            else:
                feed = {names[0]: inputs}
            outputs = self.call_endpoint_fn(**feed)
            if isinstance(outputs, dict) and len(outputs) == 1:
                return next(iter(outputs.values()))
            return outputs

    return SignatureLayer
