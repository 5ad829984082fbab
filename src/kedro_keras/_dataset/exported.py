"""What ``KerasExportDataset`` hands back: something that predicts, for each
export format, and what a backend needs to write each format. The checks a
file passes first are in ``_formats.onnx``, ``_formats.litert``,
``_formats.openvino`` and ``_formats.pt2``.

Nothing here imports a heavy library at import time: onnxruntime, LiteRT's
interpreter, OpenVINO, torch and Keras are imported when an artifact is loaded.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import re
import threading
from typing import Any

from kedro_keras._dataset.export_run import first_line
from kedro_keras._formats.artifact import DEFAULT_MAX_TENSOR_BYTES, RefusedArtifactError, over_budget
from kedro_keras._formats.litert import check_litert, in_output_order, probe_litert_in_child
from kedro_keras._formats.onnx import check_onnx
from kedro_keras._formats.openvino import check_openvino_ir
from kedro_keras._formats.pt2 import check_pt2
from kedro_keras._log import printable

FORMATS = ("tf_saved_model", "onnx", "litert", "openvino", "torch")
FILE_SUFFIXES = {"onnx": ".onnx", "litert": ".tflite", "torch": ".pt2"}
# Formats stored as a folder committed by its manifest.json, and the file
# model.export is given inside the folder it writes (None: the folder itself).
FOLDER_FORMATS = {"tf_saved_model": None, "openvino": "model.xml"}
# The files an OpenVINO IR folder holds: the graph, and the weights its constants point into.
OPENVINO_FILES = ("model.xml", "model.bin")

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
    # Keras traces a TensorFlow function for OpenVINO's converter: from JAX
    # through jax2tf, which needs TensorFlow beside it; from PyTorch through torch.jit.trace.
    "openvino": {
        "tensorflow": [("openvino", "kedro-keras[openvino]")],
        "jax": [("tensorflow", "tensorflow-cpu"), ("openvino", "kedro-keras[openvino]")],
        "torch": [("openvino", "kedro-keras[openvino]")],
    },
    # torch.export: a program of PyTorch's own operators, which only the PyTorch backend has.
    "torch": {"tensorflow": None, "jax": None, "torch": []},
}

# What loading each format needs.
# onnx too: a file is checked with it (external data, declared sizes) before onnxruntime sees it.
_LOAD_NEEDS = {
    "onnx": [("onnxruntime", "kedro-keras[onnx]"), ("onnx", "onnx")],
    "litert": [("ai_edge_litert", "kedro-keras[litert]")],
    "openvino": [("openvino", "kedro-keras[openvino]")],
    # torch itself, whatever the Keras backend: the program runs on PyTorch's operators, not Keras's.
    "torch": [("torch", "torch")],
}


def _missing(needs: list[tuple[str, str]]) -> list[str]:
    return [package for module, package in needs if importlib.util.find_spec(module) is None]


def why_cannot_export(format: str, backend: str) -> str | None:
    """Why this backend cannot export ``format`` here (what to install or
    which backend to use), or None if it can."""
    if format == "litert" and importlib.util.find_spec("keras.src.export.litert") is None:
        import keras

        return f"Keras {keras.__version__} has no LiteRT export; a newer Keras has (pip install -U keras)"
    if format == "torch" and importlib.util.find_spec("keras.src.export.torch") is None:
        import keras

        return f"Keras {keras.__version__} has no PyTorch export; a newer Keras has (pip install -U keras)"
    needs = _EXPORT_NEEDS[format].get(backend, [])
    if needs is None:
        able = sorted(name for name, value in _EXPORT_NEEDS[format].items() if value is not None)
        return f"the {backend} backend cannot export {format}; use the {' or '.join(able)} backend"
    missing = _missing(needs)
    if missing:
        why = (
            " (Keras converts a JAX model through jax2tf, which runs on TensorFlow)"
            if format == "openvino" and backend == "jax" and "tensorflow-cpu" in missing
            else ""
        )
        return (
            f"exporting {format} from the {backend} backend needs {', '.join(dict.fromkeys(missing))}{why} "
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


def configured_backend() -> str:
    """The Keras backend a run will use, without importing Keras when it is
    not imported yet: as Keras picks it, from ``KERAS_BACKEND``, else the
    ``backend`` of ``$KERAS_HOME/keras.json`` (``~/.keras``), else TensorFlow."""
    import json
    import os
    import sys

    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json"), encoding="utf-8") as file:
            backend = json.load(file).get("backend")
    except (OSError, ValueError, AttributeError):
        backend = None
    return backend if isinstance(backend, str) and backend else "tensorflow"


def what_a_run_lacks(format: str, *, saves: bool, loads: bool) -> str | None:
    """Why a run that saves and/or loads ``format`` would fail at that node
    (what to install), or None: asked before any node runs."""
    backend = configured_backend()
    problems = [
        problem
        for wanted, problem in (
            (saves, saves and why_cannot_export(format, backend)),
            (loads, loads and why_cannot_load(format, backend)),
        )
        if wanted and problem
    ]
    return "; ".join(problems) or None


# --------------------------------------------------------------------------
# What a load returns
# --------------------------------------------------------------------------


class ExportedModel:
    """What every loaded artifact shares: inputs given as one array, a list,
    or a dict keyed by the file's input names or by the Keras model's own
    keys (``input_keys``, recorded at export, maps them); floats cast to the
    input's float type; a model called as ``model(x)``; its repr."""

    input_keys: dict[str, str] = {}
    """The Keras model's input keys, mapped to the file's input names."""
    input_names: list[str]
    output_names: list[str]
    input_shapes: dict[str, Any]
    output_shapes: dict[str, Any] | None = None
    # The float type each input takes; a runtime's float64 input (NumPy's default) would be refused.
    _input_dtypes: dict[str, Any] = {}

    def predict(self, x: Any, **_: Any) -> Any:
        raise NotImplementedError

    def __call__(self, x: Any, **kwargs: Any) -> Any:
        return self.predict(x, **kwargs)

    def _feed(self, x: Any) -> list[tuple[str, Any]]:
        """``x`` as ``(input name, array)`` in the file's input order."""
        return [
            (name, self._as_input(name, value))
            for name, value in _by_name(x, self.input_names, self.input_keys)
        ]

    def _as_input(self, name: str, value: Any) -> Any:
        """Floats as the input's float type (NumPy makes float64); anything
        else as given, for the runtime to refuse rather than truncate."""
        import numpy as np

        array = np.asarray(value)
        dtype = self._input_dtypes.get(name)
        if dtype is not None and array.dtype.kind == "f" and np.dtype(dtype).kind == "f":
            return array.astype(dtype, copy=False)
        return array

    def __repr__(self) -> str:
        if self.output_shapes is not None:
            outputs = _shown(self.output_shapes)
        else:
            outputs = "[" + ", ".join(printable(str(name), 80) for name in self.output_names[:16]) + "]"
        return f"{type(self).__name__}(inputs={_shown(self.input_shapes)}, outputs={outputs})"


