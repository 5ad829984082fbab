"""OpenVINO IR (an ``.xml`` graph and a ``.bin`` of weights) checked before
OpenVINO reads it: an XML without DTDs or entities, of bounded size, whose
every operator is one of OpenVINO's standard opsets and whose every constant
lies inside the weights; their inputs and outputs. Parsed with the standard
library's ``xml.etree`` (expat), once a document type declaration, which is
where entities are defined, is refused; ``openvino`` is not needed here.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ElementTree
from typing import Any

from kedro_keras._formats.artifact import RefusedArtifactError, over_budget
from kedro_keras._log import printable

# Keras writes a few kilobytes of XML per layer; a model with thousands of
# layers stays far below this. More is a document meant to exhaust the parser.
MAX_XML_BYTES = 64 * 2**20
# OpenVINO's own operators: opset1 ... opset16 today. "extension" (custom
# operators, native code loaded beside the runtime) and internal opsets are not.
_STANDARD_OPSET = re.compile(r"^opset\d{1,3}$")
# Bits per element of each element_type an IR names; an unknown one counts as the widest.
_ELEMENT_BITS = {
    "boolean": 8,
    "u1": 1,
    "u2": 2,
    "u3": 3,
    "u4": 4,
    "i4": 4,
    "nf4": 4,
    "f4e2m1": 4,
    "u6": 6,
    "u8": 8,
    "i8": 8,
    "f8e4m3": 8,
    "f8e5m2": 8,
    "f8e8m0": 8,
    "u16": 16,
    "i16": 16,
    "f16": 16,
    "bf16": 16,
    "u32": 32,
    "i32": 32,
    "f32": 32,
    "u64": 64,
    "i64": 64,
    "f64": 64,
}
_WIDEST_BITS = 64
# A port's precision attribute, as OpenVINO writes it (FP32, I64, ...), to bits.
_PRECISION_BITS = {"FP64": 64, "I64": 64, "U64": 64, "FP16": 16, "BF16": 16, "I16": 16, "U16": 16}


def check_openvino_ir(xml: bytes, weights_size: int, max_tensor_bytes: int) -> ElementTree.Element:
    """The parsed ``<net>`` of an IR whose weights file holds
    ``weights_size`` bytes, once it is known to define no entities, to use
    only standard operators, to keep every constant inside the weights and
    to declare no tensor over ``max_tensor_bytes``.

    Raises:
        RefusedArtifactError: what is wrong, and where.
    """
    if len(xml) > MAX_XML_BYTES:
        raise RefusedArtifactError(
            f"its graph (model.xml) holds {len(xml)} bytes, more than the {MAX_XML_BYTES} an IR this "
            "package exports takes"
        )
    try:
        # Decoded before any search: a UTF-16 document would hide '<!DOCTYPE' from a search of bytes.
        text = xml.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RefusedArtifactError("its graph (model.xml) is not UTF-8, as OpenVINO writes it") from exc
    # Entities (the "billion laughs", external files named by SYSTEM) are
    # declared only in a document type declaration: an IR has none.
    if re.search(r"<!\s*(DOCTYPE|ENTITY)", text, re.IGNORECASE):
        raise RefusedArtifactError(
            "its graph (model.xml) has a document type declaration (entities can expand it or name "
            "other files); OpenVINO never writes one"
        )
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise RefusedArtifactError(f"its graph (model.xml) is not well-formed XML ({exc})") from exc
    # OpenVINO's parser ignores namespaces and ElementTree does not: a <layers xmlns="urn:x"> would
    # hide its layers (and an rt_info its options) from the checks below but not from OpenVINO.
    for element in root.iter():
        if "{" in element.tag or any("{" in name or name.startswith("xmlns") for name in element.attrib):
            raise RefusedArtifactError(
                f"its graph (model.xml) uses an XML namespace (<{printable(element.tag, 60)}>); OpenVINO "
                "writes none, and its parser would read the element this check cannot see"
            )
    if root.tag != "net":
        raise RefusedArtifactError(f"its graph (model.xml) is a <{printable(root.tag, 40)}>, not an IR <net>")
    for layer in root.iter("layer"):
        what = f"layer {printable(str(layer.get('id')), 20)} ({printable(str(layer.get('type')), 40)})"
        version = layer.get("version", "")
        if not _STANDARD_OPSET.match(version):
            raise RefusedArtifactError(
                f"{what} is from '{printable(version, 40)}', not one of OpenVINO's standard opsets: custom "
                "operators run native code loaded beside the runtime"
            )
        if layer.get("type") == "Const":
            _check_constant(layer, what, weights_size, max_tensor_bytes)
        for port in layer.iterfind("output/port"):
            dims = _dims(port)
            if dims is not None:
                bits = _PRECISION_BITS.get(port.get("precision", ""), 32)
                if math.prod(dims) * bits > max_tensor_bytes * 8:
                    raise over_budget(what, dims, max(bits // 8, 1), max_tensor_bytes)
    rt_info = root.find("rt_info")
    # Options OpenVINO applies as compile properties of the model that carries them.
    if rt_info is not None and rt_info.find("runtime_options") is not None:
        raise RefusedArtifactError(
            "its graph (model.xml) carries runtime_options, which OpenVINO applies as compile settings; "
            "Keras never writes them"
        )
    return root


def _check_constant(layer: ElementTree.Element, what: str, weights_size: int, max_tensor_bytes: int) -> None:
    data = layer.find("data")
    if data is None:
        raise RefusedArtifactError(f"{what} has no data")
    try:
        offset, size = int(data.get("offset", "")), int(data.get("size", ""))
        shape = [int(n) for n in data.get("shape", "").replace(" ", "").split(",") if n]
    except ValueError as exc:
        raise RefusedArtifactError(f"{what} has an offset, size or shape that is not a number") from exc
    if offset < 0 or size < 0 or any(n < 0 for n in shape):
        raise RefusedArtifactError(f"{what} has a negative offset, size or dimension")
    if offset + size > weights_size:
        raise RefusedArtifactError(
            f"{what} reads bytes {offset} to {offset + size} of the weights (model.bin), which hold "
            f"{weights_size}"
        )
    bits = _ELEMENT_BITS.get(data.get("element_type", ""), _WIDEST_BITS)
    if size > max_tensor_bytes or math.prod(shape) * bits > max_tensor_bytes * 8:
        raise over_budget(what, shape, max(bits // 8, 1), max_tensor_bytes)


def _dims(port: ElementTree.Element) -> list[int] | None:
    """A port's dimensions, or None where one is dynamic (-1, a range)."""
    dims = []
    for dim in port.iterfind("dim"):
        try:
            value = int((dim.text or "").strip())
        except ValueError:
            return None
        if value < 0:
            return None
        dims.append(value)
    return dims


