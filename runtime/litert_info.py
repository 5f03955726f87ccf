"""`edgepilot info` for .tflite files: tensors and quantization, metadata, layers and ops,
read with the flatbuffer schema ai-edge-litert ships (the Edge TPU checker parses with it too)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from edgepilot.errors import MissingDependencyError, ModelFileError
from edgepilot.runtime.reading import (
    Layers,
    OpRule,
    Reading,
    TensorSummary,
    ValueStack,
    count_layers,
    macs,
    parse_meta,
)

__all__ = ["read_info", "read_layers", "module_path", "schema", "parse", "op_names", "op_name",
           "op_macs", "tensor_type_names", "text"]

OPS = {
    "CONV_2D": OpRule((1,), (2,), "conv"), "DEPTHWISE_CONV_2D": OpRule((1,), (2,), "depthwise"),
    "FULLY_CONNECTED": OpRule((1,), (2,), "dot"), "BATCH_MATMUL": OpRule((0, 1), (), "dot", 0),
    "PRELU": OpRule((1,)),
}


def schema():
    """The TFLite flatbuffer schema module that ai-edge-litert ships."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError as err:
        raise MissingDependencyError("ai-edge-litert", "tflite", "Inspecting TFLite layers") \
            from err
    return schema_py_generated


def parse(data: bytes, path: Path):
    """The whole flatbuffer as the schema's object tree (`ModelT`)."""
    fb = schema()
    if data[4:8] != b"TFL3":
        raise ModelFileError(f"'{path}' is not a TFLite flatbuffer (no TFL3 file identifier)")
    try:
        return fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(data, 0))
    except Exception as err:  # a corrupt flatbuffer fails anywhere: struct, index, type errors
        raise ModelFileError(f"Cannot read '{path}' as TFLite: the flatbuffer is truncated or "
                             f"corrupt ({type(err).__name__})") from err


def op_names() -> dict[int, str]:
    """Builtin operator code -> name ("CONV_2D")."""
    return {v: k for k, v in vars(schema().BuiltinOperator).items() if not k.startswith("_")}


def op_macs(graph, op, name: str) -> int:
    """MACs of one operator at batch 1, by its rule in `OPS` (0 for ops without one)."""
    rule = OPS.get(name)
    if rule is None or rule.operand >= len(op.inputs):
        return 0
    return macs(rule.macs, _dims(graph.tensors[op.outputs[0]]),
                _dims(graph.tensors[op.inputs[rule.operand]]))


def tensor_type_names() -> dict[int, str]:
    """Tensor type code -> numpy-style name ("int8")."""
    return {v: k.lower() for k, v in vars(schema().TensorType).items() if not k.startswith("_")}


def op_name(tree, op, names: dict[int, str]) -> str:
    """An operator's name: its builtin name, or CUSTOM(<custom code>)."""
    code = tree.operatorCodes[op.opcodeIndex]
    name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "UNKNOWN")
    return f"CUSTOM({text(code.customCode)})" if name == "CUSTOM" else name


def read_info(path: Path) -> Reading:
    """What `edgepilot info` shows of a .tflite file."""
    from edgepilot.runtime.tflite_metadata import read_metadata

    data = path.read_bytes()
    tree = parse(data, path)
    names = op_names()
    layers, ops = [], []
    for graph in tree.subgraphs or []:
        nodes = _tflite_nodes(tree, graph, names)
        ops += [op for _, op, _, _ in nodes]
        tensors = graph.tensors or []
        sizes = {i: math.prod(_dims(t)) for i, t in enumerate(tensors)
                 if _has_data(tree.buffers[t.buffer])}

        def shape(i, tensors=tensors):
            return _dims(tensors[i]) if i is not None and 0 <= i < len(tensors) else None

        layers += count_layers(nodes, sizes, shape, OPS)
    dtypes = tensor_type_names()
    main = tree.subgraphs[0]

    def summary(index: int) -> TensorSummary:
        tensor = main.tensors[index]
        dims = tensor.shapeSignature if tensor.shapeSignature is not None else tensor.shape
        shape = tuple(None if d < 0 else int(d) for d in (dims if dims is not None else ()))
        dtype = dtypes.get(tensor.type, str(tensor.type))
        return TensorSummary(text(tensor.name), shape, dtype, _quantization(tensor, dtype))

    meta = parse_meta(read_metadata(data, path).edgepilot_json, path)
    return Reading([summary(i) for i in main.inputs], [summary(i) for i in main.outputs], meta,
                   layers, ops)


