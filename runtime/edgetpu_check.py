"""Will this int8 .tflite run on a Coral Edge TPU? edgepilot's own answer, op by op, on any
machine (Google's `edgetpu_compiler` runs on Linux x86-64 only), and the parser of that
compiler's log where it did run.

The rules are Coral's published ones ("TensorFlow models on the Edge TPU", coral.ai, the
supported-operations table and its requirements; as of compiler 16):

* every tensor the Edge TPU touches is 8-bit (int8 or uint8; int32 biases);
* shapes are static, and of a tensor only the 3 innermost dimensions may be larger than 1;
* only the operations in the table map, with their known limitations (checked below where
  the file shows them: fused activations, Softmax's 1-D input of at most 16,000 elements);
* the compiler maps one Edge TPU subgraph from the model's start: the first op that cannot
  map cuts the graph, and every op after it runs on the CPU, even one the TPU supports
  ("More than one subgraph is not supported" in the compiler's log).

The compiler has the last word (it may still refuse an op "due to some unspecified
limitation", e.g. a resize that would lose precision); this checker finds what is certain
from the file, before anyone looks for an x86 machine.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgepilot.runtime.litert_info import op_name, op_names, parse, tensor_type_names, text

__all__ = ["SUPPORTED_OPS", "OpCheck", "EdgeTPUCheck", "check_model", "check_file",
           "parse_compiler_log", "EDGETPU_CUSTOM_OP", "read_info"]

#: What a compiled file holds in place of the ops it moved to the Edge TPU.
EDGETPU_CUSTOM_OP = "edgetpu-custom-op"

#: Coral's supported-operations table, by TFLite builtin name, with the limitation it names.
SUPPORTED_OPS: dict[str, str] = {
    "ADD": "", "AVERAGE_POOL_2D": "No fused activation function.",
    "CONCATENATION": "No fused activation function.", "CONV_2D": "", "DEPTHWISE_CONV_2D": "",
    "EXPAND_DIMS": "", "FULLY_CONNECTED": "Only the default weights format; output tensor "
    "is one-dimensional.", "L2_NORMALIZATION": "", "LOGISTIC": "",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "Unidirectional LSTM only.", "MAXIMUM": "",
    "MAX_POOL_2D": "No fused activation function.", "MEAN": "No reduction in batch dimension.",
    "MINIMUM": "", "MUL": "", "PACK": "No packing in batch dimension.",
    "PAD": "No padding in batch dimension.", "PRELU": "Alpha must be 1-dimensional.",
    "QUANTIZE": "", "REDUCE_MAX": "Cannot operate on the batch dimension.",
    "REDUCE_MIN": "Cannot operate on the batch dimension.", "RELU": "", "RELU6": "",
    "RELU_N1_TO_1": "", "RESHAPE": "Certain reshapes might not be mapped for large tensors.",
    "RESIZE_BILINEAR": "Input/output is a 3-dimensional tensor; may not be mapped to avoid "
    "a loss of precision.", "RESIZE_NEAREST_NEIGHBOR": "Input/output is a 3-dimensional "
    "tensor; may not be mapped to avoid a loss of precision.", "SLICE": "",
    "SOFTMAX": "Supports only 1-D input tensors with a max of 16,000 elements.",
    "SPACE_TO_DEPTH": "", "SPLIT": "", "SQUEEZE": "Only when no relayout is needed.",
    "STRIDED_SLICE": "All strides equal to 1.", "SUB": "", "TANH": "",
}
_NO_FUSED_ACTIVATION = {"AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION"}
_EIGHT_BIT = {"int8", "uint8"}
_SOFTMAX_MAX = 16_000


@dataclass
class OpCheck:
    """One operator: where it runs and why."""

    index: int
    op: str
    output: str  # the name of its first output tensor
    where: str  # "edgetpu" or "cpu"
    reason: str = ""


@dataclass
class EdgeTPUCheck:
    """The verdict on a file: each op, and the op where the graph is cut (or None)."""

    ops: list[OpCheck] = field(default_factory=list)
    cut: OpCheck | None = None
    compiled: bool = False  # the file already holds an edgetpu-custom-op

    @property
    def on_tpu(self) -> int:
        return sum(op.where == "edgetpu" for op in self.ops)

    @property
    def on_cpu(self) -> list[OpCheck]:
        return [op for op in self.ops if op.where == "cpu"]

    def summary(self) -> str:
        """One line for reports and `info`."""
        if self.compiled:
            return (f"compiled for the Edge TPU: {self.on_tpu} custom op(s) on the TPU, "
                    f"{len(self.on_cpu)} op(s) on the CPU")
        head = f"{self.on_tpu} of {len(self.ops)} ops map to the Edge TPU"
        if self.cut is None:
            return head + " (all of them)"
        return (f"{head}; the graph is cut at op {self.cut.index} {self.cut.op} "
                f"('{self.cut.output}'): {self.cut.reason}; it and the "
                f"{len(self.on_cpu) - 1} op(s) after it run on the CPU")

    def to_dict(self) -> dict:
        return {"summary": self.summary(), "on_tpu": self.on_tpu,
                "on_cpu": len(self.on_cpu), "compiled": self.compiled,
                "cut": None if self.cut is None else asdict(self.cut),
                "ops": [asdict(op) for op in self.ops]}


def check_file(path: str | Path) -> EdgeTPUCheck:
    """`check_model` of a .tflite file."""
    path = Path(path)
    return check_model(path.read_bytes(), path)


def check_model(data: bytes, path: object = "the model") -> EdgeTPUCheck:
    """Check every operator of the model's main subgraph against the Edge TPU's rules.

    Example:
        >>> check_file("stoplight_int8_edgetpu.tflite").summary()
        '11 of 11 ops map to the Edge TPU (all of them)'
    """
    tree = parse(data, Path(str(path)))
    names, dtypes = op_names(), tensor_type_names()
    graph = tree.subgraphs[0]
    tensors = graph.tensors or []
    result = EdgeTPUCheck()
    for index, op in enumerate(graph.operators or []):
        name = op_name(tree, op, names)
        outs = [int(o) for o in op.outputs] if op.outputs is not None else []
        output = text(tensors[outs[0]].name) if outs else ""
        if name == f"CUSTOM({EDGETPU_CUSTOM_OP})":
            result.compiled = True
            result.ops.append(OpCheck(index, name, output, "edgetpu", "compiled"))
            continue
        reason = _unmappable(tree, op, name, tensors, dtypes)
        if reason is None and result.cut is not None:
            reason = (f"after the cut at op {result.cut.index}: the compiler maps one Edge "
                      "TPU subgraph")
            result.ops.append(OpCheck(index, name, output, "cpu", reason))
            continue
        check = OpCheck(index, name, output, "cpu" if reason else "edgetpu", reason or "")
        if reason and result.cut is None and not result.compiled:
            result.cut = check
        result.ops.append(check)
    return result


def _unmappable(tree, op, name: str, tensors, dtypes) -> str | None:
    """Why this op cannot run on the Edge TPU, or None when the file shows no reason."""
    if name not in SUPPORTED_OPS:
        return f"{name} is not in Coral's supported-operations table"
    ins = [int(i) for i in op.inputs if i >= 0] if op.inputs is not None else []
    outs = [int(o) for o in op.outputs] if op.outputs is not None else []
    for i in ins + outs:
        tensor = tensors[i]
        constant = _has_data(tree.buffers[tensor.buffer])
        dtype = dtypes.get(tensor.type, str(tensor.type))
        if dtype not in _EIGHT_BIT and not (constant and dtype == "int32"):
            if not (name == "QUANTIZE" and i in ins):  # QUANTIZE's float input is the CPU's
                return (f"tensor '{text(tensor.name)}' is {dtype}: the Edge TPU computes on "
                        "8-bit tensors only (export int8)")
        signature = tensor.shapeSignature if tensor.shapeSignature is not None else []
        if any(d < 0 for d in signature):
            return f"tensor '{text(tensor.name)}' has a dynamic shape: the Edge TPU needs " \
                   "static shapes"
        shape = list(tensor.shape) if tensor.shape is not None else []
        if not constant and any(d > 1 for d in shape[:-3]):
            return (f"tensor '{text(tensor.name)}' is {'x'.join(map(str, shape))}: only the 3 "
                    "innermost dimensions may be larger than 1")
    options = op.builtinOptions
    if name in _NO_FUSED_ACTIVATION and getattr(options, "fusedActivationFunction", 0):
        return f"{name} with a fused activation function ({SUPPORTED_OPS[name]})"
    if name == "SOFTMAX" and ins:
        shape = list(tensors[ins[0]].shape if tensors[ins[0]].shape is not None else [])
        if math.prod(shape) > _SOFTMAX_MAX or sum(d > 1 for d in shape) > 1:
            return f"SOFTMAX on {'x'.join(map(str, shape))}: {SUPPORTED_OPS['SOFTMAX']}"
    return None


def _has_data(buffer) -> bool:
    return buffer.data is not None and len(buffer.data) > 0 or (buffer.offset or 0) > 1


# ------------------------------------------------------------------ edgetpu_compiler's log
_SIZES = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
_FIELDS = {
    "version": r"Edge TPU Compiler version (\S+)",
    "on_chip_used": r"On-chip memory used for caching model parameters: ([\d.]+\s*\w+)",
    "on_chip_remaining": r"On-chip memory remaining for caching model parameters: "
                         r"([\d.]+\s*\w+)",
    "off_chip_used": r"Off-chip memory used for streaming uncached model parameters: "
                     r"([\d.]+\s*\w+)",
    "subgraphs": r"Number of Edge TPU subgraphs: (\d+)",
    "total_ops": r"Total number of operations: (\d+)",
    "ops_on_tpu": r"Number of operations that will run on Edge TPU: (\d+)",
    "ops_on_cpu": r"Number of operations that will run on CPU: (\d+)",
    "output_model": r"Output model: (\S+)",
}
_ROW = re.compile(r"^([A-Z][A-Z0-9_]*(?:\([^)]*\))?)\s+(\d+)\s+(\S.*?)\s*$")


def _bytes(value: str) -> int:
    number, unit = re.fullmatch(r"([\d.]+)\s*(\w+)", value.strip()).groups()
    return round(float(number) * _SIZES.get(unit, 1))


def parse_compiler_log(log: str) -> dict:
    """The facts in what `edgetpu_compiler` prints: version, memory, the operator table.

    Returns a dict with ``ops`` (operator, count, status rows) and, where printed, the
    version, on-/off-chip memory in bytes, subgraph and operation counts. When the compiler
    prints no per-op counts (every op mapped) they are derived from the table.
    """
    result: dict = {"ops": []}
    for key, pattern in _FIELDS.items():
        match = re.search(pattern, log)
        if match:
            value = match.group(1)
            result[key] = _bytes(value) if key.endswith(("_used", "_remaining")) else \
                int(value) if value.isdigit() else value
    table = log.split("Operator", 1)[1] if re.search(r"^Operator\s+Count\s+Status", log,
                                                     re.M) else ""
    for line in table.splitlines()[1:]:
        row = _ROW.match(line.strip())
        if row:
            op, count, status = row.groups()
            result["ops"].append({"op": op, "count": int(count), "status": status,
                                  "on_tpu": status == "Mapped to Edge TPU"})
    if result["ops"]:
        result.setdefault("ops_on_tpu", sum(r["count"] for r in result["ops"] if r["on_tpu"]))
        result.setdefault("ops_on_cpu",
                          sum(r["count"] for r in result["ops"] if not r["on_tpu"]))
    return result


def read_info(path: Path):
    """`edgepilot info` of an _edgetpu.tflite: the TFLite reading plus the Edge TPU verdict."""
    from edgepilot.runtime.litert_info import read_info as read_tflite

    reading = read_tflite(path)
    return reading._replace(details={"edge TPU": check_file(path).summary()})
