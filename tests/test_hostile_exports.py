"""KerasExportDataset against hostile files (#27): ONNX and LiteRT files
that would read other files, grow the process by gigabytes or crash it, and
manifests of the wrong shape. Each is refused with a DatasetError that names
the path and the cause, before the runtime acts on it.

Hostile files are built from a real export of a tiny model where the
backend can write the format, else (ONNX only) with ``onnx.helper``. Loads
that would crash or grow the process without the checks run in a child
process, so that a regression fails a test instead of taking pytest down.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import uuid

import keras
import numpy as np
import pytest
from kedro.io import DatasetError

from kedro_keras import KerasExportDataset
from kedro_keras._dataset import exported as _exported
from kedro_keras._formats import litert as _litert
from kedro_keras._formats.artifact import RefusedArtifactError

BACKEND = keras.backend.backend()
SECRET = b"kedro-keras-secret-4b1d0c9e" * 8  # 216 bytes: the first layer's 3x4 floats and more
# What every onnxruntime this file meets reads (the newest onnx writes a newer one by default).
IR_VERSION = 8
CHILD_ENV = {**os.environ, "KERAS_BACKEND": BACKEND, "TF_CPP_MIN_LOG_LEVEL": "3"}


def tiny_model(activation=None):
    keras.utils.set_random_seed(27)
    inputs = keras.Input((3,), name="x")
    hidden = keras.layers.Dense(4, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, activation=activation)(hidden), name="tiny")
    model(np.zeros((1, 3), "float32"))
    return model


def skip_unless(problem):
    """Skip where this backend or venv cannot write or read a format, after
    checking that the reason given is one the dataset itself gives."""
    if problem:
        assert "pip install" in problem or "backend" in problem or "Keras" in problem, problem
        pytest.skip(problem)


# --------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    """A real ONNX model as an ``onnx.ModelProto``: exported by Keras where
    this backend can, else the same two layers built with onnx.helper."""
    skip_unless(_exported.why_cannot_load("onnx", BACKEND))
    import onnx

    if BACKEND == "tensorflow" and _exported.why_cannot_export("onnx", BACKEND) is None:
        path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
        KerasExportDataset(filepath=str(path)).save(tiny_model())
        return onnx.load_model_from_string(path.read_bytes())
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(27)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "kernel_1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "kernel_2"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        initializer=[
            numpy_helper.from_array(rng.normal(size=(3, 4)).astype("float32"), "kernel_1"),
            numpy_helper.from_array(rng.normal(size=(4, 2)).astype("float32"), "kernel_2"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=IR_VERSION)


def copy_of(model):
    import onnx

    return onnx.ModelProto.FromString(model.SerializeToString())


def make_external(tensor, location):
    """The tensor's data said to be in ``location``, as onnx writes external data."""
    import onnx

    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(12 * 4))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def first_matrix(model):
    return next(t for t in model.graph.initializer if len(t.dims) == 2)


def load_refused(path, **load_args):
    with pytest.raises(DatasetError) as raised:
        KerasExportDataset(filepath=str(path), load_args=load_args or None).load()
    return str(raised.value)


