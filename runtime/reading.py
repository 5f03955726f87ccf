"""What every format's ``read_info(path)`` returns to `edgepilot info`, and the counting they
share: layers, parameters and MACs from a graph's nodes (the rules are in `edgepilot.info`'s
docstring). Readers live beside their backends (``runtime/<format>_info.py``); this module
is the base they stand on, so the runtime never imports the `info` command.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from edgepilot.errors import ModelFileError
from edgepilot.meta import ModelMeta
from edgepilot.runtime.backend import meta_entry

__all__ = ["OpRule", "TensorSummary", "Layer", "Reading", "Layers", "count_layers", "parse_meta",
           "LAYER_VALUES_BYTES", "ValueStack", "macs"]


class OpRule(NamedTuple):
    """How to count one op type: which inputs are parameters, and its MACs."""

    weights: tuple[int, ...] = ()  # input slots holding weights; counted when constant
    biases: tuple[int, ...] = ()
    # MACs = output elements x a count from the dims of input `operand`: "conv" dims[1:] of a
    # (Cout, ...kernel and Cin) weight; "depthwise" kh x kw of (1, kh, kw, C); "dot" dims[-1].
    macs: str = ""
    operand: int = 1


# Ops that, applied to a constant, give the same constant in another dtype or shape: int8
# weights reach a QDQ Conv through DequantizeLinear, fp16 ones a TFLite FC through DEQUANTIZE.
_VIEWS = {"DequantizeLinear", "Cast", "Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
          "Flatten", "DEQUANTIZE", "CAST", "RESHAPE", "TRANSPOSE"}
_MATMULS = {"MatMul", "MatMulInteger", "QLinearMatMul"}


@dataclass
class TensorSummary:
    """An input or output tensor. `shape` holds None for a dynamic dimension."""

    name: str
    shape: tuple
    dtype: str  # numpy name: "float32", "int8", ...
    quantization: str | None = None  # e.g. "int8 scale=0.003906 zp=-128"


class Layer(NamedTuple):
    name: str
    op: str
    weights: int
    biases: int
    macs: int


class Reading(NamedTuple):
    """What a format's ``read_info(path)`` returns."""

    inputs: list[TensorSummary]
    outputs: list[TensorSummary]
    meta: dict | None
    layers: list[Layer]
    ops: list[str]
    details: dict = {}  # format-specific facts: compute units, weight precision, delegates...
    # Why parameters and MACs cannot be known from the file ("delegated to QnnBackend": the
    # weights are in a blob only that backend reads); empty when every layer was counted.
    uncounted: str = ""


#: Most bytes of intermediate values a ``read_layers`` call holds (over all its inputs).
LAYER_VALUES_BYTES = 2 << 30


@dataclass
class Layers:
    """What a format's ``read_layers(path, inputs)`` returns to `edgepilot diff`: every
    intermediate activation of a file on some inputs, with where it came from.

    Attributes:
        order: activation tensors in execution order.
        inputs_of: tensor -> the activation tensors its op reads.
        values: tensor -> float32 values stacked over the inputs (batch first); quantized
            tensors dequantized with their own scale and zero point.
        modules: tensor -> the PyTorch module that computed it, as the model names it
            (``features.3.0``), where the file records it; absent otherwise.
        ops: tensor -> the op that computed it (``Conv``, ``CONV_2D``).
        outputs: the graph's output tensors.
        channels_last: whether 4-D activations are (N, H, W, C).
        also_modules: tensor -> other modules a fused op also computed (its batch norm and
            conv after the activation that names it), most recent first.
        read_as: tensor -> its values as the next layer reads them, where they differ (an
            int8 layer's output after quantize and dequantize, which also clamp it).
    """

    order: list[str]
    inputs_of: dict[str, list[str]]
    values: dict[str, np.ndarray]
    modules: dict[str, str]
    ops: dict[str, str]
    outputs: list[str]
    channels_last: bool
    also_modules: dict[str, list[str]] = field(default_factory=dict)
    read_as: dict[str, np.ndarray] = field(default_factory=dict)


