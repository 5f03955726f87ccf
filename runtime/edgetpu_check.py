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
           "parse_compiler_log", "LOG_LIMIT", "EDGETPU_CUSTOM_OP", "read_info"]

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
# The log is read line by line with str methods and one regex that cannot backtrack, so the
# time is linear in its length, which is capped: a line it cannot read is noted, never raised,
# and no value comes from a line it could not read.

#: The most of the compiler's output read (characters, or bytes when given bytes). Its log is
#: a few KiB; past this it is not a log.
LOG_LIMIT = 4 << 20
_SIZES = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
_VERSION = "Edge TPU Compiler version"
_FIELDS = {  # what comes before a line's first ':' -> (key, kind of value)
    "On-chip memory used for caching model parameters": ("on_chip_used", "size"),
    "On-chip memory remaining for caching model parameters": ("on_chip_remaining", "size"),
    "Off-chip memory used for streaming uncached model parameters": ("off_chip_used", "size"),
    "Number of Edge TPU subgraphs": ("subgraphs", "count"),
    "Total number of operations": ("total_ops", "count"),
    "Number of operations that will run on Edge TPU": ("ops_on_tpu", "count"),
    "Number of operations that will run on CPU": ("ops_on_cpu", "count"),
    "Output model": ("output_model", "name"),
}
_HEADER = ["Operator", "Count", "Status"]
# Each part is followed by a character it cannot match, so a failed match never backtracks.
_OP_NAME = re.compile(r"[A-Z][A-Z0-9_]*(?:\([^()\s]*\))?")
_MAX_DIGITS = 9  # of a count of ops or subgraphs (int() refuses more than 4,300)
_MAX_NUMBER = 15  # characters of a size's number, e.g. "150.25"
_MAX_TEXT = 500  # characters of a version, a file name or a status
_MAX_NOTES = 20  # unread lines named one by one; the rest are counted
_MAX_ROWS = 1000  # of the operator table, which has one row per kind of op: a few dozen


def _count(value: str) -> int | None:
    """The count at the start of `value` (ASCII digits), or None."""
    words = value.split(maxsplit=1)
    word = words[0] if words else ""
    if word.isascii() and word.isdigit() and len(word) <= _MAX_DIGITS:
        return int(word)
    return None


def _size(value: str) -> int | None:
    """Bytes of a size such as '150.25KiB' or '0.00 B', or None (inf, nan, 1.2.3, furlongs)."""
    value = value.strip()
    rest = value.lstrip("0123456789.")
    number, unit = value[: len(value) - len(rest)], rest.split(maxsplit=1)
    whole, _, fraction = number.partition(".")
    if (whole.isdigit() and (fraction.isdigit() or not fraction)
            and len(number) <= _MAX_NUMBER and unit and unit[0] in _SIZES):
        return round(float(number) * _SIZES[unit[0]])  # finite: at most 15 digits
    return None


def _text(value: str) -> str | None:
    """`value` with its runs of whitespace made one space, or None when blank or too long."""
    value = " ".join(value.split())
    return value if 0 < len(value) <= _MAX_TEXT else None


def _name(value: str) -> str | None:
    """The first word of `value` (a version, a file name), or None."""
    words = value.split(maxsplit=1)
    return _text(words[0]) if words else None


_READERS = {"count": (_count, "not a count"),
            "size": (_size, f"not a size in {', '.join(_SIZES)}"),
            "name": (_name, f"no name of at most {_MAX_TEXT} characters")}


def _row(line: str) -> dict | str:
    """One row of the operator table, or why it is not one."""
    parts = line.split(maxsplit=2)
    if len(parts) < 3:
        return "missing columns (operator, count, status)"
    count, status = _count(parts[1]), _text(parts[2])
    if count is None or status is None:
        return "not a count" if count is None else \
            f"a status of more than {_MAX_TEXT} characters"
    return {"op": parts[0], "count": count, "status": status,
            "on_tpu": status == "Mapped to Edge TPU"}


def parse_compiler_log(log: str | bytes) -> dict:
    """The facts in what `edgetpu_compiler` prints: version, memory, the operator table.

    Returns a dict with ``ops`` (operator, count, status rows) and, where printed, the
    version, on-/off-chip memory in bytes, subgraph and operation counts. When the compiler
    prints no per-op counts (every op mapped) they are derived from the table, if every row
    of it was read. Lines that should hold a value and do not are listed under ``unread``
    (as is a log cut at `LOG_LIMIT`); their values are left out, never guessed. Bytes are
    decoded as UTF-8, an undecodable byte read as U+FFFD.

    Example:
        >>> log = parse_compiler_log("Total number of operations: 16\\nOutput model: a.tflite\\n"
        ...                          "Number of Edge TPU subgraphs: two")
        >>> log["total_ops"], log["output_model"], log["unread"]
        (16, 'a.tflite', ["line 3: 'Number of Edge TPU subgraphs: two': not a count"])
    """
    result: dict = {"ops": []}
    unread: list[str] = []
    untold = 0

    def note(number: int, line: str, why: str) -> None:
        nonlocal untold
        if len(unread) < _MAX_NOTES:
            shown = line if len(line) <= 100 else line[:100] + "..."
            unread.append(f"line {number}: {shown!r}: {why}")
        else:
            untold += 1

    unit = "bytes" if isinstance(log, bytes) else "characters"
    cut = len(log) > LOG_LIMIT
    if cut:  # whole lines only: a cut one could read as a shorter value
        log = log[:LOG_LIMIT]
        log = log[: log.rfind(b"\n" if isinstance(log, bytes) else "\n") + 1]
    if isinstance(log, bytes):
        log = log.decode("utf-8", errors="replace")
    lines = log.splitlines()
    table = None  # None: not seen yet; True: reading its rows; False: past it
    complete = True  # every row of the table was read
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if table:
            if not line:
                continue
            if _OP_NAME.fullmatch(line.split(maxsplit=1)[0]):
                row = _row(line) if len(result["ops"]) < _MAX_ROWS else \
                    f"more than {_MAX_ROWS} rows"
                if isinstance(row, str):
                    note(number, line, row)
                    complete = False
                else:
                    result["ops"].append(row)
                continue
            table = False  # the first line that is no row ends the table
        if table is None and line.split(maxsplit=3)[:3] == _HEADER:
            table = True
            continue
        label, colon, value = line.partition(":")
        if line.startswith(_VERSION):
            key, kind, value = "version", "name", line[len(_VERSION):]
        elif colon and label in _FIELDS:
            key, kind = _FIELDS[label]
        else:
            continue
        if key not in result:
            read, why = _READERS[kind]
            parsed = read(value)
            if parsed is None:
                note(number, line, why)
            else:
                result[key] = parsed
    if result["ops"] and complete and not (cut and table):  # not when the cut ends it
        result.setdefault("ops_on_tpu", sum(r["count"] for r in result["ops"] if r["on_tpu"]))
        result.setdefault("ops_on_cpu",
                          sum(r["count"] for r in result["ops"] if not r["on_tpu"]))
    if untold:
        unread.append(f"and {untold} more line(s)")
    if cut:
        unread.insert(0, f"the log is longer than {LOG_LIMIT:,} {unit}: what follows "
                         f"line {len(lines)} was not read")
    if unread:
        result["unread"] = unread
    return result


def read_info(path: Path):
    """`edgepilot info` of an _edgetpu.tflite: the TFLite reading plus the Edge TPU verdict."""
    from edgepilot.runtime.litert_info import read_info as read_tflite

    reading = read_tflite(path)
    return reading._replace(details={"edge TPU": check_file(path).summary()})