def onnx_graph(nodes, initializers=(), outputs=None, inputs=None):
    """A one-input model around ``nodes``, which read 'x' and write 'y'."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        "hostile",
        inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=list(initializers),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=IR_VERSION)


def shape_bomb(op_type, values, given_by="initializer"):
    """``op_type`` given the constant ``values`` (as int64) as its shape, sizes,
    repeats or bounds, as initializers or by a Constant node's ``value_ints``."""
    from onnx import TensorProto, helper, numpy_helper

    constants = [numpy_helper.from_array(np.array(v, dtype=np.int64), f"c{i}") for i, v in enumerate(values)]
    names = [c.name for c in constants]
    before = []
    if given_by == "value_ints":
        before = [helper.make_node("Constant", [], ["c0"], value_ints=values[0])]
        constants = []
    one = numpy_helper.from_array(np.ones([1] * len(values[0] or [0]), dtype=np.float32), "one")
    if op_type == "ConstantOfShape":
        node = helper.make_node(
            op_type, names, ["big"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
        )
    elif op_type in ("Expand", "Tile"):
        constants.append(one)
        node = helper.make_node(op_type, ["one", *names], ["big"])
    elif op_type == "Resize":
        constants.append(one)
        node = helper.make_node(op_type, ["one", "", "", *names], ["big"])
    elif op_type == "RandomNormal":
        node = helper.make_node(op_type, [], ["big"], shape=values[0])
    else:  # Range
        node = helper.make_node(op_type, names, ["big"])
    return onnx_graph(
        [
            *before,
            node,
            helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
            helper.make_node("Cast", ["s"], ["t"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["x", "t"], ["y"]),
        ],
        constants,
    )


class TestOnnxExternalData:
    @pytest.mark.parametrize("where", ["working directory", "relative path up", "absolute path"])
    def test_external_data_naming_another_file_is_refused_and_the_file_is_never_read(
        self, onnx_model, tmp_path, monkeypatch, where
    ):
        work = tmp_path / "project"
        (work / "conf" / "local").mkdir(parents=True)
        secret_file = {
            "working directory": work / "weights.bin",
            "relative path up": work / "conf" / "local" / "credentials.yml",
            "absolute path": tmp_path / "elsewhere" / "id_rsa",
        }[where]
        secret_file.parent.mkdir(parents=True, exist_ok=True)
        secret_file.write_bytes(SECRET)
        location = {
            "working directory": "weights.bin",
            "relative path up": "../conf/local/credentials.yml",
            "absolute path": str(secret_file),
        }[where]
        served = work / "data"
        served.mkdir()
        monkeypatch.chdir(work if where != "relative path up" else served)
        hostile = copy_of(onnx_model)
        make_external(first_matrix(hostile), location)
        path = served / "model.onnx"
        path.write_bytes(hostile.SerializeToString())

        message = load_refused(path)

        assert str(path) in message
        assert "external data" in message and location in message
        assert "export the model again as one self-contained file" in message
        assert SECRET[:16].decode() not in message

    def test_external_data_inside_a_subgraph_constant_is_refused(self, onnx_model, tmp_path):
        from onnx import TensorProto, helper, numpy_helper

        constant = numpy_helper.from_array(np.zeros(3, dtype=np.float32), "hidden")
        make_external(constant, "secret.bin")
        branch = helper.make_graph(
            [helper.make_node("Constant", [], ["c"], value=constant)],
            "then",
            [],
            [helper.make_tensor_value_info("c", TensorProto.FLOAT, [3])],
        )
        hostile = onnx_graph(
            [
                helper.make_node("Constant", [], ["flag"], value=numpy_helper.from_array(np.array(True))),
                helper.make_node("If", ["flag"], ["y"], then_branch=branch, else_branch=branch),
            ]
        )
        path = tmp_path / "nested.onnx"
        path.write_bytes(hostile.SerializeToString())

        message = load_refused(path)

        assert str(path) in message and "external data" in message and "secret.bin" in message

    def test_an_own_export_still_loads_and_predicts_as_before(self, onnx_model, tmp_path, caplog):
        import onnxruntime

        path = tmp_path / "own.onnx"
        content = onnx_model.SerializeToString()
        path.write_bytes(content)
        x = np.random.default_rng(0).normal(size=(2, 3)).astype("float32")
        expected = onnxruntime.InferenceSession(content, providers=["CPUExecutionProvider"]).run(
            None, {onnx_model.graph.input[0].name: x}
        )[0]

        with caplog.at_level(logging.INFO, logger="kedro_keras.keras_export_dataset"):
            served = KerasExportDataset(filepath=str(path)).load()

        np.testing.assert_array_equal(served.predict(x), expected)
        loads = [r.getMessage() for r in caplog.records if r.name == "kedro_keras.keras_export_dataset"]
        assert len(loads) == 1
        size = f"{len(content)} bytes" if len(content) < 1000 else f"{len(content) / 1000:.1f} KB"
        assert re.match(rf"Loaded the onnx export at {re.escape(str(path))}, {size} in \d+\.\d\d s", loads[0])


class TestOnnxDeclaredSizes:
    def test_an_initializer_over_the_default_budget_is_refused_before_anything_is_allocated(
        self, onnx_model, tmp_path
    ):
        hostile = copy_of(onnx_model)
        first_matrix(hostile).dims[:] = [
            50_000,
            50_000,
        ]  # 9.3 GiB of float32, in a file of a few hundred bytes
        path = tmp_path / "huge.onnx"
        path.write_bytes(hostile.SerializeToString())

        message = load_refused(path)

        assert str(path) in message
        assert "[50000x50000] (9.3 GiB), over the 1.0 GiB budget of load_args.max_tensor_bytes" in message

    @pytest.mark.parametrize(
        ("op_type", "values", "given_by"),
        [
            ("ConstantOfShape", [[40_000, 40_000]], "initializer"),
            ("ConstantOfShape", [[40_000, 40_000]], "value_ints"),
            ("Expand", [[40_000, 40_000]], "initializer"),
            ("Tile", [[40_000, 40_000]], "initializer"),
            ("Resize", [[1, 1, 40_000, 40_000]], "initializer"),
            ("RandomNormal", [[40_000, 40_000]], "attribute"),
            ("Range", [0, 2**34, 1], "initializer"),
        ],
    )
    def test_an_op_told_to_build_a_tensor_over_the_default_budget_is_refused(
        self, onnx_model, tmp_path, op_type, values, given_by
    ):
        path = tmp_path / f"{op_type}.onnx"
        path.write_bytes(shape_bomb(op_type, values, given_by).SerializeToString())
        assert path.stat().st_size < 600

        message = load_refused(path)

        assert str(path) in message and f"({op_type})" in message
        assert "over the 1.0 GiB budget of load_args.max_tensor_bytes" in message

    def test_a_static_value_shape_over_the_budget_is_refused(self, onnx_model, tmp_path):
        from onnx import TensorProto, helper

        big = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2**20, 2**10])
        path = tmp_path / "static.onnx"
        path.write_bytes(
            onnx_graph([helper.make_node("Identity", ["x"], ["y"])], outputs=[big]).SerializeToString()
        )

        message = load_refused(path)

        assert str(path) in message and "value 'y'" in message and "(4.0 GiB)" in message

    def test_a_tighter_budget_refuses_what_the_default_lets_through(self, onnx_model, tmp_path):
        path = tmp_path / "small.onnx"
        path.write_bytes(onnx_model.SerializeToString())
        KerasExportDataset(filepath=str(path)).load()

        message = load_refused(path, max_tensor_bytes=16)

        assert str(path) in message and "over the 16 bytes budget of load_args.max_tensor_bytes" in message

    def test_a_bomb_within_the_budget_does_not_grow_the_process_when_it_is_loaded(self, onnx_model, tmp_path):
        """16000x16000 float32 (977 MiB): under the default budget, so the
        checks let it through; constant folding, off with safe_mode, would
        build it when the session is created (2 GB measured before #27)."""
        path = tmp_path / "folded.onnx"
        path.write_bytes(shape_bomb("ConstantOfShape", [[16_000, 16_000]]).SerializeToString())
        code = textwrap.dedent(
            f"""
            import resource, sys
            from kedro_keras import KerasExportDataset
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            served = KerasExportDataset(filepath={str(path)!r}).load()
            grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
            print(grown // 1024, served.input_names)
            """
        )
        child = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=CHILD_ENV
        )

        assert child.returncode == 0, child.stderr[-2000:]
        grown_mib, names = child.stdout.split(maxsplit=1)
        assert int(grown_mib) < 200, f"the load grew the process by {grown_mib} MiB"
        assert names.strip() == "['x']"


