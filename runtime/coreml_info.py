"""`edgepilot info` for Core ML .mlpackage folders, on any OS: read from the spec with
coremltools (no Core ML needed): the image input and its scale and bias, the class labels,
op counts of the ML Program, its layers (conv, linear, matmul... whose weights are ``const``
or ``constexpr_*`` ops: dims from their output types, never the weight file), the weights'
storage precision and the chosen compute units."""

from __future__ import annotations

import math
import warnings
from collections import Counter
from pathlib import Path

from edgepilot.errors import require
from edgepilot.runtime.backend import quiet_native_stderr
from edgepilot.runtime.coreml import COMPUTE_UNITS_KEY, META_KEY
from edgepilot.runtime.mlpackage import check_package, spec_copy
from edgepilot.runtime.reading import OpRule, Reading, TensorSummary, count_layers, parse_meta

__all__ = ["read_info", "read_spec", "image_preprocessing", "weight_dtypes"]


def read_spec(path: Path):
    """The model's protobuf spec, read without loading Core ML, from a private copy of the
    vetted package (coremltools follows links and rewrites the Manifest it opens)."""
    package = check_package(Path(path))
    # coremltools announces at import what it cannot do on this OS and torch version.
    with quiet_native_stderr(), warnings.catch_warnings(), spec_copy(package) as private:
        warnings.simplefilter("ignore")
        ct = require("coremltools", "coreml", "Inspecting Core ML models")
        return ct.utils.load_spec(str(private))


#: MIL ops that are layers: their named inputs in the order the rule's slots index, and the rule.
OPS = {
    "conv": (("x", "weight", "bias"), OpRule((1,), (2,), "conv")),
    "conv_transpose": (("x", "weight", "bias"), OpRule((1,), (2,))),
    "linear": (("x", "weight", "bias"), OpRule((1,), (2,), "dot", 0)),
    "matmul": (("x", "y"), OpRule((0, 1), (), "dot", 0)),
    "prelu": (("x", "alpha"), OpRule((1,))),
    # Mean and variance are statistics, not weights.
    "batch_norm": (("x", "mean", "variance", "gamma", "beta"), OpRule((3,), (4,))),
    "instance_norm": (("x", "gamma", "beta"), OpRule((1,), (2,))),
    "layer_norm": (("x", "axes", "gamma", "beta"), OpRule((2,), (3,))),
}
#: Ops that give a constant in another dtype or shape (fp16 weights reach a layer by a cast).
_VIEWS = frozenset({"cast", "reshape", "transpose", "squeeze", "expand_dims"})


def _operations(spec) -> list:
    main = spec.mlProgram.functions["main"]
    return list(main.block_specializations[main.opset].operations)


def _const(op):
    value = op.attributes["val"].immediateValue.tensor
    for kind in ("floats", "ints"):
        values = getattr(value, kind).values
        if len(values):
            return [float(v) for v in values]
    return None


def image_preprocessing(spec) -> dict:
    """The scale and bias the ML Program applies to its image input (its first mul and add),
    as {"scale": float, "bias": [per channel]}; {} when there is none."""
    ops = _operations(spec)
    consts = {op.outputs[0].name: op for op in ops if op.type == "const"}
    name = spec.description.input[0].name
    found: dict = {}
    for op in ops:
        if op.type in ("mul", "add") and op.inputs["x"].arguments[0].name in (
                name, found.get("_last")):
            operand = consts.get(op.inputs["y"].arguments[0].name)
            value = None if operand is None else _const(operand)
            if value is None:
                continue
            found["scale" if op.type == "mul" else "bias"] = \
                value[0] if op.type == "mul" and len(value) == 1 else value
            found["_last"] = op.outputs[0].name
    found.pop("_last", None)
    return found


def weight_dtypes(path: Path) -> dict[str, int]:
    """How the program's constant weights are stored: dtype -> count of const tensors."""
    spec = read_spec(path)
    counts: Counter = Counter()
    for op in _operations(spec):
        if op.type.startswith("constexpr_") and "quantized_data" in op.attributes:
            stored = op.attributes["quantized_data"].type.tensorType  # decompressed at load
        elif op.type == "const" and op.outputs:
            stored = op.outputs[0].type.tensorType
        else:
            continue
        if stored.rank >= 2:  # weights, not scalars or per-channel scales
            counts[_DTYPE_NAMES.get(stored.dataType, str(stored.dataType))] += 1
    return dict(counts)


_DTYPE_NAMES = {10: "float16", 11: "float32", 12: "float64", 14: "bfloat16", 21: "int8",
                22: "int16", 23: "int32", 24: "int64", 25: "uint8"}


def read_info(path: Path) -> Reading:
    """What `edgepilot info` shows of an .mlpackage."""
    spec = read_spec(path)
    description = spec.description
    image = description.input[0].type.imageType
    inputs = [TensorSummary(description.input[0].name, (1, 3, image.height, image.width),
                            "image RGB" if image.colorSpace == 20 else "image")]
    outputs = [TensorSummary(o.name, (), o.type.WhichOneof("Type") or "?")
               for o in description.output]
    metadata = dict(description.metadata.userDefined)
    operations = _operations(spec)
    ops = [op.type for op in operations]
    meta = parse_meta(metadata.get(META_KEY), path)
    labels = meta.get("labels") if meta else None
    details = {"input scale and bias": image_preprocessing(spec) or "none",
               "labels": ", ".join(labels) if labels else "none",
               "compute units": metadata.get(COMPUTE_UNITS_KEY, "not set (Core ML: ALL)"),
               "weights stored as": weight_dtypes(path) or "none"}
    return Reading(inputs, outputs, meta, _layers(spec, operations),
                   [o for o in ops if o != "const"], details)


def _layers(spec, operations) -> list:
    """The ML Program's layers, counted from its ops' types (see `edgepilot.info`)."""
    main = spec.mlProgram.functions["main"]
    shapes = {i.name: _dims(i.type) for i in main.inputs}
    sizes: dict[str, int] = {}
    nodes = []
    for op in operations:
        if not op.outputs:
            continue
        for out in op.outputs:
            shapes[out.name] = _dims(out.type)
        first = op.outputs[0].name
        if op.type == "const" or op.type.startswith("constexpr_"):  # constexpr_: compressed
            dims = shapes[first]  # weights, decompressed when the model loads
            if dims is not None:
                sizes[first] = math.prod(dims)
            continue
        names = {key: [a.name for a in arg.arguments if a.name]
                 for key, arg in op.inputs.items()}
        slots = OPS[op.type][0] if op.type in OPS else ("x",) if op.type in _VIEWS else ()
        ins = [(names.get(key) or [None])[0] for key in slots] if slots else \
            [name for key in sorted(names) for name in names[key]]
        nodes.append((first, op.type, ins, [out.name for out in op.outputs]))
    return count_layers(nodes, sizes, shapes.get, {op: rule for op, (_, rule) in OPS.items()},
                        _VIEWS)


def _dims(value_type) -> tuple | None:
    """The dims of a MIL tensor type; None when one is not a constant."""
    if value_type.WhichOneof("type") != "tensorType":
        return None
    dims = value_type.tensorType.dimensions
    if any(d.WhichOneof("dimension") != "constant" for d in dims):
        return None
    return tuple(int(d.constant.size) for d in dims)
