"""LiteRT (TensorFlow Lite) flatbuffers checked before LiteRT's interpreter
reads them: their structure here, then one run on zeros in a child process.
The flatbuffer schema is imported when a file is checked, not at import time."""

from __future__ import annotations

import importlib
import math
import os
from typing import Any

from kedro_keras._formats.artifact import DEFAULT_MAX_TENSOR_BYTES, RefusedArtifactError, over_budget
from kedro_keras._log import printable

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


def litert_signature(content: bytes) -> dict[str, list[str]]:
    """The model's inputs and outputs as ``name: dtype[dims]`` (-1: a
    dimension left open), from an export we just wrote: under the names of
    its first signature (those ``LiteRTModel.predict`` takes), else its
    first subgraph's tensors."""
    schema = _litert_schema()
    model = schema.Model.GetRootAs(content, 0)
    subgraph = model.Subgraphs(0)
    type_names = {
        value: name.lower() for name, value in vars(schema.TensorType).items() if not name.startswith("_")
    }

    def described(index: int, name: str | None = None) -> str:
        tensor = subgraph.Tensors(int(index))
        if tensor.ShapeSignatureLength():
            dims = [int(tensor.ShapeSignature(j)) for j in range(tensor.ShapeSignatureLength())]
        else:
            dims = [int(tensor.Shape(j)) for j in range(tensor.ShapeLength())]
        return f"{name or tensor.Name().decode()}: {type_names.get(tensor.Type(), '?')}{dims}"

    if model.SignatureDefsLength():
        signature = model.SignatureDefs(0)
        names = [signature.Inputs(i).Name().decode() for i in range(signature.InputsLength())]
        outputs = {
            signature.Outputs(i).Name().decode(): signature.Outputs(i).TensorIndex()
            for i in range(signature.OutputsLength())
        }
        return {
            "inputs": [described(signature.Inputs(i).TensorIndex(), names[i]) for i in range(len(names))],
            "input_names": names,
            "outputs": [described(outputs[name], name) for name in in_output_order(list(outputs))],
        }
    return {
        "inputs": [described(index) for index in subgraph.InputsAsNumpy()],
        "outputs": [described(index) for index in subgraph.OutputsAsNumpy()],
        "input_names": [subgraph.Tensors(int(index)).Name().decode() for index in subgraph.InputsAsNumpy()],
    }


def in_output_order(names: list[str]) -> list[str]:
    """A signature's output names in the model's order: TensorFlow names a
    list of outputs ``output_0``, ``output_1``, ..., which LiteRT sorts as
    text (``output_10`` before ``output_2``); other names (a dict's keys) as
    listed."""
    numbers = [name.removeprefix("output_") for name in names]
    if all(
        name.startswith("output_") and number.isdigit() for name, number in zip(names, numbers, strict=True)
    ):
        return sorted(names, key=lambda name: int(name.removeprefix("output_")))
    return names


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
            raise over_budget(what, dims, itemsize, self.max_tensor_bytes)

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
