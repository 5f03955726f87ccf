"""Coral Edge TPU exporter: the full-int8 TFLite file (export/litert.py writes it, with its
calibration, metadata and accuracy guard), checked op by op against the Edge TPU's rules, and
compiled by `edgetpu_compiler` when it is on PATH (Google ships it for Linux x86-64 only).

Without the compiler the file written is the compiler's input, already named as its output
would be; the report says which ops will map, where the graph is cut and why, and how to
compile it on an x86-64 machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from edgepilot.errors import EdgepilotError, UnsupportedFormatError
from edgepilot.export import litert
from edgepilot.export.options import ExportOptions
from edgepilot.runtime.edgetpu_check import LOG_LIMIT, check_file, parse_compiler_log

COMPILER = "edgetpu_compiler"
#: Seconds the compiler may run (it sets its own 180 s timeout for one compilation).
COMPILER_TIMEOUT = 600
SUFFIX = "_edgetpu.tflite"
_OPERATION_LOG_LIMIT = 100_000  # bytes of its per-operation log kept in the report
_DETAIL_LIMIT = 200  # characters of its last words quoted in an error


def export(module, sample_input, path: Path, options: ExportOptions) -> dict:
    """Write an Edge TPU .tflite to `path` (ending ``_edgetpu.tflite``); returns notes."""
    precision = options.precision
    if precision != "int8":
        raise UnsupportedFormatError(f"Precision '{precision}' is not available for edgetpu: "
                                     "the Edge TPU runs only full-int8 models. Valid: int8")
    if not path.name.endswith(SUFFIX):
        raise EdgepilotError(f"An Edge TPU file's name ends with {SUFFIX}, got '{path.name}'")
    stem = path.name[: -len(SUFFIX)]
    with tempfile.TemporaryDirectory(prefix=".edgetpu-", dir=path.parent) as tmp:
        source = Path(tmp, stem + ".tflite")  # the compiler names its output <stem>_edgetpu
        notes = litert.export(module, sample_input, source,
                              options.replace(full_integer=True))
        notes.pop("fp32_bytes", None)  # that of a float .tflite, not of an Edge TPU file
        verdict = check_file(source)
        notes["edgetpu_check"] = {"summary": verdict.summary(), "on_tpu": verdict.on_tpu,
                                  "on_cpu": [f"{op.index} {op.op}: {op.reason}"
                                             for op in verdict.on_cpu]}
        compiler = shutil.which(COMPILER)
        if compiler:
            notes["compiler"] = _compile(compiler, source, Path(tmp))
            shutil.copyfile(Path(tmp, stem + SUFFIX), path)
            if "unread" in notes["compiler"]:  # the log's text stays in the report, unprinted
                notes.setdefault("warnings", []).append(
                    f"{COMPILER} printed lines edgepilot could not read; the values they hold "
                    "are left out of the report (see compiler.unread in it)")
            log = Path(tmp, stem + "_edgetpu.log")  # the per-operation log, kept in the report
            if log.is_file():
                with log.open("rb") as file:
                    notes["compiler"]["operation_log"] = \
                        file.read(_OPERATION_LOG_LIMIT).decode(errors="replace")
        else:
            shutil.copyfile(source, path)
            notes["compiler"] = (f"{COMPILER} is not on PATH (Google ships it for Linux x86-64): "
                                 "the file is the compiler's input, not compiled; export "
                                 "again where the compiler is, or compile the _int8.tflite "
                                 "there with 'edgetpu_compiler -s'")
            # Said on the console too: the file's name promises what it is not yet.
            notes.setdefault("warnings", []).append(
                f"NOT COMPILED: {COMPILER} is not on PATH, so the Edge TPU cannot run this "
                "file as it is; compile it where the compiler is (Linux x86-64)")
    # The file runs only through libedgetpu; without a device the report cannot run it. The
    # same int8 graph runs on the CPU as --format tflite --precision int8.
    from edgepilot.runtime.edgetpu import cannot_run_here

    reason = cannot_run_here()
    if reason:
        notes["unchecked"] = reason
    return notes


def _compile(compiler: str, source: Path, out: Path) -> dict:
    """Run edgetpu_compiler on `source` into `out`; its parsed log. On return the compiled
    file, ``out/<stem>_edgetpu.tflite``, is there."""
    # Its output goes to files, not pipes, so that only a bounded part of it is ever read.
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        try:
            done = subprocess.run([compiler, "-s", "-o", str(out), str(source)],
                                  stdout=stdout, stderr=stderr, timeout=COMPILER_TIMEOUT)
        except subprocess.TimeoutExpired as err:
            raise EdgepilotError(f"{COMPILER} ran for more than {COMPILER_TIMEOUT} s on "
                                 f"'{source.name}'") from err
        except OSError as err:
            raise EdgepilotError(f"{COMPILER} at '{compiler}' could not be started: "
                                 f"{err.strerror or err}") from err
        if done.returncode != 0:
            detail = _last_line(stderr) or _last_line(stdout)
            raise EdgepilotError(f"{COMPILER} failed on '{source.name}': "
                                 f"{detail or 'exit code ' + str(done.returncode)}")
        stdout.seek(0)
        log = stdout.read(LOG_LIMIT + 1)  # bytes; the parser cuts at LOG_LIMIT and says so
    compiled = out / (source.stem + SUFFIX)
    if not compiled.is_file():
        raise EdgepilotError(f"{COMPILER} at '{compiler}' exited 0 but wrote no "
                             f"{compiled.name} for '{source.name}': check that it is Google's "
                             f"compiler (ask '{compiler}' for its version), or export with "
                             "it off PATH to get the uncompiled input")
    return parse_compiler_log(log)


def _last_line(file, size: int = 4096) -> str:
    """The last non-blank line in the end of what a child wrote to `file`, shortened."""
    file.seek(max(0, file.seek(0, os.SEEK_END) - size))
    lines = file.read().decode(errors="replace").strip().splitlines()
    line = lines[-1].strip() if lines else ""
    return line if len(line) <= _DETAIL_LIMIT else line[:_DETAIL_LIMIT] + "..."
