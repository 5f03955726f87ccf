"""`edgepilot info` for .onnx files: tensors, metadata, layers and ops, read with `onnx`."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from edgepilot.errors import ModelFileError, require
from edgepilot.meta import META_KEY
from edgepilot.runtime.reading import (
    Layers,
    OpRule,
    Reading,
    TensorSummary,
    ValueStack,
    count_layers,
    parse_meta,
)

__all__ = ["read_info", "read_layers", "module_path"]

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


#: QOperator ops (and QuantizeLinear): the input slots of their output's scale and zero point.
_OUTPUT_QPARAMS = {
    "QuantizeLinear": (1, 2), "QLinearConv": (6, 7), "QLinearMatMul": (6, 7),
    "QLinearAdd": (6, 7), "QLinearMul": (6, 7), "QGemm": (7, 8), "QLinearConcat": (0, 1),
    "QLinearAveragePool": (3, 4), "QLinearGlobalAveragePool": (3, 4),
    "QLinearSigmoid": (3, 4), "QLinearLeakyRelu": (3, 4), "QLinearSoftmax": (3, 4),
}
#: Ops that move int8 values without changing their scale.
_SAME_SCALE = {"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity",
               "Slice", "Split", "Gather", "Resize", "Pad"}


def module_path(node) -> str:
    """The PyTorch module that computed a node's outputs (``features.3.0``), from the name
    scopes torch's exporter records on each node, or "" where it recorded none."""
    props = {p.key: p.value for p in node.metadata_props}
    found = re.findall(r"'([^']*)'", props.get("pkg.torch.onnx.name_scopes", ""))
    return found[-2] if len(found) >= 2 else ""  # the last scope is the traced op itself


def read_layers(path: Path, inputs: list[np.ndarray]) -> Layers:
    """Every intermediate tensor of an .onnx file on `inputs` (each a batch of one, as the
    runtime feeds the file), dequantized where it is int8, for `edgepilot diff`.

    Every tensor is made a graph output, so onnxruntime cannot fuse across them: an int8
    layer's values are its QDQ arithmetic in float, not the fused integer kernel's."""
    onnx = require("onnx", "export", "Comparing ONNX layers")
    from onnx import numpy_helper

    from edgepilot.runtime.backend import file_errors
    from edgepilot.runtime.onnx import check_external_data

    ort = require("onnxruntime", "", "Running .onnx models")
    unreadable = check_external_data(Path(path))
    if unreadable:
        raise ModelFileError(f"'{path}' is not a valid ONNX protobuf: {unreadable}")
    try:
        model = onnx.load(str(path))
    except Exception as err:  # protobuf's DecodeError and OSError share no useful base
        raise ModelFileError(f"Cannot read '{path}' as ONNX: not a valid ONNX protobuf "
                             f"({type(err).__name__})") from err
    graph = model.graph
    constants = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                constants[node.output[0]] = value
    order, inputs_of, op_of, modules, qparams = [], {}, {}, {}, {}
    for node in graph.node:
        if node.op_type == "Constant":
            continue
        reads = [i for i in node.input if i and i not in constants]
        module = module_path(node)
        slots = _OUTPUT_QPARAMS.get(node.op_type)
        for out in (o for o in node.output if o):
            order.append(out)
            inputs_of[out], op_of[out] = reads, node.op_type
            if module:
                modules[out] = module
            if slots and len(node.input) > slots[0]:
                qparams[out] = tuple(node.input[i] if i < len(node.input) else ""
                                     for i in slots)
            elif node.op_type in _SAME_SCALE and reads and reads[0] in qparams:
                qparams[out] = qparams[reads[0]]
    # In a QDQ graph a layer's output reaches the next layer through QuantizeLinear and
    # DequantizeLinear (which also clamp it: a fused ReLU lives only there): compare what
    # the next layer reads.
    quantized = {n.input[0]: n.output[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    read_as = {t: n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"
               for t, q in quantized.items() if n.input and n.input[0] == q}
    present = {o.name for o in graph.output}
    graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in order
                        if t not in present)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = 1, 3
    with file_errors("onnxruntime", path):
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        feed = session.get_inputs()[0].name
    scale_of = {}
    for tensor, (scale, zero) in qparams.items():
        if scale in constants:
            zero_point = numpy_helper.to_array(constants[zero]) if zero in constants else 0
            scale_of[tensor] = (numpy_helper.to_array(constants[scale]).astype(np.float32),
                                np.asarray(zero_point, np.float32))
    stack = ValueStack(path, len(inputs))
    for x in inputs:
        with file_errors("onnxruntime", path):
            results = session.run(None, {feed: x})
        values = {}
        for name, value in zip(names, results):
            value = np.asarray(value)
            if name in scale_of and np.issubdtype(value.dtype, np.integer):
                scale, zero = scale_of[name]
                value = (value.astype(np.float32) - zero) * scale
            elif not np.issubdtype(value.dtype, np.floating):
                continue  # shapes, indices and int8 values without a known scale
            values[name] = value.astype(np.float32)
        stack.add(values)
    values = stack.stacked()
    return Layers(order, inputs_of, values, modules, op_of,
                  [o.name for o in graph.output[:len(present)]], channels_last=False,
                  read_as={t: values[d] for t, d in read_as.items() if d in values})
