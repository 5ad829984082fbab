"""PyTorch ``.pt2`` archives (``torch.export.save``) checked before
``torch.export.load`` reads them, and their inputs and outputs.

What ``torch.export.load`` does with a file (read in torch 2.13.0's
``torch/export/pt2_archive/_package.py`` and ``torch/_export/serde/serialize.py``),
each of which runs code the file chooses:

- weights and constants marked ``use_pickle`` go through
  ``torch.load(weights_only=False)``; ``opaque_obj_*`` constants through
  ``pickle.loads``; ``custom_obj_*`` (TorchBind) through TorchScript's
  unpickler, which calls the registered classes' ``__setstate__``;
- the sample inputs are unpickled with ``weights_only=True`` and, if that
  fails, again with ``weights_only=False``;
- a ``data/aotinductor/`` folder is loaded as a compiled shared library;
- an archive without ``models/`` falls back to the 2.7 layout, whose
  ``serialized_*.pt`` members are pickles;
- a node's target ``torch.<anything>`` is resolved by ``getattr`` from the
  ``torch`` module (``torch.serialization.os.system`` resolves), and
  ``torch.ops.aten.from_file`` / ``aten.save`` read and write files;
- symbolic shapes (``expr_str``) go through ``sympy.sympify``, which
  ``eval``\\ s its string;
- ``guards_code`` is Python source that ``.module()`` compiles into a function;
- parameter names end up in the generated ``forward`` source as
  ``getattr(self, "<name>")``.

A Keras export holds none of these beyond ATen operators, float weights
stored raw, one pickled tuple of sample tensors and symbols named ``s0``,
so with ``safe_mode`` on everything else is refused before torch reads a
byte: the archive's members by name (uncompressed, under one folder), the
weight and constant configs (no pickles, no custom or opaque objects,
declared sizes within the budget), the program's JSON (node targets
``torch.ops.aten.<op>.<overload>`` or ``_operator.getitem``, no file or
process-state operators, no custom objects, symbolic expressions of
symbols, numbers and arithmetic only, no guards code, names of letters,
digits and ``_./-``), and the sample inputs loaded with ``weights_only=True``
first, so that torch's fallback never runs.
"""

from __future__ import annotations

import ast
import io
import json
import math
import re
import zipfile
from typing import Any

from kedro_keras._formats.artifact import RefusedArtifactError, over_budget
from kedro_keras._log import printable

# The program's JSON: a few kilobytes per operator.
MAX_PROGRAM_BYTES = 256 * 2**20
_MAX_CONFIG_BYTES = 64 * 2**20
_MAX_MEMBERS = 100_000
_ROOT = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")
_MEMBER = re.compile(
    r"^(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/model\.json|data/sample_inputs/model\.pt"
    r"|data/weights/model_weights_config\.json|data/constants/model_constants_config\.json"
    r"|data/weights/weight_\d{1,9}|data/constants/tensor_\d{1,9}"
    r"|extra/[A-Za-z0-9_.\-]{1,200})$"
)
# No dunder: torch.ops.aten.__class__ and the like are attributes, not operators.
_ATEN_TARGET = re.compile(
    r"^torch\.ops\.aten\.((?!__)[a-z_][a-z0-9_]{0,127})\.([A-Za-z][A-Za-z0-9_]{0,127})$"
)
_OTHER_TARGETS = frozenset({"_operator.getitem"})
# ATen operators that do more than compute: read or write files, print,
# warn, or change the process's random state.
_REFUSED_ATEN = frozenset(
    {
        "from_file",
        "save",
        "_print",
        "warn",
        "_test_warn_in_autograd",
        "manual_seed",
        "seed",
        "wait",
        "record_stream",
    }
)
_NAME = re.compile(r"^[A-Za-z0-9_./\-]{0,400}$")
_NAME_KEYS = frozenset(
    {"name", "parameter_name", "buffer_name", "tensor_constant_name", "fqn", "path_name", "forward_arg_names"}
)
_SYMBOL = re.compile(r"^[a-z]{1,8}\d{1,9}$")
# The largest power a symbolic size may raise to (sympy evaluates integer powers eagerly).
_MAX_EXPONENT = 64
# What sympy's printer writes for torch's symbolic sizes (sympify evaluates the rest too).
_SYMPY_CALLS = frozenset(
    {
        "Symbol",
        "Integer",
        "Max",
        "Min",
        "Mod",
        "PythonMod",
        "FloorDiv",
        "CeilToInt",
        "FloorToInt",
        "CleanDiv",
        "IntTrueDiv",
        "Mul",
        "Add",
        "Eq",
        "Ne",
        "Lt",
        "Le",
        "Gt",
        "Ge",
    }
)
# torch's serialized ScalarType to bytes per element (wider where unknown).
_SCALAR_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 2, 7: 4, 8: 8, 9: 4, 10: 8, 11: 16, 12: 1, 13: 2, 28: 2}
_SCALAR_NAMES = {
    1: "uint8",
    2: "int8",
    3: "int16",
    4: "int32",
    5: "int64",
    6: "float16",
    7: "float32",
    8: "float64",
    12: "bool",
    13: "bfloat16",
}