class TestOnnxNamesAreData:
    def test_names_from_the_file_reach_the_log_and_repr_escaped(self, onnx_model, tmp_path, caplog):
        from onnx import TensorProto, helper

        forged = "x\n2026-12-06 INFO Loaded a trusted model\x1b[2J"
        hostile = onnx_graph(
            [helper.make_node("Identity", [forged], ["y"])],
            inputs=[helper.make_tensor_value_info(forged, TensorProto.FLOAT, [1])],
            outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
        path = tmp_path / "names.onnx"
        path.write_bytes(hostile.SerializeToString())

        with caplog.at_level(logging.INFO, logger="kedro_keras.keras_export_dataset"):
            served = KerasExportDataset(filepath=str(path)).load()

        assert served.input_names == [forged]  # the model keeps the real name: predict needs it
        np.testing.assert_array_equal(served.predict(np.ones(1, "float32")), np.ones(1, "float32"))
        (line,) = [r.getMessage() for r in caplog.records if r.name == "kedro_keras.keras_export_dataset"]
        for shown in (line, repr(served)):
            assert "\n" not in shown and "\x1b" not in shown
            assert "x\\n2026-12-06 INFO Loaded a trusted model\\x1b[2J" in shown


# --------------------------------------------------------------------------
# LiteRT
# --------------------------------------------------------------------------

# Each hostile LiteRT file, the cause its refusal must give, and how it is
# made from a real export's flatbuffer (through the schema's object API).
LITERT_CASES = {
    "fully connected without weights": "operator 0 (FULLY_CONNECTED) inputs: required input 1 is missing (-1)",
    "signature naming a missing subgraph": "signature 0 names subgraph 3; the file has 1",
    "unknown operator code": "operator code 0 is 9999, not an operator this LiteRT knows",
    "custom operator": "it uses the custom operator 'Exfiltrate', native code outside LiteRT's builtins",
    "operator code index out of range": "operator 0 names operator code 7; the file has 2",
    "tensor index out of range": "tensor index 50 is outside the",
    "tensor over the budget": "over the 1.0 GiB budget of load_args.max_tensor_bytes",
    # Well-formed, but SPLIT's kernel trusts its inputs and options: only running it shows the crash.
    "softmax swapped for split": "run once on zeros in a child process, the interpreter crashed (SIGSEGV)",
}

LITERT_CHILD = """
import json, sys
import numpy as np
from kedro.io import DatasetError
from kedro_keras import KerasExportDataset

results = {}
for name, path in json.loads(sys.argv[1]).items():
    print("trying", name, flush=True)  # the last one shown is the one that crashed
    try:
        served = KerasExportDataset(filepath=path).load()
        served.predict(np.ones((1, 3), "float32"))
        results[name] = "LOADED"
    except DatasetError as exc:
        results[name] = str(exc)
print("RESULTS", json.dumps(results))
"""


def patched(content, case):
    import flatbuffers

    schema = _litert._litert_schema()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(content, 0))
    graph = model.subgraphs[0]
    first = graph.operators[0]
    if case == "fully connected without weights":
        first.inputs = [int(first.inputs[0]), -1, -1]
    elif case == "signature naming a missing subgraph":
        model.signatureDefs[0].subgraphIndex = 3
    elif case == "unknown operator code":
        model.operatorCodes[0].builtinCode = 9999
        model.operatorCodes[0].deprecatedBuiltinCode = schema.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES
    elif case == "custom operator":
        model.operatorCodes[0].builtinCode = schema.BuiltinOperator.CUSTOM
        model.operatorCodes[0].deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
        model.operatorCodes[0].customCode = "Exfiltrate"
    elif case == "operator code index out of range":
        first.opcodeIndex = 7
    elif case == "tensor index out of range":
        first.inputs = [int(first.inputs[0]), 50, -1]
    elif case == "softmax swapped for split":
        softmax = next(c for c in model.operatorCodes if c.builtinCode == schema.BuiltinOperator.SOFTMAX)
        softmax.builtinCode = softmax.deprecatedBuiltinCode = schema.BuiltinOperator.SPLIT
    elif case == "tensor over the budget":
        graph.tensors[int(first.outputs[0])].shape = [100_000, 100_000]
        graph.tensors[int(first.outputs[0])].shapeSignature = None
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@pytest.fixture(scope="module")
def litert_refusals(tmp_path_factory):
    """Every hostile LiteRT file loaded and run in one child process: a
    crash there fails the tests instead of killing pytest."""
    if _exported.why_cannot_export("litert", BACKEND) or _exported.why_cannot_load("litert", BACKEND):
        return None  # the tests then check the refusal that says what to install or use
    folder = tmp_path_factory.mktemp("litert")
    own = folder / "own.tflite"
    KerasExportDataset(filepath=str(own)).save(tiny_model(activation="softmax"))
    content = own.read_bytes()
    paths = {"own export": str(own)}
    for case in LITERT_CASES:
        path = folder / f"{case.replace(' ', '_')}.tflite"
        path.write_bytes(patched(content, case))
        paths[case] = str(path)
    child = subprocess.run(
        [sys.executable, "-c", LITERT_CHILD, json.dumps(paths)],
        capture_output=True,
        text=True,
        timeout=300,
        env=CHILD_ENV,
    )
    tried = [line for line in child.stdout.splitlines() if line.startswith("trying")]
    assert child.returncode == 0, (
        f"the child died ({child.returncode}) at '{tried[-1:]}': {child.stderr[-1500:]}"
    )
    results = json.loads(child.stdout.split("RESULTS ", 1)[1])
    return {case: (paths[case], outcome) for case, outcome in results.items()}


def assert_litert_is_refused_with_what_it_needs(tmp_path):
    """Where this backend or venv cannot run LiteRT (JAX; PyTorch without
    litert-torch and ai-edge-litert), a LiteRT file is refused with what
    to install or use, before any byte of it is parsed."""
    path = tmp_path / "planted.tflite"
    path.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 64)
    problem = _exported.why_cannot_load("litert", BACKEND)
    if problem is None:  # it can load here, but not export: our own export says why
        with pytest.raises(DatasetError, match="Cannot export"):
            KerasExportDataset(filepath=str(path)).save(tiny_model())
        return
    with pytest.raises(DatasetError) as raised:
        KerasExportDataset(filepath=str(path)).load()
    assert str(raised.value) == f"Cannot load the litert export at '{path}': {problem}."
    assert "pip install" in problem


