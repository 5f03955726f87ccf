"""`edgepilot info` for .pte files, read with ExecuTorch's own program deserializer: the
forward method's tensors, the edgepilot metadata, the operators the program runs outside any
delegate and the delegate calls (XNNPACK's subgraphs).

Layers are counted where the file says what they hold. Portable kernels (``aten::convolution``,
``aten::addmm``...) name their arguments among the plan's values, whose constant tensors have
sizes. An XNNPACK delegate's payload is XNNPACK's own graph (a flatbuffer whose schema
ExecuTorch ships, ``backends/xnnpack/serialization/schema.fbs``), read here with the bounded
flatbuffer reader: its nodes (Conv2d, FullyConnected...) name their filter and bias values,
which have dims. Any other delegate's payload is private to its backend: what it holds cannot be
known from the file, so the totals are unknown (None), not 0.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from pathlib import Path

from edgepilot.errors import ModelFileError, require
from edgepilot.runtime.backend import quiet_native_stderr
from edgepilot.runtime.executorch import META_METHOD, check_header, method_list, read_program
from edgepilot.runtime.reading import (
    Layer,
    OpRule,
    Reading,
    TensorSummary,
    count_layers,
    parse_meta,
)

__all__ = ["read_info"]

#: ExecuTorch ScalarType codes -> numpy dtype names.
_DTYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16",
           6: "float32", 7: "float64", 11: "bool"}

#: Portable kernels by operator name (without the ".out" overload); slots index the
#: KernelCall's arguments.
OPS = {
    "aten::convolution": OpRule((1,), (2,), "conv"),
    "aten::linear": OpRule((1,), (2,), "dot", 0),
    "aten::addmm": OpRule((2,), (0,), "dot", 1),  # bias + input @ weight.T
    "aten::mm": OpRule((0, 1), (), "dot", 0), "aten::bmm": OpRule((0, 1), (), "dot", 0),
    "aten::matmul": OpRule((0, 1), (), "dot", 0),
    "aten::_prelu_kernel": OpRule((1,)), "aten::prelu": OpRule((1,)),
    # Running mean and variance are statistics, not weights.
    "aten::_native_batch_norm_legit_no_training": OpRule((1,), (2,)),
    "aten::native_batch_norm": OpRule((1,), (2,)),
    "aten::native_layer_norm": OpRule((2,), (3,)),
    "aten::native_group_norm": OpRule((1,), (2,)),
}
#: Kernels that hand on a constant in another layout or dtype (linear's weight reaches addmm
#: through permute_copy; int8 weights reach a kernel through a dequantize).
_VIEWS = frozenset({
    "aten::permute_copy", "aten::t_copy", "aten::transpose_copy", "aten::view_copy",
    "aten::squeeze_copy", "aten::unsqueeze_copy", "aten::clone", "aten::_to_copy",
    "dim_order_ops::_to_dim_order_copy", "dim_order_ops::_clone_dim_order",
    "quantized_decomposed::dequantize_per_tensor",
    "quantized_decomposed::dequantize_per_channel",
})

#: XNNPACK's node types (XNodeUnion in its schema.fbs, numbered from 1 in this order).
_XNN_NODES = (
    "Add FullyConnected Softmax Sigmoid StaticTranspose Clamp Conv2d Div "
    "StaticResizeBilinear2D StaticConstantPad AvgPooling2d Minimum DepthwiseConv2d "
    "MaxPooling2d Multiply Subtract Floor Convert GlobalAvgPooling2d StaticReshape "
    "ArgMaxPooling2d SquareRoot Ceiling Hardswish LeakyReLU Maximum Negate Square ELU Abs PReLU "
    "Concatenate2 Concatenate3 Concatenate4 StaticSlice ScaledDotProductAttention "
    "BatchMatrixMultiply Concatenate5 ConvTranspose2d ReciprocalSquareRoot Log Gelu Tanh Exp "
    "Sin Copy Cos").split()
#: Most nodes or values read from one XNNPACK graph (a corrupt count fails, never allocates).
_XNN_LIMIT = 1 << 20


class _Unreadable(Exception):
    """A delegate payload whose layers cannot be read."""


def read_info(path: Path) -> Reading:
    """What `edgepilot info` shows of a .pte file."""
    data = read_program(path)
    check_header(data, path)
    with quiet_native_stderr(), warnings.catch_warnings():  # torchao's start-up notices
        warnings.simplefilter("ignore")
        require("executorch.exir", "executorch", "Inspecting ExecuTorch programs")
        from executorch.exir._serialize._program import deserialize_pte_binary

        program = deserialize_pte_binary(data).program
    plans = {plan.name: plan for plan in program.execution_plan}
    if "forward" not in plans:
        raise ModelFileError(f"'{path}' has no 'forward' method (it has {method_list(plans)})")
    forward = plans["forward"]
    inputs = [_tensor(f"input{n or ''}", forward.values[i].val)
              for n, i in enumerate(forward.inputs)]
    outputs = [_tensor(f"output{n or ''}", forward.values[i].val)
               for n, i in enumerate(forward.outputs)]
    values = forward.values
    sizes = {i: math.prod(v.val.sizes) for i, v in enumerate(values) if _constant(v.val)}

    def shape(i):
        value = values[i].val if isinstance(i, int) and 0 <= i < len(values) else None
        return tuple(int(d) for d in value.sizes) if _is_tensor(value) else None

    ops, delegated = [], Counter()
    opaque: dict[str, str] = {}  # backend -> why its layers cannot be read
    layers: list[Layer] = []
    nodes: list[tuple] = []  # portable kernels since the last delegate call
    read: set[int] = set()  # delegates whose graph was read (a call in a loop reads it once)
    for chain in forward.chains:
        for step, instruction in enumerate(chain.instructions):
            args = instruction.instr_args
            kind = type(args).__name__
            if kind == "KernelCall":
                operator = forward.operators[args.op_index]
                ops.append(operator.name + (f".{operator.overload}" if operator.overload else ""))
                nodes.append(_node(f"instruction {step}", operator.name, list(args.args),
                                   values))
            elif kind == "DelegateCall":
                layers += count_layers(nodes, sizes, shape, OPS, _VIEWS)
                nodes = []
                backend = forward.delegates[args.delegate_index].id
                ops.append(f"delegate({backend})")
                delegated[backend] += 1
                if args.delegate_index in read:
                    continue  # called again: the same graph and weights, read and counted once
                read.add(args.delegate_index)
                try:
                    found, inner = _delegate_layers(
                        program, forward.delegates[args.delegate_index],
                        backend if len(read) == 1 else f"{backend} {len(read)}")
                except _Unreadable as err:
                    opaque[backend] = str(err)
                else:
                    layers += found
                    ops += inner
    layers += count_layers(nodes, sizes, shape, OPS, _VIEWS)
    meta = None
    if META_METHOD in plans and plans[META_METHOD].outputs:
        value = plans[META_METHOD].values[plans[META_METHOD].outputs[0]].val
        meta = parse_meta(getattr(value, "string_val", None), path)
    details: dict = {"methods": sorted(plans),
                     "delegated subgraphs": dict(delegated) or "none (portable kernels only)"}
    # Unknown, not 0: the layers in these delegates are in a payload only their backend reads.
    uncounted = "; ".join(f"delegated to {backend}" + (f": {why}" if why else "")
                          for backend, why in opaque.items())
    return Reading(inputs, outputs, meta, layers, ops, details, uncounted)


def _is_tensor(value) -> bool:
    return type(value).__name__ == "Tensor"


def _constant(value) -> bool:
    """A tensor whose data the file holds: in the program's constant buffers, or in the named
    data store (a separate .ptd file or segment) when ``extra_tensor_info`` says EXTERNAL."""
    if not _is_tensor(value):
        return False
    if value.data_buffer_idx > 0:
        return True
    extra = value.extra_tensor_info
    return (value.allocation_info is None and extra is not None
            and int(getattr(extra.location, "value", extra.location)) == 1)


def _node(name: str, op: str, args: list[int], values) -> tuple:
    """(name, op, inputs, outputs) of a KernelCall: its last argument is what it returns (a
    tensor, or a list of them), the ``out=`` arguments before it are those same tensors."""
    if not args:
        return name, op, [], [None]
    last = values[args[-1]].val if 0 <= args[-1] < len(values) else None
    outs = list(last.items) if type(last).__name__ == "TensorList" else [args[-1]]
    return name, op, [a for a in args[:-1] if a not in outs], outs or [None]


def _delegate_layers(program, delegate, label: str) -> tuple[list[Layer], list[str]]:
    """The layers and ops inside one delegate call; _Unreadable when its payload is private
    to its backend or not a graph this reader knows."""
    if delegate.id != "XnnpackBackend":
        raise _Unreadable("")  # a payload only that backend reads
    reference = delegate.processed
    location = int(getattr(reference.location, "value", reference.location))
    if location != 0 or not 0 <= reference.index < len(program.backend_delegate_data):
        raise _Unreadable("its payload is not in the program")  # segments come back inline
    blob = bytes(program.backend_delegate_data[reference.index].data)
    try:
        return _xnnpack(blob, label)
    except _Unreadable:
        raise
    except Exception as err:  # a corrupt or newer graph fails anywhere: struct, index, value
        raise _Unreadable(f"its graph is corrupt ({type(err).__name__})") from err


def _xnnpack(blob: bytes, label: str) -> tuple[list[Layer], list[str]]:
    """Layers of an XNNPACK payload: an XNNHeader ("XH00" at byte 4; the flatbuffer's offset
    and size at bytes 10 and 14), then the XNNGraph flatbuffer ("XN01")."""
    from flatbuffers import number_types as N

    from edgepilot.runtime.flatbuffer import _all, _root

    if blob[4:8] == b"XH00":
        offset, size = (int.from_bytes(blob[i:i + 4], "little") for i in (10, 14))
        blob = blob[offset:offset + size]
    if blob[4:8] != b"XN01":
        raise _Unreadable(f"its graph's identifier is {blob[4:8]!r}, not b'XN01'")
    graph = _root(blob)
    dims: dict[int, tuple] = {}
    constant: set[int] = set()
    for value in _all(graph, 2, _XNN_LIMIT):  # XNNGraph.xvalues
        kind, tensor = value.scalar(0, N.Uint8Flags), value.table(1)
        if kind == 2 and tensor is not None:  # XNNQuantizedTensorValue.tensor_value
            tensor = tensor.table(0)
        if kind not in (1, 2) or tensor is None:
            continue
        ident = tensor.scalar(6, N.Uint32Flags)  # id_out
        dims[ident] = tuple(d & 0xFFFFFFFF for d in tensor.ints(2))
        if tensor.scalar(3, N.Uint32Flags):  # constant_buffer_idx; 0: not a constant
            constant.add(ident)

    def size(ident: int) -> int:
        return math.prod(dims[ident]) if ident in constant else 0

    def elements(ident: int) -> int:
        return math.prod(dims.get(ident, ()) or (0,))

    layers, ops = [], []
    for n, node in enumerate(_all(graph, 1, _XNN_LIMIT)):  # XNNGraph.xnodes
        kind, body = node.scalar(0, N.Uint8Flags), node.table(1)
        op = f"XNN{_XNN_NODES[kind - 1]}" if 0 < kind <= len(_XNN_NODES) else f"XNN op {kind}"
        ops.append(op)
        if body is None:
            continue

        def slot(i: int, body=body) -> int:
            return body.scalar(i, N.Uint32Flags)

        weights = biases = macs = 0
        if kind in (7, 13, 39):  # Conv2d, DepthwiseConv2d, ConvTranspose2d (_XNNNodeConv)
            weights, biases = size(slot(16)), size(slot(17))
            kernel = slot(4) * slot(5)
            macs = (elements(slot(15)) * kernel * slot(11) if kind == 39  # per input element
                    else elements(slot(18)) * kernel * slot(10))  # per output element
        elif kind == 2:  # FullyConnected: input1, filter, bias, output
            weights, biases = size(slot(1)), size(slot(2))
            out = dims.get(slot(3))
            if out and out[-1] and slot(1) in dims:
                macs = elements(slot(3)) * (math.prod(dims[slot(1)]) // out[-1])
        elif kind == 37:  # BatchMatrixMultiply: input1, input2, output
            weights = size(slot(0)) + size(slot(1))
            first = dims.get(slot(0))
            macs = elements(slot(2)) * first[-1] if first else 0
        elif kind == 31:  # PReLU: input, slope, output
            weights = size(slot(1))
        if weights or biases or macs:
            layers.append(Layer(f"{label} node {n}", op, weights, biases, macs))
    return layers, ops


def _tensor(name: str, value) -> TensorSummary:
    if not _is_tensor(value):
        return TensorSummary(name, (), type(value).__name__.lower())
    code = getattr(value.scalar_type, "value", value.scalar_type)
    return TensorSummary(name, tuple(int(d) for d in value.sizes),
                         _DTYPES.get(code, f"scalar type {code}"))