def check_pt2(content: bytes, max_tensor_bytes: int, safe_mode: bool) -> bytes:
    """The archive ``torch.export.load`` is to read, once it is known to make
    it do no more than rebuild a graph of ATen operators (see the module's
    text). With ``safe_mode`` that is a copy rebuilt from the very members
    checked: torch's zip reader and Python's can read one file differently
    (a name twice, two central directories), and torch must read what was
    checked. Without ``safe_mode`` (a file you trust) only its zip structure
    and declared sizes are checked, and the file is read as it is.

    Raises:
        RefusedArtifactError: what is wrong, and where.
    """
    members = _members(content, safe_mode)
    root = next(iter(members)).split("/", 1)[0] if members else ""
    configs = [
        f"{root}/data/weights/model_weights_config.json",
        f"{root}/data/constants/model_constants_config.json",
    ]
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        for config in configs:
            if config in members:
                _check_payload_config(
                    _json_member(archive, config, _MAX_CONFIG_BYTES),
                    config,
                    max_tensor_bytes,
                    safe_mode,
                    members,
                )
        if not safe_mode:
            return content
        program = f"{root}/models/model.json"
        if program not in members:
            raise RefusedArtifactError("it holds no models/model.json, the program torch.export.save writes")
        parsed = _json_member(archive, program, MAX_PROGRAM_BYTES)
        _ProgramChecker().check(parsed)
        _check_tensor_values(parsed, max_tensor_bytes)
        sample = f"{root}/data/sample_inputs/model.pt"
        if sample in members:
            _check_sample_inputs(archive.read(sample))
        return _rebuilt(archive, members)