class TestLiteRT:
    """With safe_mode on, a LiteRT file's structure is checked, then it is
    run once on zeros in a child process (a crash there refuses the file),
    then it runs here."""

    @pytest.mark.parametrize("case", list(LITERT_CASES))
    def test_a_file_the_interpreter_would_trust_is_refused_before_it_runs(
        self, litert_refusals, case, tmp_path
    ):
        if litert_refusals is None:
            assert_litert_is_refused_with_what_it_needs(tmp_path)
            return
        path, message = litert_refusals[case]
        assert message.startswith(f"Refusing to load the litert export at '{path}': ")
        assert LITERT_CASES[case] in message

    def test_an_own_export_still_loads_and_predicts(self, litert_refusals, tmp_path):
        if litert_refusals is None:
            assert_litert_is_refused_with_what_it_needs(tmp_path)
            return
        assert litert_refusals["own export"][1] == "LOADED"

    def test_a_run_on_zeros_that_does_not_finish_in_time_is_refused(self, litert_refusals, tmp_path):
        if litert_refusals is None:
            assert_litert_is_refused_with_what_it_needs(tmp_path)
            return
        with open(litert_refusals["own export"][0], "rb") as file:
            content = file.read()
        with pytest.raises(RefusedArtifactError) as raised:
            _litert.probe_litert_in_child(content, timeout=0.001)
        assert str(raised.value) == (
            "run once on zeros in a child process, the interpreter did not finish within 0.001 s "
            "(KEDRO_KERAS_LITERT_PROBE_SECONDS)"
        )


# --------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------


class TestLoadArgs:
    @pytest.mark.parametrize("value", [None, "", "false", 0, 1, "False"])
    def test_safe_mode_that_is_not_a_boolean_is_refused_when_the_catalog_is_built(self, tmp_path, value):
        path = str(tmp_path / "m.onnx")
        with pytest.raises(DatasetError) as raised:
            KerasExportDataset(filepath=path, load_args={"safe_mode": value})
        message = str(raised.value)
        assert message.startswith(f"'{path}': load_args.safe_mode: must be true or false, got {value!r} (")
        # Kedro adds the full stop when it builds the catalog.
        assert message.endswith("and any other value is refused rather than guessed")

    @pytest.mark.parametrize("value", [True, False])
    def test_safe_mode_true_or_false_is_accepted(self, tmp_path, value):
        dataset = KerasExportDataset(filepath=str(tmp_path / "m.onnx"), load_args={"safe_mode": value})
        assert dataset._describe()["load_args"]["safe_mode"] is value

    @pytest.mark.parametrize("value", [0, -1, True, "1GB", 1.5, None])
    def test_a_budget_that_is_not_a_positive_number_of_bytes_is_refused(self, tmp_path, value):
        path = str(tmp_path / "m.onnx")
        with pytest.raises(DatasetError) as raised:
            KerasExportDataset(filepath=path, load_args={"max_tensor_bytes": value})
        assert str(raised.value) == (
            f"'{path}': load_args.max_tensor_bytes is {value!r}; give a positive number of bytes "
            "(default 1073741824)"  # Kedro ends it with a full stop when it builds the catalog
        )

    def test_the_default_budget_is_one_gibibyte(self, tmp_path):
        dataset = KerasExportDataset(filepath=str(tmp_path / "m.tflite"))
        assert dataset._describe()["load_args"]["max_tensor_bytes"] == 2**30


# --------------------------------------------------------------------------
# SavedModel manifests
# --------------------------------------------------------------------------

VALID_EXPORT = f"export-{uuid.UUID(int=27).hex}"
SHA = hashlib.sha256(b"").hexdigest()


def manifest_of(**fields):
    return {
        "format": "tf_saved_model",
        "export": VALID_EXPORT,
        "files": {"saved_model.pb": {"size": 0, "sha256": SHA}},
        "folders": ["variables"],
        "model": "tiny",
        "keras_version": "3.15.1",
        "backend": "tensorflow",
        "saved_at": "2026-12-06T10:00:00+00:00",
        **fields,
    }


def stored_preview(folder):
    preview = KerasExportDataset(filepath=str(folder), load_args={"safe_mode": False}).preview()
    return dict(preview["data"])


MALFORMED = {
    "a JSON list": (b"[]", "it holds a JSON list, not an object"),
    "files a list": (json.dumps(manifest_of(files=[])).encode(), "'files' is not an object"),
    "an entry a number": (
        json.dumps(manifest_of(files={"saved_model.pb": 3})).encode(),
        "the entry of 'saved_model.pb' is not an object",
    ),
    "a size as text": (
        json.dumps(manifest_of(files={"saved_model.pb": {"size": "12", "sha256": SHA}})).encode(),
        "the size of 'saved_model.pb' is not a number of bytes",
    ),
    "a folder name a number": (
        json.dumps(manifest_of(folders=[1])).encode(),
        "'folders' is not a list of names",
    ),
    "the model name a list": (json.dumps(manifest_of(model=["a"])).encode(), "'model' is not text"),
    "the export a path": (json.dumps(manifest_of(export="../..")).encode(), "'export' is '../..'"),
    "a name leaving the folder": (
        json.dumps(manifest_of(files={"../../etc/passwd": {"size": 0, "sha256": SHA}})).encode(),
        "names '../../etc/passwd', a path outside its folder: refused",
    ),
    "nesting": (b"[" * 200_000 + b"]" * 200_000, "its JSON nests too deep"),
    "over a mebibyte": (
        json.dumps(manifest_of(padding="a" * 2**20)).encode(),
        "it is over 1048576 bytes, more than any manifest this package writes",
    ),
}