def _one_or_list(values: list[Any]) -> Any:
    """One output as an array, several as a list: as Keras's predict."""
    return values[0] if len(values) == 1 else values


def _shown(shapes: dict[str, Any]) -> str:
    """Names and shapes from a file, as data: escaped and bounded."""
    items = [f"{printable(str(name), 80)}: {printable(str(shape), 80)}" for name, shape in shapes.items()]
    return "{" + ", ".join(items[:16]) + (", ..." if len(items) > 16 else "") + "}"


# The NumPy type each ONNX input type is fed as; other types as given.
_ONNX_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",  # a float16 model takes NumPy's float64, as Keras's predict does
    "tensor(int64)": "int64",
}


class OnnxModel(ExportedModel):
    """An ONNX artifact in an onnxruntime session, with Keras's ``predict``.

    ``predict`` takes a dict keyed by the file's input names, or by the
    Keras model's own keys (``input_keys``, recorded at export, maps them).

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
        self._input_dtypes = {spec.name: _ONNX_DTYPES.get(spec.type) for spec in self.session.get_inputs()}

    def predict(self, x: Any, **_: Any) -> Any:
        """Outputs for ``x``: one array, a list or a dict of arrays keyed by
        input name. One output comes back as an array, several as a list."""
        return _one_or_list(self.session.run(None, dict(self._feed(x))))

    def _as_input(self, name: str, value: Any) -> Any:
        import numpy as np

        # Every value as the input's type (int32 indices to an int64 input too), as onnxruntime refuses others.
        return np.asarray(value, dtype=self._input_dtypes[name])


class LiteRTModel(ExportedModel):
    """A LiteRT (TensorFlow Lite) artifact in LiteRT's interpreter, with ``predict``
    (which takes the Keras model's own keys too, as ``OnnxModel.predict``).

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
            # LiteRT sorts a signature's names as text; the dataset puts the
            # inputs in the model's order from the manifest (a list given to
            # predict follows it).
            self.input_names = list(signatures[self._key]["inputs"])
            self.output_names = in_output_order(list(signatures[self._key]["outputs"]))
            self.input_shapes = {name: [int(n) for n in details[name]["shape"]] for name in self.input_names}
            self._input_dtypes = {name: details[name]["dtype"] for name in self.input_names}
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
        outputs = self._runner(**dict(self._feed(x)))
        return _one_or_list([outputs[name] for name in self.output_names])

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
        return _one_or_list(
            [self.interpreter.get_tensor(d["index"]) for d in self.interpreter.get_output_details()]
        )


class OpenVINOModel(ExportedModel):
    """An OpenVINO IR compiled for OpenVINO's CPU plugin, with ``predict``
    (which takes the Keras model's own keys too, as ``OnnxModel.predict``).

    The graph is checked first (``check_openvino_ir``: no entities, standard
    opsets only, constants inside the weights, sizes), then read from memory
    (no path: nothing beside it is opened), and the shapes OpenVINO infers
    are checked against the budget before compiling, which folds constants.
    The CPU plugin computes in bfloat16 where the processor has it, which
    moved outputs by 6e-3 here: it is asked for float32 (outputs then equal
    Keras's on the models tested).
    """

    def __init__(
        self, xml: bytes, weights: bytes, *, max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES
    ) -> None:
        import numpy as np
        import openvino

        check_openvino_ir(xml, len(weights), max_tensor_bytes)
        core = openvino.Core()
        model = core.read_model(
            model=xml.decode("utf-8"), weights=openvino.Tensor(np.frombuffer(weights or b"\0", np.uint8))
        )
        for node in model.get_ordered_ops():
            for output in node.outputs():
                shape = output.get_partial_shape()
                if shape.is_static:
                    dims = [int(n) for n in shape.to_shape()]
                    itemsize = max(output.get_element_type().size, 1)
                    if math.prod(dims) * itemsize > max_tensor_bytes:
                        raise over_budget(
                            f"operator '{printable(node.get_friendly_name(), 80)}' ({node.get_type_name()})",
                            dims,
                            itemsize,
                            max_tensor_bytes,
                        )
        self.compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        self.input_names = _port_names(self.compiled.inputs, "input")
        self.output_names = _port_names(self.compiled.outputs, "output")
        inputs = list(zip(self.input_names, self.compiled.inputs, strict=True))
        self.input_shapes = {name: str(port.get_partial_shape()) for name, port in inputs}
        self.output_shapes = {
            name: str(port.get_partial_shape())
            for name, port in zip(self.output_names, self.compiled.outputs, strict=True)
        }
        self._input_dtypes = {name: port.get_element_type().to_dtype() for name, port in inputs}

    def predict(self, x: Any, **_: Any) -> Any:
        """Outputs for ``x`` (as for ``OnnxModel.predict``)."""
        import numpy as np

        # By position: an input's name may be one made up here (_port_names).
        results = self.compiled([array for _, array in self._feed(x)])
        return _one_or_list([np.asarray(results[port]) for port in self.compiled.outputs])


def _port_names(ports: Any, prefix: str) -> list[str]:
    """Each port's name, distinct; a port without one (the output of a
    subclassed model of several inputs traced under PyTorch has none) is
    ``<prefix>_<position>``."""
    names: list[str] = []
    for position, port in enumerate(ports):
        name = port.get_any_name() if port.get_names() else ""
        if not name or name in names:
            name = f"{prefix}_{position}"
            while name in names:
                name += "_"
        names.append(name)
    return names


class PT2Model(ExportedModel):
    """A PyTorch ``.pt2`` program (``torch.export``) on PyTorch's CPU, with
    ``predict`` (which takes the Keras model's own keys too). Needs
    ``torch``, whatever the Keras backend: the program calls PyTorch's
    operators, never Keras.

    With ``safe_mode`` on the archive is checked before torch reads it
    (``check_pt2``: no pickles, compiled libraries or objects; ATen operators
    only), and the program torch built is checked again before ``.module()``
    generates and runs its Python. A program exported for a fixed batch
    size (Keras's default) is run in batches of that size.
    """

    def __init__(
        self, content: bytes, *, safe_mode: bool = True, max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES
    ) -> None:
        checked = check_pt2(content, max_tensor_bytes, safe_mode)
        program = _torch_export_load(checked)
        if safe_mode:
            for node in program.graph.nodes:
                if node.op == "call_function" and not _is_aten(node.target):
                    raise RefusedArtifactError(
                        f"its program calls {printable(str(node.target), 120)}, not an ATen operator"
                    )
                if node.op == "get_attr" or node.op == "call_module":
                    raise RefusedArtifactError(f"its program has a {node.op} node; torch.export writes none")
        self._in_spec = program.call_spec.in_spec
        user_inputs = set(program.graph_signature.user_inputs)
        placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in user_inputs]
        self.input_names = [n.name for n in placeholders]
        self.output_names = [str(name) for name in program.graph_signature.user_outputs]
        values = {n.name: n.meta.get("val") for n in placeholders}
        self.input_shapes = {name: _torch_shape(value) for name, value in values.items()}
        # torch's types, which NumPy has no name for (bfloat16): cast once the arrays are tensors.
        self._torch_dtypes = {name: getattr(value, "dtype", None) for name, value in values.items()}
        batches = {shape[0] for shape in self.input_shapes.values() if shape and isinstance(shape[0], int)}
        dynamic = any(shape and not isinstance(shape[0], int) for shape in self.input_shapes.values())
        self._batch = next(iter(batches)) if len(batches) == 1 and not dynamic else None
        self.module = program.module()

    def predict(self, x: Any, **_: Any) -> Any:
        """Outputs for ``x`` (as for ``OnnxModel.predict``): NumPy arrays."""
        import numpy as np

        arrays = self._feed(x)
        total = len(arrays[0][1]) if arrays and arrays[0][1].ndim else 1
        step = self._batch if self._batch and total != self._batch else total
        pieces = [
            self._run([(name, array[start : start + step]) for name, array in arrays], step)
            for start in range(0, max(total, 1), max(step, 1))
        ]
        outputs = [
            parts[0] if step == total else np.concatenate(parts)[:total]
            for parts in zip(*pieces, strict=True)
        ]
        return _one_or_list(outputs)

    def _run(self, arrays: list[tuple[str, Any]], step: int) -> list[Any]:
        import numpy as np
        import torch
        from torch.utils import _pytree

        leaves = []
        for name, array in arrays:
            if len(array) < step:  # the last batch, padded to the size the program was exported for
                array = np.concatenate([array, np.zeros((step - len(array), *array.shape[1:]), array.dtype)])
            tensor = torch.from_numpy(np.ascontiguousarray(array))
            dtype = self._torch_dtypes.get(name)
            if dtype is not None and tensor.is_floating_point() and dtype.is_floating_point:
                tensor = tensor.to(dtype)
            leaves.append(tensor)
        args, kwargs = _pytree.tree_unflatten(leaves, self._in_spec)
        with torch.no_grad():
            result = self.module(*args, **kwargs)
        return [leaf.detach().cpu().numpy() for leaf in _pytree.tree_leaves(result)]