def _rebuilt(archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo]) -> bytes:
    """The checked members, and nothing else, in an archive of one plain layout."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as rebuilt:
        for name, info in members.items():
            rebuilt.writestr(name, archive.read(info))
    return out.getvalue()


def _members(content: bytes, safe_mode: bool) -> dict[str, zipfile.ZipInfo]:
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise RefusedArtifactError(f"it is not a .pt2 archive (a zip file): {exc}") from exc
    if len(infos) > _MAX_MEMBERS:
        raise RefusedArtifactError(f"it holds {len(infos)} members, more than {_MAX_MEMBERS}")
    members: dict[str, zipfile.ZipInfo] = {}
    roots = set()
    for info in infos:
        shown = printable(info.filename, 120)
        if info.compress_type != zipfile.ZIP_STORED:
            # torch.export.save stores every member; a compressed one could expand without bound.
            raise RefusedArtifactError(
                f"its member '{shown}' is compressed; torch.export.save stores members"
            )
        root, _, rest = info.filename.partition("/")
        roots.add(root)
        if safe_mode and not (_ROOT.match(root) and _MEMBER.match(rest)):
            raise RefusedArtifactError(
                f"its member '{shown}' is not one torch.export.save writes for a program of ATen "
                "operators (compiled AOTInductor libraries, pickled objects and the 2.7 layout are refused)"
            )
        if info.filename in members:
            # Readers differ on which of the two they take: torch's often the first, Python's the last.
            raise RefusedArtifactError(f"it holds the member '{shown}' twice")
        members[info.filename] = info
    if len(roots) > 1:
        raise RefusedArtifactError(f"its members lie under {len(roots)} folders; torch.export.save uses one")
    return members


def _json_member(archive: zipfile.ZipFile, name: str, limit: int) -> Any:
    info = archive.getinfo(name)
    if info.file_size > limit:
        raise RefusedArtifactError(f"its {name.split('/', 1)[-1]} holds {info.file_size} bytes, over {limit}")
    try:
        return json.loads(archive.read(name))
    except (ValueError, RecursionError) as exc:
        raise RefusedArtifactError(f"its {name.split('/', 1)[-1]} is not JSON") from exc


def _check_payload_config(
    config: Any, name: str, max_tensor_bytes: int, safe_mode: bool, members: dict[str, zipfile.ZipInfo]
) -> None:
    """Weights and constants: raw tensors of declared sizes, no pickles or objects."""
    shown_file = name.split("/", 1)[-1]
    folder = name.rsplit("/", 1)[0]
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise RefusedArtifactError(f"its {shown_file} has no 'config' object")
    for fqn, entry in entries.items():
        what = f"'{printable(str(fqn), 120)}' in {shown_file}"
        if not isinstance(entry, dict):
            raise RefusedArtifactError(f"{what} is not an object")
        path = entry.get("path_name")
        if safe_mode:
            if entry.get("use_pickle") is not False:
                raise RefusedArtifactError(f"{what} is a pickle, which runs code when it is loaded")
            if not isinstance(path, str) or not re.match(r"^(weight|tensor)_\d{1,9}$", path):
                raise RefusedArtifactError(
                    f"{what} is stored as '{printable(str(path), 80)}', not a tensor (custom and opaque "
                    "objects are unpickled when loaded)"
                )
            if not _NAME.match(str(fqn)):
                raise RefusedArtifactError(
                    f"{what} has a name with characters other than letters, digits, _./-"
                )
        meta = entry.get("tensor_meta")
        if meta is None:
            continue
        sizes = meta.get("sizes") if isinstance(meta, dict) else None
        if not isinstance(sizes, list):
            raise RefusedArtifactError(f"{what} declares no list of sizes")
        dims = [size.get("as_int") if isinstance(size, dict) else None for size in sizes]
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
            raise RefusedArtifactError(f"{what} declares sizes that are not whole numbers")
        itemsize = _SCALAR_BYTES.get(meta.get("dtype"), 16)
        if math.prod(dims) * itemsize > max_tensor_bytes:
            raise over_budget(what, dims, itemsize, max_tensor_bytes)
        # torch makes an empty record torch.zeros of the declared size: memory the file does not
        # hold, so many such entries would add up past any budget. torch.export.save writes the bytes.
        record = members.get(f"{folder}/{path}") if isinstance(path, str) else None
        if math.prod(dims) and (record is None or record.file_size == 0):
            raise RefusedArtifactError(
                f"{what} declares {dims} but its record is {'missing' if record is None else 'empty'}; "
                "torch would allocate it filled with zeros"
            )


class _ProgramChecker:
    """A walk over ``models/model.json``: every value checked where torch
    would resolve it to code or evaluate it."""

    def __init__(self) -> None:
        self.depth = 0

    def check(self, program: Any) -> None:
        if not isinstance(program, dict):
            raise RefusedArtifactError("its models/model.json is not a JSON object")
        if program.get("guards_code"):
            raise RefusedArtifactError(
                "its program carries guards_code, Python source that .module() compiles and runs; "
                "Keras's exports carry none"
            )
        for key in (
            (program.get("range_constraints") or {})
            if isinstance(program.get("range_constraints"), dict)
            else ()
        ):
            if not _SYMBOL.match(str(key)):
                raise RefusedArtifactError(
                    f"its range constraint '{printable(str(key), 80)}' is not a symbol"
                )
        self._walk(program)

    def _walk(self, value: Any) -> None:
        # Iterative: a program nests a few levels, a planted one could nest thousands.
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(item)
            elif isinstance(item, dict):
                self._check_object(item)
                stack.extend(item.values())

    def _check_object(self, item: dict[str, Any]) -> None:
        if "target" in item and "inputs" in item:
            _check_target(item["target"])
        if "as_operator" in item:
            _check_target(item["as_operator"])
        for key in ("as_custom_obj", "custom_obj", "as_custom_objs", "custom_obj_values"):
            if item.get(key):
                raise RefusedArtifactError(
                    "its program uses a custom (TorchBind) object, native code outside ATen"
                )
        if "expr_str" in item:
            _check_expression(item["expr_str"])
        for key in _NAME_KEYS & item.keys():
            names = item[key] if isinstance(item[key], list) else [item[key]]
            for name in names:
                if not isinstance(name, str) or not _NAME.match(name):
                    raise RefusedArtifactError(
                        f"its program names '{printable(str(name), 80)}' ({key}): only letters, digits and "
                        "_./- are taken (names reach the Python source torch generates)"
                    )


def _check_target(target: Any) -> None:
    shown = printable(str(target), 120)
    if isinstance(target, str) and target in _OTHER_TARGETS:
        return
    match = _ATEN_TARGET.match(target) if isinstance(target, str) else None
    if match is None:
        raise RefusedArtifactError(
            f"its program calls '{shown}', not an ATen operator (torch.ops.aten.<op>.<overload>): "
            "torch resolves any torch.* name, os.system among them"
        )
    if match.group(1) in _REFUSED_ATEN:
        raise RefusedArtifactError(
            f"its program calls '{shown}', which does more than compute (files, printing, state)"
        )


def _check_expression(text: Any) -> None:
    """A symbolic size as sympy's printer writes it: symbols, numbers,
    arithmetic and a few of sympy's functions. sympify would eval anything."""
    shown = printable(str(text), 120)
    try:
        tree = ast.parse(text, mode="eval") if isinstance(text, str) and len(text) < 10_000 else None
    except (SyntaxError, ValueError, RecursionError):
        tree = None
    nodes = list(ast.walk(tree)) if tree is not None else []
    # The name a call calls (Symbol in "Symbol('s0', positive=True)"): _plain_node checks the call.
    callees = {id(node.func) for node in nodes if isinstance(node, ast.Call)}
    if tree is None or not all(_plain_node(node) or id(node) in callees for node in nodes):
        raise RefusedArtifactError(
            f"its program has the symbolic size '{shown}', which is not arithmetic on symbols "
            "(sympy evaluates it as Python)"
        )