def openvino_signature(xml: bytes) -> dict[str, list[str]]:
    """``{"inputs", "outputs", "input_names"}`` of an IR as ``name: type[dims]``
    (Parameters and Results, in the graph's order); read from our own export."""
    root = ElementTree.fromstring(xml)
    inputs, outputs, names = [], [], []
    for layer in root.iterfind("layers/layer"):
        if layer.get("type") == "Parameter":
            port = layer.find("output/port")
            name = (port.get("names") if port is not None else None) or layer.get("name", "?")
            name = name.split(",")[0]
            names.append(name)
            inputs.append(f"{name}: {_port_text(layer, port)}")
        elif layer.get("type") == "Result":
            outputs.append(f"{layer.get('name', '?')}: {_port_text(layer, layer.find('input/port'))}")
    return {"inputs": inputs, "outputs": outputs, "input_names": names}


def _port_text(layer: ElementTree.Element, port: Any) -> str:
    data = layer.find("data")
    dtype = data.get("element_type") if data is not None and data.get("element_type") else None
    precision = port.get("precision", "?").lower().replace("fp", "f") if port is not None else "?"
    dims = [] if port is None else [(dim.text or "?").strip() for dim in port.iterfind("dim")]
    shown = [None if d.startswith("-") else int(d) if d.isdigit() else d for d in dims]
    return f"{dtype or precision}{shown}"