class ValueStack:
    """One input's intermediate values at a time, stacked over `count` inputs; refused after
    the first when all of them would pass `LAYER_VALUES_BYTES`."""

    def __init__(self, path: Path, count: int) -> None:
        self.path, self.count = path, count
        self.collected: dict[str, list[np.ndarray]] = {}

    def add(self, values: dict[str, np.ndarray]) -> None:
        if not self.collected:
            total = sum(v.nbytes for v in values.values()) * self.count
            if total > LAYER_VALUES_BYTES:
                raise ModelFileError(
                    f"'{self.path}': its intermediate values on {self.count} inputs would take "
                    f"{total / 2**30:.1f} GiB: compare on fewer images")
        for name, value in values.items():
            self.collected.setdefault(name, []).append(value)

    def stacked(self) -> dict[str, np.ndarray]:
        return {name: np.concatenate(v) if v[0].ndim else np.stack(v)
                for name, v in self.collected.items()}


def count_layers(nodes, sizes: dict, shape, table: dict[str, OpRule],
                 views: frozenset = frozenset()) -> list[Layer]:
    """The layers of one graph, in graph order.

    Args:
        nodes: (layer name, op type, input tensors, output tensors) in execution order.
        sizes: element count of every constant tensor.
        shape: tensor -> dims with a batch of one, or None when unknown.
        table: how to count each op type.
        views: the format's own ops that give a constant in another dtype or shape, beside
            the ONNX and TFLite ones (`_VIEWS`).
    """
    origin = {t: t for t in sizes}  # tensor -> the constant it is a view of
    producer: dict = {}  # activation -> index in `layers` of the layer computing it
    layers: list[Layer] = []
    for name, op, ins, outs in nodes:
        if (op in _VIEWS or op in views) and ins and ins[0] in origin:
            origin[outs[0]] = origin[ins[0]]
            continue
        index = next((producer[i] for i in ins if i in producer), None)
        if index is not None and (grown := _extends(op, ins, layers[index], origin, sizes)):
            layers[index] = grown
            producer[outs[0]] = index
            continue
        rule = table.get(op, OpRule())

        def count(slots, ins=ins):
            return sum(sizes[origin[ins[i]]] for i in slots if i < len(ins) and ins[i] in origin)

        operand = ins[rule.operand] if rule.operand < len(ins) else None
        dims = shape(operand) or (shape(origin[operand]) if operand in origin else None)
        layer = Layer(name, op, count(rule.weights), count(rule.biases),
                       macs(rule.macs, shape(outs[0]), dims))
        if layer.weights or layer.biases or layer.macs:
            producer[outs[0]] = len(layers)
            layers.append(layer)
    return layers


def _extends(op: str, ins: list, layer: Layer, origin: dict, sizes: dict) -> Layer | None:
    """`layer` updated when `op` applied to its output still belongs to it, else None: an
    (de)quantize or rescale of a weighted layer's output, or a MatMul's bias Add (torch exports
    Linear on 3-D inputs as MatMul then Add; dynamic int8 as MatMulInteger, Cast, Mul, Add)."""
    if not layer.weights:  # Q @ K^T in attention has no weights: an Add after it is a mask
        return None
    if op in ("QuantizeLinear", "DequantizeLinear", "Cast", "Mul"):
        return layer
    bias = [sizes[origin[i]] for i in ins if i in origin]
    if op == "Add" and layer.op in _MATMULS and len(ins) == 2 and len(bias) == 1:
        return layer._replace(biases=layer.biases + bias[0])
    return None


def macs(kind: str, out, operand) -> int:
    """MACs of an op whose output has dims `out`, by its rule `kind` (`OpRule.macs`) over the
    dims of its `operand`; 0 when any is unknown."""
    if not kind or not out or not operand:
        return 0
    per_output = {"conv": math.prod(operand[1:]), "depthwise": math.prod(operand[1:3]),
                  "dot": operand[-1]}[kind]
    return math.prod(out) * per_output


def parse_meta(text: str | None, path: Path) -> dict | None:
    """The file's ModelMeta as a dict, validated as `edgepilot.load` validates it."""
    if not meta_entry(text):
        return None
    try:
        return ModelMeta.from_json(text).to_dict()
    except (ValueError, TypeError) as err:
        raise ModelFileError(f"'{path}' carries malformed edgepilot metadata: {err}") from err