def _plain_node(node: ast.AST) -> bool:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        # sympy computes an integer power at once: 9**9**9**9 would never end, nor would powers of
        # powers. A symbol or a number, to a small whole number.
        exponent = node.right
        return (
            isinstance(node.left, (ast.Name, ast.Constant))
            and isinstance(exponent, ast.Constant)
            and type(exponent.value) is int
            and 0 <= exponent.value <= _MAX_EXPONENT
        )
    if isinstance(
        node,
        (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Compare, ast.operator, ast.unaryop, ast.cmpop, ast.Load),
    ):
        return True
    if isinstance(node, ast.Constant):
        if isinstance(node.value, int) and not isinstance(node.value, bool):
            return abs(node.value) < 2**63
        return isinstance(node.value, (float, bool)) or (
            isinstance(node.value, str) and bool(_SYMBOL.match(node.value))
        )
    if isinstance(node, ast.Name):
        return bool(_SYMBOL.match(node.id)) or node.id in ("True", "False")
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Name) and node.func.id in _SYMPY_CALLS
    if isinstance(node, ast.keyword):
        return (
            node.arg in ("positive", "integer", "real", "nonnegative", "finite")
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, bool)
        )
    return False


def _check_tensor_values(program: dict[str, Any], max_tensor_bytes: int) -> None:
    """Every tensor the graph declares with a static size, within the budget:
    an operator such as full or expand allocates what its output declares."""
    values = (((program.get("graph_module") or {}).get("graph") or {}).get("tensor_values")) or {}
    if not isinstance(values, dict):
        raise RefusedArtifactError("its program's tensor_values is not an object")
    for tensor, meta in values.items():
        sizes = meta.get("sizes") if isinstance(meta, dict) else None
        dims = (
            [size.get("as_int") for size in sizes if isinstance(size, dict)]
            if isinstance(sizes, list)
            else []
        )
        if dims and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
            itemsize = _SCALAR_BYTES.get(meta.get("dtype"), 16)
            if math.prod(dims) * itemsize > max_tensor_bytes:
                raise over_budget(
                    f"its tensor '{printable(str(tensor), 80)}'", dims, itemsize, max_tensor_bytes
                )


def _check_sample_inputs(content: bytes) -> None:
    """torch loads them with weights_only=True and, if that fails, again
    without: loading them so first here means torch's second try never runs."""
    import torch

    try:
        torch.load(io.BytesIO(content), weights_only=True)
    except Exception as exc:  # any failure is a refusal
        raise RefusedArtifactError(
            "its sample inputs are not plain tensors (torch.load with weights_only=True refused them: "
            f"{printable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 200)}); torch would "
            "unpickle them without that restriction"
        ) from exc


def pt2_signature(content: bytes) -> dict[str, list[str]]:
    """``{"inputs", "outputs", "input_names"}`` of a ``.pt2`` from its program's
    JSON (no torch needed): the user inputs and outputs as ``name: dtype[dims]``."""
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        name = next(n for n in archive.namelist() if n.endswith("/models/model.json"))
        program = json.loads(archive.read(name))
    module = program["graph_module"]
    values = module["graph"]["tensor_values"]
    signature = module["signature"]

    def described(tensor: str) -> str:
        meta = values.get(tensor, {})
        dims = [size.get("as_int") for size in meta.get("sizes", [])]
        return f"{tensor}: {_SCALAR_NAMES.get(meta.get('dtype'), '?')}{dims}"

    def tensors(specs: list[dict[str, Any]], kind: str) -> list[str]:
        return [
            spec[kind]["arg"]["as_tensor"]["name"]
            for spec in specs
            if "as_tensor" in spec.get(kind, {}).get("arg", {})
        ]

    names = tensors(signature["input_specs"], "user_input")
    outputs = tensors(signature["output_specs"], "user_output")
    return {
        "inputs": [described(n) for n in names],
        "outputs": [described(n) for n in outputs],
        "input_names": names,
    }
