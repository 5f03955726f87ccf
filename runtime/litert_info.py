"""`edgepilot info` for .tflite files: tensors and quantization, metadata, layers and ops,
read with the flatbuffer schema ai-edge-litert ships (the Edge TPU checker parses with it too)."""

from __future__ import annotations

import math
from pathlib import Path

from edgepilot.errors import MissingDependencyError, ModelFileError
from edgepilot.runtime.reading import OpRule, Reading, TensorSummary, count_layers, parse_meta

__all__ = ["read_info", "schema", "parse", "op_names", "op_name", "tensor_type_names", "text"]

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