class _ThreadRecords(logging.Handler):
    """The records one thread logs (another thread's load logs its own)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.records.append(record)


def _torch_export_load(content: bytes) -> Any:
    """``torch.export.load``, whose error for a program it cannot rebuild
    says only "check the warnings above": the cause it logged there (on the
    ``torch.export`` logger, with the exception) is put in the error."""
    import io

    import torch

    torch_logger = logging.getLogger("torch.export")
    handler = _ThreadRecords()
    torch_logger.addHandler(handler)
    try:
        return torch.export.load(io.BytesIO(content))
    except Exception as exc:
        logged = [record.exc_info[1] for record in handler.records if record.exc_info and record.exc_info[1]]
        if not logged:
            raise
        raise RuntimeError(f"torch.export.load could not read it: {_cause(logged[-1])}") from exc
    finally:
        torch_logger.removeHandler(handler)


def _cause(exc: BaseException) -> str:
    """An exception's first line and, if it was raised from another, the
    first line of the one at the bottom: torch's deserializer wraps a
    KeyError naming the missing tensor in a line about the whole node."""
    root, seen = exc, {id(exc)}
    while root.__cause__ is not None and id(root.__cause__) not in seen:
        root = root.__cause__
        seen.add(id(root))
    if root is exc:
        return first_line(exc, 300)
    return f"{first_line(exc, 200)} ({type(root).__name__}: {first_line(root, 120)})"


def _is_aten(target: Any) -> bool:
    import operator

    import torch

    if target is operator.getitem:
        return True
    return isinstance(target, torch._ops.OpOverload) and target.namespace == "aten"


def _torch_shape(value: Any) -> list[Any]:
    shape = getattr(value, "shape", None)
    return [] if shape is None else [int(n) if str(n).isdigit() else str(n) for n in shape]


def _by_name(x: Any, names: list[str], keys: dict[str, str] | None = None) -> list[tuple[str, Any]]:
    shown = [printable(str(name), 80) for name in names[:16]]  # names from the file, as data
    if isinstance(x, dict):
        # The Keras model's own keys, as the export's manifest maps them to the file's names.
        x = {(keys or {}).get(key, key) if key not in names else key: value for key, value in x.items()}
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
    # A layer casts float inputs to its own float32 first (autocast): a
    # SavedModel traced for float16 or float64 inputs would refuse them.
    layer.autocast = False
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
                signature = getattr(self.call_endpoint_fn, "input_signature", None) or ()
                if len(signature) > 1:  # several positional arguments (args_0, args_1, ...)
                    return self.call_endpoint_fn(*inputs, **kwargs)
                if signature and isinstance(signature[0], tuple) and isinstance(inputs, list):
                    inputs = tuple(inputs)  # a tuple the endpoint was traced with, not a list
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