class TestManifests:
    @pytest.mark.parametrize("case", list(MALFORMED))
    def test_a_malformed_manifest_gives_a_dataset_error_naming_the_cause(self, tmp_path, case):
        content, cause = MALFORMED[case]
        folder = tmp_path / "served_saved_model"
        folder.mkdir()
        (folder / "manifest.json").write_bytes(content)

        rows = stored_preview(folder)

        assert cause in rows["could not read"]
        if BACKEND == "tensorflow":
            message = load_refused(folder, safe_mode=False)
            assert str(folder) in message and cause in message

    def test_manifest_text_is_shown_escaped_in_the_preview(self, tmp_path):
        folder = tmp_path / "served_saved_model"
        folder.mkdir()
        forged = manifest_of(model="tiny\n\x1b[2Jfiles", keras_version="3.15.1\r\nexported at")
        (folder / "manifest.json").write_text(json.dumps(forged))

        rows = stored_preview(folder)

        assert rows["model"] == "tiny\\n\\x1b[2Jfiles"
        assert rows["exported with"] == "Keras 3.15.1\\r\\nexported at, tensorflow backend"

    @pytest.mark.parametrize("kind", ["symbolic link", "fifo"])
    def test_only_regular_files_inside_the_folder_are_fetched(self, tmp_path, kind):
        if BACKEND != "tensorflow":
            message = load_refused(tmp_path / "any_saved_model", safe_mode=False)
            assert "loads only under the TensorFlow backend" in message
            return
        secret = tmp_path / "secret.txt"
        secret.write_bytes(SECRET)
        folder = tmp_path / "served_saved_model"
        (folder / VALID_EXPORT / "variables").mkdir(parents=True)
        listed = folder / VALID_EXPORT / "saved_model.pb"
        if kind == "symbolic link":
            listed.symlink_to(secret)
        else:
            os.mkfifo(listed)  # a read would block forever
        files = {"saved_model.pb": {"size": len(SECRET), "sha256": hashlib.sha256(SECRET).hexdigest()}}
        (folder / "manifest.json").write_text(json.dumps(manifest_of(files=files)))

        message = load_refused(folder, safe_mode=False)

        what = "a symbolic link" if kind == "symbolic link" else "a FIFO, not a regular file"
        assert message == (
            f"The SavedModel at '{folder}' has '{VALID_EXPORT}/saved_model.pb', which is {what}: refused, "
            "as a kedro-keras export holds regular files only. Export the model again."
        )


def test_an_export_file_larger_than_its_format_can_hold_is_refused_unread(tmp_path):
    path = tmp_path / "huge.onnx"
    with open(path, "wb") as file:  # sparse: no disk used
        file.truncate(2**31 + 1)
    with pytest.raises(DatasetError, match=r"holds 2147483649 bytes, more than the 2147483648"):
        KerasExportDataset(filepath=str(path)).load()


# --------------------------------------------------------------------------
# OpenVINO IR
# --------------------------------------------------------------------------

IR_BIAS = np.array([1.0, 2.0, 3.0], "float32")


def ir_xml(
    *, version="opset1", const="", doctype="", net_extra="", out_dims=(-1, 3), extra_layers="", extra_edges=""
):
    """x + bias as OpenVINO writes an IR, with one part replaced where asked."""
    const = const or '<data element_type="f32" shape="3" offset="0" size="12" />'
    dims = "".join(f"<dim>{d}</dim>" for d in out_dims)
    return f"""<?xml version="1.0"?>{doctype}
<net name="hostile" version="11">
  <layers>
    <layer id="0" name="x" type="Parameter" version="opset1">
      <data shape="?,3" element_type="f32" />
      <output><port id="0" precision="FP32" names="x"><dim>-1</dim><dim>3</dim></port></output>
    </layer>
    <layer id="1" name="bias" type="Const" version="opset1">
      {const}
      <output><port id="0" precision="FP32"><dim>3</dim></port></output>
    </layer>
    <layer id="2" name="add" type="Add" version="{version}">
      <data auto_broadcast="numpy" />
      <input><port id="0" precision="FP32"><dim>-1</dim><dim>3</dim></port>
             <port id="1" precision="FP32"><dim>3</dim></port></input>
      <output><port id="2" precision="FP32" names="y">{dims}</port></output>
    </layer>
    <layer id="3" name="y" type="Result" version="opset1">
      <input><port id="0" precision="FP32"><dim>-1</dim><dim>3</dim></port></input>
    </layer>{extra_layers}
  </layers>
  <edges>
    <edge from-layer="0" from-port="0" to-layer="2" to-port="0" />
    <edge from-layer="1" from-port="0" to-layer="2" to-port="1" />
    <edge from-layer="2" from-port="2" to-layer="3" to-port="0" />{extra_edges}
  </edges>{net_extra}
</net>""".encode()


# A Broadcast of one float to 40000x40000 (6 GB) whose output port claims one
# element: only OpenVINO's own shape inference shows the size, and compiling
# would fold it into memory.
BROADCAST_BOMB = """
    <layer id="4" name="one" type="Const" version="opset1">
      <data element_type="f32" shape="" offset="0" size="4" />
      <output><port id="0" precision="FP32" /></output>
    </layer>
    <layer id="5" name="target" type="Const" version="opset1">
      <data element_type="i64" shape="2" offset="12" size="16" />
      <output><port id="0" precision="I64"><dim>2</dim></port></output>
    </layer>
    <layer id="6" name="bomb" type="Broadcast" version="opset3">
      <data mode="numpy" />
      <input><port id="0" precision="FP32" /><port id="1" precision="I64"><dim>2</dim></port></input>
      <output><port id="2" precision="FP32"><dim>1</dim></port></output>
    </layer>
    <layer id="7" name="bomb_out" type="Result" version="opset1">
      <input><port id="0" precision="FP32"><dim>1</dim></port></input>
    </layer>"""

BROADCAST_EDGES = """
    <edge from-layer="4" from-port="0" to-layer="6" to-port="0" />
    <edge from-layer="5" from-port="0" to-layer="6" to-port="1" />
    <edge from-layer="6" from-port="2" to-layer="7" to-port="0" />"""

