"""`edgepilot info` for .pte files, read with ExecuTorch's own program deserializer: the
forward method's tensors, the edgepilot metadata, the operators the program runs outside any
delegate and the delegate calls (XNNPACK's subgraphs).

Layers and parameters inside a delegate are the delegate's private blob, so they are not
counted: the summary says how many ops each delegate took instead.
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

from edgepilot.errors import ModelFileError, require
from edgepilot.runtime.backend import quiet_native_stderr
from edgepilot.runtime.executorch import META_METHOD, check_header, method_list, read_program
from edgepilot.runtime.reading import Reading, TensorSummary, parse_meta

__all__ = ["read_info"]

#: ExecuTorch ScalarType codes -> numpy dtype names.
_DTYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16",
           6: "float32", 7: "float64", 11: "bool"}


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
    ops, delegated = [], Counter()
    for chain in forward.chains:
        for instruction in chain.instructions:
            args = instruction.instr_args
            kind = type(args).__name__
            if kind == "KernelCall":
                operator = forward.operators[args.op_index]
                ops.append(operator.name + (f".{operator.overload}" if operator.overload else ""))
            elif kind == "DelegateCall":
                backend = forward.delegates[args.delegate_index].id
                ops.append(f"delegate({backend})")
                delegated[backend] += 1
    meta = None
    if META_METHOD in plans and plans[META_METHOD].outputs:
        value = plans[META_METHOD].values[plans[META_METHOD].outputs[0]].val
        meta = parse_meta(getattr(value, "string_val", None), path)
    details = {"methods": sorted(plans),
               "delegated subgraphs": dict(delegated) or "none (portable kernels only)",
               "layers": "inside the delegate (not counted)" if delegated else "-"}
    return Reading(inputs, outputs, meta, [], ops, details)


def _tensor(name: str, value) -> TensorSummary:
    if type(value).__name__ != "Tensor":
        return TensorSummary(name, (), type(value).__name__.lower())
    code = getattr(value.scalar_type, "value", value.scalar_type)
    return TensorSummary(name, tuple(int(d) for d in value.sizes),
                         _DTYPES.get(code, f"scalar type {code}"))