def _tflite_nodes(tree, graph, op_names: dict) -> list[tuple]:
    """(output tensor name, op name, inputs, outputs) of each operator with an output."""
    nodes = []
    for op in graph.operators or []:
        name = op_name(tree, op, op_names)
        outs = [int(o) for o in op.outputs] if op.outputs is not None else []
        ins = [int(i) for i in op.inputs] if op.inputs is not None else []
        if outs:
            nodes.append((text(graph.tensors[outs[0]].name), name, ins, outs))
    return nodes


def _has_data(buffer) -> bool:
    # Large quantized models keep weights after the flatbuffer (offset > 1, size): a constant
    # either way. Counts come from tensor shapes, never from buffer bytes.
    return buffer.data is not None and len(buffer.data) > 0 or (buffer.offset or 0) > 1


def _dims(tensor) -> list[int]:
    return [max(int(d), 1) for d in (tensor.shape if tensor.shape is not None else ())]


def _quantization(tensor, dtype: str) -> str | None:
    q = tensor.quantization
    scales = [] if q is None or q.scale is None else list(q.scale)
    if not scales:
        return None
    if len(scales) > 1:
        return f"{dtype} per-channel, {len(scales)} scales on axis {q.quantizedDimension}"
    return f"{dtype} scale={scales[0]:.4g} zp={int(q.zeroPoint[0])}"


def text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else value or ""


def read_layers(path: Path, inputs: list[np.ndarray]) -> Layers:
    """Every intermediate tensor of a .tflite file on `inputs` (each a batch of one, as the
    runtime feeds the file), dequantized where it is int8, for `edgepilot diff`.

    The interpreter keeps every tensor, so no delegate takes the graph: the values are those
    of the builtin kernels, the reference implementation of each op."""
    from edgepilot.runtime.litert import LiteRTBackend, tensor_info

    data = Path(path).read_bytes()
    tree = parse(data, path)
    backend = LiteRTBackend(path, threads=1, preserve_all_tensors=True)
    interpreter = backend.interpreter
    graph = tree.subgraphs[0]
    names = [text(t.name) for t in graph.tensors or []]
    produced = [int(o) for op in graph.operators or [] for o in (op.outputs if op.outputs
                                                                   is not None else [])]
    activations = set(produced) | {int(i) for i in graph.inputs}
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    ops = op_names()
    order, inputs_of, op_of, modules, also = [], {}, {}, {}, {}
    for op in graph.operators or []:
        name = op_name(tree, op, ops)
        reads = [names[int(i)] for i in (op.inputs if op.inputs is not None else [])
                 if int(i) in activations]
        for out in op.outputs if op.outputs is not None else []:
            tensor = names[int(out)]
            order.append(tensor)
            inputs_of[tensor], op_of[tensor] = reads, name
            paths = [p for p in map(module_path, tensor.split(";;")) if p]
            if paths:
                modules[tensor], also[tensor] = paths[0], paths[1:]
    stack = ValueStack(path, len(inputs))
    image = backend.inputs[0]
    for x in inputs:
        backend.run([image.quantize(x) if image.quantized else x])
        values = {}
        for index in produced:
            detail = details.get(index)
            if detail is None:
                continue
            try:
                value = interpreter.get_tensor(index)
            except ValueError:  # a tensor the interpreter freed or never wrote
                continue
            info = tensor_info(detail)
            if info.quantized:
                value = info.dequantize(value)
            elif not np.issubdtype(value.dtype, np.floating):
                continue  # shapes and indices, not activations
            values[names[index]] = np.asarray(value, np.float32)
        stack.add(values)
    return Layers(order, inputs_of, stack.stacked(), modules, op_of,
                  [names[int(i)] for i in graph.outputs], channels_last=True,
                  also_modules=also)


def module_path(tensor: str) -> str:
    """The PyTorch module that computed a tensor, from the name litert-torch gives it
    (``features.3.0``), or "" where the name records none.

    litert-torch names a tensor by its module scope, ``package.Class_attribute`` per level
    joined by ``/``, the wrapped model first (containers such as ``ModuleList`` are left
    out); a fused op lists several scopes joined by ``;;``, the last module applied first
    (read the first). edgepilot's own input wrapper (``inner``) is left out."""
    scope = tensor.split(";", 1)[0].split("/")[1:]
    path = []
    for level in scope:
        local = level.rsplit(".", 1)[-1]  # "Conv2d_0", "Sequential_features"
        if "_" not in local:
            return ""
        path.append(local.split("_", 1)[1])
    if path and path[0] == "inner":
        path = path[1:]
    return ".".join(path)