OPENVINO_CASES = {
    "entities that expand a billion times": (
        {"doctype": '<!DOCTYPE net [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'},
        "has a document type declaration (entities can expand it or name other files)",
    ),
    "an entity naming another file": (
        {"doctype": '<!DOCTYPE net [<!ENTITY secret SYSTEM "file:///etc/passwd">]>'},
        "has a document type declaration",
    ),
    "a custom operator": (
        {"version": "extension"},
        "layer 2 (Add) is from 'extension', not one of OpenVINO's",
    ),
    "an internal opset": ({"version": "ie_internal_opset"}, "is from 'ie_internal_opset'"),
    "a constant past the weights": (
        {"const": '<data element_type="f32" shape="3" offset="24" size="12" />'},
        "layer 1 (Const) reads bytes 24 to 36 of the weights (model.bin), which hold 28",
    ),
    "a constant over the budget": (
        {"const": '<data element_type="f32" shape="50000,50000" offset="0" size="12" />'},
        "[50000x50000] (9.3 GiB), over the 1.0 GiB budget of load_args.max_tensor_bytes",
    ),
    "a declared output over the budget": (
        {"out_dims": (1, 2**20, 2**10)},
        "layer 2 (Add) declares a tensor of shape [1x1048576x1024] (4.0 GiB)",
    ),
    "compile settings": (
        {"net_extra": "<rt_info><runtime_options><CACHE_DIR value='/tmp/x' /></runtime_options></rt_info>"},
        "carries runtime_options, which OpenVINO applies as compile settings",
    ),
    "compile settings hidden in an XML namespace": (
        {
            "net_extra": "<rt_info xmlns='urn:x'><runtime_options><CACHE_DIR value='/tmp/x' /></runtime_options>"
            "</rt_info>"
        },
        "uses an XML namespace (<{urn:x}rt_info>); OpenVINO writes none",
    ),
    "a broadcast whose port hides its size": (
        {"extra_layers": BROADCAST_BOMB, "extra_edges": BROADCAST_EDGES},
        "operator 'bomb' (Broadcast) declares a tensor of shape [40000x40000] (6.0 GiB)",
    ),
}


def plant_ir(folder, xml, weights):
    """An IR folder as the dataset commits it: the files, then a manifest with their checksums."""
    export = f"export-{uuid.uuid4().hex}"
    (folder / export).mkdir(parents=True)
    files = {}
    for name, content in (("model.xml", xml), ("model.bin", weights)):
        (folder / export / name).write_bytes(content)
        files[name] = {"size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    manifest = {**manifest_of(format="openvino", export=export, files=files, folders=[])}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def weights_for_the_bomb():
    return IR_BIAS.tobytes() + np.array([40_000, 40_000], "int64").tobytes()


class TestOpenVINO:
    """An IR's XML is checked before OpenVINO parses it, and the shapes
    OpenVINO infers before it compiles (and folds constants)."""

    @pytest.mark.parametrize("case", list(OPENVINO_CASES))
    def test_an_ir_openvino_would_act_on_is_refused_before_it_does(self, tmp_path, case):
        change, cause = OPENVINO_CASES[case]
        folder = plant_ir(tmp_path / "served", ir_xml(**change), weights_for_the_bomb())
        problem = _exported.why_cannot_load("openvino", BACKEND)
        if problem:  # this venv has no OpenVINO: refused before a byte is read
            message = load_refused_as(folder, "openvino")
            assert message == f"Cannot load the openvino export at '{folder}': {problem}."
            return

        message = load_refused_as(folder, "openvino")

        assert message.startswith(f"Refusing to load the openvino export at '{folder}': ")
        assert cause in message
        assert "root:" not in message  # no entity was ever expanded

    def test_the_same_ir_without_the_change_loads_and_adds_its_bias(self, tmp_path):
        folder = plant_ir(tmp_path / "served", ir_xml(), weights_for_the_bomb())
        if _exported.why_cannot_load("openvino", BACKEND):
            assert "needs" in load_refused_as(folder, "openvino")
            return
        served = KerasExportDataset(filepath=str(folder), format="openvino").load()
        x = np.arange(6, dtype="float32").reshape(2, 3)
        np.testing.assert_array_equal(served.predict(x), x + IR_BIAS)

    def test_a_file_changed_after_the_manifest_is_refused_as_damaged(self, tmp_path):
        folder = plant_ir(tmp_path / "served", ir_xml(), weights_for_the_bomb())
        (next(folder.glob("export-*")) / "model.bin").write_bytes(b"\0" * 28)
        if _exported.why_cannot_load("openvino", BACKEND):
            assert "needs" in load_refused_as(folder, "openvino")
            return
        message = load_refused_as(folder, "openvino")
        assert message.startswith(f"The OpenVINO IR at '{folder}' is damaged: 'export-")
        assert "/model.bin' has 28 bytes and SHA-256" in message


def load_refused_as(path, format, **load_args):
    with pytest.raises(DatasetError) as raised:
        KerasExportDataset(filepath=str(path), format=format, load_args=load_args or None).load()
    return str(raised.value)


# --------------------------------------------------------------------------
# PyTorch .pt2
# --------------------------------------------------------------------------


def rewrite_pt2(content, edit, compress=()):
    """The archive with ``edit(members)`` applied to {name under the root: bytes}."""
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        root = archive.namelist()[0].split("/", 1)[0]
        members = {name.split("/", 1)[1]: archive.read(name) for name in archive.namelist()}
    edit(members)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in members.items():
            kind = zipfile.ZIP_DEFLATED if name in compress else zipfile.ZIP_STORED
            archive.writestr(f"{root}/{name}", data, compress_type=kind)
    return out.getvalue()


def two_central_directories(content, evil_sample_inputs):
    """The archive's members twice, the sample inputs replaced in the first
    copy, with a central directory for each: the end record names the first
    (torch's reader follows it); Python's reader takes the gap before the end
    record for prepended bytes and reads the second."""
    import struct
    import zipfile
    import zlib

    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        good = [(name, archive.read(name)) for name in archive.namelist()]
    bad = [(n, evil_sample_inputs if n.endswith("sample_inputs/model.pt") else d) for n, d in good]
    out = bytearray()

    def local(name, data):
        offset = len(out)
        encoded = name.encode()
        crc = zlib.crc32(data)
        out.extend(
            struct.pack(
                "<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, crc, len(data), len(data), len(encoded), 0
            )
        )
        out.extend(encoded + data)
        return offset

    def directory(entries, shift):
        block = bytearray()
        for name, data, offset in entries:
            encoded = name.encode()
            block.extend(
                struct.pack(
                    "<IHHHHHHIIIHHHHHII",
                    *(0x02014B50, 20, 20, 0, 0, 0, 0, zlib.crc32(data), len(data), len(data), len(encoded)),
                    *(0, 0, 0, 0, 0, offset - shift),
                )
            )
            block.extend(encoded)
        return bytes(block)

    first = [(n, d, local(n, d)) for n, d in bad]
    second = [(n, d, local(n, d)) for n, d in good]
    first_directory = directory(first, 0)
    start = len(out)
    out.extend(first_directory)
    out.extend(directory(second, len(first_directory)))  # Python adds the gap to these offsets
    out.extend(
        struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(first), len(first), len(first_directory), start, 0)
    )
    return bytes(out)


