"""Coral Edge TPU exporter: the full-int8 TFLite file (export/litert.py writes it, with its
calibration, metadata and accuracy guard), checked op by op against the Edge TPU's rules, and
compiled by `edgetpu_compiler` when it is on PATH (Google ships it for Linux x86-64 only).

Without the compiler the file written is the compiler's input, already named as its output
would be; the report says which ops will map, where the graph is cut and why, and how to
compile it on an x86-64 machine.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from edgepilot.errors import EdgepilotError, UnsupportedFormatError
from edgepilot.export import litert
from edgepilot.export.guard import Guard
from edgepilot.meta import ModelMeta
from edgepilot.runtime.edgetpu_check import check_file, parse_compiler_log

COMPILER = "edgetpu_compiler"
#: Seconds the compiler may run (it sets its own 180 s timeout for one compilation).
COMPILER_TIMEOUT = 600
SUFFIX = "_edgetpu.tflite"


def export(module, sample_input, path: Path, *, meta: ModelMeta | None, precision: str,
           calibration: np.ndarray | None = None, method: str = "minmax",
           guard: Guard | None = None, io_dtype: str | None = None,
           dynamic_batch: bool = False) -> dict:
    """Write an Edge TPU .tflite to `path` (ending ``_edgetpu.tflite``); returns notes."""
    if precision != "int8":
        raise UnsupportedFormatError(f"Precision '{precision}' is not available for edgetpu: "
                                     "the Edge TPU runs only full-int8 models. Valid: int8")
    if not path.name.endswith(SUFFIX):
        raise EdgepilotError(f"An Edge TPU file's name ends with {SUFFIX}, got '{path.name}'")
    stem = path.name[: -len(SUFFIX)]
    with tempfile.TemporaryDirectory(prefix=".edgetpu-", dir=path.parent) as tmp:
        source = Path(tmp, stem + ".tflite")  # the compiler names its output <stem>_edgetpu
        notes = litert.export(module, sample_input, source, meta=meta, precision="int8",
                              calibration=calibration, method=method, guard=guard,
                              io_dtype=io_dtype, dynamic_batch=dynamic_batch)
        notes.pop("fp32_bytes", None)  # that of a float .tflite, not of an Edge TPU file
        verdict = check_file(source)
        notes["edgetpu_check"] = {"summary": verdict.summary(), "on_tpu": verdict.on_tpu,
                                  "on_cpu": [f"{op.index} {op.op}: {op.reason}"
                                             for op in verdict.on_cpu]}
        compiler = shutil.which(COMPILER)
        if compiler:
            notes["compiler"] = _compile(compiler, source, Path(tmp))
            shutil.copyfile(Path(tmp, stem + SUFFIX), path)
            log = Path(tmp, stem + "_edgetpu.log")  # the per-operation log, kept in the report
            if log.is_file():
                notes["compiler"]["operation_log"] = log.read_text(errors="replace")[:100_000]
        else:
            shutil.copyfile(source, path)
            notes["compiler"] = (f"{COMPILER} is not on PATH (Google ships it for Linux x86-64): "
                                 "the file is the compiler's input, not compiled; export "
                                 "again where the compiler is, or compile the _int8.tflite "
                                 "there with 'edgetpu_compiler -s'")
    # The file runs only through libedgetpu; without a device the report cannot run it. The
    # same int8 graph runs on the CPU as --format tflite --precision int8.
    from edgepilot.runtime.edgetpu import cannot_run_here

    reason = cannot_run_here()
    if reason:
        notes["unchecked"] = reason
    return notes


def _compile(compiler: str, source: Path, out: Path) -> dict:
    """Run edgetpu_compiler on `source` into `out`; its parsed log."""
    try:
        done = subprocess.run([compiler, "-s", "-o", str(out), str(source)],
                              capture_output=True, text=True, timeout=COMPILER_TIMEOUT)
    except subprocess.TimeoutExpired as err:
        raise EdgepilotError(f"{COMPILER} ran for more than {COMPILER_TIMEOUT} s on "
                             f"'{source.name}'") from err
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise EdgepilotError(f"{COMPILER} failed on '{source.name}': "
                             f"{detail[-1] if detail else 'exit code ' + str(done.returncode)}")
    return parse_compiler_log(done.stdout)
