"""`edgepilot info` for .onnx files: tensors, metadata, layers and ops, read with `onnx`."""

from __future__ import annotations

import math
from pathlib import Path

from edgepilot.errors import ModelFileError, require
from edgepilot.meta import META_KEY
from edgepilot.runtime.reading import OpRule, Reading, TensorSummary, count_layers, parse_meta

__all__ = ["read_info"]

OPS = {
    "Conv": OpRule((1,), (2,), "conv"), "ConvInteger": OpRule((1,), (), "conv"),
    "QLinearConv": OpRule((3,), (8,), "conv", 3), "Gemm": OpRule((1,), (2,), "dot", 0),
    "MatMul": OpRule((0, 1), (), "dot", 0), "MatMulInteger": OpRule((0, 1), (), "dot", 0),
    "QLinearMatMul": OpRule((0, 3), (), "dot", 0), "QGemm": OpRule((3,), (6,), "dot", 0),
    "PRelu": OpRule((1,)),
    # Running mean and variance are statistics, not weights.
    "BatchNormalization": OpRule((1,), (2,)), "InstanceNormalization": OpRule((1,), (2,)),
    "LayerNormalization": OpRule((1,), (2,)), "GroupNormalization": OpRule((1,), (2,)),
}

def read_info(path: Path) -> Reading:
    """What `edgepilot info` shows of an .onnx file."""
    onnx = require("onnx", "export", "Inspecting ONNX layers")
    try:
        model = onnx.load(str(path), load_external_data=False)  # dims suffice to count
    except Exception as err:  # protobuf's DecodeError and OSError share no useful base
        raise ModelFileError(f"Cannot read '{path}' as ONNX: not a valid ONNX protobuf "
                             f"({type(err).__name__})") from err
    if not model.graph.node:
        raise ModelFileError(f"'{path}' holds no ONNX graph: is it an ONNX model?")
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shapes only feed MAC estimates; parameters need none
        pass
    graph = model.graph
    constants = {i.name: tuple(i.dims) for i in graph.initializer}
    constants.update({n.output[0]: tuple(a.t.dims) for n in graph.node if n.op_type == "Constant"
                      for a in n.attribute if a.name == "value"})
    shapes = {vi.name: _onnx_dims(vi, dynamic=1)
              for vi in (*graph.input, *graph.value_info, *graph.output)}
    shapes.update(constants)
    nodes = [(n.name or n.output[0], n.op_type, list(n.input), list(n.output)) for n in graph.node]
    sizes = {name: math.prod(dims) for name, dims in constants.items()}
    layers = count_layers(nodes, sizes, shapes.get, OPS)
    inputs = [_onnx_tensor(vi) for vi in graph.input if vi.name not in constants]
    meta = parse_meta({p.key: p.value for p in model.metadata_props}.get(META_KEY), path)
    return Reading(inputs, [_onnx_tensor(vi) for vi in graph.output], meta, layers,
                   [n[1] for n in nodes])


def _onnx_dims(value_info, dynamic=None) -> tuple | None:
    """Dims of a typed tensor; `dynamic` stands for a symbolic one such as the batch."""
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else dynamic for d in tensor.shape.dim)


def _onnx_tensor(value_info) -> TensorSummary:
    from onnx.helper import tensor_dtype_to_np_dtype

    elem = value_info.type.tensor_type.elem_type
    dtype = tensor_dtype_to_np_dtype(elem).name if elem else "undefined"
    return TensorSummary(value_info.name, _onnx_dims(value_info) or (), dtype)