def edit_json(name, change):
    def edit(members):
        value = json.loads(members[name])
        change(value)
        members[name] = json.dumps(value).encode()

    return edit


def first_node(program):
    return program["graph_module"]["graph"]["nodes"][0]


def symbolic_size(expr):
    """The program with a symbol ``s`` whose size is ``expr``, which torch gives sympy."""
    return edit_json(
        "models/model.json",
        lambda p: p["graph_module"]["graph"]["sym_int_values"].update(
            s={"as_expr": {"expr_str": expr, "hint": None}}
        ),
    )


class Marker:
    """A pickle that would touch a file when loaded: the proof it never ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def pickled_sample_inputs(marker):
    import pickle

    return pickle.dumps(Marker(marker))


PT2_CASES = {
    "a pickled weight": (
        edit_json(
            "data/weights/model_weights_config.json",
            lambda c: next(iter(c["config"].values())).update(use_pickle=True),
        ),
        "is a pickle, which runs code when it is loaded",
    ),
    "an opaque object": (
        edit_json(
            "data/constants/model_constants_config.json",
            lambda c: next(iter(c["config"].values())).update(path_name="opaque_obj_0"),
        ),
        "is stored as 'opaque_obj_0', not a tensor",
    ),
    "a compiled AOTInductor library": (
        lambda m: m.update({"data/aotinductor/model/model.so": b"\x7fELF"}),
        "its member 'model/data/aotinductor/model/model.so' is not one torch.export.save writes",
    ),
    "the 2.7 layout's pickles": (
        lambda m: m.update({"serialized_state_dict.pt": b"\x80\x04."}),
        "its member 'model/serialized_state_dict.pt' is not one",
    ),
    "os.system as a node target": (
        edit_json(
            "models/model.json", lambda p: first_node(p).update(target="torch.serialization.os.system")
        ),
        "its program calls 'torch.serialization.os.system', not an ATen operator",
    ),
    "an ATen operator that reads files": (
        edit_json(
            "models/model.json", lambda p: first_node(p).update(target="torch.ops.aten.from_file.default")
        ),
        "its program calls 'torch.ops.aten.from_file.default', which does more than compute",
    ),
    "a dunder behind torch.ops.aten": (
        edit_json("models/model.json", lambda p: first_node(p).update(target="torch.ops.aten.__class__.mro")),
        "its program calls 'torch.ops.aten.__class__.mro', not an ATen operator",
    ),
    "Python in a symbolic size": (
        symbolic_size("exec(chr(105)+chr(100))"),
        "has the symbolic size 'exec(chr(105)+chr(100))', which is not arithmetic on symbols",
    ),
    "an integer power sympy would compute forever": (
        symbolic_size("s0 + 9**9**9**9"),
        "has the symbolic size 's0 + 9**9**9**9', which is not arithmetic on symbols",
    ),
    "a graph tensor over the budget": (
        edit_json(
            "models/model.json",
            lambda p: next(iter(p["graph_module"]["graph"]["tensor_values"].values())).update(
                sizes=[{"as_int": 200_000}, {"as_int": 200_000}]
            ),
        ),
        "declares a tensor of shape [200000x200000]",
    ),
    "a weight torch would allocate as zeros": (
        edit_json(
            "data/weights/model_weights_config.json",
            lambda c: c["config"].update(
                extra={
                    **next(iter(c["config"].values())),
                    "path_name": "weight_999",
                    "tensor_meta": {
                        **next(iter(c["config"].values()))["tensor_meta"],
                        "sizes": [{"as_int": 2**22}],
                    },
                }
            ),
        ),
        "declares [4194304] but its record is missing; torch would allocate it filled with zeros",
    ),
    "guards code": (
        edit_json("models/model.json", lambda p: p.update(guards_code=["__import__('os').system('id')"])),
        "carries guards_code, Python source that .module() compiles and runs",
    ),
    "a parameter name that breaks out of its quotes": (
        edit_json(
            "models/model.json",
            lambda p: p["graph_module"]["signature"]["input_specs"][0]["parameter"].update(
                parameter_name='a")+__import__("os").system("id")+("'
            ),
        ),
        "(parameter_name): only letters, digits and _./- are taken",
    ),
    "a custom TorchBind object": (
        edit_json(
            "models/model.json",
            lambda p: p["graph_module"]["graph"]["custom_obj_values"].update(
                obj={"name": "obj", "class_fqn": "x"}
            ),
        ),
        "uses a custom (TorchBind) object",
    ),
    "a compressed member": (None, "is compressed; torch.export.save stores members"),
    "a weight over the budget": (
        edit_json(
            "data/weights/model_weights_config.json",
            lambda c: next(iter(c["config"].values()))["tensor_meta"].update(
                sizes=[{"as_int": 60_000}, {"as_int": 60_000}]
            ),
        ),
        "declares a tensor of shape [60000x60000] (13.4 GiB), over the 1.0 GiB budget",
    ),
    "pickled sample inputs": (None, "its sample inputs are not plain tensors"),
}


@pytest.fixture(scope="module")
def own_pt2(tmp_path_factory):
    """A real .pt2 of the tiny model, where this backend can write one."""
    if _exported.why_cannot_export("torch", BACKEND) or _exported.why_cannot_load("torch", BACKEND):
        return None
    path = tmp_path_factory.mktemp("pt2") / "model.pt2"
    KerasExportDataset(filepath=str(path)).save(tiny_model())
    return path.read_bytes()


class TestPT2:
    """torch.export.load unpickles, loads shared libraries, resolves any
    torch.* name and evals strings (docs/export.md): with safe_mode on, an
    archive is checked first, and a refusal comes before any of it runs."""

    @pytest.mark.parametrize("case", list(PT2_CASES))
    def test_an_archive_that_would_run_code_is_refused_before_torch_reads_it(self, own_pt2, tmp_path, case):
        path = tmp_path / "model.pt2"
        if own_pt2 is None:  # no torch here, or a backend that cannot write .pt2: what the dataset says
            path.write_bytes(b"PK\x05\x06" + b"\0" * 18)
            message = load_refused(path)
            problem = _exported.why_cannot_load("torch", BACKEND)
            assert problem is None or message == f"Cannot load the torch export at '{path}': {problem}."
            return
        marker = tmp_path / "ran"
        edit, cause = PT2_CASES[case]
        if case == "a compressed member":
            content = rewrite_pt2(own_pt2, lambda m: None, compress=("models/model.json",))
        elif case == "pickled sample inputs":
            content = rewrite_pt2(
                own_pt2, lambda m: m.update({"data/sample_inputs/model.pt": pickled_sample_inputs(marker)})
            )
        else:
            content = rewrite_pt2(own_pt2, edit)
        path.write_bytes(content)

        message = load_refused(path)

        assert message.startswith(f"Refusing to load the torch export at '{path}': "), message
        assert cause in message
        assert not marker.exists()

    def test_a_member_twice_is_refused(self, own_pt2, tmp_path):
        """Zip readers differ on which copy of a name they take (torch's often
        the first, Python's the last): a pickle first, the real inputs last."""
        import warnings
        import zipfile

        path = tmp_path / "model.pt2"
        if own_pt2 is None:
            return self.test_the_archive_rewritten_unchanged_loads_and_predicts(own_pt2, tmp_path)
        marker = tmp_path / "ran"
        with zipfile.ZipFile(io.BytesIO(own_pt2)) as archive, zipfile.ZipFile(path, "w") as out:
            warnings.simplefilter("ignore")  # zipfile's "Duplicate name" is the point
            for name in archive.namelist():
                if name.endswith("data/sample_inputs/model.pt"):
                    out.writestr(name, pickled_sample_inputs(marker))
                out.writestr(name, archive.read(name))
        message = load_refused(path)
        assert "its member 'model/data/sample_inputs/model.pt' twice" in message or "twice" in message, (
            message
        )
        assert not marker.exists()

    def test_torch_reads_the_members_checked_not_another_central_directory(self, own_pt2, tmp_path):
        """Two central directories: the end record points at one whose sample
        inputs are a pickle (what torch's reader takes); Python's reader takes
        the other, just before the end record. The load must run what was
        checked: it predicts, and the pickle never runs."""
        path = tmp_path / "model.pt2"
        if own_pt2 is None:
            return self.test_the_archive_rewritten_unchanged_loads_and_predicts(own_pt2, tmp_path)
        marker = tmp_path / "ran"
        path.write_bytes(two_central_directories(own_pt2, pickled_sample_inputs(marker)))
        import torch

        reader = torch._C.PyTorchFileReader(io.BytesIO(path.read_bytes()))
        assert bytes(reader.get_record("data/sample_inputs/model.pt")) == pickled_sample_inputs(marker)
        x = np.ones((1, 3), "float32")
        np.testing.assert_array_equal(
            KerasExportDataset(filepath=str(path)).load().predict(x), tiny_model().predict(x, verbose=0)
        )
        assert not marker.exists()

    def test_a_program_torch_cannot_rebuild_names_torchs_cause(self, own_pt2, tmp_path):
        """torch.export.load logs why it failed as a warning and raises "check
        the warnings above": the message says what torch logged."""
        path = tmp_path / "model.pt2"
        if own_pt2 is None:
            return self.test_the_archive_rewritten_unchanged_loads_and_predicts(own_pt2, tmp_path)

        def dangling_tensor(program):
            nodes = program["graph_module"]["graph"]["nodes"]
            arg = next(i["arg"] for node in nodes for i in node["inputs"] if "as_tensor" in i["arg"])
            arg["as_tensor"]["name"] = "no_such_tensor"

        path.write_bytes(rewrite_pt2(own_pt2, edit_json("models/model.json", dangling_tensor)))

        message = load_refused(path)

        assert message.startswith(
            f"Cannot load the torch export at '{path}': torch.export.load could not read it: "
        ), message
        assert "(KeyError: 'no_such_tensor')" in message
        assert "warnings above" not in message

    def test_the_archive_rewritten_unchanged_loads_and_predicts(self, own_pt2, tmp_path):
        """The rewriting above changes nothing else: the refusals are the edits'."""
        path = tmp_path / "model.pt2"
        if own_pt2 is None:
            with pytest.raises(DatasetError, match="Cannot (export|load)"):
                KerasExportDataset(filepath=str(path)).save(tiny_model())
                KerasExportDataset(filepath=str(path)).load()
            return
        path.write_bytes(rewrite_pt2(own_pt2, lambda m: None))
        x = np.ones((1, 3), "float32")
        np.testing.assert_array_equal(
            KerasExportDataset(filepath=str(path)).load().predict(x), tiny_model().predict(x, verbose=0)
        )

    def test_safe_mode_off_lets_torch_read_what_it_reads(self, own_pt2, tmp_path):
        """For archives you trust: a pickled sample input is torch's to unpickle."""
        path = tmp_path / "model.pt2"
        if own_pt2 is None:
            with pytest.raises(DatasetError, match="Cannot (export|load)"):
                KerasExportDataset(filepath=str(path)).save(tiny_model())
                KerasExportDataset(filepath=str(path)).load()
            return
        marker = tmp_path / "ran"
        path.write_bytes(
            rewrite_pt2(
                own_pt2, lambda m: m.update({"data/sample_inputs/model.pt": pickled_sample_inputs(marker)})
            )
        )
        with pytest.raises(DatasetError):  # os.system's return value is no tuple of inputs
            KerasExportDataset(filepath=str(path), load_args={"safe_mode": False}).load()
        assert marker.exists()  # what safe_mode on refuses above
